//! The S3 front door, driven by the clients users have: the aws CLI, boto3 and rclone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const RW: (&str, &str) = (
    "SLKTESTREADWRITE0001",
    "rw-secret-0123456789abcdefghijklmnopqrst",
);
const RO: (&str, &str) = (
    "SLKTESTREADONLY00001",
    "ro-secret-0123456789abcdefghijklmnopqrst",
);

fn s3_project() -> tempfile::TempDir {
    taxi_project(|t| {
        format!(
            "{t}\n[s3]\n[[s3.keys]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n\
             [[s3.keys]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\naccess = \"read-only\"\n",
            RW.0, RW.1, RO.0, RO.1
        )
    })
}

/// Runs the aws CLI against the server with a key; returns (success, stdout, stderr).
fn aws(server: &Server, key: Option<(&str, &str)>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("aws");
    cmd.arg("--endpoint-url")
        .arg(&server.s3)
        .arg("--region")
        .arg("us-east-1");
    // Plain HTTP on loopback: whatever CA bundle the machine points at does not apply.
    cmd.env_remove("AWS_CA_BUNDLE");
    cmd.env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    match key {
        Some((id, secret)) => {
            cmd.env("AWS_ACCESS_KEY_ID", id)
                .env("AWS_SECRET_ACCESS_KEY", secret);
        }
        None => {
            cmd.arg("--no-sign-request");
        }
    }
    let out = cmd
        .args(args)
        .output()
        .expect("running the aws CLI (pip install awscli)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn aws_ok(server: &Server, args: &[&str]) -> String {
    let (ok, out, err) = aws(server, Some(RW), args);
    assert!(ok, "aws {args:?} failed: {err}");
    out
}

fn aws_json(server: &Server, args: &[&str]) -> Value {
    serde_json::from_str(&aws_ok(server, args)).unwrap()
}

/// Runs a boto3 script with `s3` bound to a client of the server; the script prints JSON.
fn boto3(server: &Server, key: (&str, &str), script: &str) -> Value {
    let prelude = format!(
        "import boto3, json, sys\nfrom botocore.config import Config\n\
         s3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{}', \
         aws_secret_access_key='{}', config=Config(retries={{'max_attempts': 1}}))\n",
        server.s3, key.0, key.1
    );
    let out = Command::new("python3")
        .env_remove("AWS_CA_BUNDLE")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn md5_hex(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn the_aws_cli_gets_what_it_would_get_from_s3() {
    let project = s3_project();
    let server = Server::start(project.path());
    let dir = project.path();
    let small = shared_data("nyc_tlc/yellow_tripdata_2017-06.csv");

    assert!(aws_ok(&server, &["s3", "ls"]).contains(" raw"));
    aws_ok(&server, &["s3", "mb", "s3://scratch"]);
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "cp",
            small.to_str().unwrap(),
            "s3://scratch/a/b c/ü.csv",
        ],
    );
    let listed = aws_ok(&server, &["s3", "ls", "--recursive", "s3://scratch/"]);
    assert!(listed.contains("a/b c/ü.csv"), "{listed}");
    let head = aws_json(
        &server,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "scratch",
            "--key",
            "a/b c/ü.csv",
        ],
    );
    assert_eq!(head["ETag"], format!("\"{}\"", md5_hex(&small)));
    assert_eq!(
        head["ContentLength"],
        std::fs::metadata(&small).unwrap().len()
    );

    // Above the CLI's 8 MiB multipart threshold: the multipart ETag, the same bytes back.
    let big = dir.join("big.bin");
    let data: Vec<u8> = (0..20_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "cp",
            big.to_str().unwrap(),
            "s3://scratch/big.bin",
        ],
    );
    let head = aws_json(
        &server,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "scratch",
            "--key",
            "big.bin",
        ],
    );
    let etag = head["ETag"].as_str().unwrap();
    assert!(
        etag.ends_with("-3\""),
        "multipart ETag expected, got {etag}"
    );
    let back = dir.join("big.back");
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "cp",
            "s3://scratch/big.bin",
            back.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "big file changed on the way"
    );

    // Metadata, content type and ranges.
    aws_ok(
        &server,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "scratch",
            "--key",
            "m.txt",
            "--body",
            small.to_str().unwrap(),
            "--content-type",
            "text/csv",
            "--metadata",
            "owner=ana,team=data",
        ],
    );
    let head = aws_json(
        &server,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "scratch",
            "--key",
            "m.txt",
        ],
    );
    assert_eq!(head["ContentType"], "text/csv");
    assert_eq!(head["Metadata"]["owner"], "ana");
    assert_eq!(head["Metadata"]["team"], "data");
    let range_out = dir.join("range.bin");
    let got = aws_json(
        &server,
        &[
            "s3api",
            "get-object",
            "--bucket",
            "scratch",
            "--key",
            "m.txt",
            "--range",
            "bytes=10-19",
            range_out.to_str().unwrap(),
        ],
    );
    assert_eq!(got["ContentLength"], 10);
    assert_eq!(
        std::fs::read(&range_out).unwrap(),
        std::fs::read(&small).unwrap()[10..20]
    );

    // sync a tree, then rb is refused while the bucket holds objects, then rm and rb.
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "sync",
            shared_data("nyc_tlc").to_str().unwrap(),
            "s3://scratch/tlc/",
        ],
    );
    let n = aws_ok(&server, &["s3", "ls", "s3://scratch/tlc/"])
        .lines()
        .count();
    assert_eq!(n, 10);
    let (ok, _, err) = aws(&server, Some(RW), &["s3", "rb", "s3://scratch"]);
    assert!(!ok && err.contains("BucketNotEmpty"), "{err}");
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "rm",
            "--recursive",
            "s3://scratch",
        ],
    );
    aws_ok(&server, &["s3", "rb", "s3://scratch"]);
    assert!(!aws_ok(&server, &["s3", "ls"]).contains("scratch"));
}

