//! The end-to-end suite: real `sluice` processes on free ports in temp dirs, driven over HTTP
//! and the CLI, with DuckDB (Python, from PyPI) as the independent oracle.

mod bench;
mod cli;
mod compaction;
mod read_after_write;
mod routing;
mod rules;
mod s3;
mod schedule;
mod spine;
mod support;
mod tail;
mod taxi;
mod workflow;
