use super::*;

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
            .put_part("up1", i as u32 + 1, body(vec![part.clone()]), &checks)
            .await
            .unwrap();
        assert_eq!(stored.size, part.len() as u64);
        assert_eq!(stored.sha256, sha(part), "part {}", i + 1);
        assert_eq!(stored.md5, hex::encode(Md5::digest(part)));
        refs.push(PartRef {
            number: i as u32 + 1,
            sha256: stored.sha256,
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
                "up2",
                i as u32 + 1,
                body(vec![part.clone()]),
                &BodyChecks::default(),
            )
            .await
            .unwrap();
        known.push(PartRef {
            number: i as u32 + 1,
            sha256: stored.sha256,
        });
    }
    let legacy: Vec<PartRef> = known
        .iter()
        .map(|p| PartRef {
            number: p.number,
            sha256: String::new(),
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

#[test]
fn a_composite_hash_refuses_what_is_not_a_sha256() {
    assert!(composite_sha256(&["abc".into()]).is_err());
    assert!(composite_sha256(&["zz".repeat(32)]).is_err());
    let one = composite_sha256(&[sha(b"x")]).unwrap();
    assert!(one.ends_with("-1") && one.len() == 66, "{one}");
}
