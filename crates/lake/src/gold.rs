//! Gold models: a SELECT over other tables, materialized as a Delta table (CREATE TABLE AS semantics).
//!
//! A refresh recomputes the whole model and replaces the table's files in
//! one commit, so readers see the old result or the new one, never a mix.

use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::StreamExt;

use crate::delta::{self, FileWriter};
use crate::sql::Session;
use crate::validate::storage_type;
use crate::{Error, LakePaths};

/// What a refresh did.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    /// Rows in the new result.
    pub rows: u64,
    /// Bytes of Parquet written.
    pub bytes_written: u64,
    /// Delta version committed.
    pub version: i64,
}

/// Recomputes a gold model from `sql` and replaces the table's contents.
pub async fn refresh(
    paths: &LakePaths,
    session: &Session,
    table: &str,
    location: &str,
    sql: &str,
    description: Option<&str>,
) -> Result<RefreshReport, Error> {
    let df = session.dataframe(sql).await.map_err(|e| match e {
        Error::Sql(text) if text.contains("not found") && text.contains("table") => {
            Error::MissingInput(format!("gold model {table}: {text}"))
        }
        other => other,
    })?;
    let source_schema = df.schema().as_arrow().clone();
    let schema = arrow::datatypes::Schema::new(
        source_schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_data_type(storage_type(f.data_type()))
                    .with_nullable(true)
            })
            .collect::<Vec<_>>(),
    );
    let storage_schema = std::sync::Arc::new(schema.clone());
    let url = paths.url(location)?;
    let mut existing = delta::open(table, url.clone()).await?;
    if let Some(t) = &existing {
        let current = t
            .snapshot()
            .map_err(|e| Error::delta(table, e))?
            .snapshot()
            .arrow_schema();
        let same = current.fields().len() == schema.fields().len()
            && current
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            // The model's shape changed: a gold table is derived data, so start it afresh.
            let dir = url
                .to_file_path()
                .map_err(|_| Error::Internal(format!("{url} is not a local path")))?;
            // Emptied, not removed: the directory stays where `paths.url` found it.
            std::fs::remove_dir_all(&dir)
                .and_then(|()| std::fs::create_dir_all(&dir))
                .map_err(|e| Error::Io {
                    what: format!("replacing {}", dir.display()),
                    source: e,
                })?;
            existing = None;
        }
    }
    let mut target = match existing {
        Some(t) => t,
        None => {
            delta::open_or_create(table, paths.url(location)?, &schema, &[], description).await?
        }
    };
    let removes = {
        let snapshot = target.snapshot().map_err(|e| Error::delta(table, e))?;
        let log_store = target.log_store();
        let files: Vec<_> = futures::TryStreamExt::try_collect(
            snapshot.snapshot().file_views(log_store.as_ref(), None),
        )
        .await
        .map_err(|e| Error::delta(table, e))?;
        files
            .iter()
            .map(|f| f.remove_action(true))
            .collect::<Vec<_>>()
    };
    let mut writer = FileWriter::new(table, &target)?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| Error::Sql(format!("gold model {table}: {e}")))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| Error::Sql(format!("gold model {table}: {e}")))?;
        let columns = batch
            .columns()
            .iter()
            .zip(storage_schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Sql(format!("gold model {table}: {e}")))?;
        let batch = arrow::array::RecordBatch::try_new(storage_schema.clone(), columns)
            .map_err(|e| Error::Sql(format!("gold model {table}: {e}")))?;
        writer.write(batch).await?;
    }
    let rows = writer.rows();
    let adds = writer.finish(&[]).await?;
    let bytes_written = adds.iter().map(|a| a.size.max(0) as u64).sum();
    let version = delta::commit(
        table,
        &mut target,
        adds,
        removes,
        Vec::new(),
        DeltaOperation::Write {
            mode: SaveMode::Overwrite,
            partition_by: None,
            predicate: None,
        },
    )
    .await?;
    Ok(RefreshReport {
        rows,
        bytes_written,
        version,
    })
}
