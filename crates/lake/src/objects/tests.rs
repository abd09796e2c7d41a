use super::*;
use md5::Md5;

fn names(bucket: &str, key: &str) -> (BucketName, ObjectKey) {
    (
        BucketName::parse(bucket).unwrap(),
        ObjectKey::parse(key).unwrap(),
    )
}

fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parts of uneven sizes and contents, larger than one copy chunk.
fn parts() -> Vec<Vec<u8>> {
    vec![
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect(),
        b"middle part".to_vec(),
        (0..1_500_000u32).map(|i| (i % 13) as u8).collect(),
    ]
}

fn no_slots_recorded() -> Option<Vec<u32>> {
    Some(Vec::new())
}

/// Part `number` of `upload`, its length undeclared (so it gets a file of its own).
fn part_of(upload: &str, number: u32) -> PartTarget<'_> {
    PartTarget {
        upload_id: upload,
        number,
        declared_len: None,
        recorded_slots: &no_slots_recorded,
    }
}

async fn read_all(objects: &Objects, bucket: &BucketName, key: &ObjectKey) -> Vec<u8> {
    objects.get_bytes(bucket, key).await.unwrap().to_vec()
}

#[tokio::test]
async fn an_assembled_object_has_its_parts_bytes_the_composite_hash_and_the_stores_version() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "deep/dir/big.bin");
    let parts = parts();
    let mut refs = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        // The first part's SHA-256 comes verified from the transport; the others are hashed here.
        let checks = BodyChecks {
            verified_sha256: (i == 0).then(|| sha(part)),
            expected_md5: None,
        };
        let stored = objects
            .put_part(
                &part_of("up1", i as u32 + 1),
                body(vec![part.clone()]),
                &checks,
            )
            .await
            .unwrap();
        assert_eq!(stored.size, part.len() as u64);
        assert_eq!(stored.sha256, sha(part), "part {}", i + 1);
        assert_eq!(stored.md5, hex::encode(Md5::digest(part)));
        refs.push(PartRef {
            number: i as u32 + 1,
            sha256: stored.sha256,
            size: stored.size,
            offset: stored.offset,
        });
    }
    let stored = objects.assemble(&bucket, &key, "up1", &refs).await.unwrap();

    let whole: Vec<u8> = parts.concat();
    assert_eq!(read_all(&objects, &bucket, &key).await, whole);
    assert_eq!(stored.object.size, whole.len() as u64);
    let mut outer = Sha256::new();
    for part in &parts {
        outer.update(Sha256::digest(part));
    }
    assert_eq!(
        stored.object.sha256,
        format!("{}-3", hex::encode(outer.finalize()))
    );
    // The version taken before the rename is the one the store reports for the object, so
    // readers can trust the bytes they open without hashing them.
    let head = objects.version(&bucket, &key).await.unwrap();
    assert_eq!(head.as_deref(), Some(stored.object.version.as_str()));
    let opened = objects.open_read(&bucket, &key).await.unwrap();
    assert_eq!(opened.e_tag(), Some(stored.object.version.as_str()));
    // No staging file is left beside the object, and listings show the object alone.
    let listed = objects.list(&bucket, "").await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
        ["deep/dir/big.bin"]
    );
    let siblings = std::fs::read_dir(dir.path().join("objects/raw/deep/dir"))
        .unwrap()
        .count();
    assert_eq!(siblings, 1);
}

#[tokio::test]
async fn parts_stored_without_a_hash_are_hashed_at_completion_to_the_same_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "a.bin");
    let parts = parts();
    let mut known = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let stored = objects
            .put_part(
                &part_of("up2", i as u32 + 1),
                body(vec![part.clone()]),
                &BodyChecks::default(),
            )
            .await
            .unwrap();
        known.push(PartRef {
            number: i as u32 + 1,
            sha256: stored.sha256,
            size: stored.size,
            offset: stored.offset,
        });
    }
    let legacy: Vec<PartRef> = known
        .iter()
        .map(|p| PartRef {
            sha256: String::new(),
            ..p.clone()
        })
        .collect();
    let first = objects
        .assemble(&bucket, &key, "up2", &known)
        .await
        .unwrap();
    let second = objects
        .assemble(&bucket, &key, "up2", &legacy)
        .await
        .unwrap();
    assert_eq!(first.object.sha256, second.object.sha256);
    // Writing the object again is a new version of the same content.
    assert_ne!(first.object.version, second.object.version);
}

