//! The S3 front door: the landing zone over the S3 protocol (s3s), so the aws CLI, boto3,
//! rclone and DuckDB work unchanged.
//!
//! s3s parses requests and checks AWS Signature Version 4 (headers and presigned URLs);
//! this module maps each operation onto the platform's one write path
//! ([`Platform::put_object`] and friends), so an S3 upload records the same
//! object-created event as every other writer, before the response is sent. Object
//! metadata (ETag, content type, `x-amz-meta-*`) lives in the state store beside the event.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use sluice_model::config::{Access, S3Key};
use sluice_model::key::{BucketName as Bucket, ObjectKey as Key};
use sluice_state::{ObjectMeta, UploadPart};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::platform::{Platform, PutError, PutOptions};
use sluice_lake::objects::{BodyChecks, PartRef, PartTarget};

/// The smallest part of a multipart upload but the last, as S3 enforces.
const MIN_PART_SIZE: u64 = 5 << 20;
/// The most keys one list call returns.
const MAX_KEYS: usize = 1000;

/// The S3 operations over a platform.
pub struct SluiceS3 {
    platform: Arc<Platform>,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    let mut err = S3Error::new(S3ErrorCode::InternalError);
    err.set_message(e.to_string());
    err
}

fn put_error(e: PutError) -> S3Error {
    match e {
        PutError::BadInput(m) if m.contains("longer than 1024") => {
            s3_error!(KeyTooLongError, "{m}")
        }
        PutError::BadInput(m) if m.contains("bucket name") => s3_error!(InvalidBucketName, "{m}"),
        PutError::BadInput(m) => s3_error!(InvalidArgument, "{m}"),
        PutError::NoSuchBucket(b) => s3_error!(NoSuchBucket, "bucket {b} does not exist"),
        PutError::Store(inner) => match *inner {
            sluice_lake::Error::ObjectNotFound { bucket, key } => {
                s3_error!(NoSuchKey, "{bucket}/{key} does not exist")
            }
            sluice_lake::Error::UploadInterrupted(m) => s3_error!(IncompleteBody, "{m}"),
            e @ sluice_lake::Error::DigestMismatch { .. } => s3_error!(BadDigest, "{e}"),
            other => internal(other),
        },
        PutError::State(e) => internal(e),
    }
}

/// What a request's headers say about its body.
///
/// `x-amz-content-sha256` counts only under SigV4 (`sigv4`), where s3s checks the payload
/// against it while it streams and fails the body on a mismatch: the write can take it
/// instead of hashing again. Content-MD5 (base64) is checked by the write itself.
fn body_checks(
    headers: &axum::http::HeaderMap,
    sigv4: bool,
    content_md5: &Option<String>,
) -> S3Result<BodyChecks> {
    let verified_sha256 = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| sigv4 && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    let expected_md5 = match content_md5 {
        None => None,
        Some(b64) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .filter(|raw| raw.len() == 16)
                .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not a base64 MD5"))?;
            Some(hex::encode(raw))
        }
    };
    Ok(BodyChecks {
        verified_sha256,
        expected_md5,
    })
}

/// Reads and drops what is left of a refused request's body (at most 1 MiB), so that the
/// connection is in step for the client's next request: bytes left unread would otherwise
/// be taken for the start of the next request (a bare 400).
async fn discard(body: Option<StreamingBlob>) {
    let Some(mut body) = body else { return };
    let mut left = 1usize << 20;
    while let Some(Ok(chunk)) = body.next().await {
        if chunk.len() >= left {
            return;
        }
        left -= chunk.len();
    }
}

