//! `sluice demo`: the NYC taxi pipeline on a generated, realistically dirty month, in one command.
//!
//! The demo writes the example project into a workspace, generates trips
//! with the kinds of bad rows real TLC files have, uploads them through the
//! same `put_object` path every writer uses, runs the workers until the
//! queue drains, and prints what happened and where everything is.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{NaiveDate, NaiveDateTime};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::platform::{Platform, PutOptions, load_project};
use crate::render::{self, Format};
use crate::worker;

/// The example project, as `sluice init` and the demo write it.
pub const PROJECT_FILES: [(&str, &str); 4] = [
    (
        "sluice.toml",
        include_str!("../../../examples/nyc-taxi/sluice.toml"),
    ),
    (
        "models/daily_revenue.sql",
        include_str!("../../../examples/nyc-taxi/models/daily_revenue.sql"),
    ),
    (
        "models/zone_revenue.sql",
        include_str!("../../../examples/nyc-taxi/models/zone_revenue.sql"),
    ),
    (
        "flows/nightly.asl.json",
        include_str!("../../../examples/nyc-taxi/flows/nightly.asl.json"),
    ),
];

const HEADER: &str = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RatecodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount,congestion_surcharge";

/// Kinds of dirt, each about 1% of rows: (name, share in thousandths).
const DIRT: [(&str, u32); 7] = [
    ("negative fare", 12),
    ("zero distance", 10),
    ("passenger_count 0", 10),
    ("coordinates at 0", 8),
    ("dropoff before pickup", 6),
    ("pickup outside the month", 6),
    ("unparseable value", 8),
];

/// Generates a month of trips (January 2024) as CSV; returns how many rows of each dirt kind it wrote.
pub fn generate_trips(
    out: &mut impl Write,
    rows: usize,
    seed: u64,
) -> std::io::Result<Vec<(String, usize)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dirt_counts = vec![0usize; DIRT.len()];
    writeln!(out, "{HEADER}")?;
    let month_start = NaiveDate::from_ymd_opt(2024, 1, 1)
        .expect("valid")
        .and_hms_opt(0, 0, 0)
        .expect("valid");
    let total_dirt: u32 = DIRT.iter().map(|d| d.1).sum();
    for _ in 0..rows {
        let pick: u32 = rng.random_range(0..1000);
        let dirt = if pick < total_dirt {
            let mut acc = 0;
            DIRT.iter().position(|(_, share)| {
                acc += share;
                pick < acc
            })
        } else {
            None
        };
        if let Some(d) = dirt {
            dirt_counts[d] += 1;
        }
        let mut pickup =
            month_start + chrono::Duration::seconds(rng.random_range(0..31 * 86_400 - 7200));
        let minutes: f64 = 2.0 + rng.random::<f64>().powi(2) * 58.0;
        let mut dropoff = pickup + chrono::Duration::seconds((minutes * 60.0) as i64);
        let mut distance = (minutes * rng.random_range(0.12..0.45) * 100.0).round() / 100.0;
        let mut passengers = rng.random_range(1..=4);
        let pu = rng.random_range(1..=263);
        let dol = rng.random_range(1..=263);
        let (mut plon, mut plat) = (
            rng.random_range(-74.02..-73.78),
            rng.random_range(40.62..40.88),
        );
        let (dlon, dlat) = (
            rng.random_range(-74.02..-73.78),
            rng.random_range(40.62..40.88),
        );
        let payment = if rng.random_bool(0.7) { 1 } else { 2 };
        let mut fare = ((3.0 + distance * 2.5 + minutes * 0.5) * 100.0_f64).round() / 100.0;
        let tip = if payment == 1 {
            (fare * rng.random_range(0.1..0.25) * 100.0).round() / 100.0
        } else {
            0.0
        };
        let tolls = if rng.random_bool(0.05) { 6.94 } else { 0.0 };
        let mut fare_text = None;
        let mut pickup_text = None;
        match dirt {
            Some(0) => fare = -fare,
            Some(1) => distance = 0.0,
            Some(2) => passengers = 0,
            Some(3) => {
                plon = 0.0;
                plat = 0.0;
            }
            Some(4) => std::mem::swap(&mut pickup, &mut dropoff),
            Some(5) => {
                pickup -= chrono::Duration::days(40);
                dropoff -= chrono::Duration::days(40);
            }
            Some(6) => {
                if rng.random_bool(0.5) {
                    fare_text = Some("N/A".to_string());
                } else {
                    pickup_text = Some("2024-01-32 25:61:00".to_string());
                }
            }
            _ => {}
        }
        let total = ((fare + 1.0 + 0.5 + tip + tolls + 1.0 + 2.5) * 100.0_f64).round() / 100.0;
        let fmt = |t: NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
        writeln!(
            out,
            "{},{},{},{passengers},{distance:.2},{plon:.6},{plat:.6},1,N,{dlon:.6},{dlat:.6},{pu},{dol},{payment},{},1.00,0.50,{tip:.2},{tolls:.2},1.00,{total:.2},2.50",
            rng.random_range(1..=2),
            pickup_text.unwrap_or_else(|| fmt(pickup)),
            fmt(dropoff),
            fare_text.unwrap_or_else(|| format!("{fare:.2}")),
        )?;
    }
    Ok(DIRT
        .iter()
        .zip(dirt_counts)
        .map(|((name, _), n)| (name.to_string(), n))
        .collect())
}