#[tokio::test]
async fn a_single_write_records_the_bytes_sha256_and_the_stores_version() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "landing/x.csv");
    let stored = objects
        .put_stream(
            &bucket,
            &key,
            body(vec![b"a,b\n".to_vec(), b"1,2\n".to_vec()]),
            &BodyChecks::default(),
        )
        .await
        .unwrap();
    assert_eq!(stored.object.sha256, sha(b"a,b\n1,2\n"));
    let head = objects.version(&bucket, &key).await.unwrap();
    assert_eq!(head.as_deref(), Some(stored.object.version.as_str()));
    // A copy is its own object: its version is what the store reports for the copy.
    let (to_bucket, to_key) = names("raw", "copies/x.csv");
    let copied = objects
        .copy((&bucket, &key), (&to_bucket, &to_key))
        .await
        .unwrap();
    assert_eq!(copied, objects.version(&to_bucket, &to_key).await.unwrap());
    assert_eq!(read_all(&objects, &to_bucket, &to_key).await, b"a,b\n1,2\n");
}

/// A write into directories it creates fsyncs each new directory into its parent, up to
/// `objects/`, once: the next write into the same directory walks no further than it.
#[tokio::test]
async fn a_write_makes_the_directories_it_created_durable_once() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let known = || objects.durable_dirs.under(&dir.path().join("objects"));
    let put = |key: &'static str| {
        let objects = objects.clone();
        async move {
            let (bucket, key) = names("raw", key);
            let body = body(vec![b"a\n".to_vec()]);
            objects
                .put_stream(&bucket, &key, body, &BodyChecks::default())
                .await
                .unwrap();
        }
    };
    put("landing/2024/01/a.csv").await;
    assert_eq!(
        known(),
        [
            "raw",
            "raw/landing",
            "raw/landing/2024",
            "raw/landing/2024/01"
        ]
    );
    put("landing/2024/01/b.csv").await;
    put("landing/2024/02/c.csv").await;
    assert_eq!(
        known(),
        [
            "raw",
            "raw/landing",
            "raw/landing/2024",
            "raw/landing/2024/01",
            "raw/landing/2024/02"
        ]
    );
}

/// A bronze copy is a new name in new directories: making it durable fsyncs its
/// directory and each one the archive created, up to `lake/`, and remembers them.
#[tokio::test]
async fn an_archived_copy_is_made_durable_with_the_directories_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "landing/2024/01/a.csv");
    let stored = objects
        .put_stream(
            &bucket,
            &key,
            body(vec![b"a\n".to_vec()]),
            &BodyChecks::default(),
        )
        .await
        .unwrap();
    let path = objects
        .archive("trips_raw", &stored.object)
        .await
        .unwrap()
        .expect("the object still holds the bytes its event names");
    let known = || objects.durable_dirs.under(&dir.path().join("lake"));
    assert!(known().is_empty(), "{:?}", known());
    objects
        .make_archived_durable(std::slice::from_ref(&path))
        .await
        .unwrap();
    let copy = format!("raw/landing/2024/01/a.csv/sha256={}", stored.object.sha256);
    assert!(path.ends_with(&copy), "{path}");
    assert_eq!(
        known(),
        [
            "bronze",
            "bronze/trips_raw",
            "bronze/trips_raw/raw",
            "bronze/trips_raw/raw/landing",
            "bronze/trips_raw/raw/landing/2024",
            "bronze/trips_raw/raw/landing/2024/01",
            "bronze/trips_raw/raw/landing/2024/01/a.csv",
        ]
    );
    // The copy is the object's bytes, under its content's name.
    assert_eq!(
        std::fs::read(dir.path().join("lake/bronze/trips_raw").join(&copy)).unwrap(),
        b"a\n"
    );
    // A path that is not an archived copy is an error, not a panic.
    assert!(
        objects
            .make_archived_durable(&["lake/bronze/trips_raw/missing".into()])
            .await
            .is_err()
    );
}

#[test]
fn a_composite_hash_refuses_what_is_not_a_sha256() {
    assert!(composite_sha256(&["abc".into()]).is_err());
    assert!(composite_sha256(&["zz".repeat(32)]).is_err());
    let one = composite_sha256(&[sha(b"x")]).unwrap();
    assert!(one.ends_with("-1") && one.len() == 66, "{one}");
}

/// Multipart parts the size S3 clients send: two full 5 MiB parts and a short last one.
fn full_parts() -> Vec<Vec<u8>> {
    let full = 5usize << 20;
    vec![
        (0..full).map(|i| (i % 251) as u8).collect(),
        (0..full).map(|i| (i % 241) as u8 ^ 0x5a).collect(),
        (0..123_457usize).map(|i| (i % 13) as u8).collect(),
    ]
}