/// The length of a request's payload as declared before it: the decoded length of an
/// aws-chunked body, else Content-Length.
fn declared_length(headers: &axum::http::HeaderMap, content_length: Option<i64>) -> Option<u64> {
    match headers.get("x-amz-decoded-content-length") {
        Some(v) => v.to_str().ok()?.parse().ok(),
        None => content_length.and_then(|n| u64::try_from(n).ok()),
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp::from(std::time::SystemTime::from(t))
}

fn to_chrono(t: &Timestamp) -> DateTime<Utc> {
    let odt: time::OffsetDateTime = t.clone().into();
    DateTime::from_timestamp(odt.unix_timestamp(), odt.nanosecond()).unwrap_or_default()
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

fn metadata(meta: &ObjectMeta) -> Option<Metadata> {
    (!meta.metadata.is_empty()).then(|| meta.metadata.clone().into_iter().collect())
}

/// Keys and prefixes percent-encoded as S3 does for `encoding-type=url` (aws CLI asks for it).
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn encode_key(key: &str, url: bool) -> String {
    if url {
        percent_encoding::utf8_percent_encode(key, KEY_ENCODE).to_string()
    } else {
        key.to_string()
    }
}

/// A stream that is `Sync` because it is only ever polled through `&mut` (s3s bodies must be `Sync`).
struct SyncStream(Mutex<futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>>);

impl Stream for SyncStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        inner.poll_next_unpin(cx)
    }
}

/// One page of a listing.
struct Page {
    objects: Vec<ObjectMeta>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or prefix returned.
    last: Option<String>,
}

impl Page {
    fn contents(&self, url: bool) -> Vec<Object> {
        self.objects
            .iter()
            .map(|m| SluiceS3::object_entry(m, url))
            .collect()
    }

    fn common_prefixes(&self, url: bool) -> Vec<CommonPrefix> {
        self.prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode_key(p, url)),
            })
            .collect()
    }
}

fn url_encoded(encoding: Option<&EncodingType>) -> bool {
    encoding.is_some_and(|e| e.as_str() == EncodingType::URL)
}

fn max_keys(requested: Option<i32>) -> usize {
    requested
        .unwrap_or(MAX_KEYS as i32)
        .clamp(0, MAX_KEYS as i32) as usize
}

impl SluiceS3 {
    /// The service over a platform.
    pub fn new(platform: Arc<Platform>) -> Self {
        Self { platform }
    }

    fn names(&self, bucket: &str, key: &str) -> S3Result<(Bucket, Key)> {
        self.platform.check_target(bucket, key).map_err(put_error)
    }

    fn meta(&self, bucket: &str, key: &str) -> S3Result<ObjectMeta> {
        self.names(bucket, key)?;
        self.platform
            .state
            .object_meta(bucket, key)
            .map_err(internal)?
            .ok_or_else(|| s3_error!(NoSuchKey, "{bucket}/{key} does not exist"))
    }

    fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        if self.platform.bucket_exists(bucket).map_err(internal)? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket, "bucket {bucket} does not exist"))
        }
    }

    /// Keys after `after` under `prefix`, folded at `delimiter`, at most `max` entries.
    fn page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: &str,
        max: usize,
    ) -> S3Result<Page> {
        self.require_bucket(bucket)?;
        let mut page = Page {
            objects: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
            last: None,
        };
        let mut cursor = after.to_string();
        'scan: loop {
            let batch = self
                .platform
                .state
                .list_objects(bucket, prefix, &cursor, MAX_KEYS)
                .map_err(internal)?;
            if batch.is_empty() {
                break;
            }
            for meta in batch {
                cursor = meta.key.clone();
                let folded = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                    meta.key[prefix.len()..]
                        .find(d)
                        .map(|at| meta.key[..prefix.len() + at + d.len()].to_string())
                });
                if page.objects.len() + page.prefixes.len() >= max {
                    page.truncated = true;
                    break 'scan;
                }
                match folded {
                    Some(common) => {
                        // Skip every key under this common prefix.
                        cursor = format!("{common}\u{10FFFF}");
                        page.last = Some(common.clone());
                        page.prefixes.push(common);
                        continue 'scan;
                    }
                    None => {
                        page.last = Some(meta.key.clone());
                        page.objects.push(meta);
                    }
                }
            }
        }
        Ok(page)
    }

    fn object_entry(meta: &ObjectMeta, url: bool) -> Object {
        Object {
            key: Some(encode_key(&meta.key, url)),
            e_tag: Some(etag(&meta.etag)),
            size: Some(meta.size as i64),
            last_modified: Some(timestamp(meta.last_modified)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }

    /// Checks If-Match / If-None-Match / If-(Un)Modified-Since the way GET and HEAD do.
    fn preconditions(
        meta: &ObjectMeta,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<()> {
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(e) => e.value() == meta.etag,
        };
        if let Some(c) = if_match
            && !matches(c)
        {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Match does not match the ETag"
            ));
        }
        if if_match.is_none()
            && let Some(t) = if_unmodified_since
            && meta.last_modified.timestamp() > to_chrono(t).timestamp()
        {
            return Err(s3_error!(
                PreconditionFailed,
                "modified since If-Unmodified-Since"
            ));
        }
        if let Some(c) = if_none_match
            && matches(c)
        {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
        if if_none_match.is_none()
            && let Some(t) = if_modified_since
            && meta.last_modified.timestamp() <= to_chrono(t).timestamp()
        {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl S3 for SluiceS3 {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.platform.state.list_buckets().map_err(internal)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|(name, created)| s3s::dto::Bucket {
                        name: Some(name),
                        creation_date: Some(timestamp(created)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            owner: Some(Owner {
                display_name: Some("sluice".into()),
                id: Some("sluice".into()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = &req.input.bucket;
        Bucket::parse(name).map_err(|e| s3_error!(InvalidBucketName, "{e}"))?;
        if !self
            .platform
            .state
            .create_bucket(name, Utc::now())
            .map_err(internal)?
        {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "bucket {name} already exists"
            ));
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let name = &req.input.bucket;
        match self.platform.state.delete_bucket(name) {
            Ok(()) => Ok(S3Response::new(DeleteBucketOutput::default())),
            Err(sluice_state::Error::BucketNotEmpty(_)) => {
                Err(s3_error!(BucketNotEmpty, "bucket {name} is not empty"))
            }
            Err(sluice_state::Error::NotFound { .. }) => {
                Err(s3_error!(NoSuchBucket, "bucket {name} does not exist"))
            }
            Err(e) => Err(internal(e)),
        }
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let mut input = req.input;
        let body = input.body.take();
        let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
        let refused = body_checks(&req.headers, req.region.is_some(), &input.content_md5)
            .and_then(|checks| self.names(bucket, key).map(|_| checks))
            .and_then(|checks| {
                let exists = matches!(input.if_none_match, Some(ETagCondition::Any))
                    && self
                        .platform
                        .state
                        .object_meta(bucket, key)
                        .map_err(internal)?
                        .is_some();
                if exists {
                    return Err(s3_error!(
                        PreconditionFailed,
                        "{bucket}/{key} already exists"
                    ));
                }
                Ok(checks)
            });
        let checks = match refused {
            Ok(checks) => checks,
            Err(e) => {
                discard(body).await;
                return Err(e);
            }
        };
        let body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let options = PutOptions {
            content_type: input.content_type,
            metadata: input.metadata.unwrap_or_default().into_iter().collect(),
            body: checks,
        };
        let (_, _, meta) = self
            .platform
            .put_object(bucket, key, body, "sluice:s3", options)
            .await
            .map_err(put_error)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let meta = self.meta(&input.bucket, &input.key)?;
        Self::preconditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let range = match input.range {
            Some(r) => Some(r.check(meta.size).map_err(|_| {
                s3_error!(
                    InvalidRange,
                    "the range is outside the object's {} bytes",
                    meta.size
                )
            })?),
            None => None,
        };
        let (bucket, key) = self.names(&input.bucket, &input.key)?;
        let stream = self
            .platform
            .objects
            .read_range(&bucket, &key, range.clone())
            .await
            .map_err(|e| put_error(PutError::Store(Box::new(e))))?;
        let length = range.as_ref().map(|r| r.end - r.start).unwrap_or(meta.size);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(SyncStream(Mutex::new(stream)))),
            content_length: Some(length as i64),
            content_range: range.map(|r| {
                format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                )
            }),
            accept_ranges: Some("bytes".into()),
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified)),
            metadata: metadata(&meta),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let meta = self.meta(&input.bucket, &input.key)?;
        Self::preconditions(
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(meta.size as i64),
            accept_ranges: Some("bytes".into()),
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified)),
            metadata: metadata(&meta),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.platform
            .delete_object(&input.bucket, &input.key, "sluice:s3")
            .await
            .map_err(put_error)?;
        Ok(S3Response::with_status(
            DeleteObjectOutput::default(),
            axum::http::StatusCode::NO_CONTENT,
        ))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket)?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in input.delete.objects {
            match self
                .platform
                .delete_object(&input.bucket, &object.key, "sluice:s3")
                .await
            {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let err = put_error(e);
                    errors.push(s3s::dto::Error {
                        code: Some(err.code().as_str().to_string()),
                        key: Some(object.key),
                        message: err.message().map(String::from),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let credentials = req.credentials.clone();
        let input = req.input;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copying from an access point is not supported"
            ));
        };
        // The destination's write access was checked before the call; the source needs read access.
        let key_id = credentials.map(|c| c.access_key).unwrap_or_default();
        if access_of(&self.platform, &key_id, src_bucket) < Access::ReadOnly {
            return Err(s3_error!(
                AccessDenied,
                "no read access to bucket {src_bucket}"
            ));
        }
        let source = self.meta(src_bucket, src_key)?;
        Self::preconditions(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed, "copy source precondition failed")
            } else {
                e
            }
        })?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if **src_bucket == *input.bucket && **src_key == *input.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
            ));
        }
        let from = self.names(src_bucket, src_key)?;
        let to = self.names(&input.bucket, &input.key)?;
        let version = self
            .platform
            .objects
            .copy((&from.0, &from.1), (&to.0, &to.1))
            .await
            .map_err(|e| put_error(PutError::Store(Box::new(e))))?;
        let options = if replace {
            PutOptions {
                content_type: input.content_type,
                metadata: input.metadata.unwrap_or_default().into_iter().collect(),
                ..Default::default()
            }
        } else {
            PutOptions {
                content_type: source.content_type.clone(),
                metadata: source.metadata.clone(),
                ..Default::default()
            }
        };
        let object = sluice_lake::objects::object_ref(
            &to.0,
            &to.1,
            source.size,
            source.sha256.clone(),
            version,
        );
        let (_, _, meta) = self
            .platform
            .record_created(object, source.etag.clone(), "sluice:s3", options)
            .map_err(put_error)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(timestamp(meta.last_modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = url_encoded(input.encoding_type.as_ref());
        let prefix = input.prefix.clone().unwrap_or_default();
        let token_key = match &input.continuation_token {
            Some(t) => Some(
                hex::decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(InvalidArgument, "the continuation token is invalid")
                    })?,
            ),
            None => None,
        };
        let after = token_key
            .or_else(|| input.start_after.clone())
            .unwrap_or_default();
        let max = max_keys(input.max_keys);
        let page = self.page(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            &after,
            max,
        )?;
        let key_count = (page.objects.len() + page.prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode_key(&prefix, url)),
            delimiter: input.delimiter.map(|d| encode_key(&d, url)),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            is_truncated: Some(page.truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: page
                .truncated
                .then(|| page.last.as_ref().map(hex::encode))
                .flatten(),
            start_after: input.start_after.map(|s| encode_key(&s, url)),
            encoding_type: input.encoding_type,
            contents: Some(page.contents(url)),
            common_prefixes: Some(page.common_prefixes(url)),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = url_encoded(input.encoding_type.as_ref());
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = max_keys(input.max_keys);
        let marker = input.marker.clone().unwrap_or_default();
        let page = self.page(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            &marker,
            max,
        )?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(encode_key(&prefix, url)),
            marker: input.marker.map(|m| encode_key(&m, url)),
            delimiter: input.delimiter.clone().map(|d| encode_key(&d, url)),
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            next_marker: (page.truncated && input.delimiter.is_some())
                .then(|| page.last.as_ref().map(|l| encode_key(l, url)))
                .flatten(),
            encoding_type: input.encoding_type,
            contents: Some(page.contents(url)),
            common_prefixes: Some(page.common_prefixes(url)),
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        // Buckets are not versioned: every object has one version, "null", the latest.
        let input = req.input;
        let url = url_encoded(input.encoding_type.as_ref());
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = max_keys(input.max_keys);
        let marker = input.key_marker.clone().unwrap_or_default();
        let page = self.page(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            &marker,
            max,
        )?;
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(encode_key(&prefix, url)),
            delimiter: input.delimiter.map(|d| encode_key(&d, url)),
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            key_marker: input.key_marker,
            next_key_marker: page.truncated.then(|| page.last.clone()).flatten(),
            encoding_type: input.encoding_type,
            versions: Some(
                page.objects
                    .iter()
                    .map(|m| ObjectVersion {
                        key: Some(encode_key(&m.key, url)),
                        e_tag: Some(etag(&m.etag)),
                        size: Some(m.size as i64),
                        last_modified: Some(timestamp(m.last_modified)),
                        version_id: Some("null".into()),
                        is_latest: Some(true),
                        ..Default::default()
                    })
                    .collect(),
            ),
            common_prefixes: Some(page.common_prefixes(url)),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.names(&input.bucket, &input.key)?;
        let upload = sluice_state::Upload {
            upload_id: uuid::Uuid::now_v7().simple().to_string(),
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            content_type: input.content_type,
            metadata: input.metadata.unwrap_or_default().into_iter().collect(),
            initiated: Utc::now(),
        };
        self.platform
            .state
            .create_upload(&upload)
            .map_err(internal)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload.upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let mut input = req.input;
        let body = input.body.take();
        let accepted = body_checks(&req.headers, req.region.is_some(), &input.content_md5)
            .and_then(|checks| {
                let upload = self.upload(&input.upload_id, &input.bucket, &input.key)?;
                if !(1..=10_000).contains(&input.part_number) {
                    return Err(s3_error!(
                        InvalidArgument,
                        "part numbers go from 1 to 10000"
                    ));
                }
                Ok((checks, upload))
            });
        let (checks, upload) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                discard(body).await;
                return Err(e);
            }
        };
        let body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let state = self.platform.state.clone();
        let upload_id = upload.upload_id.clone();
        let recorded_slots = move || {
            let parts = state.list_upload_parts(&upload_id).ok()?;
            Some(
                parts
                    .into_iter()
                    .filter(|p| p.offset.is_some())
                    .map(|p| p.part_number)
                    .collect(),
            )
        };
        let target = PartTarget {
            upload_id: &upload.upload_id,
            number: input.part_number as u32,
            declared_len: declared_length(&req.headers, input.content_length),
            recorded_slots: &recorded_slots,
        };
        let part = self
            .platform
            .objects
            .put_part(&target, body, &checks)
            .await
            .map_err(|e| put_error(PutError::Store(Box::new(e))))?;
        self.platform
            .state
            .put_upload_part(
                &upload.upload_id,
                &UploadPart {
                    part_number: input.part_number as u32,
                    size: part.size,
                    etag: part.md5.clone(),
                    sha256: part.sha256,
                    offset: part.offset,
                    last_modified: Utc::now(),
                },
            )
            .map_err(internal)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.md5)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let upload = self.upload(&input.upload_id, &input.bucket, &input.key)?;
        let stored: HashMap<u32, UploadPart> = self
            .platform
            .state
            .list_upload_parts(&upload.upload_id)
            .map_err(internal)?
            .into_iter()
            .map(|p| (p.part_number, p))
            .collect();
        let requested = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if requested.is_empty() {
            return Err(s3_error!(MalformedXML, "the upload lists no parts"));
        }
        let numbers: Vec<u32> = requested
            .iter()
            .map(|p| p.part_number.unwrap_or(0).max(0) as u32)
            .collect();
        if numbers.windows(2).any(|w| w[1] <= w[0]) {
            return Err(s3_error!(
                InvalidPartOrder,
                "parts must be listed in ascending order"
            ));
        }
        let mut md5_of_md5s = Md5::new();
        let mut parts = Vec::with_capacity(numbers.len());
        for (i, (part, n)) in requested.iter().zip(&numbers).enumerate() {
            let Some(found) = stored.get(n) else {
                return Err(s3_error!(InvalidPart, "part {n} was not uploaded"));
            };
            if let Some(e) = &part.e_tag
                && e.value() != found.etag
            {
                return Err(s3_error!(InvalidPart, "part {n}'s ETag does not match"));
            }
            if i + 1 < requested.len() && found.size < MIN_PART_SIZE {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {n} is smaller than 5 MiB and not the last part"
                ));
            }
            md5_of_md5s.update(hex::decode(&found.etag).map_err(internal)?);
            parts.push(PartRef {
                number: *n,
                sha256: found.sha256.clone(),
                size: found.size,
                offset: found.offset,
            });
        }
        let (bucket, key) = self.names(&upload.bucket, &upload.key)?;
        let assembled = self
            .platform
            .objects
            .assemble(&bucket, &key, &upload.upload_id, &parts)
            .await
            .map_err(|e| put_error(PutError::Store(Box::new(e))))?;
        let multipart_etag = format!("{}-{}", hex::encode(md5_of_md5s.finalize()), numbers.len());
        let options = PutOptions {
            content_type: upload.content_type.clone(),
            metadata: upload.metadata.clone(),
            ..Default::default()
        };
        self.platform
            .record_created(
                assembled.object,
                multipart_etag.clone(),
                "sluice:s3",
                options,
            )
            .map_err(put_error)?;
        self.forget_upload(&upload.upload_id).await;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(upload.bucket.clone()),
            key: Some(upload.key.clone()),
            e_tag: Some(etag(&multipart_etag)),
            location: Some(format!("/{}/{}", upload.bucket, upload.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let upload = self.upload(&input.upload_id, &input.bucket, &input.key)?;
        self.forget_upload(&upload.upload_id).await;
        Ok(S3Response::with_status(
            AbortMultipartUploadOutput::default(),
            axum::http::StatusCode::NO_CONTENT,
        ))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let upload = self.upload(&input.upload_id, &input.bucket, &input.key)?;
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let all: Vec<UploadPart> = self
            .platform
            .state
            .list_upload_parts(&upload.upload_id)
            .map_err(internal)?
            .into_iter()
            .filter(|p| p.part_number > marker)
            .collect();
        let truncated = all.len() > max;
        let parts: Vec<UploadPart> = all.into_iter().take(max).collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(upload.bucket.clone()),
            key: Some(upload.key.clone()),
            upload_id: Some(upload.upload_id.clone()),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: parts.last().map(|p| p.part_number as i32),
            parts: Some(
                parts
                    .iter()
                    .map(|p| Part {
                        part_number: Some(p.part_number as i32),
                        size: Some(p.size as i64),
                        e_tag: Some(etag(&p.etag)),
                        last_modified: Some(timestamp(p.last_modified)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .platform
            .state
            .list_uploads(&input.bucket)
            .map_err(internal)?;
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(
                uploads
                    .into_iter()
                    .filter(|u| u.key.starts_with(&prefix))
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(timestamp(u.initiated)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

impl SluiceS3 {
    fn upload(&self, upload_id: &str, bucket: &str, key: &str) -> S3Result<sluice_state::Upload> {
        match self
            .platform
            .state
            .get_upload(upload_id)
            .map_err(internal)?
        {
            Some(u) if u.bucket == bucket && u.key == key => Ok(u),
            _ => Err(s3_error!(NoSuchUpload, "upload {upload_id} does not exist")),
        }
    }

    async fn forget_upload(&self, upload_id: &str) {
        if let Err(e) = self.platform.objects.delete_parts(upload_id).await {
            warn!(upload_id, error = %e, "could not delete the parts of a finished upload");
        }
        if let Err(e) = self.platform.state.delete_upload(upload_id) {
            warn!(upload_id, error = %e, "could not forget a finished upload");
        }
    }
}

/// The access a key has to a bucket (None for unknown keys).
fn access_of(platform: &Platform, key_id: &str, bucket: &str) -> Access {
    platform
        .s3_keys
        .iter()
        .find(|k| k.access_key_id == key_id)
        .map(|k| k.access_to(bucket))
        .unwrap_or(Access::None)
}

/// Secrets of the configured keys (never logged).
struct Keys(HashMap<String, String>);

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0
            .get(access_key)
            .map(|s| SecretKey::from(s.as_str()))
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "the access key id does not exist"))
    }
}

/// Per-bucket grants: anonymous requests are refused, read-only keys cannot write.
struct Grants(Arc<Platform>);

fn is_write(op: &str) -> bool {
    [
        "Put", "Delete", "Create", "Copy", "Upload", "Complete", "Abort", "Restore",
    ]
    .iter()
    .any(|p| op.starts_with(p))
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Grants {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are not allowed; sign them with an access key"
            ));
        };
        let op = cx.s3_op().name();
        let bucket = match cx.s3_path() {
            s3s::path::S3Path::Root => None,
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => {
                Some(bucket.to_string())
            }
        };
        let key = self
            .0
            .s3_keys
            .iter()
            .find(|k| k.access_key_id == credentials.access_key);
        let granted = match (key, &bucket) {
            (None, _) => Access::None,
            (Some(k), Some(b)) => k.access_to(b),
            (Some(k), None) => k.default_access,
        };
        let needed = if is_write(op) {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        };
        if granted < needed {
            return Err(s3_error!(
                AccessDenied,
                "access key {} may not {op} on {}",
                credentials.access_key,
                bucket.as_deref().unwrap_or("this account")
            ));
        }
        Ok(())
    }
}

/// A new random access key id (20 characters, like AWS's) and secret (40 characters).
pub fn generate_key_pair() -> (String, String) {
    use rand::Rng;
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let id: String = "SLK"
        .chars()
        .chain((0..17).map(|_| UPPER[rng.random_range(0..UPPER.len())] as char))
        .collect();
    let secret: String = (0..40)
        .map(|_| ANY[rng.random_range(0..ANY.len())] as char)
        .collect();
    (id, secret)
}

/// Resolves the configured keys' secrets (inline or from the environment) plus the `SLUICE_S3_*` key.
pub fn resolve_keys(keys: &[S3Key]) -> anyhow::Result<(Vec<S3Key>, HashMap<String, String>)> {
    let mut resolved = keys.to_vec();
    let mut secrets = HashMap::new();
    for k in keys {
        let secret = match &k.secret {
            sluice_model::config::Secret::Inline(s) => s.clone(),
            sluice_model::config::Secret::Env(var) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "s3 key {}: environment variable {var} is not set",
                    k.access_key_id
                )
            })?,
        };
        secrets.insert(k.access_key_id.clone(), secret);
    }
    if let (Ok(id), Ok(secret)) = (
        std::env::var("SLUICE_S3_ACCESS_KEY_ID"),
        std::env::var("SLUICE_S3_SECRET_ACCESS_KEY"),
    ) {
        secrets.insert(id.clone(), secret.clone());
        resolved.retain(|k| k.access_key_id != id);
        resolved.push(S3Key {
            access_key_id: id,
            secret: sluice_model::config::Secret::Env("SLUICE_S3_SECRET_ACCESS_KEY".into()),
            default_access: Access::ReadWrite,
            buckets: BTreeMap::new(),
        });
    }
    Ok((resolved, secrets))
}