#[test]
fn an_aws_cli_upload_to_the_landing_prefix_lands_in_silver_exactly_once() {
    let project = s3_project();
    let server = Server::start(project.path());
    let file = shared_data("nyc_tlc/yellow_tripdata_2019-06_sample.csv");
    let target = "s3://raw/landing/2019/06/yellow_tripdata_2019-06.csv";
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "cp",
            file.to_str().unwrap(),
            target,
        ],
    );
    server.wait_idle(Duration::from_secs(120));
    // The client retries the same upload: nothing changes.
    aws_ok(
        &server,
        &[
            "--only-show-errors",
            "s3",
            "cp",
            file.to_str().unwrap(),
            target,
        ],
    );
    server.wait_idle(Duration::from_secs(120));
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        946
    );
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM sluice.quarantine")),
        54
    );
    let events = server.query("SELECT kind, source FROM sluice.events WHERE key = 'landing/2019/06/yellow_tripdata_2019-06.csv'");
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["kind"] == "object-created" && e["source"] == "sluice:s3")
    );
    // A delete records object-removed, and the object's rows leave silver, quarantine and gold.
    aws_ok(&server, &["s3", "rm", target]);
    let kinds = server.query("SELECT kind FROM sluice.events WHERE kind = 'object-removed'");
    assert_eq!(kinds.len(), 1);
    server.wait_idle(Duration::from_secs(120));
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM silver.trips")),
        0
    );
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM sluice.quarantine")),
        0
    );
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM gold.daily_revenue")),
        0
    );
}