/// Stores part `number` with its length declared, as the S3 endpoint does.
async fn put_declared(
    objects: &Objects,
    upload: &str,
    number: u32,
    bytes: &[u8],
    recorded: &(dyn Fn() -> Option<Vec<u32>> + Send + Sync),
) -> Result<StoredPart, Error> {
    let target = PartTarget {
        upload_id: upload,
        number,
        declared_len: Some(bytes.len() as u64),
        recorded_slots: recorded,
    };
    // Uneven chunks, as a socket delivers them.
    let chunks = bytes.chunks(70_001).map(<[u8]>::to_vec).collect();
    objects
        .put_part(&target, body(chunks), &BodyChecks::default())
        .await
}

fn part_ref(number: u32, stored: &StoredPart) -> PartRef {
    PartRef {
        number,
        sha256: stored.sha256.clone(),
        size: stored.size,
        offset: stored.offset,
    }
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[tokio::test]
async fn parts_uploaded_out_of_order_land_in_their_slots_and_become_the_object_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "big/trips.csv");
    let parts = full_parts();
    // Part 2 arrives first and sets the slot size; the short last part fits its slot.
    let mut refs = Vec::new();
    for number in [2u32, 3, 1] {
        let bytes = &parts[number as usize - 1];
        let stored = put_declared(&objects, "up", number, bytes, &no_slots_recorded)
            .await
            .unwrap();
        assert_eq!(stored.md5, hex::encode(Md5::digest(bytes)), "part {number}");
        assert_eq!(stored.sha256, sha(bytes));
        assert_eq!(stored.offset, Some(u64::from(number - 1) * (5 << 20)));
        refs.push(part_ref(number, &stored));
    }
    refs.sort_by_key(|r| r.number);
    let slot_inode = inode(&dir.path().join(format!("uploads/up/slots-{}", 5 << 20)));
    let stored = objects.assemble(&bucket, &key, "up", &refs).await.unwrap();

    let whole = parts.concat();
    assert_eq!(stored.object.size, whole.len() as u64);
    assert_eq!(read_all(&objects, &bucket, &key).await, whole);
    let object_file = dir.path().join("objects/raw/big/trips.csv");
    let slot_file = dir.path().join(format!("uploads/up/slots-{}", 5 << 20));
    assert!(!slot_file.exists(), "the slot file became the object");
    assert_eq!(inode(&object_file), slot_inode, "moved, not copied");
    let head = objects.version(&bucket, &key).await.unwrap();
    assert_eq!(head.as_deref(), Some(stored.object.version.as_str()));
    // The composite hash does not depend on where the parts were stored.
    let expected: Vec<String> = parts.iter().map(|p| sha(p)).collect();
    assert_eq!(stored.object.sha256, composite_sha256(&expected).unwrap());
    // Forgetting the upload leaves the object whole.
    objects.delete_parts("up").await.unwrap();
    assert_eq!(read_all(&objects, &bucket, &key).await, whole);
}

#[tokio::test]
async fn a_part_sent_again_or_cut_off_never_overwrites_bytes_a_record_points_at() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "again.bin");
    let parts = full_parts();
    let first = put_declared(&objects, "up", 1, &parts[0], &no_slots_recorded)
        .await
        .unwrap();
    assert_eq!(first.offset, Some(0));
    // A body longer than it declared is refused before it reaches the next slot.
    let target = PartTarget {
        upload_id: "up",
        number: 2,
        declared_len: Some(10),
        recorded_slots: &no_slots_recorded,
    };
    let err = objects
        .put_part(
            &target,
            body(vec![parts[1].clone()]),
            &BodyChecks::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    // Part 2 again, whole: its slot was taken by the failed try, so it gets a file.
    let second = put_declared(&objects, "up", 2, &parts[1], &no_slots_recorded)
        .await
        .unwrap();
    assert_eq!(second.offset, None);
    // Part 1 sent again with other bytes: the record of the first stays valid until the
    // new one replaces it, so the new bytes go to a file too.
    let changed: Vec<u8> = parts[0].iter().map(|b| b ^ 0xff).collect();
    let first_again = put_declared(&objects, "up", 1, &changed, &no_slots_recorded)
        .await
        .unwrap();
    assert_eq!(first_again.offset, None);
    let third = put_declared(&objects, "up", 3, &parts[2], &no_slots_recorded)
        .await
        .unwrap();
    assert_eq!(third.offset, Some(2 * (5 << 20)));

    // Completing with the first part-1 record reads the slot; with the second, the file.
    let refs = [
        part_ref(1, &first),
        part_ref(2, &second),
        part_ref(3, &third),
    ];
    objects.assemble(&bucket, &key, "up", &refs).await.unwrap();
    assert_eq!(read_all(&objects, &bucket, &key).await, parts.concat());
    let refs = [
        part_ref(1, &first_again),
        part_ref(2, &second),
        part_ref(3, &third),
    ];
    objects.assemble(&bucket, &key, "up", &refs).await.unwrap();
    let expected = [changed.as_slice(), &parts[1], &parts[2]].concat();
    assert_eq!(read_all(&objects, &bucket, &key).await, expected);
}

