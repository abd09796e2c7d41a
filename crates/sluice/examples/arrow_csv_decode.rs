//! A benchmark yardstick, not a product: how fast arrow-csv alone decodes a CSV file here.
//!
//! Every column is decoded as text (no casts, no checks, nothing written), in 64 Ki-row
//! batches, on one thread: the floor under any ingest that has to tokenize the file.
//! `bench/run` reports sluice's ingest speed as a fraction of this.
//!
//! usage: cargo run --release -p sluice --example arrow_csv_decode -- FILE.csv
//! prints: {"bytes": N, "rows": N, "seconds": S, "mb_per_s": X}

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use arrow::csv::ReaderBuilder;
use arrow::datatypes::{DataType, Field, Schema};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: arrow_csv_decode FILE.csv")?;
    let bytes = std::fs::metadata(&path)?.len();
    let header = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(File::open(&path)?).read_line(&mut line)?;
        line
    };
    let schema = Arc::new(Schema::new(
        header
            .trim_end()
            .split(',')
            .map(|name| Field::new(name.trim_matches('"'), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let start = Instant::now();
    let reader = ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(65_536)
        .build(File::open(&path)?)?;
    let mut rows = 0usize;
    for batch in reader {
        rows += batch?.num_rows();
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {bytes}, \"rows\": {rows}, \"seconds\": {seconds:.3}, \"mb_per_s\": {:.1}}}",
        bytes as f64 / 1e6 / seconds
    );
    Ok(())
}