#[test]
fn every_operation_refuses_bad_credentials_with_the_code_clients_expect() {
    let project = s3_project();
    let server = Server::start(project.path());
    aws_ok(
        &server,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "raw",
            "--key",
            "k.txt",
            "--body",
            "/etc/hostname",
        ],
    );
    let wrong_secret = (RW.0, "not-the-secret-0123456789abcdefghijklmn");
    let unknown = (
        "SLKNOSUCHKEY00000000",
        "whatever-0123456789abcdefghijklmnopqrstu",
    );
    let ops: [&[&str]; 6] = [
        &["s3api", "list-buckets"],
        &["s3api", "list-objects-v2", "--bucket", "raw"],
        &["s3api", "head-object", "--bucket", "raw", "--key", "k.txt"],
        &[
            "s3api",
            "get-object",
            "--bucket",
            "raw",
            "--key",
            "k.txt",
            "/dev/null",
        ],
        &[
            "s3api",
            "put-object",
            "--bucket",
            "raw",
            "--key",
            "new.txt",
            "--body",
            "/etc/hostname",
        ],
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "raw",
            "--key",
            "k.txt",
        ],
    ];
    for op in ops {
        // HEAD responses carry no body, so the CLI reports them by status only.
        let head = op[1] == "head-object";
        for (key, code, status) in [
            (None, "AccessDenied", "403"),
            (Some(wrong_secret), "SignatureDoesNotMatch", "403"),
            (Some(unknown), "InvalidAccessKeyId", "403"),
        ] {
            let (ok, _, err) = aws(&server, key, op);
            assert!(!ok, "{op:?} with {key:?} succeeded");
            let expected = if head { status } else { code };
            assert!(
                err.contains(expected),
                "{op:?} with {key:?}: expected {expected}, got {err}"
            );
        }
    }
    // A read-only key reads but cannot write or delete.
    let (ok, _, err) = aws(
        &server,
        Some(RO),
        &[
            "s3api",
            "get-object",
            "--bucket",
            "raw",
            "--key",
            "k.txt",
            "/dev/null",
        ],
    );
    assert!(ok, "{err}");
    for op in [ops[4], ops[5], &["s3", "mb", "s3://newbucket"][..]] {
        let (ok, _, err) = aws(&server, Some(RO), op);
        assert!(!ok && err.contains("AccessDenied"), "{op:?}: {err}");
    }
    // An expired presigned URL.
    let url = aws_ok(
        &server,
        &["s3", "presign", "s3://raw/k.txt", "--expires-in", "1"],
    );
    std::thread::sleep(Duration::from_millis(2100));
    let mut resp = ureq::get(url.trim())
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.body_mut().read_to_string().unwrap();
    assert!(
        body.contains("<Code>AccessDenied</Code>") && body.contains("expired"),
        "{body}"
    );
    let url = aws_ok(
        &server,
        &["s3", "presign", "s3://raw/k.txt", "--expires-in", "300"],
    );
    let resp = ureq::get(url.trim()).call().unwrap();
    assert_eq!(resp.status(), 200);
    // Secrets never reach the logs.
    let log = std::fs::read_to_string(project.path().join("sluice.log")).unwrap();
    assert!(!log.contains(RW.1) && !log.contains(RO.1));
}