/// Bodies of at most this many bytes are read before s3s sees the request.
const READ_FIRST: u64 = 64 << 10;

/// Hands a request to s3s, its body read first when small (a declared length up to
/// [`READ_FIRST`], with or without `Expect: 100-continue`: reading it sends the 100).
/// s3s refuses some requests before any handler runs (a key over 1,024 bytes, while
/// parsing the path) and leaves their body unread on the connection, where the client's
/// next request then began with it (boto3 saw a bare 400 or SignatureDoesNotMatch for its
/// next call, now and then; botocore sends every PutObject body, however small, with
/// `Expect: 100-continue`). A handler's own refusals drain the body (`discard`).
async fn read_small_body(
    service: s3s::service::S3Service,
    req: axum::http::Request<hyper::body::Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let (parts, body) = req.into_parts();
    let mut body = s3s::Body::from(body);
    let small = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= READ_FIRST);
    if small {
        body.store_all_limited(READ_FIRST as usize)
            .await
            .map_err(s3s::HttpError::new)?;
    }
    service
        .call(axum::http::Request::from_parts(parts, body))
        .await
}

/// Serves the S3 protocol on `listener` until `shutdown`.
pub async fn serve(
    platform: Arc<Platform>,
    secrets: HashMap<String, String>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let mut builder = s3s::service::S3ServiceBuilder::new(SluiceS3::new(platform.clone()));
    builder.set_auth(Keys(secrets));
    builder.set_access(Grants(platform));
    let service = builder.build();
    let service = hyper::service::service_fn(move |req| read_small_body(service.clone(), req));
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        let (socket, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "s3: accept failed");
                    continue;
                }
            },
        };
        let service = service.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(socket);
            let _ = http.serve_connection(io, service).await;
        });
    }
}
