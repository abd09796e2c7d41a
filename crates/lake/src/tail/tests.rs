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

/// A flushed entry's slot is kept as a spare and the next entry is written over it in
/// place, cut to its own length: read back after a restart, the tail holds exactly the
/// new entry's rows and keys, and no file was made for it.
#[tokio::test]
async fn flushed_slots_are_written_over_and_read_back_as_the_new_entry() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    tail.append("t", schema(), vec![rows(0, 2000)], vec![("big".into(), 1)])
        .await
        .unwrap();
    let slot = files(&dir, SLOT);
    assert_eq!(slot.len(), 1);
    let big = std::fs::metadata(&slot[0]).unwrap().len();
    tail.prune(&tail.capture()).unwrap();
    assert!(tail.capture().is_empty());
    assert_eq!(files(&dir, SLOT), slot, "the flushed slot is kept");
    assert!(
        Tail::open(dir.clone(), false).unwrap().capture().is_empty(),
        "a flushed entry's slot reads as free"
    );

    tail.append(
        "t",
        schema(),
        vec![rows(5000, 3)],
        vec![("small".into(), 2)],
    )
    .await
    .unwrap();
    assert_eq!(files(&dir, SLOT), slot, "the spare was written over");
    let small = std::fs::metadata(&slot[0]).unwrap().len();
    assert!(
        small < big / 10,
        "cut to the new entry: {small} of {big} bytes"
    );
    // Byte for byte what the entry encodes to.
    let entry = tail.capture()[0].clone();
    assert_eq!(
        std::fs::read(&slot[0]).unwrap(),
        encode_entry(
            entry.seq,
            &schema(),
            &[rows(5000, 3)],
            &[("small".into(), 2)],
            None
        )
        .unwrap()
    );
    drop(tail);

    let reopened = Tail::open(dir.clone(), true).unwrap();
    let entries = reopened.capture();
    assert_eq!(ids(&entries), vec![5000, 5001, 5002]);
    assert_eq!(entries[0].txns, vec![("small".to_string(), 2)]);
    assert_eq!(entries[0].seq, entry.seq);
}

/// Slots are written over in whatever order they were freed, so a restart reads the
/// entries back in their sequence order, not their files'. A flushed entry's slot is
/// cleared without an fsync: one a crash left whole reads back, until the table's keys
/// drop it ([`recover`]) and its slot is free.
#[tokio::test]
async fn entries_read_back_in_sequence_order_whatever_their_slots() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    for (first, key) in [(0, "a"), (10, "b")] {
        tail.append("t", schema(), vec![rows(first, 1)], vec![(key.into(), 1)])
            .await
            .unwrap();
    }
    let first: Vec<Arc<Entry>> = tail.capture().into_iter().take(1).collect();
    tail.prune(&first).unwrap();
    // Into the first slot, after the second slot's entry.
    tail.append("t", schema(), vec![rows(20, 1)], vec![("c".into(), 1)])
        .await
        .unwrap();
    assert_eq!(files(&dir, SLOT).len(), 2);
    // b is flushed, and a crash undoes its slot's clearing (never fsync'd).
    let second: Vec<Arc<Entry>> = tail.capture().into_iter().take(1).collect();
    let b_slot = std::fs::read(&second[0].path).unwrap();
    tail.prune(&second).unwrap();
    assert_ne!(std::fs::read(&second[0].path).unwrap(), b_slot, "cleared");
    std::fs::write(&second[0].path, &b_slot).unwrap();
    drop(tail);

    let reopened = Tail::open(dir.clone(), true).unwrap();
    // b is read back, before c.
    assert_eq!(ids(&reopened.capture()), vec![10, 20]);
    let dropped = reopened
        .drop_committed(true, |e| e.txns == vec![("b".to_string(), 1)])
        .unwrap();
    assert_eq!(dropped, 1);
    assert_eq!(ids(&reopened.capture()), vec![20]);
    reopened
        .append("t", schema(), vec![rows(30, 1)], vec![("d".into(), 1)])
        .await
        .unwrap();
    assert_eq!(
        files(&dir, SLOT).len(),
        2,
        "the dropped entry's slot is reused"
    );
    assert_eq!(ids(&reopened.capture()), vec![20, 30]);
    drop(reopened);
    assert_eq!(
        ids(&Tail::open(dir, false).unwrap().capture()),
        vec![20, 30]
    );
}