#[test]
fn boto3_sees_s3_semantics() {
    let project = s3_project();
    let server = Server::start(project.path());
    let result = boto3(
        &server,
        RW,
        r#"
out = {}
for i in range(7):
    s3.put_object(Bucket='raw', Key=f'p/dir{i % 2}/f{i}.txt', Body=f'body {i}'.encode())
pages, token, keys = 0, None, []
while True:
    kw = {'Bucket': 'raw', 'Prefix': 'p/', 'MaxKeys': 3}
    if token: kw['ContinuationToken'] = token
    r = s3.list_objects_v2(**kw)
    pages += 1
    keys += [o['Key'] for o in r.get('Contents', [])]
    if not r['IsTruncated']: break
    token = r['NextContinuationToken']
out['pages'], out['keys'] = pages, keys
r = s3.list_objects_v2(Bucket='raw', Prefix='p/', Delimiter='/')
out['prefixes'] = [p['Prefix'] for p in r.get('CommonPrefixes', [])]
r = s3.list_objects(Bucket='raw', Prefix='p/dir0/', MaxKeys=2)
out['v1'] = [o['Key'] for o in r['Contents']] + [r['IsTruncated']]
r = s3.list_object_versions(Bucket='raw', Prefix='p/dir1/')
out['versions'] = [(v['Key'], v['VersionId'], v['IsLatest']) for v in r['Versions']]
s3.copy_object(Bucket='raw', Key='p/copy.txt', CopySource={'Bucket': 'raw', 'Key': 'p/dir0/f0.txt'})
out['copied'] = s3.get_object(Bucket='raw', Key='p/copy.txt')['Body'].read().decode()
etag = s3.head_object(Bucket='raw', Key='p/copy.txt')['ETag']
try:
    s3.get_object(Bucket='raw', Key='p/copy.txt', IfNoneMatch=etag)
    out['not_modified'] = False
except Exception as e:
    out['not_modified'] = '304' in str(e)
try:
    s3.get_object(Bucket='raw', Key='p/copy.txt', IfMatch='"nope"')
except Exception as e:
    out['if_match'] = e.response['Error']['Code']
r = s3.delete_objects(Bucket='raw', Delete={'Objects': [{'Key': 'p/dir0/f0.txt'}, {'Key': 'p/dir1/f1.txt'}]})
out['deleted'] = sorted(d['Key'] for d in r['Deleted'])
try:
    s3.get_object(Bucket='raw', Key='p/dir0/f0.txt')
except Exception as e:
    out['missing'] = e.response['Error']['Code']
try:
    s3.put_object(Bucket='raw', Key='a/../../etc/passwd', Body=b'x')
except Exception as e:
    out['escape'] = e.response['Error']['Code']
try:
    s3.put_object(Bucket='raw', Key='k' * 1025, Body=b'x')
except Exception as e:
    out['too_long'] = e.response['Error']['Code']
try:
    s3.put_object(Bucket='nosuchbucket', Key='x', Body=b'x')
except Exception as e:
    out['no_bucket'] = e.response['Error']['Code']
# Multipart by hand: parts, listing, completion, and an abort that leaves nothing.
up = s3.create_multipart_upload(Bucket='raw', Key='mp/obj.bin', ContentType='application/octet-stream', Metadata={'k': 'v'})
uid = up['UploadId']
part1 = b'a' * (5 * 1024 * 1024)
e1 = s3.upload_part(Bucket='raw', Key='mp/obj.bin', UploadId=uid, PartNumber=1, Body=part1)['ETag']
e2 = s3.upload_part(Bucket='raw', Key='mp/obj.bin', UploadId=uid, PartNumber=2, Body=b'tail')['ETag']
out['parts'] = [(p['PartNumber'], p['Size']) for p in s3.list_parts(Bucket='raw', Key='mp/obj.bin', UploadId=uid)['Parts']]
out['uploads'] = [u['Key'] for u in s3.list_multipart_uploads(Bucket='raw').get('Uploads', [])]
try:
    s3.complete_multipart_upload(Bucket='raw', Key='mp/obj.bin', UploadId=uid, MultipartUpload={'Parts': [{'PartNumber': 2, 'ETag': e2}, {'PartNumber': 1, 'ETag': e1}]})
except Exception as e:
    out['bad_order'] = e.response['Error']['Code']
r = s3.complete_multipart_upload(Bucket='raw', Key='mp/obj.bin', UploadId=uid, MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': e1}, {'PartNumber': 2, 'ETag': e2}]})
out['mp_etag'] = r['ETag']
h = s3.head_object(Bucket='raw', Key='mp/obj.bin')
out['mp'] = [h['ContentLength'], h['ContentType'], h['Metadata']]
up2 = s3.create_multipart_upload(Bucket='raw', Key='mp/aborted.bin')
s3.upload_part(Bucket='raw', Key='mp/aborted.bin', UploadId=up2['UploadId'], PartNumber=1, Body=b'x')
s3.abort_multipart_upload(Bucket='raw', Key='mp/aborted.bin', UploadId=up2['UploadId'])
try:
    s3.head_object(Bucket='raw', Key='mp/aborted.bin')
except Exception as e:
    out['aborted'] = e.response['Error']['Code']
try:
    s3.list_parts(Bucket='raw', Key='mp/aborted.bin', UploadId=up2['UploadId'])
except Exception as e:
    out['no_upload'] = e.response['Error']['Code']
# Content-MD5 is checked (BadDigest stores nothing); the content hash is the bytes' SHA-256,
# and for a multipart object the SHA-256 of its parts' SHA-256 digests, then -<parts>.
import base64, hashlib
b64md5 = lambda b: base64.b64encode(hashlib.md5(b).digest()).decode()
try:
    s3.put_object(Bucket='raw', Key='digest/bad.txt', Body=b'hello', ContentMD5=b64md5(b'other'))
except Exception as e:
    out['bad_digest'] = e.response['Error']['Code']
s3.put_object(Bucket='raw', Key='digest/good.txt', Body=b'hello', ContentMD5=b64md5(b'hello'))
out['good_digest'] = s3.get_object(Bucket='raw', Key='digest/good.txt')['Body'].read().decode()
composite = hashlib.sha256(hashlib.sha256(part1).digest() + hashlib.sha256(b'tail').digest()).hexdigest() + '-2'
out['sha'] = {'digest/good.txt': hashlib.sha256(b'hello').hexdigest(), 'mp/obj.bin': composite}
out['mp_bytes'] = s3.get_object(Bucket='raw', Key='mp/obj.bin')['Body'].read() == part1 + b'tail'
# A part sent again replaces the earlier one: the old ETag no longer completes, the new bytes win.
up3 = s3.create_multipart_upload(Bucket='raw', Key='mp/again.bin')
uid3 = up3['UploadId']
old1 = s3.upload_part(Bucket='raw', Key='mp/again.bin', UploadId=uid3, PartNumber=1, Body=b'b' * (5 * 1024 * 1024))['ETag']
new1 = s3.upload_part(Bucket='raw', Key='mp/again.bin', UploadId=uid3, PartNumber=1, Body=b'c' * (5 * 1024 * 1024))['ETag']
end2 = s3.upload_part(Bucket='raw', Key='mp/again.bin', UploadId=uid3, PartNumber=2, Body=b'end')['ETag']
try:
    s3.complete_multipart_upload(Bucket='raw', Key='mp/again.bin', UploadId=uid3, MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': old1}, {'PartNumber': 2, 'ETag': end2}]})
except Exception as e:
    out['stale_part'] = e.response['Error']['Code']
s3.complete_multipart_upload(Bucket='raw', Key='mp/again.bin', UploadId=uid3, MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': new1}, {'PartNumber': 2, 'ETag': end2}]})
out['again_bytes'] = s3.get_object(Bucket='raw', Key='mp/again.bin')['Body'].read() == b'c' * (5 * 1024 * 1024) + b'end'
print(json.dumps(out))
"#,
    );
    assert_eq!(result["pages"], 3, "{result}");
    let keys: Vec<&str> = result["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "p/dir0/f0.txt",
            "p/dir0/f2.txt",
            "p/dir0/f4.txt",
            "p/dir0/f6.txt",
            "p/dir1/f1.txt",
            "p/dir1/f3.txt",
            "p/dir1/f5.txt"
        ]
    );
    assert_eq!(
        result["prefixes"],
        serde_json::json!(["p/dir0/", "p/dir1/"])
    );
    assert_eq!(
        result["v1"],
        serde_json::json!(["p/dir0/f0.txt", "p/dir0/f2.txt", true])
    );
    assert_eq!(
        result["versions"][0],
        serde_json::json!(["p/dir1/f1.txt", "null", true])
    );
    assert_eq!(result["copied"], "body 0", "{result}");
    assert_eq!(result["not_modified"], true, "{result}");
    assert_eq!(result["if_match"], "PreconditionFailed", "{result}");
    assert_eq!(
        result["deleted"],
        serde_json::json!(["p/dir0/f0.txt", "p/dir1/f1.txt"])
    );
    assert_eq!(result["missing"], "NoSuchKey", "{result}");
    assert_eq!(result["escape"], "InvalidArgument", "{result}");
    assert_eq!(result["too_long"], "KeyTooLongError", "{result}");
    assert_eq!(result["no_bucket"], "NoSuchBucket", "{result}");
    assert_eq!(
        result["parts"],
        serde_json::json!([[1, 5242880], [2, 4]]),
        "{result}"
    );
    assert_eq!(
        result["uploads"],
        serde_json::json!(["mp/obj.bin"]),
        "{result}"
    );
    assert_eq!(result["bad_order"], "InvalidPartOrder", "{result}");
    assert!(
        result["mp_etag"].as_str().unwrap().ends_with("-2\""),
        "{}",
        result["mp_etag"]
    );
    assert_eq!(
        result["mp"],
        serde_json::json!([5242884, "application/octet-stream", {"k": "v"}])
    );
    assert_eq!(result["mp_bytes"], true, "the assembled object's bytes");
    assert_eq!(result["stale_part"], "InvalidPart", "{result}");
    assert_eq!(
        result["again_bytes"], true,
        "a part sent again replaces the first"
    );
    assert_eq!(result["aborted"], "404", "{result}");
    assert_eq!(result["no_upload"], "NoSuchUpload", "{result}");
    assert_eq!(result["bad_digest"], "BadDigest", "{result}");
    assert_eq!(result["good_digest"], "hello", "{result}");
    for (key, sha) in result["sha"].as_object().unwrap() {
        let recorded = server.scalar(&format!(
            "SELECT sha256 FROM sluice.events WHERE key = '{key}' AND kind = 'object-created'"
        ));
        assert_eq!(&recorded, sha, "the content hash recorded for {key}");
    }
    let refused = server.query("SELECT key FROM sluice.events WHERE key = 'digest/bad.txt'");
    assert!(refused.is_empty(), "{refused:?}");
    // Copies and batch deletes record their events like any other write.
    let copy_events = server.query("SELECT kind FROM sluice.events WHERE key = 'p/copy.txt'");
    assert_eq!(
        copy_events,
        vec![serde_json::json!({"kind": "object-created"})]
    );
    let removed = as_i64(&server.scalar("SELECT count(*) FROM sluice.events WHERE kind = 'object-removed' AND key IN ('p/dir0/f0.txt', 'p/dir1/f1.txt')"));
    assert_eq!(removed, 2);
    // Every completed write has its event; aborted and refused ones have none.
    let events = server.query(
        "SELECT key FROM sluice.events WHERE key LIKE 'mp/%' OR key LIKE '%passwd%' ORDER BY key",
    );
    assert_eq!(
        events,
        vec![
            serde_json::json!({"key": "mp/again.bin"}),
            serde_json::json!({"key": "mp/obj.bin"})
        ]
    );
}

#[test]
fn an_interrupted_upload_leaves_no_object_and_no_event() {
    let project = s3_project();
    let server = Server::start(project.path());
    let url = boto3(
        &server,
        RW,
        "print(json.dumps(s3.generate_presigned_url('put_object', Params={'Bucket': 'raw', 'Key': 'cut.bin'}, ExpiresIn=300)))",
    );
    let url = url.as_str().unwrap();
    // Promise 1 MB, send half, hang up.
    let without_scheme = url.trim_start_matches("http://");
    let (host, path) = without_scheme.split_once('/').unwrap();
    let mut socket = std::net::TcpStream::connect(host).unwrap();
    use std::io::Write;
    write!(
        socket,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    socket.write_all(&vec![b'x'; 500_000]).unwrap();
    drop(socket);
    std::thread::sleep(Duration::from_millis(300));
    let result = boto3(
        &server,
        RW,
        r#"
try:
    s3.head_object(Bucket='raw', Key='cut.bin')
    print(json.dumps('exists'))
except Exception as e:
    print(json.dumps(e.response['Error']['Code']))
"#,
    );
    assert_eq!(result, "404");
    assert_eq!(
        as_i64(&server.scalar("SELECT count(*) FROM sluice.events WHERE key = 'cut.bin'")),
        0
    );
}

/// A request s3s refuses before any handler runs (a key over 1,024 bytes, refused while
/// the path is parsed) leaves the connection in step when its body arrives after its
/// headers, as a client's separate writes do: the next request on it is answered. Before
/// the body was read first, the server answered and closed the connection, and the
/// client's next request met a broken pipe (boto3 then saw a bare 400 or
/// SignatureDoesNotMatch, now and then).
#[test]
fn a_request_refused_before_its_body_arrives_leaves_the_connection_usable() {
    refused_request_then_next(false);
}

/// The same with `Expect: 100-continue`, which botocore sends with every PutObject body:
/// the body is read first here too (reading it sends the 100), so the body the client
/// sends is not taken for its next request.
#[test]
fn a_refused_request_expecting_100_continue_leaves_the_connection_usable() {
    refused_request_then_next(true);
}

/// Sends a PUT of a 1-byte body under a 1,025-byte key (with `Expect: 100-continue` if
/// `expect`: its body sent after the server's 100, or after a second without one, as
/// botocore does), then a GET on the same connection, and checks both are answered.
fn refused_request_then_next(expect: bool) {
    use std::io::Write;
    let project = s3_project();
    let server = Server::start(project.path());
    let host = server
        .s3
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut socket = std::net::TcpStream::connect(host).unwrap();
    let key = "k".repeat(1025);
    let expect_header = if expect {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    write!(
        socket,
        "PUT /raw/{key} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n{expect_header}\r\n"
    )
    .unwrap();
    let mut answers = String::new();
    if expect {
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        read_until(&mut socket, &mut answers, |a| a.contains("\r\n\r\n"));
        assert!(
            answers.starts_with("HTTP/1.1 100 Continue"),
            "the server asks for the body before it answers: {answers}"
        );
    } else {
        std::thread::sleep(Duration::from_millis(100));
    }
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    write!(socket, "GET /raw/y HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .expect("the connection is still open for the next request");
    let finals =
        |text: &str| text.matches("HTTP/1.1 ").count() - text.matches("HTTP/1.1 100 ").count();
    read_until(&mut socket, &mut answers, |a| {
        finals(a) >= 2 && a.ends_with("</Error>")
    });
    assert!(
        answers.contains("<Code>KeyTooLongError</Code>"),
        "{answers}"
    );
    assert_eq!(
        finals(&answers),
        2,
        "the request after the refused one is answered: {answers}"
    );
    assert!(answers.contains("<Code>AccessDenied</Code>"), "{answers}");
}

/// Appends what `socket` answers to `answers` until `done` holds of it, the connection
/// closes or a read times out.
fn read_until(socket: &mut std::net::TcpStream, answers: &mut String, done: impl Fn(&str) -> bool) {
    use std::io::Read;
    let mut buf = [0u8; 8192];
    while !done(answers) {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answers.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

#[test]
fn rclone_copies_a_tree_up_and_back_byte_identical() {
    let project = s3_project();
    let server = Server::start(project.path());
    let dir = project.path();
    let config = dir.join("rclone.conf");
    std::fs::write(
        &config,
        format!(
            "[sluice]\ntype = s3\nprovider = Other\naccess_key_id = {}\nsecret_access_key = {}\nendpoint = {}\nregion = us-east-1\nforce_path_style = true\n",
            RW.0, RW.1, server.s3
        ),
    )
    .unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("nested/deeper")).unwrap();
    std::fs::copy(
        shared_data("nyc_tlc/taxi_zone_lookup.csv"),
        tree.join("zones.csv"),
    )
    .unwrap();
    std::fs::copy(
        shared_data("events/rees46_ecommerce_2019-Oct-sample.csv"),
        tree.join("nested/events.csv"),
    )
    .unwrap();
    std::fs::write(tree.join("nested/deeper/empty.txt"), b"").unwrap();
    let big: Vec<u8> = (0..12_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("nested/deeper/big.bin"), &big).unwrap();
    let rclone = |args: &[&str]| {
        // The endpoint is plain HTTP on loopback: no CA bundle applies (rclone refuses one here).
        let out = Command::new("rclone")
            .env_remove("AWS_CA_BUNDLE")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("running rclone (apt-get install rclone)");
        assert!(
            out.status.success(),
            "rclone {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    rclone(&["copy", tree.to_str().unwrap(), "sluice:raw/tree"]);
    let back = dir.join("back");
    rclone(&["copy", "sluice:raw/tree", back.to_str().unwrap()]);
    for rel in [
        "zones.csv",
        "nested/events.csv",
        "nested/deeper/empty.txt",
        "nested/deeper/big.bin",
    ] {
        assert_eq!(
            std::fs::read(tree.join(rel)).unwrap(),
            std::fs::read(back.join(rel)).unwrap(),
            "{rel}"
        );
    }
    rclone(&["check", tree.to_str().unwrap(), "sluice:raw/tree"]);
}

#[test]
fn a_key_from_the_environment_gets_read_write_access() {
    let project = taxi_project(|t| t);
    let server = Server::start_with_env(
        project.path(),
        &[
            ("SLUICE_S3_ACCESS_KEY_ID", "SLKFROMENVIRONMENT01"),
            (
                "SLUICE_S3_SECRET_ACCESS_KEY",
                "env-secret-0123456789abcdefghijklmnopqr",
            ),
        ],
    );
    let key = (
        "SLKFROMENVIRONMENT01",
        "env-secret-0123456789abcdefghijklmnopqr",
    );
    let (ok, _, err) = aws(
        &server,
        Some(key),
        &[
            "s3api",
            "put-object",
            "--bucket",
            "raw",
            "--key",
            "e.txt",
            "--body",
            "/etc/hostname",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = aws(&server, Some(key), &["s3", "ls", "s3://raw/"]);
    assert!(ok && out.contains("e.txt"), "{out}");
}

#[test]
fn init_generates_a_key_pair_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = cli(
        &dir.path().join("x.toml"),
        &["init", dir.path().to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let toml_path = dir.path().join("sluice.toml");
    assert!(
        out.contains("an S3 access key was generated") && out.contains(toml_path.to_str().unwrap()),
        "{out}"
    );
    let text = std::fs::read_to_string(&toml_path).unwrap();
    let value = |name: &str| -> String {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap();
        line.split('"').nth(1).unwrap().to_string()
    };
    let (id, secret) = (value("access_key_id"), value("secret_access_key"));
    assert_eq!(id.len(), 20);
    assert_eq!(secret.len(), 40);
    assert!(!out.contains(&secret), "the secret is not printed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&toml_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let server = Server::start(dir.path());
    let (ok, out, err) = aws(&server, Some((&id, &secret)), &["s3", "ls"]);
    assert!(ok && out.contains("raw"), "{out}{err}");
}
