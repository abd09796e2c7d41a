//! A batch ingested behind a readiness gate (a bronze copy's fsyncs): its objects are read
//! while the gate runs, and nothing of the batch is durable or visible before it holds.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use sluice_lake::ingest::{self, Outcome, Source, Target};
use sluice_lake::objects::{BodyChecks, Objects};
use sluice_lake::validate::CompiledContract;
use sluice_lake::{Error, LakePaths, delta, tail};
use sluice_model::config::Format;
use sluice_model::contract::{Column, ColumnType, Contract};
use sluice_model::event::ObjectRef;
use sluice_model::key::{BucketName, ObjectKey};

const TABLE: &str = "people";
const LOCATION: &str = "silver/people";

fn column(name: &str, ty: ColumnType) -> Column {
    Column {
        nullable: false,
        optional: false,
        ..Column::new(name, ty)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    paths: LakePaths,
    objects: Objects,
    tables: delta::TableCache,
    compiled: Arc<CompiledContract>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let contract = Contract {
            columns: vec![
                column("id", ColumnType::Int),
                column("name", ColumnType::String),
            ],
            derived: vec![],
            checks: vec![],
            unique: vec![],
            key_fields: None,
        };
        let compiled = CompiledContract::compile(&contract, &Format::default()).unwrap();
        let tables = delta::TableCache::default();
        tables.own_tails();
        Setup {
            paths: LakePaths::new(dir.path()),
            objects: Objects::open_local(dir.path()).unwrap(),
            tables,
            compiled: Arc::new(compiled),
            _dir: dir,
        }
    }

    fn target(&self, tail: bool) -> Target<'_> {
        Target {
            table: TABLE,
            location: LOCATION,
            partition_by: &[],
            description: None,
            compiled: &self.compiled,
            max_invalid_pct: 100.0,
            batch_rows: 1024,
            tables: &self.tables,
            tail,
        }
    }

    async fn put(&self, key: &str, body: &str) -> ObjectRef {
        let chunks =
            futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body.to_string()))]);
        self.objects
            .put_stream(
                &BucketName::parse("raw").unwrap(),
                &ObjectKey::parse(key).unwrap(),
                chunks,
                &BodyChecks::default(),
            )
            .await
            .unwrap()
            .object
    }

    /// Rows waiting in the table's and the quarantine's tails.
    fn tail_rows(&self) -> (usize, usize) {
        let rows = |location| {
            tail::stats(&self.tables, &self.paths, location)
                .unwrap()
                .map_or(0, |s| s.rows)
        };
        (rows(LOCATION), rows(LakePaths::QUARANTINE))
    }

    /// The table's Delta version and the Parquet files under its directory.
    async fn committed(&self) -> (Option<i64>, usize) {
        let url = self.paths.url(LOCATION).unwrap();
        let version = self
            .tables
            .latest(TABLE, url.clone())
            .await
            .unwrap()
            .and_then(|t| t.version())
            .map(|v| v as i64);
        let files = common::parquet_files_under(&url.to_file_path().unwrap()).len();
        (version, files)
    }
}

const BODY: &str = "id,name\n1,ada\n2,grace\nnot a number,alan\n";

fn source(object: &ObjectRef, event_seq: i64) -> Source<'_> {
    Source {
        object,
        event_seq,
        run_id: uuid::Uuid::new_v4(),
    }
}

/// What the gate saw when it was about to answer: the tails' rows and the commits.
type Seen = Arc<std::sync::Mutex<Option<((usize, usize), (Option<i64>, usize))>>>;

/// A gate that lets the reads finish first (they take far less than its wait), records
/// what is durable or visible by then, and answers `answer`.
async fn gate(setup: &Setup, seen: Seen, answer: Result<(), Error>) -> Result<(), Error> {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let state = (setup.tail_rows(), setup.committed().await);
    *seen.lock().unwrap() = Some(state);
    answer
}

