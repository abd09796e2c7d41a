//! Read after write: a query sees the rows of every small object acknowledged before it,
//! without polling, and never waits on a job that failed.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

/// The taxi project whose queries wait up to `bound` for earlier uploads.
fn project_waiting(bound: &str, extra: &str) -> tempfile::TempDir {
    taxi_project(|t| {
        t.replace(
            "[server]\n",
            &format!("[server]\nread_after_write = \"{bound}\"\n"),
        ) + extra
    })
}

/// Rows of `object` in silver and in quarantine, in one query.
fn rows_of(server: &Server, object: &str) -> (i64, i64) {
    let row = &server.query(&format!(
        "SELECT (SELECT count(*) FROM silver.trips WHERE _source_object = '{object}') AS v, \
                (SELECT count(*) FROM sluice.quarantine WHERE source_object = '{object}') AS q"
    ))[0];
    (as_i64(&row["v"]), as_i64(&row["q"]))
}

/// Valid rows of `object`, by a query that reads its rows alone (and so waits for its
/// writes alone).
fn valid_rows_of(server: &Server, object: &str) -> i64 {
    let sql = format!("SELECT count(*) AS n FROM silver.trips WHERE _source_object = '{object}'");
    as_i64(&server.query(&sql)[0]["n"])
}

#[test]
fn the_first_query_after_an_upload_sees_every_row_of_it() {
    // The bound is far above any ingest here, so the answer cannot depend on timing.
    let project = project_waiting("60s", "");
    let files: Vec<PathBuf> = (0..6)
        .map(|i| generate(project.path(), &format!("t{i}.csv"), 400, 60 + i))
        .collect();
    let server = Server::start(project.path());
    // Before any upload both tables answer, with no rows.
    assert_eq!(rows_of(&server, "raw/landing/2024/01/none.csv"), (0, 0));

    // One writer: upload, then ask once.
    for (i, file) in files.iter().enumerate().take(3) {
        let key = format!("landing/2024/01/one-{i}.csv");
        server.put_file("raw", &key, file);
        let (valid, quarantined) = rows_of(&server, &format!("raw/{key}"));
        assert_eq!(valid + quarantined, 400, "{key}: {valid} + {quarantined}");
        assert!(valid > 300, "{key}: {valid}");
    }

    // Three writers at once: their objects are ingested in shared batches, and each
    // writer's first query still sees its own object whole, whether it asks about its
    // object alone (waiting for that object's write alone) or about the whole lake.
    std::thread::scope(|s| {
        for (i, file) in files.iter().enumerate().skip(3) {
            let server = &server;
            s.spawn(move || {
                let key = format!("landing/2024/01/many-{i}.csv");
                server.put_file("raw", &key, file);
                let alone = valid_rows_of(server, &format!("raw/{key}"));
                let (valid, quarantined) = rows_of(server, &format!("raw/{key}"));
                assert_eq!(valid + quarantined, 400, "{key}: {valid} + {quarantined}");
                assert_eq!(
                    alone, valid,
                    "{key}: its own query saw {alone} of {valid} rows"
                );
            });
        }
    });

    // A removal is a write too: the next query no longer sees the object's rows.
    server.delete("raw", "landing/2024/01/one-1.csv");
    assert_eq!(valid_rows_of(&server, "raw/landing/2024/01/one-1.csv"), 0);
    server.delete("raw", "landing/2024/01/one-0.csv");
    assert_eq!(
        rows_of(&server, "raw/landing/2024/01/one-0.csv"),
        (0, 0),
        "{:#?}",
        server.runs()
    );
}

#[test]
fn a_query_does_not_wait_out_a_failed_jobs_retry() {
    // A pipeline that fails (its model's input does not exist yet) and retries an hour
    // later; queries would wait an hour too if a retry counted as not done.
    let project = project_waiting("1h", &failing_reports_pipeline("1h", "1h"));
    let server = Server::start(project.path());
    server.put_bytes("raw", "reports/go.txt", b"go");
    // A liveness bound, not a timing claim: the query must come back at all.
    let sql =
        "SELECT count(*) AS n FROM sluice.runs WHERE pipeline = 'reports' AND status = 'failed'";
    let mut resp = ureq::post(&format!("{}/v1/query", server.base))
        .config()
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .send_json(serde_json::json!({ "sql": sql }))
        .expect("the query is still waiting for a job that failed and waits for its retry");
    let body: serde_json::Value = resp.body_mut().read_json().unwrap();
    // It waited for the first attempt to end, and saw it.
    assert_eq!(as_i64(&body["rows"][0]["n"]), 1, "{body}");
    assert_eq!(server.status()["jobs"]["pending"], 1, "{}", server.status());
}
