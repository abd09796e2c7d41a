"""The peers sluice is measured against, doing the work of the taxi contract.

Each peer reads the generated taxi CSV, applies the same casts (New York wall-clock times to
UTC, decimals, integers), the same derived columns (trip id from the source line, local
times, duration, hour, weekday, year, month, date, season), keeps the rows that pass the
same rules and checks, and writes zstd Parquet partitioned by year/month/date. Unlike
sluice they keep no quarantine, make no ACID commit and record no run.
"""

import os

SOURCE_OBJECT = "raw/landing/2024/01/trips.csv"

# The contract's rules and checks (examples/nyc-taxi/sluice.toml), as one SQL predicate.
VALID_SQL = """
    pickup_at IS NOT NULL AND dropoff_at IS NOT NULL
    AND fare_amount IS NOT NULL AND total_amount IS NOT NULL
    AND (passenger_count IS NULL OR passenger_count BETWEEN 1 AND 9)
    AND (trip_distance IS NULL OR trip_distance BETWEEN 0 AND 1000)
    AND (pickup_longitude IS NULL OR pickup_longitude BETWEEN -74.3 AND -73.7)
    AND (pickup_latitude IS NULL OR pickup_latitude BETWEEN 40.4 AND 41.0)
    AND (dropoff_longitude IS NULL OR dropoff_longitude BETWEEN -74.3 AND -73.7)
    AND (dropoff_latitude IS NULL OR dropoff_latitude BETWEEN 40.4 AND 41.0)
    AND (pu_location_id IS NULL OR pu_location_id BETWEEN 1 AND 265)
    AND (do_location_id IS NULL OR do_location_id BETWEEN 1 AND 265)
    AND fare_amount BETWEEN 0 AND 10000
    AND (tip_amount IS NULL OR tip_amount >= 0)
    AND total_amount BETWEEN 0 AND 10000
    AND dropoff_at > pickup_at
    AND trip_duration_minutes BETWEEN 0.1 AND 1440
    AND trip_distance > 0
    AND year = 2024 AND month = 1
"""


