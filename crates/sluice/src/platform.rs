//! The running platform: project + state store + object store + lake, wired once.
//!
//! Every writer (CLI `put`, HTTP `PUT /v1/objects`, the watched folder, the
//! demo) goes through [`Platform::put_object`], which stores the object and
//! then durably records its object-created event together with the jobs its
//! triggers start, before returning: an acknowledged write always has its event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use chrono::Utc;
use futures::Stream;
use sluice_lake::objects::Objects;
use sluice_lake::sql::{Session, Statement, TableEntry};
use sluice_lake::validate::CompiledContract;
use sluice_lake::{LakePaths, delta};
use sluice_model::config::{Layer, Project};
use sluice_model::event::{Event, EventId, EventKind, ObjectRef};
use sluice_model::key::{BucketName, ObjectKey};
use sluice_state::{ExecutionStore, NewJob, ObjectMeta, SqliteStore, StateStore, TableVersion};
use tokio::sync::Notify;
use uuid::Uuid;

/// The quarantine's name where a table's is asked for (compaction, its commands).
pub use sluice_lake::ingest::QUARANTINE_TABLE as QUARANTINE;

/// Everything a command needs, opened once.
pub struct Platform {
    /// The validated project.
    pub project: Project,
    /// Directory of sluice.toml.
    pub project_dir: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Durable state.
    pub state: Arc<dyn StateStore>,
    /// Durable workflow executions (the same store).
    pub executions: Arc<dyn ExecutionStore>,
    /// Landing zone objects.
    pub objects: Objects,
    /// Lake locations.
    pub paths: LakePaths,
    /// Compiled contracts of silver tables.
    pub contracts: HashMap<String, Arc<CompiledContract>>,
    /// Table locations by name.
    pub locations: HashMap<String, String>,
    /// Wakes the workers when a job is queued in this process.
    pub wake: Arc<Notify>,
    /// Access keys of the S3 endpoint (with their grants; secrets are resolved by `up`).
    pub s3_keys: Vec<sluice_model::config::S3Key>,
    /// One lock per table: ingests and removals share it, compaction takes it alone.
    table_locks: HashMap<String, Arc<tokio::sync::RwLock<()>>>,
    /// Delta tables kept open for queries, ingests and compaction.
    pub tables: sluice_lake::delta::TableCache,
    /// Tables with a background compaction under way.
    compacting: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The runtime the platform was opened on (requests and ingests): a compaction's
    /// commit, which holds tables' locks alone, runs there, not on the flushes' niced
    /// one-thread runtime, where it waited for a CPU-bound merge to yield while every
    /// ingest waited for it (1.2-2.7 s stalls in the small-files case, session 38).
    commits: Option<tokio::runtime::Handle>,
    /// Workflow executions this process is running (each runs in one place).
    pub running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Small objects acknowledged whose jobs have not run yet: what a query waits for.
    pub pending: crate::pending::PendingWrites,
}

/// Loads and validates a project file (or the `sluice.toml` of a project directory),
/// reporting every problem at once.
pub fn load_project(path: &Path) -> Result<(Project, PathBuf)> {
    let in_dir;
    let path = if path.is_dir() {
        in_dir = path.join("sluice.toml");
        in_dir.as_path()
    } else {
        path
    };
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (run `sluice init` to create a project)",
            path.display()
        )
    })?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let file_name = path.display().to_string();
    let read_file = |rel: &str| {
        let p = dir.join(rel);
        std::fs::read_to_string(&p).map_err(|e| e.to_string())
    };
    let project = Project::parse(&text, &file_name, &read_file).map_err(|problems| {
        anyhow::anyhow!(
            "{problems}\n{} problem(s) in {file_name}; nothing was started",
            problems.0.len()
        )
    })?;
    Ok((project, dir))
}