/// A synthetic zone lookup in the TLC format (the real one is third-party data, not shipped).
pub fn generate_zones(out: &mut impl Write) -> std::io::Result<()> {
    const BOROUGHS: [&str; 5] = ["Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island"];
    writeln!(out, "\"LocationID\",\"Borough\",\"Zone\",\"service_zone\"")?;
    for id in 1..=265 {
        let borough = BOROUGHS[id % BOROUGHS.len()];
        let service = if borough == "Manhattan" {
            "Yellow Zone"
        } else {
            "Boro Zone"
        };
        writeln!(
            out,
            "{id},\"{borough}\",\"{borough} zone {id}\",\"{service}\""
        )?;
    }
    Ok(())
}

async fn upload(platform: &Platform, file: &Path, bucket: &str, key: &str) -> Result<()> {
    let size = std::fs::metadata(file)?.len();
    let bar = ProgressBar::new(size).with_message(format!("uploading {bucket}/{key}"));
    bar.set_style(
        ProgressStyle::with_template("{msg:40} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let f = tokio::fs::File::open(file).await?;
    let inner = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
    let bar_in_stream = bar.clone();
    let stream = futures::StreamExt::inspect(inner, move |chunk| {
        if let Ok(c) = chunk {
            bar_in_stream.inc(c.len() as u64);
        }
    });
    platform
        .put_object(
            bucket,
            key,
            Box::pin(stream),
            "sluice:demo",
            PutOptions::default(),
        )
        .await
        .with_context(|| format!("uploading {}", file.display()))?;
    bar.finish();
    Ok(())
}

/// Runs the demo.
pub async fn run(rows: usize, dir: Option<PathBuf>, seed: u64) -> Result<()> {
    let started = Instant::now();
    let workspace = match dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("sluice-demo-")
            .tempdir()?
            .keep(),
    };
    std::fs::create_dir_all(workspace.join("models"))?;
    std::fs::create_dir_all(workspace.join("flows"))?;
    for (name, text) in PROJECT_FILES {
        std::fs::write(workspace.join(name), text)?;
    }
    let input = workspace.join("input");
    std::fs::create_dir_all(&input)?;
    let trips = input.join("yellow_tripdata_2024-01.csv");
    let zones = input.join("taxi_zone_lookup.csv");
    let spinner = ProgressBar::new_spinner().with_message(format!("generating {rows} trips"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let dirt = {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&trips)?);
        let dirt = generate_trips(&mut w, rows, seed)?;
        w.flush()?;
        let mut z = BufWriter::new(std::fs::File::create(&zones)?);
        generate_zones(&mut z)?;
        z.flush()?;
        dirt
    };
    spinner.finish_with_message(format!(
        "generated {rows} trips ({})",
        render::bytes(std::fs::metadata(&trips)?.len())
    ));

    let (project, project_dir) = load_project(&workspace.join("sluice.toml"))?;
    let data_dir = project_dir.join(&project.data_dir);
    let platform = Arc::new(Platform::open(project, project_dir, data_dir).await?);
    let _owned = platform.own_data_dir()?;
    let shutdown = CancellationToken::new();
    let pool = tokio::spawn(worker::run_pool(platform.clone(), 2, shutdown.clone()));

    upload(&platform, &zones, "raw", "reference/taxi_zone_lookup.csv").await?;
    upload(
        &platform,
        &trips,
        "raw",
        "landing/2024/01/yellow_tripdata_2024-01.csv",
    )
    .await?;

    let spinner = ProgressBar::new_spinner().with_message("running pipelines");
    spinner.enable_steady_tick(Duration::from_millis(100));
    loop {
        let c = platform.state.job_counts()?;
        if c.pending == 0 && c.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spinner.finish_with_message("pipelines finished");

    // The nightly check the project schedules at 04:00 UTC, run now. The demo's
    // data is dirtier than the workflow's default 5 % bar, on purpose: it allows 10.
    let nightly = &platform.project.workflows["nightly"];
    let execution = crate::workflows::create(
        &platform,
        &nightly.name,
        &nightly.definition,
        &serde_json::json!({"maxInvalidPct": 10}),
    )?;
    let id = execution.id.clone();
    crate::workflows::run(platform.clone(), execution).await?;
    let nightly_run = platform.executions.get_execution(&id)?;
    shutdown.cancel();
    let _ = pool.await;
    platform.tables.settle().await;

    println!();
    let runs = platform.state.list_runs(100)?;
    // The attempt that ingested the file (a retry of a later step shows zero rows).
    let taxi = runs
        .iter()
        .filter(|r| r.pipeline == "taxi")
        .max_by_key(|r| (r.rows_in, r.started_at));
    if let Some(r) = taxi {
        println!(
            "taxi run {}: {} in {:.2}s",
            &r.id.to_string()[..13],
            r.status.as_str(),
            r.finished_at
                .map(|f| (f - r.started_at).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(0.0)
        );
        println!("  rows in        {:>9}", r.rows_in);
        println!("  valid          {:>9}", r.rows_valid);
        println!("  quarantined    {:>9}", r.rows_quarantined);
        if let Some(steps) = r.detail["steps"].as_array() {
            for step in steps.iter().filter(|s| s["step"] == "ingest") {
                if let Some(reasons) = step["quarantine_reasons"].as_object() {
                    for (reason, n) in reasons {
                        println!("    {n:>9}  {reason}");
                    }
                }
                if let Some(parts) = step["partitions"].as_array() {
                    println!("  partitions     {:>9}  (year/month/date)", parts.len());
                }
            }
        }
        if let Some(e) = &r.error {
            println!("  error: {e}");
        }
    }
    println!(
        "  dirt generated: {}",
        dirt.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dead = platform.state.job_counts()?.dead;
    if dead > 0 {
        println!("  {dead} job(s) in the dead-letter queue: `sluice dlq list`");
    }

    println!(
        "\nnightly workflow ({}): {}",
        nightly.file,
        nightly_run.status.as_str()
    );
    match &nightly_run.output {
        Some(output) => {
            let output: serde_json::Value = serde_json::from_str(output)?;
            println!(
                "  {} partitions summarized two at a time, gold refreshed, completion event published",
                output["partitions"]
            );
        }
        None => println!(
            "  {}: {}",
            nightly_run.error.as_deref().unwrap_or_default(),
            nightly_run.cause.as_deref().unwrap_or_default()
        ),
    }

    let session = platform.session().await?;
    println!("\ngold.daily_revenue (first 7 days):");
    let r = session
        .query("SELECT * FROM gold.daily_revenue ORDER BY date LIMIT 7")
        .await?;
    println!("{}", render::render(&r.schema, &r.batches, Format::Table));
    println!("\ngold.zone_revenue (top 5):");
    let r = session
        .query("SELECT * FROM gold.zone_revenue ORDER BY trips DESC, zone LIMIT 5")
        .await?;
    println!("{}", render::render(&r.schema, &r.batches, Format::Table));

    println!("\nworkspace: {}", workspace.display());
    println!("done in {:.1}s. Try:", started.elapsed().as_secs_f64());
    let p = workspace.join("sluice.toml");
    println!("  sluice -p {} runs", p.display());
    println!("  sluice -p {} execution show {}", p.display(), &id[..13]);
    println!("  sluice -p {} quarantine show trips", p.display());
    println!(
        "  sluice -p {} query \"SELECT pickup_day_of_week, count(*) FROM silver.trips GROUP BY 1 ORDER BY 2 DESC\"",
        p.display()
    );
    Ok(())
}