/// A slot a crash left half-written (its checksum fails), empty or cleared holds no entry:
/// it reads as free and the next append writes over it. Files of sluice before slots are
/// taken care of: entries (`<seq>.arrow`) read back and deleted once flushed, `.tmp` and
/// `.spare` files deleted.
#[tokio::test]
async fn torn_slots_read_as_free_and_entries_of_before_slots_read_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    for (first, key) in [(0, "a"), (10, "b"), (20, "c")] {
        tail.append("t", schema(), vec![rows(first, 50)], vec![(key.into(), 1)])
            .await
            .unwrap();
    }
    drop(tail);
    let slots = files(&dir, SLOT);
    assert_eq!(slots.len(), 3);
    // One byte of a's rows flipped, b cut short, c's header cleared.
    let mut torn = std::fs::read(&slots[0]).unwrap();
    let middle = torn.len() / 2;
    torn[middle] ^= 0x01;
    std::fs::write(&slots[0], &torn).unwrap();
    let cut = std::fs::read(&slots[1]).unwrap();
    std::fs::write(&slots[1], &cut[..cut.len() - 100]).unwrap();
    clear_slot(&slots[2], true).unwrap();
    // An entry of sluice before slots, and its leftovers.
    let legacy = dir.join("00000000000000000007.arrow");
    {
        let file = std::fs::File::create(&legacy).unwrap();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &schema()).unwrap();
        writer.write_metadata(TXNS_KEY, r#"[["old",3]]"#.to_string());
        writer.write(&rows(70, 2)).unwrap();
        writer.finish().unwrap();
    }
    std::fs::write(dir.join("00000000000000000008.arrow.tmp"), b"half").unwrap();
    std::fs::write(dir.join("00000000000000000000.spare"), b"spare").unwrap();

    let reopened = Tail::open(dir.clone(), true).unwrap();
    let entries = reopened.capture();
    assert_eq!(ids(&entries), vec![70, 71]);
    assert_eq!(entries[0].txns, vec![("old".to_string(), 3)]);
    assert!(files(&dir, ".tmp").is_empty() && files(&dir, ".spare").is_empty());
    // The three torn slots are written over before any file is made.
    for (i, key) in ["d", "e", "f"].into_iter().enumerate() {
        reopened
            .append(
                "t",
                schema(),
                vec![rows(100 + i as i64, 1)],
                vec![(key.into(), 1)],
            )
            .await
            .unwrap();
    }
    assert_eq!(files(&dir, SLOT), slots);
    // Flushed, the old entry's file goes; the sequence went on after it.
    assert!(entries[0].seq < reopened.capture()[1].seq);
    reopened.prune(&entries).unwrap();
    assert!(!legacy.exists());
    assert_eq!(ids(&reopened.capture()), vec![100, 101, 102]);
}

/// Past [`MAX_SPARES`] a flushed entry's slot is deleted: a burst does not leave its
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
    assert_eq!(files(&dir, SLOT).len(), burst);
    tail.prune(&tail.capture()).unwrap();
    assert_eq!(files(&dir, SLOT).len(), MAX_SPARES);
    assert_eq!(tail.spares.lock().unwrap().len(), MAX_SPARES);
}

/// A staged entry is encoded, not written: queries do not see it and its slot holds
/// nothing until it is published; dropping it frees its slot and the tail for the next
/// append.
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
    assert!(!dir.exists(), "nothing written before its publish");
    let seq = staged.publish().await.unwrap();
    assert_eq!(ids(&tail.capture()), vec![0, 1, 2]);
    assert_eq!(tail.capture()[0].seq, seq);
    assert_eq!(files(&dir, SLOT).len(), 1);
    tail.prune(&tail.capture()).unwrap();

    // Dropped: the spare it took is free again, and the next append is not held up.
    let dropped = tail
        .stage("t", schema(), vec![rows(10, 2)], vec![("b".into(), 1)])
        .await
        .unwrap();
    drop(dropped);
    tail.append("t", schema(), vec![rows(20, 1)], vec![("b".into(), 1)])
        .await
        .unwrap();
    assert_eq!(ids(&tail.capture()), vec![20]);
    assert_eq!(
        files(&dir, SLOT).len(),
        1,
        "the dropped stage's spare was reused"
    );
    drop(tail);
    assert_eq!(ids(&Tail::open(dir, true).unwrap().capture()), vec![20]);
}

/// A reader beside a serving process of sluice before slots checks, after reading an
/// entry file, that it is still the one at the entry's path: a file flushed and written
/// over meanwhile (renamed away, another in its place or none) is not taken for the entry.
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

