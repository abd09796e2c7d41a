//! The watched landing folder: every new file becomes an object (then moves to `.done/`).
//!
//! A file is taken only once its size has stayed the same across two scans,
//! so a file still being copied in is not uploaded half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_model::config::Watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::platform::{Platform, PutOptions};

const SCAN: Duration = Duration::from_millis(250);
const DONE: &str = ".done";

/// Scans the folder until `shutdown`.
pub async fn run(platform: Arc<Platform>, watch: Watch, shutdown: CancellationToken) {
    let dir = platform.project_dir.join(&watch.dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        warn!(dir = %dir.display(), error = %e, "cannot create the watched folder");
        return;
    }
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SCAN) => {}
        }
        let mut seen = HashMap::new();
        for path in files(&dir) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let size = meta.len();
            seen.insert(path.clone(), size);
            if sizes.get(&path) != Some(&size) {
                continue;
            }
            if let Err(e) = upload(&platform, &watch, &dir, &path).await {
                warn!(file = %path.display(), error = %e, "watched file not uploaded; it stays in place");
            }
        }
        sizes = seen;
    }
}

async fn upload(platform: &Platform, watch: &Watch, dir: &Path, path: &Path) -> anyhow::Result<()> {
    let rel = path.strip_prefix(dir)?;
    let rel_key = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    let key = format!("{}{rel_key}", watch.prefix);
    let file = tokio::fs::File::open(path).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
    let (event, jobs, _) = platform
        .put_object(
            &watch.bucket,
            &key,
            stream,
            "sluice:watch",
            PutOptions::default(),
        )
        .await?;
    let done = dir.join(DONE).join(rel);
    if let Some(parent) = done.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(path, &done)?;
    info!(event_id = %event.id, bucket = %watch.bucket, key = %key, jobs, "watched file uploaded");
    Ok(())
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}
