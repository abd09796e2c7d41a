-- Trips and revenue per pickup zone, with the TLC zone names.
SELECT
    z.borough,
    z.zone,
    count(*) AS trips,
    sum(t.total_amount) AS revenue
FROM silver.trips t
JOIN silver.zones z ON t.pu_location_id = z.location_id
GROUP BY z.borough, z.zone
ORDER BY trips DESC, z.zone