def duckdb_ingest(csv: str, out: str, threads: int) -> int:
    """DuckDB: COPY (SELECT ... FROM read_csv(...)) TO ... (FORMAT parquet, PARTITION_BY ...)."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")
    dec = "DECIMAL(10,2)"
    con.execute(
        f"""
        COPY (
          WITH raw AS (
            SELECT *, row_number() OVER () + 1 AS _line
            FROM read_csv('{csv}', header = true, all_varchar = true)
          ),
          typed AS (
            SELECT
              _line,
              TRY_CAST(VendorID AS INTEGER) AS vendor_id,
              TRY_STRPTIME(tpep_pickup_datetime, '%Y-%m-%d %H:%M:%S') AS pickup_at_local,
              TRY_STRPTIME(tpep_dropoff_datetime, '%Y-%m-%d %H:%M:%S') AS dropoff_at_local,
              TRY_CAST(passenger_count AS INTEGER) AS passenger_count,
              TRY_CAST(trip_distance AS DOUBLE) AS trip_distance,
              TRY_CAST(pickup_longitude AS DOUBLE) AS pickup_longitude,
              TRY_CAST(pickup_latitude AS DOUBLE) AS pickup_latitude,
              TRY_CAST(dropoff_longitude AS DOUBLE) AS dropoff_longitude,
              TRY_CAST(dropoff_latitude AS DOUBLE) AS dropoff_latitude,
              TRY_CAST(PULocationID AS INTEGER) AS pu_location_id,
              TRY_CAST(DOLocationID AS INTEGER) AS do_location_id,
              TRY_CAST(RatecodeID AS INTEGER) AS rate_code,
              CASE store_and_fwd_flag WHEN 'Y' THEN true WHEN 'N' THEN false END AS store_and_fwd_flag,
              TRY_CAST(payment_type AS INTEGER) AS payment_type,
              TRY_CAST(fare_amount AS {dec}) AS fare_amount,
              TRY_CAST(extra AS {dec}) AS extra,
              TRY_CAST(mta_tax AS {dec}) AS mta_tax,
              TRY_CAST(tip_amount AS {dec}) AS tip_amount,
              TRY_CAST(tolls_amount AS {dec}) AS tolls_amount,
              TRY_CAST(improvement_surcharge AS {dec}) AS improvement_surcharge,
              TRY_CAST(congestion_surcharge AS {dec}) AS congestion_surcharge,
              TRY_CAST(total_amount AS {dec}) AS total_amount
            FROM raw
          ),
          derived AS (
            SELECT
              * EXCLUDE (_line),
              timezone('America/New_York', pickup_at_local) AS pickup_at,
              timezone('America/New_York', dropoff_at_local) AS dropoff_at,
              md5(concat_ws('/', '{SOURCE_OBJECT}', 'v1', CAST(_line AS VARCHAR))) AS trip_id,
              round((epoch(timezone('America/New_York', dropoff_at_local))
                     - epoch(timezone('America/New_York', pickup_at_local))) / 60.0, 2)
                AS trip_duration_minutes,
              CAST(hour(pickup_at_local) AS INTEGER) AS pickup_hour,
              strftime(pickup_at_local, '%A') AS pickup_day_of_week,
              CAST(year(pickup_at_local) AS INTEGER) AS year,
              CAST(month(pickup_at_local) AS INTEGER) AS month,
              CAST(pickup_at_local AS DATE) AS date,
              CASE WHEN month(pickup_at_local) IN (12, 1, 2) THEN 'winter'
                   WHEN month(pickup_at_local) IN (3, 4, 5) THEN 'spring'
                   WHEN month(pickup_at_local) IN (6, 7, 8) THEN 'summer'
                   ELSE 'autumn' END AS season
            FROM typed
          )
          SELECT * FROM derived WHERE {VALID_SQL}
        ) TO '{out}' (FORMAT parquet, PARTITION_BY (year, month, date), COMPRESSION zstd)
        """
    )
    return con.execute(f"SELECT count(*) FROM read_parquet('{out}/**/*.parquet')").fetchone()[0]


def polars_ingest(csv: str, out: str) -> int:
    """Polars: scan_csv(...) with the same expressions, then sink_parquet partitioned by key."""
    import polars as pl

    tz = "America/New_York"
    dec = pl.Decimal(10, 2)
    num = lambda c, t: pl.col(c).cast(t, strict=False)  # noqa: E731
    local = lambda c: pl.col(c).str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False)  # noqa: E731
    lf = (
        pl.scan_csv(csv, infer_schema=False)
        .with_row_index("_line", offset=2)
        .select(
            pl.col("_line"),
            num("VendorID", pl.Int32).alias("vendor_id"),
            local("tpep_pickup_datetime").alias("pickup_at_local"),
            local("tpep_dropoff_datetime").alias("dropoff_at_local"),
            num("passenger_count", pl.Int32).alias("passenger_count"),
            num("trip_distance", pl.Float64).alias("trip_distance"),
            num("pickup_longitude", pl.Float64).alias("pickup_longitude"),
            num("pickup_latitude", pl.Float64).alias("pickup_latitude"),
            num("dropoff_longitude", pl.Float64).alias("dropoff_longitude"),
            num("dropoff_latitude", pl.Float64).alias("dropoff_latitude"),
            num("PULocationID", pl.Int32).alias("pu_location_id"),
            num("DOLocationID", pl.Int32).alias("do_location_id"),
            num("RatecodeID", pl.Int32).alias("rate_code"),
            pl.col("store_and_fwd_flag").replace_strict({"Y": True, "N": False}, default=None, return_dtype=pl.Boolean),
            num("payment_type", pl.Int32).alias("payment_type"),
            *[
                num(c, dec).alias(c)
                for c in [
                    "fare_amount",
                    "extra",
                    "mta_tax",
                    "tip_amount",
                    "tolls_amount",
                    "improvement_surcharge",
                    "congestion_surcharge",
                    "total_amount",
                ]
            ],
        )
        .with_columns(
            pl.col("pickup_at_local").dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC").alias("pickup_at"),
            pl.col("dropoff_at_local").dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC").alias("dropoff_at"),
            pl.concat_str([pl.lit(SOURCE_OBJECT), pl.lit("v1"), pl.col("_line").cast(pl.String)], separator="/").alias("_id_text"),
            pl.col("pickup_at_local").dt.hour().cast(pl.Int32).alias("pickup_hour"),
            pl.col("pickup_at_local").dt.strftime("%A").alias("pickup_day_of_week"),
            pl.col("pickup_at_local").dt.year().cast(pl.Int32).alias("year"),
            pl.col("pickup_at_local").dt.month().cast(pl.Int32).alias("month"),
            pl.col("pickup_at_local").dt.date().alias("date"),
        )
        .with_columns(
            ((pl.col("dropoff_at") - pl.col("pickup_at")).dt.total_seconds() / 60.0).round(2).alias("trip_duration_minutes"),
            pl.col("_id_text").map_batches(_md5_hex, return_dtype=pl.String).alias("trip_id"),
            pl.when(pl.col("month").is_in([12, 1, 2]))
            .then(pl.lit("winter"))
            .when(pl.col("month").is_in([3, 4, 5]))
            .then(pl.lit("spring"))
            .when(pl.col("month").is_in([6, 7, 8]))
            .then(pl.lit("summer"))
            .otherwise(pl.lit("autumn"))
            .alias("season"),
        )
        .drop("_line", "_id_text")
        .filter(pl.sql_expr(VALID_SQL))
    )
    lf.sink_parquet(pl.PartitionBy(out, key=["year", "month", "date"]), compression="zstd", mkdir=True)
    return pl.scan_parquet(os.path.join(out, "**", "*.parquet")).select(pl.len()).collect().item()


def _md5_hex(s):
    """Polars has no md5 expression: hash in Python, batch at a time (the honest equivalent)."""
    import hashlib

    import polars as pl

    return pl.Series([hashlib.md5(v.encode()).hexdigest() for v in s], dtype=pl.String)


# The five analytics queries (issue 4, case 5), written once; {trips} and {zones} are table names.
QUERIES = {
    "daily_revenue": """
        SELECT date, count(*) AS trips, sum(total_amount) AS revenue, sum(tip_amount) AS tips
        FROM {trips} GROUP BY date ORDER BY date""",
    "trips_per_zone": """
        SELECT z.borough, z.zone, count(*) AS trips, sum(t.total_amount) AS revenue
        FROM {trips} t JOIN {zones} z ON t.pu_location_id = z.location_id
        GROUP BY z.borough, z.zone ORDER BY trips DESC, z.zone""",
    "duration_percentiles_by_hour": """
        SELECT pickup_hour,
               approx_percentile_cont(trip_duration_minutes, 0.5) AS p50,
               approx_percentile_cont(trip_duration_minutes, 0.9) AS p90,
               approx_percentile_cont(trip_duration_minutes, 0.99) AS p99
        FROM {trips} GROUP BY pickup_hour ORDER BY pickup_hour""",
    "top_routes": """
        SELECT pu_location_id, do_location_id, count(*) AS trips, avg(trip_distance) AS avg_distance
        FROM {trips} GROUP BY pu_location_id, do_location_id
        ORDER BY trips DESC, pu_location_id, do_location_id LIMIT 20""",
    "tip_rate_by_payment": """
        SELECT payment_type, count(*) AS trips,
               sum(tip_amount) / sum(fare_amount) AS tip_rate
        FROM {trips} WHERE fare_amount > 0 GROUP BY payment_type ORDER BY payment_type""",
}


def duckdb_query_sql(name: str) -> str:
    """DuckDB spells the approximate percentile differently; everything else is shared."""
    sql = QUERIES[name]
    return sql.replace("approx_percentile_cont(trip_duration_minutes, ", "approx_quantile(trip_duration_minutes, ")


# Queries whose answers are approximate in both engines (each its own t-digest): their
# numbers are compared loosely.
APPROXIMATE = {"duration_percentiles_by_hour"}


def duckdb_over(spec_path: str):
    """A DuckDB connection (2 threads) with views `trips` and `zones` over the given Parquet files.

    spec_path: a JSON file {"trips": [files], "zones": [files]}, the files the Delta logs say are active.
    Partition values live in the paths (year=/month=/date=), as Delta writes them.
    """
    import json

    import duckdb

    with open(spec_path) as f:
        spec = json.load(f)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET enable_progress_bar = false")
    for table, files in spec.items():
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({json.dumps(files)}, hive_partitioning = true)"
        )
    return con


def duckdb_serve(spec_path: str) -> None:
    """Times QUERIES on request, one DuckDB connection (see duckdb_over) kept between
    them: reads a query's name per line on stdin, prints its seconds per line on stdout.
    The harness alternates these runs with sluice's, so both meet the machine in the
    same state, and every run after a query's first is warm in both."""
    import sys
    import time

    con = duckdb_over(spec_path)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            break
        sql = duckdb_query_sql(name).format(trips="trips", zones="zones")
        t = time.perf_counter()
        con.execute(sql).fetchall()
        print(time.perf_counter() - t, flush=True)


def duckdb_answer(spec_path: str, name: str) -> str:
    """One of QUERIES' answer in DuckDB over the files of `spec_path` (see duckdb_over):
    JSON, a list of rows, each a list of values in the query's column order (decimals as
    numbers, dates as ISO text), for bench/run to compare with sluice's."""
    import datetime
    import decimal
    import json

    def plain(v):
        if isinstance(v, decimal.Decimal):
            return float(v)
        if isinstance(v, (datetime.date, datetime.datetime)):
            return v.isoformat()
        return v

    sql = duckdb_query_sql(name).format(trips="trips", zones="zones")
    rows = duckdb_over(spec_path).execute(sql).fetchall()
    return json.dumps([[plain(v) for v in row] for row in rows])
