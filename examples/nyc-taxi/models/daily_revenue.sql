-- Trips and revenue per calendar day (New York time).
SELECT
    date,
    count(*) AS trips,
    sum(total_amount) AS revenue,
    sum(tip_amount) AS tips,
    round(avg(trip_distance), 2) AS avg_distance,
    round(avg(trip_duration_minutes), 2) AS avg_duration_minutes
FROM silver.trips
GROUP BY date
ORDER BY date