/// Compiles every silver contract; all problems are reported at once.
pub fn compile_contracts(project: &Project) -> Result<HashMap<String, Arc<CompiledContract>>> {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for table in project.tables.values() {
        if let Some(contract) = &table.contract {
            match CompiledContract::compile(contract, &table.format) {
                Ok(c) => {
                    let schema = c.output_schema();
                    for p in &table.partition_by {
                        if let Ok(field) = schema.field_with_name(p)
                            && matches!(
                                field.data_type(),
                                arrow::datatypes::DataType::Float64
                                    | arrow::datatypes::DataType::Timestamp(..)
                            )
                        {
                            problems.push(format!(
                                "table {}: partition column {p:?} is of type {}, which makes a directory per value; partition by a date, integer or string",
                                table.name,
                                field.data_type()
                            ));
                        }
                    }
                    out.insert(table.name.clone(), Arc::new(c));
                }
                Err(errors) => {
                    for e in errors {
                        problems.push(format!("table {}: {e}", table.name));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}\n{} problem(s) in table contracts; nothing was started",
            problems.join("\n"),
            problems.len()
        );
    }
    Ok(out)
}

fn schema_json(schema: &arrow::datatypes::Schema) -> serde_json::Value {
    serde_json::Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": f.data_type().to_string(),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

impl Platform {
    /// Opens the platform for a project: state, objects, lake, compiled contracts, catalog.
    pub async fn open(project: Project, project_dir: PathBuf, data_dir: PathBuf) -> Result<Self> {
        let contracts = compile_contracts(&project)?;
        crate::workflows::check_definitions(&project)?;
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let state = SqliteStore::open(&data_dir.join("state.db"))
            .with_context(|| format!("opening {}", data_dir.join("state.db").display()))?;
        let objects = Objects::open_local(&data_dir)?;
        for bucket in project.buckets.keys() {
            std::fs::create_dir_all(data_dir.join("objects").join(bucket))
                .with_context(|| format!("creating bucket {bucket}"))?;
            state.create_bucket(bucket, Utc::now())?;
        }
        let paths = LakePaths::new(&data_dir);
        let locations = project
            .tables
            .values()
            .map(|t| {
                (
                    t.name.clone(),
                    LakePaths::location(t.layer.as_str(), &t.name, t.schema_version),
                )
            })
            .collect();
        let s3_keys = project.s3.keys.clone();
        let table_locks = project
            .tables
            .keys()
            .map(|t| (t.clone(), Arc::default()))
            .collect();
        let state = Arc::new(state);
        let platform = Self {
            executions: state.clone(),
            table_locks,
            tables: Default::default(),
            compacting: Default::default(),
            commits: tokio::runtime::Handle::try_current().ok(),
            running: Default::default(),
            pending: Default::default(),
            s3_keys,
            project,
            project_dir,
            data_dir,
            state,
            objects,
            paths,
            contracts,
            locations,
            wake: Arc::new(Notify::new()),
        };
        platform.register_catalog().await?;
        Ok(platform)
    }

    /// Registers every silver table's schema version, refusing incompatible changes, and creates empty tables so models can read them.
    async fn register_catalog(&self) -> Result<()> {
        let mut problems = Vec::new();
        for table in self.project.tables.values() {
            let location = &self.locations[&table.name];
            let schema = match (table.layer, self.contracts.get(&table.name)) {
                (Layer::Silver, Some(c)) => Some(c.output_schema()),
                _ => None,
            };
            let schema_value = schema
                .as_ref()
                .map(|s| schema_json(s))
                .unwrap_or(serde_json::Value::Null);
            let versions = self.state.table_versions(&table.name)?;
            if let Some(previous) = versions.iter().find(|v| v.version == table.schema_version)
                && schema.is_some()
                && previous.schema != schema_value
            {
                problems.push(format!(
                    "table {}: the contract changes the stored schema of version {} ({}); raise `schema_version` to {} to start a new version",
                    table.name,
                    table.schema_version,
                    describe_change(&previous.schema, &schema_value),
                    table.schema_version + 1
                ));
                continue;
            }
            if let Some(newer) = versions.iter().map(|v| v.version).max()
                && newer > table.schema_version
            {
                problems.push(format!(
                    "table {}: schema_version {} is older than the registered version {newer}",
                    table.name, table.schema_version
                ));
                continue;
            }
            let registered_at = versions
                .iter()
                .find(|v| v.version == table.schema_version)
                .map(|v| v.registered_at)
                .unwrap_or_else(Utc::now);
            self.state.register_table_version(&TableVersion {
                table: table.name.clone(),
                layer: table.layer.as_str().to_string(),
                version: table.schema_version,
                schema: schema_value,
                partition_by: table.partition_by.clone(),
                description: table.description.clone(),
                owner: table.owner.clone(),
                location: location.clone(),
                registered_at,
            })?;
            if let Some(schema) = schema {
                delta::open_or_create(
                    &table.name,
                    self.paths.url(location)?,
                    &schema,
                    &table.partition_by,
                    table.description.as_deref(),
                )
                .await?;
            }
        }
        if !problems.is_empty() {
            bail!("{}\nnothing was started", problems.join("\n"));
        }
        // The quarantine exists from the start too: `sluice.quarantine` answers (no rows)
        // before the first ingest has rejected anything.
        if !self.contracts.is_empty() {
            use sluice_lake::ingest::{
                QUARANTINE_DESCRIPTION, QUARANTINE_PARTITION, quarantine_schema,
            };
            delta::open_or_create(
                "quarantine",
                self.paths.url(sluice_lake::LakePaths::QUARANTINE)?,
                &quarantine_schema(),
                &[QUARANTINE_PARTITION.to_string()],
                Some(QUARANTINE_DESCRIPTION),
            )
            .await?;
        }
        Ok(())
    }

    /// Takes the data directory for this process (one `sluice up` or demo at a time on an
    /// embedded data directory) and makes the jobs a crashed predecessor left running due again.
    pub fn own_data_dir(&self) -> Result<std::fs::File> {
        let file = self.lock_data_dir()?;
        let recovered = self.state.recover_orphaned_jobs(Utc::now())?;
        if recovered > 0 {
            tracing::warn!(
                jobs = recovered,
                "recovered jobs left running by a process that stopped abruptly"
            );
        }
        Ok(file)
    }

    /// Takes the data directory's lock (held until the returned file is dropped).
    pub fn lock_data_dir(&self) -> Result<std::fs::File> {
        let path = self.data_dir.join("LOCK");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            // This process serves the data directory: it cleans up the tables' tails.
            Ok(()) => self.tables.own_tails(),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another sluice process is serving {}; stop it first (CLI commands like put and query work alongside it)",
                self.data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(file)
    }

    /// Stores an object and records its metadata, event and jobs before returning.
    pub async fn put_object<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: S,
        source: &str,
        options: PutOptions,
    ) -> Result<(Event, usize, ObjectMeta), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (bucket, key) = self.check_target(bucket, key)?;
        let stored = self
            .objects
            .put_stream(&bucket, &key, body, &options.body)
            .await
            .map_err(|e| PutError::Store(Box::new(e)))?;
        self.record_created(stored.object, stored.md5, source, options)
    }

    /// Validates a bucket and key for a write.
    pub fn check_target(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(BucketName, ObjectKey), PutError> {
        let bucket_name =
            BucketName::parse(bucket).map_err(|e| PutError::BadInput(e.to_string()))?;
        if !self
            .bucket_exists(bucket)
            .map_err(|e| PutError::State(e.into()))?
        {
            return Err(PutError::NoSuchBucket(bucket.to_string()));
        }
        let key = ObjectKey::parse(key).map_err(|e| PutError::BadInput(e.to_string()))?;
        Ok((bucket_name, key))
    }

    /// Whether a bucket exists (declared in sluice.toml or created over S3).
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool, sluice_state::Error> {
        Ok(self
            .state
            .list_buckets()?
            .iter()
            .any(|(name, _)| name == bucket))
    }

    /// Records a completed write: metadata, object-created event and triggered jobs, in one transaction.
    pub fn record_created(
        &self,
        object: ObjectRef,
        etag: String,
        source: &str,
        options: PutOptions,
    ) -> Result<(Event, usize, ObjectMeta), PutError> {
        let event = new_event(EventKind::ObjectCreated, object, source);
        let jobs = self.jobs_for(&event);
        let meta = ObjectMeta {
            bucket: event.object.bucket.clone(),
            key: event.object.key.clone(),
            size: event.object.size,
            etag,
            content_type: options.content_type,
            metadata: options.metadata,
            last_modified: event.time,
            sha256: event.object.sha256.clone(),
            version: event.object.version.clone(),
        };
        self.note_pending(&event, jobs.len());
        if let Err(e) = self.state.record_write(&meta, &event, &jobs) {
            self.pending.abandon(event.id.0);
            return Err(PutError::State(e.into()));
        }
        if !jobs.is_empty() {
            self.wake.notify_waiters();
        }
        Ok((event, jobs.len(), meta))
    }

    /// Deletes an object and records its object-removed event; deleting a missing object is not an error (as in S3).
    pub async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        source: &str,
    ) -> Result<(), PutError> {
        let (bucket_name, key_name) = self.check_target(bucket, key)?;
        let Some(meta) = self
            .state
            .object_meta(bucket, key)
            .map_err(|e| PutError::State(e.into()))?
        else {
            return Ok(());
        };
        self.objects
            .delete(&bucket_name, &key_name)
            .await
            .map_err(|e| PutError::Store(Box::new(e)))?;
        let object = ObjectRef {
            bucket: meta.bucket,
            key: meta.key,
            size: 0,
            sha256: String::new(),
            version: meta.version,
        };
        let event = new_event(EventKind::ObjectRemoved, object, source);
        let jobs = self.jobs_for(&event);
        self.note_pending(&event, jobs.len());
        if let Err(e) = self.state.record_removal(&event, &jobs) {
            self.pending.abandon(event.id.0);
            return Err(PutError::State(e.into()));
        }
        if !jobs.is_empty() {
            self.wake.notify_waiters();
        }
        Ok(())
    }

    /// Notes a small object's write for queries to wait for ([`crate::pending`]), before
    /// its jobs are recorded: a worker may finish them before this returns.
    fn note_pending(&self, event: &Event, jobs: usize) {
        if event.object.size <= crate::worker::BATCH.object_bytes {
            let object = format!("{}/{}", event.object.bucket, event.object.key);
            self.pending.begin(event.id.0, jobs, object);
        }
    }

    fn jobs_for(&self, event: &Event) -> Vec<NewJob> {
        self.project
            .pipelines_for(event.kind, &event.object.bucket, &event.object.key)
            .into_iter()
            .map(|t| NewJob {
                pipeline: t.pipeline.clone(),
                trigger: t.name.clone(),
                max_attempts: self.project.pipelines[&t.pipeline].retry.max_attempts,
            })
            .collect()
    }

    /// A SQL session over the lake with the system tables of the state store.
    pub async fn session(&self) -> Result<Session> {
        self.with_system_tables(self.lake_session().await?)
    }

    /// A session for one statement: the system tables, and of the lake's tables those
    /// the statement names ([`Session::open_for`]).
    pub async fn session_for(&self, statement: &Statement) -> Result<Session> {
        let session =
            Session::open_for(&self.paths, &self.lake_entries(), &self.tables, statement).await?;
        self.with_system_tables(session)
    }

    fn with_system_tables(&self, session: Session) -> Result<Session> {
        crate::system::register(&session, self.state.clone(), self.executions.clone())?;
        for table in self
            .project
            .tables
            .values()
            .filter(|t| t.layer == Layer::Bronze)
        {
            crate::system::register_bronze(&session, &table.name, self.objects.clone())?;
        }
        Ok(session)
    }

    /// The lock of a table: ingests share it, compaction takes it alone.
    pub fn table_lock(&self, table: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.table_locks.get(table).cloned().unwrap_or_default()
    }

    /// Marks a background compaction of `table` as started; false when one already runs.
    pub fn begin_compaction(&self, table: &str) -> bool {
        self.compacting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.to_string())
    }

    /// Tables a background compaction is merging now, sorted.
    pub fn compacting(&self) -> Vec<String> {
        self.compacting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Marks the background compaction of `table` as finished.
    pub fn end_compaction(&self, table: &str) {
        self.compacting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(table);
    }

    /// Compacts a silver table's small files (ingests of the table wait for its commit only),
    /// or the quarantine's ([`QUARANTINE`]).
    pub async fn compact(
        self: &Arc<Self>,
        table: &str,
        scope: sluice_lake::compact::Scope<'_>,
    ) -> Result<sluice_lake::compact::CompactReport> {
        if table == QUARANTINE {
            return self.compact_quarantine(scope).await;
        }
        let t = self
            .project
            .tables
            .get(table)
            .with_context(|| format!("no table {table:?} in sluice.toml"))?;
        if t.layer != Layer::Silver {
            bail!(
                "{table} is a {} table; only silver tables are compacted (gold tables are rewritten by each refresh)",
                t.layer.as_str()
            );
        }
        // Ingests go on while the merged files are written and wait only for the commit,
        // which checks that nothing merged was replaced meanwhile. The merge holds no
        // lock: no commit deletes the files it reads (a replaced file stays until a
        // vacuum), and a share held for its seconds made the quarantine's compaction,
        // which waits to take every silver table's lock alone, queue every ingest behind
        // it until the merge ended (1.25 s stalls in the small-files case, session 38).
        let prepared = sluice_lake::compact::prepare(
            &self.paths,
            table,
            &self.locations[table],
            scope,
            &self.tables,
        )
        .await?;
        let Some(prepared) = prepared else {
            return Ok(Default::default());
        };
        let locks = vec![self.table_lock(table)];
        self.commit_alone(locks, prepared).await
    }

    /// Commits a prepared compaction holding `locks` alone (taken in their order), on the
    /// runtime the platform was opened on ([`Platform::commits`]).
    async fn commit_alone(
        self: &Arc<Self>,
        locks: Vec<Arc<tokio::sync::RwLock<()>>>,
        prepared: sluice_lake::compact::Prepared,
    ) -> Result<sluice_lake::compact::CompactReport> {
        let platform = self.clone();
        let commit = async move {
            let mut alone = Vec::with_capacity(locks.len());
            for lock in &locks {
                alone.push(lock.write().await);
            }
            prepared.commit(&platform.tables).await
        };
        let report = match &self.commits {
            Some(runtime) => runtime.spawn(commit).await.map_err(commit_task_error)?,
            None => commit.await,
        };
        Ok(report?)
    }

    /// Deletes the files a silver or gold table, or the quarantine, no longer needs
    /// ([`sluice_lake::vacuum`]): removed more than `retain` ago (None: the table's
    /// `retention` in sluice.toml, seven days unless set; the quarantine's is seven days),
    /// and orphans. It commits nothing and takes no lock: ingests, flushes and compactions
    /// go on meanwhile. None when the table was never written.
    pub async fn vacuum(
        &self,
        table: &str,
        retain: Option<std::time::Duration>,
        sweep: sluice_lake::vacuum::Sweep,
        dry_run: bool,
    ) -> Result<Option<sluice_lake::vacuum::VacuumReport>> {
        let (location, retention) = if table == QUARANTINE {
            (
                LakePaths::QUARANTINE.to_string(),
                sluice_model::config::DEFAULT_RETENTION,
            )
        } else {
            let t = self
                .project
                .tables
                .get(table)
                .with_context(|| format!("no table {table:?} in sluice.toml"))?;
            if t.layer == Layer::Bronze {
                bail!(
                    "{table} is a bronze table: it keeps objects as they arrived, not Delta files; nothing to vacuum"
                );
            }
            (self.locations[table].clone(), t.retention)
        };
        let url = self.paths.url(&location)?;
        let retain = Some(retain.unwrap_or(retention));
        Ok(sluice_lake::vacuum::vacuum(&self.tables, table, url, retain, sweep, dry_run).await?)
    }

    /// Compacts the quarantine's small files: a tail's flush writes a few each time it
    /// runs. Its rows are rewritten by the ingests of every silver table (replacing or
    /// removing an object), each under its own table's lock, so the commit takes all of
    /// them, in name order (no holder of one table's lock waits for another's).
    async fn compact_quarantine(
        self: &Arc<Self>,
        scope: sluice_lake::compact::Scope<'_>,
    ) -> Result<sluice_lake::compact::CompactReport> {
        let prepared = sluice_lake::compact::prepare(
            &self.paths,
            QUARANTINE,
            LakePaths::QUARANTINE,
            scope,
            &self.tables,
        )
        .await?;
        let Some(prepared) = prepared else {
            return Ok(Default::default());
        };
        let mut silver: Vec<&String> = self
            .project
            .tables
            .iter()
            .filter(|(_, t)| t.layer == Layer::Silver)
            .map(|(name, _)| name)
            .collect();
        silver.sort();
        let locks: Vec<_> = silver.into_iter().map(|t| self.table_lock(t)).collect();
        self.commit_alone(locks, prepared).await
    }

    /// A SQL session over the silver and gold tables only: what gold models read, without
    /// copying the state store's history into memory for every refresh.
    pub async fn lake_session(&self) -> Result<Session> {
        Ok(Session::open(&self.paths, &self.lake_entries(), &self.tables).await?)
    }

    /// The silver and gold tables, as SQL sessions register them.
    fn lake_entries(&self) -> Vec<TableEntry> {
        self.project
            .tables
            .values()
            .filter(|t| t.layer != Layer::Bronze)
            .map(|t| TableEntry {
                schema: t.layer.as_str().to_string(),
                name: t.name.clone(),
                location: self.locations[&t.name].clone(),
            })
            .collect()
    }
}

fn new_event(kind: EventKind, object: ObjectRef, source: &str) -> Event {
    Event {
        id: EventId::new(),
        kind,
        source: source.to_string(),
        time: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        correlation_id: Uuid::now_v7(),
        object,
    }
}

/// What a writer may say about an object besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Content type.
    pub content_type: Option<String>,
    /// User metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// What the transport already verified or the client declared about the bytes.
    pub body: sluice_lake::objects::BodyChecks,
}