/// An entry written but dropped unpublished (the other entry of its batch failed) is
/// not in the tail, and its slot is cleared: a restart does not read it back, and the
/// next append reuses the slot. An entry's needs are read back with it.
#[tokio::test]
async fn a_written_entry_dropped_unpublished_is_not_read_back() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(DIR);
    let tail = Tail::open(dir.clone(), true).unwrap();
    let needs = Needs {
        table: "../../sluice/quarantine/".into(),
        txns: vec![("q-a".into(), 3)],
    };

    let written = tail
        .stage_needing(
            "t",
            schema(),
            vec![rows(0, 3)],
            vec![("a".into(), 3)],
            Some(needs.clone()),
        )
        .await
        .unwrap()
        .write()
        .await
        .unwrap();
    assert_eq!(files(&dir, SLOT).len(), 1, "written before it is published");
    assert!(tail.capture().is_empty(), "not visible before its publish");
    drop(written);
    assert!(tail.capture().is_empty());
    assert!(
        Tail::open(dir.clone(), false).unwrap().capture().is_empty(),
        "its slot was cleared"
    );

    let seq = tail
        .stage_needing(
            "t",
            schema(),
            vec![rows(10, 2)],
            vec![("a".into(), 4)],
            Some(needs.clone()),
        )
        .await
        .unwrap()
        .write()
        .await
        .unwrap()
        .publish();
    assert_eq!(ids(&tail.capture()), vec![10, 11]);
    assert_eq!(files(&dir, SLOT).len(), 1, "the cleared slot was reused");
    drop(tail);
    let reopened = Tail::open(dir, true).unwrap().capture();
    assert_eq!(ids(&reopened), vec![10, 11]);
    assert_eq!(reopened[0].seq, seq);
    assert_eq!(reopened[0].needs, Some(needs));
}

/// A read that opens while a flush is committing (the flush's log entry written, its
/// outcome not yet known) is decided by the table's `txn`s at the read's version, without
/// waiting for the flush: an entry whose keys the version holds is in the snapshot, one
/// whose keys it does not is still the tail's. Without `txn`s the read waits, and the
/// outcome, once known, decides alone.
#[tokio::test]
async fn a_read_opened_while_a_flush_commits_is_decided_by_the_tables_txns() {
    let root = tempfile::tempdir().unwrap();
    let tail = Tail::open(root.path().join(DIR), true).unwrap();
    tail.append("t", schema(), vec![rows(0, 2)], vec![("a".into(), 5)])
        .await
        .unwrap();
    tail.append("t", schema(), vec![rows(10, 1)], vec![("b".into(), 7)])
        .await
        .unwrap();
    let (outcome, _) = watch::channel(None);
    let mark = Arc::new(FlushMark { base: 3, outcome });
    for entry in tail.capture() {
        entry.set_mark(Some(mark.clone()));
    }
    let captured = tail.capture();
    assert!(
        Tail::undecided(&captured, 3).is_empty(),
        "at the base: not flushed"
    );
    assert_eq!(Tail::undecided(&captured, 4), vec!["a", "b"]);

    let decided = |txns: &[(&str, i64)]| {
        let txns: HashMap<String, i64> = txns.iter().map(|(a, v)| (a.to_string(), *v)).collect();
        let captured = captured.clone();
        async move {
            let visible = tokio::time::timeout(
                Duration::from_secs(30),
                Tail::visible(captured, 4, Some(&txns)),
            )
            .await
            .expect("decided without waiting for the flush");
            ids(&visible)
        }
    };
    assert_eq!(decided(&[("a", 5), ("b", 7)]).await, Vec::<i64>::new());
    assert_eq!(decided(&[("a", 5), ("b", 6)]).await, vec![10]);
    assert_eq!(
        decided(&[("a", 9)]).await,
        vec![10],
        "a later version holds it too"
    );
    assert_eq!(decided(&[]).await, vec![0, 1, 10]);

    // Without txns the read waits for the outcome, which then decides.
    let waiting = tokio::spawn(Tail::visible(captured.clone(), 4, None));
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "waits while the flush commits");
    mark.outcome.send_replace(Some(Some(4)));
    assert!(waiting.await.unwrap().is_empty());
    assert_eq!(
        ids(&Tail::visible(captured.clone(), 3, None).await),
        vec![0, 1, 10]
    );
    assert!(
        Tail::visible(captured, 5, Some(&HashMap::new()))
            .await
            .is_empty(),
        "a known outcome wins over txns"
    );
}

/// An entry encoded into a spare that held a larger entry (and garbage past it) is the
/// entry alone: byte for byte a fresh buffer's encoding, read back with its own rows and
/// keys.
#[test]
fn an_entry_encoded_into_a_used_buffer_is_byte_for_byte_a_fresh_ones() {
    let big = encode_entry(1, &schema(), &[rows(0, 2000)], &[("big".into(), 1)], None).unwrap();
    let mut used = big.clone();
    used.extend(std::iter::repeat_n(0xAB, 4096));
    let txns = [("small".to_string(), 2)];
    let small = encode_entry_into(used, 2, &schema(), &[rows(5000, 3)], &txns, None).unwrap();
    let fresh = encode_entry_into(Vec::new(), 2, &schema(), &[rows(5000, 3)], &txns, None).unwrap();
    assert_eq!(small, fresh);
    assert!(small.len() < big.len() / 10);

    let (seq, body) = slot_entry(&small).expect("a whole entry");
    assert_eq!(seq, 2);
    let entry = parse_entry(Path::new("slot"), std::io::Cursor::new(body), seq).unwrap();
    assert_eq!(entry.txns, txns.to_vec());
    assert_eq!(ids(&[Arc::new(entry)]), vec![5000, 5001, 5002]);
}