/// Ingests `sources` behind a [`gate`] answering `answer`: the outcome, and what was
/// durable or visible when the gate answered.
async fn ingest_gated(
    setup: &Setup,
    target: &Target<'_>,
    sources: &[Source<'_>],
    answer: Result<(), Error>,
) -> (
    Result<Vec<Result<ingest::IngestReport, Error>>, Error>,
    ((usize, usize), (Option<i64>, usize)),
) {
    let seen = Seen::default();
    let result = ingest::ingest_batch_when(
        &setup.paths,
        &setup.objects,
        target,
        sources,
        gate(setup, seen.clone(), answer),
    )
    .await;
    let at_gate = seen.lock().unwrap().take().expect("the gate ran");
    (result, at_gate)
}

#[tokio::test]
async fn a_small_batch_is_logged_only_once_its_gate_holds_and_not_at_all_when_it_fails() {
    let setup = Setup::new();
    let a = setup.put("a.csv", BODY).await;
    let b = setup.put("b.csv", "id,name\n3,edsger\n").await;
    let target = setup.target(true);
    let sources = [source(&a, 1), source(&b, 2)];

    let refused = Error::Busy("the copies are not durable".into());
    let (failed, at_gate) = ingest_gated(&setup, &target, &sources, Err(refused)).await;
    let failed = failed.unwrap_err();
    assert!(failed.to_string().contains("not durable"), "{failed}");
    assert_eq!(at_gate.0, (0, 0), "rows logged before the gate held");
    assert_eq!(
        setup.tail_rows(),
        (0, 0),
        "a failed gate left rows in a tail"
    );
    // Nothing was committed either: the table is as it was created.
    let (version, files) = setup.committed().await;
    assert!(
        version.unwrap_or(0) <= 0 && files == 0,
        "{version:?} {files}"
    );

    // The retry, its gate holding, logs each object's rows once.
    let (reports, at_gate) = ingest_gated(&setup, &target, &sources, Ok(())).await;
    assert_eq!(at_gate.0, (0, 0));
    let reports = reports.unwrap();
    let reports: Vec<_> = reports.into_iter().map(Result::unwrap).collect();
    assert!(
        reports
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Logged { .. })),
        "{reports:?}"
    );
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.rows_valid, r.rows_quarantined))
            .collect::<Vec<_>>(),
        [(2, 1), (1, 0)]
    );
    assert_eq!(setup.tail_rows(), (3, 1));
}

#[tokio::test]
async fn a_committed_ingest_waits_for_its_gate_and_leaves_no_files_when_it_fails() {
    let setup = Setup::new();
    let a = setup.put("a.csv", BODY).await;
    // Without a tail, an ingest commits to Delta: its files are written while it reads.
    let target = setup.target(false);
    let sources = [source(&a, 1)];
    let refused = Error::Busy("not durable".into());
    let (failed, at_gate) = ingest_gated(&setup, &target, &sources, Err(refused)).await;
    assert!(failed.is_err());
    let (version, _) = at_gate.1;
    assert!(version.unwrap_or(0) <= 0, "committed before the gate held");
    let (version, files) = setup.committed().await;
    assert!(
        version.unwrap_or(0) <= 0 && files == 0,
        "a failed gate left version {version:?}, {files} files"
    );

    let (reports, at_gate) = ingest_gated(&setup, &target, &sources, Ok(())).await;
    let reports = reports.unwrap();
    let (version_at_gate, _) = at_gate.1;
    assert!(version_at_gate.unwrap_or(0) <= 0);
    let report = reports.into_iter().next().unwrap().unwrap();
    assert!(
        matches!(report.outcome, Outcome::Applied { .. }),
        "{report:?}"
    );
    assert_eq!((report.rows_valid, report.rows_quarantined), (2, 1));
    let (version, files) = setup.committed().await;
    assert!(
        version.unwrap_or(0) >= 1 && files >= 1,
        "{version:?} {files}"
    );
}
