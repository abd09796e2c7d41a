use futures::TryStreamExt;
use object_store::memory::InMemory;

use super::*;

const LOG: &str = "t/_delta_log";

/// An in-memory table log: commits 0..=12, a checkpoint at 9 (named by
/// `_last_checkpoint`), a checksum at 5, a sidecar, and files of the table beside it.
async fn store() -> Arc<InMemory> {
    let store = Arc::new(InMemory::new());
    let mut names: Vec<String> = (0..=12).map(|v| format!("{v:020}.json")).collect();
    names.push(format!("{:020}.checkpoint.parquet", 9));
    names.push(format!("{:020}.crc", 5));
    names.push("_sidecars/a.parquet".into());
    for name in names {
        put(&store, &format!("{LOG}/{name}"), b"{}").await;
    }
    put(
        &store,
        &format!("{LOG}/_last_checkpoint"),
        br#"{"version":9,"size":3}"#,
    )
    .await;
    put(&store, "t/part-0.parquet", b"rows").await;
    put(&store, "u/_delta_log/00000000000000000000.json", b"{}").await;
    store
}

async fn put(store: &InMemory, path: &str, bytes: &'static [u8]) {
    store
        .put(&Path::from(path), PutPayload::from_static(bytes))
        .await
        .unwrap();
}

async fn sorted(listing: BoxStream<'static, Result<ObjectMeta>>) -> Vec<String> {
    let mut out: Vec<String> = listing
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    out.sort();
    out
}

fn offset(version: u64) -> Path {
    Path::from(format!("{LOG}/{version:020}"))
}

/// Whether a name is one the lookups find: a commit, a single-file checkpoint, a checksum.
fn looked_up_kind(location: &str) -> bool {
    let name = location.rsplit('/').next().unwrap_or_default();
    name.len() > 21
        && name[..20].bytes().all(|b| b.is_ascii_digit())
        && ["json", "checkpoint.parquet", "crc"].contains(&&name[21..])
}

/// From every version with a commit, the lookups find what the store lists from it,
/// leaving out only what they never name (the hint, sidecars); the listings, not the
/// lookups, decide nothing else.
#[tokio::test]
async fn from_a_version_with_a_commit_lookups_find_the_logs_files_after_it() {
    let inner = store().await;
    let listing = LogListing::new(inner.clone());
    let log = Path::from(LOG);
    for version in 0..=12 {
        let store_says: Vec<String> = sorted(inner.list_with_offset(Some(&log), &offset(version)))
            .await
            .into_iter()
            .filter(|l| looked_up_kind(l))
            .collect();
        let looked_up = sorted(listing.list_with_offset(Some(&log), &offset(version))).await;
        assert_eq!(looked_up, store_says, "from version {version}");
        assert!(
            looked_up.contains(&format!("{LOG}/{version:020}.json")),
            "from version {version}: {looked_up:?}"
        );
    }
}

/// Asserts the listing from `version` is the store's own (not looked up).
async fn same(inner: &Arc<InMemory>, version: u64) {
    let log = Path::from(LOG);
    let listing = LogListing::new(inner.clone());
    let store_says = sorted(inner.list_with_offset(Some(&log), &offset(version))).await;
    let got = sorted(listing.list_with_offset(Some(&log), &offset(version))).await;
    assert!(
        got.iter().any(|l| !looked_up_kind(l)),
        "from {version}: listed by the store, not looked up: {got:?}"
    );
    assert_eq!(got, store_says, "from version {version}");
}

/// Where the lookups cannot answer for the log, the store lists it: a version without a
/// commit (past the end, or removed by a cleanup), a hint at or past the commits found, a
/// hinted checkpoint of another kind, a hint that does not read.
#[tokio::test]
async fn listings_the_lookups_cannot_answer_for_are_the_stores() {
    let inner = store().await;
    // Past the last commit.
    same(&inner, 13).await;
    // A cleanup removed the commits below the checkpoint.
    for v in 0..9 {
        inner
            .delete(&Path::from(format!("{LOG}/{v:020}.json")))
            .await
            .unwrap();
    }
    same(&inner, 3).await;
    // The hint names a version past the commits found (a cleanup after a newer
    // checkpoint ran while they were looked up).
    put(
        &inner,
        &format!("{LOG}/_last_checkpoint"),
        br#"{"version":20}"#,
    )
    .await;
    same(&inner, 10).await;
    // The hinted checkpoint is of a kind the lookups do not know (multi-part).
    put(
        &inner,
        &format!("{LOG}/_last_checkpoint"),
        br#"{"version":11,"parts":2}"#,
    )
    .await;
    for part in 1..=2 {
        let name = format!("{:020}.checkpoint.{part:010}.{:010}.parquet", 11, 2);
        put(&inner, &format!("{LOG}/{name}"), b"cp").await;
    }
    same(&inner, 10).await;
    // A hint that does not read as one.
    put(&inner, &format!("{LOG}/_last_checkpoint"), b"not json").await;
    same(&inner, 10).await;
}

/// Listings that are not a log's from a version are the store's, whatever they look like.
#[tokio::test]
async fn other_listings_are_the_stores_own() {
    let inner = store().await;
    let listing = LogListing::new(inner.clone());
    for (prefix, offset) in [
        ("t", "t/_delta_log/00000000000000000003"),
        ("t/_delta_log", "t/_delta_log/00000000000000000003.json"),
        ("t/_delta_log", "t/_delta_log/0003"),
        (
            "t/_delta_log",
            "t/_delta_log/_sidecars/00000000000000000003",
        ),
        ("u/_delta_log", "t/_delta_log/00000000000000000003"),
    ] {
        let (prefix, offset) = (Path::from(prefix), Path::from(offset));
        assert_eq!(
            sorted(listing.list_with_offset(Some(&prefix), &offset)).await,
            sorted(inner.list_with_offset(Some(&prefix), &offset)).await,
            "{prefix} from {offset}"
        );
    }
    assert_eq!(
        sorted(listing.list(None)).await,
        sorted(inner.list(None)).await
    );
}