fn describe_change(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let cols = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or("").to_string(),
                            c["type"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old, new) = (cols(old), cols(new));
    let mut changes = Vec::new();
    for (name, ty) in &old {
        match new.iter().find(|(n, _)| n == name) {
            None => changes.push(format!("column {name} removed")),
            Some((_, t)) if t != ty => changes.push(format!("column {name}: {ty} -> {t}")),
            _ => {}
        }
    }
    for (name, ty) in &new {
        if !old.iter().any(|(n, _)| n == name) {
            changes.push(format!("column {name} {ty} added"));
        }
    }
    if changes.is_empty() {
        "column order or nullability changed".into()
    } else {
        changes.join(", ")
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Bad bucket or key.
    #[error("{0}")]
    BadInput(String),
    /// The bucket is not declared.
    #[error("bucket {0:?} is not declared in sluice.toml")]
    NoSuchBucket(String),
    /// The object store failed (or the upload was interrupted).
    #[error(transparent)]
    Store(Box<sluice_lake::Error>),
    /// The event could not be recorded.
    #[error("recording the event: {0}")]
    State(anyhow::Error),
}

/// A compaction's commit that did not finish because the runtime it ran on is shutting
/// down (its merged files, if written, are left unreferenced, for vacuum, as after any
/// failed commit): the next start's ingests compact again.
#[derive(Debug, thiserror::Error)]
#[error("the compaction's commit was cancelled: the server is stopping")]
pub struct CommitCancelled;

/// Why a compaction's commit task ended without its result: cancelled at shutdown
/// ([`CommitCancelled`]), or a panic.
fn commit_task_error(e: tokio::task::JoinError) -> anyhow::Error {
    if e.is_cancelled() {
        anyhow::Error::new(CommitCancelled)
    } else {
        anyhow::anyhow!("the compaction's commit task died: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_cancelled_at_shutdown_is_told_apart_from_one_that_died() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cancelled = runtime.spawn(std::future::pending::<()>());
        cancelled.abort();
        let e = runtime.block_on(cancelled).unwrap_err();
        assert!(commit_task_error(e).is::<CommitCancelled>());
        let died = runtime.spawn(async { panic!("a bug") });
        let e = runtime.block_on(died).unwrap_err();
        let e = commit_task_error(e);
        assert!(!e.is::<CommitCancelled>());
        assert!(e.to_string().contains("died"), "{e}");
    }
}
