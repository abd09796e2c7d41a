//! A benchmark yardstick, not a product: the least work an S3 server can do for `aws s3 cp`.
//!
//! It answers PutObject, CreateMultipartUpload, UploadPart and CompleteMultipartUpload,
//! reads every body to the end and throws it away: no signature check, no hashing, no disk.
//! `bench/s3-throughput.sh` runs the same uploads against it to measure what the client
//! alone costs on this machine, the ceiling any S3 server could reach here.
//!
//! usage: cargo run --release --example s3_null_sink -- [PORT]   (prints the bound address)

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

async fn drain(body: Body) -> Result<u64, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n)
}

async fn handle(Query(q): Query<HashMap<String, String>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if drain(req.into_body()).await.is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let etag = [(header::ETAG, "\"d41d8cd98f00b204e9800998ecf8427e\"")];
    let xml = |body: String| ([(header::CONTENT_TYPE, "application/xml")], body).into_response();
    let (bucket, key) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    match method {
        Method::PUT => (etag, "").into_response(),
        Method::POST if q.contains_key("uploads") => xml(format!(
            "<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key>\
             <UploadId>null-sink</UploadId></InitiateMultipartUploadResult>"
        )),
        Method::POST if q.contains_key("uploadId") => xml(format!(
            "<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key>\
             <ETag>\"d41d8cd98f00b204e9800998ecf8427e-1\"</ETag></CompleteMultipartUploadResult>"
        )),
        _ => StatusCode::NOT_IMPLEMENTED.into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(handle);
    axum::serve(listener, app).await
}
