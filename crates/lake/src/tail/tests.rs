use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("note", DataType::Utf8, false),
    ]))
}

/// `rows` rows numbered from `first`, each with a note long enough that row counts show
/// in file sizes.
fn rows(first: i64, rows: i64) -> RecordBatch {
    let ids: Vec<i64> = (first..first + rows).collect();
    let notes: Vec<String> = ids
        .iter()
        .map(|i| format!("row {i} {}", "x".repeat(64)))
        .collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(notes)),
        ],
    )
    .unwrap()
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn ids(entries: &[Arc<Entry>]) -> Vec<i64> {
    entries
        .iter()
        .flat_map(|e| e.batches().iter())
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

/// A flushed entry's file is kept as a spare and the next entry is written over it, cut
/// to its own length: read back after a restart, the tail holds exactly the new entry's
/// rows and keys, and the spare files left on disk are taken up again, not read as rows.
#[tokio::test]
async fn flushed_entry_files_are_written_over_and_read_back_as_the_new_entry() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    tail.append("t", schema(), vec![rows(0, 2000)], vec![("big".into(), 1)])
        .await
        .unwrap();
    let big = std::fs::metadata(&files(&dir, ".arrow")[0]).unwrap().len();
    tail.prune(&tail.capture()).unwrap();
    assert!(files(&dir, ".arrow").is_empty());
    assert_eq!(
        files(&dir, SPARE).len(),
        1,
        "the flushed file is kept as a spare"
    );

    tail.append(
        "t",
        schema(),
        vec![rows(5000, 3)],
        vec![("small".into(), 2)],
    )
    .await
    .unwrap();
    assert!(files(&dir, SPARE).is_empty(), "the spare was written over");
    let entry = &files(&dir, ".arrow")[0];
    let small = std::fs::metadata(entry).unwrap().len();
    assert!(
        small < big / 10,
        "cut to the new entry: {small} of {big} bytes"
    );
    // Byte for byte what a new file holds.
    let fresh_dir = root.path().join("fresh");
    write_entry(
        &fresh_dir,
        &fresh_dir.join("x.arrow"),
        None,
        &schema(),
        &[rows(5000, 3)],
        &[("small".into(), 2)],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(entry).unwrap(),
        std::fs::read(fresh_dir.join("x.arrow")).unwrap()
    );

    // One more flushed entry and a spare half-taken by a crash (renamed to `.tmp`).
    tail.append(
        "t",
        schema(),
        vec![rows(7000, 5)],
        vec![("other".into(), 3)],
    )
    .await
    .unwrap();
    let flushed: Vec<Arc<Entry>> = tail.capture().into_iter().skip(1).collect();
    tail.prune(&flushed).unwrap();
    std::fs::write(dir.join("00000000000000000099.arrow.tmp"), b"half").unwrap();
    drop(tail);

    let reopened = Tail::open(dir.clone(), true).unwrap();
    let entries = reopened.capture();
    assert_eq!(ids(&entries), vec![5000, 5001, 5002]);
    assert_eq!(entries[0].txns, vec![("small".to_string(), 2)]);
    assert!(
        files(&dir, ".tmp").is_empty(),
        "the half-written file is deleted"
    );
    // The spare is taken up again: the next append leaves none on disk.
    reopened
        .append("t", schema(), vec![rows(9000, 1)], vec![("next".into(), 4)])
        .await
        .unwrap();
    assert!(files(&dir, SPARE).is_empty());
    assert_eq!(ids(&reopened.capture()), vec![5000, 5001, 5002, 9000]);
}

/// Past [`MAX_SPARES`] a flushed entry's file is deleted: a burst does not leave its
/// size on disk for good.
#[tokio::test]
async fn spares_are_bounded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    let burst = MAX_SPARES + 5;
    for i in 0..burst {
        tail.append(
            "t",
            schema(),
            vec![rows(i as i64, 1)],
            vec![(format!("o{i}"), 1)],
        )
        .await
        .unwrap();
    }
    assert_eq!(files(&dir, ".arrow").len(), burst);
    tail.prune(&tail.capture()).unwrap();
    assert!(files(&dir, ".arrow").is_empty());
    assert_eq!(files(&dir, SPARE).len(), MAX_SPARES);
}

/// A reader beside the serving process checks, after reading an entry, that its file is
/// still the one at the entry's path: a file flushed and written over meanwhile (renamed
/// away, another in its place or none) is not taken for the entry.
#[test]
fn a_file_moved_away_while_read_is_not_still_at_its_path() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("00000000000000000001.arrow");
    std::fs::write(&path, b"entry").unwrap();
    let opened = std::fs::File::open(&path).unwrap().metadata().unwrap();
    assert!(still_at(&path, &opened).unwrap());
    std::fs::rename(&path, root.path().join("00000000000000000000.spare")).unwrap();
    assert!(!still_at(&path, &opened).unwrap(), "renamed away");
    std::fs::write(&path, b"another").unwrap();
    assert!(
        !still_at(&path, &opened).unwrap(),
        "another file in its place"
    );
}

/// A staged entry is durable on disk but not in the tail: queries do not see it until it
/// is published, dropping it deletes its file and frees the tail for the next append, and
/// a restart that finds one (a crash before its publish, never acknowledged) deletes it
/// instead of reading its rows.
#[tokio::test]
async fn a_staged_entry_is_in_the_tail_only_once_published() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();

    let staged = tail
        .stage("t", schema(), vec![rows(0, 3)], vec![("a".into(), 1)])
        .await
        .unwrap();
    assert!(tail.capture().is_empty(), "not visible before its publish");
    assert_eq!(files(&dir, ".tmp").len(), 1);
    assert!(files(&dir, ".arrow").is_empty());
    let seq = staged.publish().await.unwrap();
    assert_eq!(ids(&tail.capture()), vec![0, 1, 2]);
    assert_eq!(tail.capture()[0].seq, seq);
    assert!(files(&dir, ".tmp").is_empty());

    // Dropped: its file goes, and the next append is not held up by it.
    let dropped = tail
        .stage("t", schema(), vec![rows(10, 2)], vec![("b".into(), 1)])
        .await
        .unwrap();
    drop(dropped);
    assert!(
        files(&dir, ".tmp").is_empty(),
        "a dropped stage's file is deleted"
    );
    tail.append("t", schema(), vec![rows(20, 1)], vec![("b".into(), 1)])
        .await
        .unwrap();
    assert_eq!(ids(&tail.capture()), vec![0, 1, 2, 20]);

    // A crash between the write and the publish leaves the staged file behind.
    let crashed = tail
        .stage("t", schema(), vec![rows(30, 4)], vec![("c".into(), 1)])
        .await
        .unwrap();
    std::mem::forget(crashed);
    assert_eq!(files(&dir, ".tmp").len(), 1);
    let reopened = Tail::open(dir.clone(), true).unwrap();
    assert_eq!(ids(&reopened.capture()), vec![0, 1, 2, 20]);
    assert!(
        files(&dir, ".tmp").is_empty(),
        "the unpublished entry is deleted"
    );
}