#[tokio::test]
async fn after_a_restart_an_upload_keeps_its_slot_size_and_the_slots_its_records_name() {
    let dir = tempfile::tempdir().unwrap();
    let parts = full_parts();
    let (bucket, key) = names("raw", "restarted.bin");
    let first = {
        let objects = Objects::open_local(dir.path()).unwrap();
        put_declared(&objects, "up", 1, &parts[0], &no_slots_recorded)
            .await
            .unwrap()
    };
    // A new process: its registry is empty, the records say part 1 is in its slot.
    let objects = Objects::open_local(dir.path()).unwrap();
    let recorded = || Some(vec![1]);
    let again = put_declared(&objects, "up", 1, &parts[0], &recorded)
        .await
        .unwrap();
    assert_eq!(again.offset, None, "a recorded slot is not written again");
    let second = put_declared(&objects, "up", 2, &parts[1], &recorded)
        .await
        .unwrap();
    assert_eq!(second.offset, Some(5 << 20), "the slot size survives");
    let third = put_declared(&objects, "up", 3, &parts[2], &recorded)
        .await
        .unwrap();
    let refs = [
        part_ref(1, &first),
        part_ref(2, &second),
        part_ref(3, &third),
    ];
    objects.assemble(&bucket, &key, "up", &refs).await.unwrap();
    assert_eq!(read_all(&objects, &bucket, &key).await, parts.concat());
    // Records that cannot be read mean no slots at all.
    let unknown = || None;
    let other = put_declared(&objects, "up2", 1, &parts[0], &unknown)
        .await
        .unwrap();
    assert_eq!(other.offset, None);
}

#[tokio::test]
async fn completion_waits_for_slot_writes_under_way_and_then_takes_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Objects::open_local(dir.path()).unwrap();
    let (bucket, key) = names("raw", "racing.bin");
    let parts = full_parts();
    let mut refs = Vec::new();
    for number in [1u32, 2] {
        let stored = put_declared(
            &objects,
            "up",
            number,
            &parts[number as usize - 1],
            &no_slots_recorded,
        )
        .await
        .unwrap();
        refs.push(part_ref(number, &stored));
    }
    // Part 3 is still arriving (a client racing its own completion).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let late = {
        let objects = objects.clone();
        let len = parts[2].len() as u64;
        tokio::spawn(async move {
            let target = PartTarget {
                upload_id: "up",
                number: 3,
                declared_len: Some(len),
                recorded_slots: &no_slots_recorded,
            };
            let body = tokio_stream_of(rx);
            objects
                .put_part(&target, body, &BodyChecks::default())
                .await
        })
    };
    tx.send(Ok(Bytes::from(parts[2][..1000].to_vec())))
        .await
        .unwrap();
    let completing = {
        let objects = objects.clone();
        let (bucket, key) = (bucket.clone(), key.clone());
        tokio::spawn(async move { objects.assemble(&bucket, &key, "up", &refs).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !completing.is_finished(),
        "completion waits for the write under way"
    );
    tx.send(Ok(Bytes::from(parts[2][1000..].to_vec())))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(late.await.unwrap().unwrap().offset, Some(2 * (5 << 20)));
    completing.await.unwrap().unwrap();
    // The late part's bytes are not in the object, which is exactly parts 1 and 2.
    assert_eq!(read_all(&objects, &bucket, &key).await, parts[..2].concat());
    // Once completion has started, no part takes a slot.
    let after = put_declared(&objects, "up", 4, &parts[0], &no_slots_recorded)
        .await
        .unwrap();
    assert_eq!(after.offset, None);
}

/// A body fed through a channel, chunk by chunk.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
