//! A replica of a shared PostgreSQL source: it brings its embedded database in line with the
//! source at start-up (resuming from its own revision, or reading a snapshot), follows the
//! source's change log into it and the index, and commits writes through the source.
//!
//! Writes: take the source's head lock, apply whatever this replica still lacks up to the
//! head, validate the batch on top of exactly that state, commit it at the source, then apply
//! it here. So a batch is validated against the same data on every replica, and the revision a
//! write returns is global: any replica that has applied it has applied everything before it.
//! Writes that queue on one replica while a commit is under way are committed together at its
//! next turn (group commit): one transaction, each write its own revision, validated on top of
//! the ones before it, refused alone if it fails.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::state::{replay, State, StateError, Write, Written};
use super::write::{ChangeStream, DataPath, DataView, WatchError, WriteError};
use crate::engine::index::{Changes, EntityStore, WriteOp};
use crate::engine::pack::PolicyPack;
use crate::storage::{
    ChangeSet, Head, KeyRecord, PgSource, Poll, RedbStorage, SourceError, SourceLimits, Storage,
    StorageError, WriteKey,
};

/// Where the replica of a shared source is put once start-up has made it.
pub type ReplicaSlot = Arc<std::sync::OnceLock<Arc<Replica>>>;

/// How a replica follows its source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The PostgreSQL connection string.
    pub url: String,
    /// How often the log is polled when no notification comes.
    pub poll: Duration,
    /// Batches the log keeps (0: no count limit); writers prune beyond it.
    pub keep_batches: u64,
    /// How long the log keeps a batch (None: no age limit).
    pub max_age: Option<Duration>,
    /// Listen for commit notifications (false: poll only).
    pub notify: bool,
    /// Bounds on this replica's transactions at the source, and the key window.
    pub limits: SourceLimits,
}

/// Batches one poll reads.
const POLL_BATCHES: u32 = 1000;
/// Entities one snapshot chunk carries (and one local transaction writes).
const SNAPSHOT_CHUNK: u32 = 10_000;
/// How often the age limit is applied to the log.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The longest a batch applied from the source stays not yet durable locally under load.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between attempts when the source does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most this many queued writes are committed in one transaction…
const GROUP_WRITES: usize = 256;
/// …and at most about this many operations (a larger write goes alone).
const GROUP_OPS: usize = 20_000;
/// How long the seed's write may take.
const SEED_DEADLINE: Duration = Duration::from_secs(600);
/// Batches one `WatchChanges` read of the log carries.
const WATCH_BATCHES: u32 = 100;

/// A write waiting for its turn to be committed.
struct Pending {
    write: Write,
    /// The seed: written only when the source holds nothing yet.
    only_if_empty: bool,
    reply: Reply,
}

impl Pending {
    /// The write's deadline and where its outcome goes.
    fn answer_to(self) -> (Instant, Reply) {
        (self.write.deadline, self.reply)
    }
}

/// Where a write's outcome goes.
type Reply = oneshot::Sender<Result<Option<Written>, WriteError>>;

/// Answers each write of a group that failed whole: a write whose own deadline passed is told
/// so, the others that they were not applied (or, for an unanswered commit, that the outcome
/// is unknown).
fn fail_all(writes: impl IntoIterator<Item = (Instant, Reply)>, e: WriteError) {
    let now = Instant::now();
    for (deadline, reply) in writes {
        let answer = match &e {
            WriteError::Source(SourceError::DeadlinePassed { .. })
            | WriteError::State(StateError::DeadlineExceeded)
                if deadline > now =>
            {
                WriteError::GroupDeadline
            }
            WriteError::Source(SourceError::DeadlinePassed { .. }) => {
                StateError::DeadlineExceeded.into()
            }
            e => e.again(),
        };
        let _ = reply.send(Err(answer));
    }
}

/// The writes queued on this replica, and the turn to commit them.
#[derive(Default)]
struct WriteQueue {
    pending: Mutex<VecDeque<Pending>>,
    turn: tokio::sync::Mutex<()>,
}

impl WriteQueue {
    /// The next group: the oldest writes, within [`GROUP_WRITES`] and [`GROUP_OPS`]. A write
    /// whose caller went away, or whose deadline has passed, is dropped here, before it
    /// starts. A conditional write goes alone (its conditions are checked against the head it
    /// commits on), and a key already in the group waits for the next one (where it is found
    /// committed, or not).
    fn next_group(&self) -> Vec<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut group: Vec<Pending> = Vec::new();
        let mut ops = 0;
        while let Some(next) = pending.front() {
            if next.reply.is_closed() {
                tracing::debug!("a queued write's caller went away: dropped before it started");
                pending.pop_front();
                continue;
            }
            if next.write.deadline <= now {
                if let Some(p) = pending.pop_front() {
                    let _ = p.reply.send(Err(StateError::DeadlineExceeded.into()));
                }
                continue;
            }
            let conditional = !next.write.conditions.is_empty();
            let repeated_key = next.write.key.as_ref().is_some_and(|k| {
                group
                    .iter()
                    .any(|p| p.write.key.as_ref().is_some_and(|g| g.key == k.key))
            });
            if !group.is_empty()
                && (conditional
                    || repeated_key
                    || group.len() >= GROUP_WRITES
                    || ops + next.write.ops.len() > GROUP_OPS)
            {
                break;
            }
            ops += next.write.ops.len();
            group.extend(pending.pop_front());
            if conditional {
                break;
            }
        }
        group
    }
}

/// What this replica last heard from its source (for GetDataStatus, metrics and the log).
#[derive(Debug, Default)]
pub struct SourceStatus {
    head: AtomicU64,
    reachable: AtomicBool,
    answered: Mutex<Option<Instant>>,
    /// The latest failure since the source last answered, and when failures began (Unix ms).
    last_error: Mutex<Option<(String, u64)>>,
}

/// A snapshot of [`SourceStatus`].
#[derive(Debug, Clone)]
pub struct SourceView {
    pub head: u64,
    pub reachable: bool,
    pub since_answered: Option<Duration>,
    /// The latest failure since the source last answered, and when failures began (Unix ms).
    pub last_error: Option<(String, u64)>,
}

impl SourceStatus {
    fn answered(&self, head: u64) {
        self.head.fetch_max(head, Ordering::Relaxed);
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!(head, "the shared source answers");
        }
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        {
            let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
            let since = last
                .as_ref()
                .map(|l| l.1)
                .unwrap_or_else(crate::service::state::unix_ms);
            *last = Some((e.to_string(), since));
        }
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "the shared source does not answer: serving decisions from the local copy; writes fail until it is back");
        }
    }

    pub fn view(&self) -> SourceView {
        SourceView {
            head: self.head.load(Ordering::Relaxed),
            reachable: self.reachable.load(Ordering::Relaxed),
            since_answered: self
                .answered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed()),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// A replica of a shared source.
pub struct Replica {
    pub source: PgSource,
    state: Arc<State>,
    pub status: SourceStatus,
    db: PathBuf,
    config: SourceConfig,
    queue: WriteQueue,
}

/// The path a snapshot is read into before it replaces the database.
fn bootstrap_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.bootstrap", db.display()))
}

/// Moves a snapshot read beside the database (at [`bootstrap_path`]) over it, at once.
fn move_into_place(db: &Path) -> Result<(), crate::storage::StorageError> {
    std::fs::rename(bootstrap_path(db), db).map_err(|e| crate::storage::StorageError {
        path: db.to_path_buf(),
        message: format!("cannot move the snapshot into place: {e}"),
        in_use: false,
        full: false,
    })
}

/// Why the replica's start-up, a snapshot or the follower failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("a blocking task of the replica failed: {0}")]
    Task(String),
}

impl From<ReplicaError> for super::error::ServeError {
    fn from(e: ReplicaError) -> Self {
        super::error::ServeError::Replica(Box::new(e))
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> ReplicaError {
    ReplicaError::Task(e.to_string())
}

impl Replica {
    pub fn new(state: Arc<State>, db: &Path, config: SourceConfig) -> Result<Self, SourceError> {
        let source = PgSource::new(&config.url)?.with_limits(config.limits);
        Ok(Replica {
            source: if config.notify {
                source
            } else {
                source.without_notifications()
            },
            state,
            status: SourceStatus::default(),
            db: db.to_path_buf(),
            config,
            queue: WriteQueue::default(),
        })
    }

    /// At start-up: the local database brought in line with the source, and the index built
    /// from it. A local copy of this source is used as it is (the follower catches it up), so
    /// a replica starts even while the source is down; without one, this waits for the
    /// source and reads a snapshot.
    /// With `wait` false, an unreachable source is an error instead of something to wait for
    /// (for the offline commands).
    pub async fn open(
        &self,
        pack: &Arc<PolicyPack>,
        wait: bool,
    ) -> Result<(EntityStore, Arc<dyn Storage>, Option<Head>), ReplicaError> {
        let db = self.db.clone();
        let local = tokio::task::spawn_blocking(move || -> Result<_, StateError> {
            let storage = RedbStorage::open(&db)?;
            let rev = storage.revision()?;
            let source = storage.source()?;
            Ok((storage, rev, source))
        })
        .await
        .map_err(blocking_failed)??;
        let (storage, local_rev, local_source) = local;
        let mut backoff = Duration::from_millis(200);
        let head = loop {
            match self.source.setup().await {
                Ok(head) => {
                    self.status.answered(head.revision);
                    break Some(head);
                }
                Err(e) => {
                    self.status.failed(&e);
                    if !wait {
                        return Err(e.into());
                    }
                    if local_source.is_some() {
                        tracing::warn!(error = %e, revision = local_rev, "the shared source does not answer: starting on the local copy");
                        break None;
                    }
                    tracing::warn!(error = %e, "the shared source cannot be used yet (see the error) and there is no local copy: waiting for it");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let storage: Arc<dyn Storage> = match &head {
            Some(head)
                if local_source.as_deref() != Some(head.source_id.as_str())
                    || local_rev < head.pruned_through
                    || local_rev > head.revision =>
            {
                tracing::info!(
                    local_revision = local_rev,
                    source_revision = head.revision,
                    "reading a snapshot of the shared source"
                );
                drop(storage);
                let fresh = self.snapshot().await?;
                move_into_place(&self.db)?;
                fresh
            }
            _ => Arc::new(storage),
        };
        let pack = pack.clone();
        let for_load = storage.clone();
        let store = tokio::task::spawn_blocking(move || {
            super::startup::load_store(for_load.as_ref(), &pack, None)
        })
        .await
        .map_err(blocking_failed)??;
        Ok((store, storage, head))
    }

    /// Reads one consistent snapshot of the source into a new database beside this one.
    async fn snapshot(&self) -> Result<Arc<dyn Storage>, ReplicaError> {
        let started = Instant::now();
        let path = bootstrap_path(&self.db);
        let _ = std::fs::remove_file(&path);
        let storage = Arc::new(RedbStorage::open(&path)?);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, Vec<u8>, u64)>>(2);
        let local = storage.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<u64, StateError> {
            let mut n = 0u64;
            while let Some(rows) = rx.blocking_recv() {
                n += rows.len() as u64;
                let mut puts = Vec::with_capacity(rows.len());
                let mut put_revisions = Vec::with_capacity(rows.len());
                for (uid, json, at) in rows {
                    puts.push((uid, json));
                    put_revisions.push(at);
                }
                // Revision 0 until the end: a crash mid-way leaves nothing that looks whole.
                local.apply_relaxed(&ChangeSet {
                    changes: Changes {
                        puts,
                        ..Default::default()
                    },
                    put_revisions,
                    ..Default::default()
                })?;
            }
            Ok(n)
        });
        let head = self
            .source
            .snapshot(SNAPSHOT_CHUNK, &tx)
            .await
            .inspect_err(|e| self.status.failed(e));
        drop(tx);
        let written = writer.await.map_err(blocking_failed)??;
        let head = head?;
        self.status.answered(head.revision);
        let local = storage.clone();
        let mark = head.clone();
        tokio::task::spawn_blocking(move || {
            // Entities' schema is not recorded: the load validates them under the live pack.
            local.apply(&ChangeSet {
                changes: Changes {
                    revision: mark.revision,
                    ..Default::default()
                },
                source: Some(mark.source_id),
                ..Default::default()
            })
        })
        .await
        .map_err(blocking_failed)??;
        tracing::info!(
            entities = written,
            revision = head.revision,
            ms = started.elapsed().as_millis() as u64,
            "snapshot of the shared source read"
        );
        Ok(storage)
    }

    /// Reads a new snapshot while decisions go on being served from the old data, then
    /// switches to it at once.
    async fn rebootstrap(&self) -> Result<(), ReplicaError> {
        let pack = self.state.pack().ok_or(StateError::NotReady)?;
        let storage = self.snapshot().await?;
        let for_load = storage.clone();
        let store = tokio::task::spawn_blocking(move || {
            super::startup::load_store(for_load.as_ref(), &pack, None)
        })
        .await
        .map_err(blocking_failed)??;
        self.state
            .replace(store, storage, || move_into_place(&self.db))?;
        tracing::info!(
            revision = self.state.revision(),
            "switched to the new snapshot"
        );
        Ok(())
    }

    /// Commits a batch through the source by its deadline, or never; returns its (global)
    /// revision once committed there and applied here.
    pub async fn write(self: &Arc<Self>, w: Write) -> Result<Written, WriteError> {
        self.submit(w, false).await.map(|r| {
            r.unwrap_or(Written {
                revision: 0,
                replayed: false,
            })
        })
    }

    /// Writes the seed file's entities when the source is empty (None: it was not).
    pub async fn seed(self: &Arc<Self>, path: &Path) -> Result<Option<u64>, WriteError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            StateError::from(crate::engine::error::DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        })?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| {
            StateError::from(crate::engine::error::DataError::Json {
                what: path.display().to_string(),
                source,
            })
        })?;
        let ops = match value {
            serde_json::Value::Array(items) => items.into_iter().map(WriteOp::Upsert).collect(),
            _ => {
                return Err(StateError::from(crate::engine::error::DataError::Invalid {
                    what: path.display().to_string(),
                    message: "is not a JSON array of entities".into(),
                })
                .into())
            }
        };
        let w = Write::new(ops, Instant::now() + SEED_DEADLINE);
        Ok(self.submit(w, true).await?.map(|w| w.revision))
    }

    /// Queues a write and waits for its outcome.
    async fn submit(
        self: &Arc<Self>,
        write: Write,
        only_if_empty: bool,
    ) -> Result<Option<Written>, WriteError> {
        let (reply, outcome) = oneshot::channel();
        tracing::debug!(
            ops = write.ops.len(),
            key = write.key.as_ref().map(|k| k.key.as_str()),
            "write queued"
        );
        self.queue
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending {
                write,
                only_if_empty,
                reply,
            });
        // A task of its own, not this request's future (which its client may cancel), waits
        // for the next turn and commits every write queued by then: this one, or a write
        // queued before whose task has not had its turn yet. A write whose caller went away
        // before its turn is dropped then; once its commit started, it is bounded by its
        // deadline at the source.
        let this = self.clone();
        tokio::spawn(async move { this.commit_queued().await });
        outcome.await.unwrap_or_else(|_| {
            Err(WriteError::Internal(
                "the task committing this write stopped".into(),
            ))
        })
    }

    /// Takes the turn and commits the queue, group by group, until it is empty.
    async fn commit_queued(&self) {
        let _turn = self.queue.turn.lock().await;
        loop {
            let group = self.queue.next_group();
            if group.is_empty() {
                return;
            }
            self.commit_group(group).await;
        }
    }

    /// Notes a failure of the source on the write path (writes fail until one succeeds or a
    /// probe of the head does).
    fn write_failed(&self, e: &SourceError) {
        self.status.failed(e);
        if !matches!(e, SourceError::DeadlinePassed { .. }) {
            self.state.set_source_fault(Some(e.to_string()));
        }
    }

    /// Commits a group of writes in one transaction at the source, each its own revision,
    /// then applies them here; answers each write. The transaction must commit by the
    /// group's earliest deadline (the source refuses it after that).
    async fn commit_group(&self, group: Vec<Pending>) {
        let deadline = group
            .iter()
            .map(|p| p.write.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        let mut txn = match self.source.begin_write(deadline).await {
            Ok(txn) => txn,
            Err(e) => {
                self.write_failed(&e);
                fail_all(group.into_iter().map(Pending::answer_to), e.into());
                return;
            }
        };
        let head = txn.head();
        // Keys committed before: answered with their revision, not applied again.
        let mut group = group;
        let keys: Vec<&str> = group
            .iter()
            .filter_map(|p| p.write.key.as_ref().map(|k| k.key.as_str()))
            .collect();
        if !keys.is_empty() {
            let window = self.source.limits().key_window;
            let found = match txn.committed_keys(&keys, window).await {
                Ok(found) => found,
                Err(e) => {
                    self.write_failed(&e);
                    fail_all(group.into_iter().map(Pending::answer_to), e.into());
                    return;
                }
            };
            if !found.is_empty() {
                let mut rest = Vec::with_capacity(group.len());
                for p in group {
                    let seen = p
                        .write
                        .key
                        .as_ref()
                        .and_then(|k| found.get(&k.key).map(|f| (k, f)));
                    match seen {
                        Some((key, (revision, fingerprint))) => {
                            let answer = replay(key, *revision, fingerprint)
                                .map(Some)
                                .map_err(WriteError::from);
                            let _ = p.reply.send(answer);
                        }
                        None => rest.push(p),
                    }
                }
                group = rest;
            }
        }
        let mut writes = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (i, p) in group.into_iter().enumerate() {
            if p.only_if_empty && (head > 0 || i > 0) {
                let _ = p.reply.send(Ok(None));
            } else {
                replies.push((p.write.deadline, p.reply));
                writes.push(p.write);
            }
        }
        if writes.is_empty() {
            txn.rollback().await;
            return;
        }
        // A conditional write is alone in its group: checked against the head it commits on.
        if let Some(w) = writes.first().filter(|w| !w.conditions.is_empty()) {
            let last = if w.conditions.entities.is_empty() {
                Ok(Vec::new())
            } else {
                txn.last_changes(&w.conditions.uids()).await
            };
            let checked = match last {
                Ok(last) => w.conditions.check(head, &last).map_err(WriteError::from),
                Err(e) => {
                    self.write_failed(&e);
                    Err(e.into())
                }
            };
            if let Err(e) = checked {
                txn.rollback().await;
                fail_all(replies, e);
                return;
            }
        }
        let local = self.state.revision();
        let behind = if local < head {
            match txn.batches_after(local).await {
                Ok(b) => b,
                Err(e) => {
                    self.write_failed(&e);
                    fail_all(replies, e.into());
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let keys: Vec<Option<WriteKey>> = writes.iter_mut().map(|w| w.key.take()).collect();
        let ops: Vec<Vec<WriteOp>> = writes.into_iter().map(|w| w.ops).collect();
        let state = self.state.clone();
        // Applying what this replica lacks and validating the group can take longer than the
        // source lets a transaction sit idle: while this process works (and only while it
        // does: a paused one sends nothing), the transaction says so.
        let work = tokio::task::spawn_blocking(move || state.prepare_chain_on(behind, head, ops));
        tokio::pin!(work);
        let every = self.source.limits().idle_timeout / 3;
        let prepared = loop {
            tokio::select! {
                done = &mut work => break match done {
                    Ok(prepared) => prepared.map_err(WriteError::from),
                    Err(e) => Err(WriteError::Failed(e.to_string())),
                },
                _ = tokio::time::sleep(every) => txn.keepalive().await,
            }
        };
        let (schema, prepared) = match prepared {
            Ok(p) => p,
            Err(e) => {
                txn.rollback().await;
                fail_all(replies, e);
                return;
            }
        };
        let mut accepted = Vec::new();
        let mut accepted_keys = Vec::new();
        let mut members = Vec::new();
        for ((p, (deadline, reply)), key) in prepared.into_iter().zip(replies).zip(keys) {
            match p {
                Ok(p) => {
                    accepted_keys.push(key);
                    accepted.push(p);
                    members.push((deadline, reply));
                }
                // Refused alone: the writes after it were validated without it.
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            }
        }
        if accepted.is_empty() {
            txn.rollback().await;
            return;
        }
        let changes: Vec<&Changes> = accepted.iter().map(|p| &p.changes).collect();
        let records: Vec<KeyRecord<'_>> = accepted
            .iter()
            .zip(&accepted_keys)
            .filter_map(|(p, k)| {
                k.as_ref().map(|k| KeyRecord {
                    key: &k.key,
                    revision: p.revision(),
                    fingerprint: &k.fingerprint,
                })
            })
            .collect();
        let committed = txn
            .commit(
                &changes,
                Some(&schema),
                &records,
                self.config.keep_batches,
                deadline,
            )
            .await;
        drop(records);
        drop(changes);
        if let Err(e) = committed {
            if matches!(e, SourceError::OutcomeUnknown { .. }) {
                tracing::warn!(error = %e, first = head + 1, writes = members.len(), "a commit was sent and not answered: its outcome is unknown until its keys are asked for");
            }
            self.write_failed(&e);
            fail_all(members, e.into());
            return;
        }
        self.state.set_source_fault(None);
        let revisions: Vec<u64> = accepted.iter().map(|p| p.revision()).collect();
        self.status
            .answered(revisions.last().copied().unwrap_or(head));
        let state = self.state.clone();
        // Committed at the source: acknowledged even if the local copy cannot take them now
        // (the follower applies them from the log).
        let applied = tokio::task::spawn_blocking(move || {
            accepted
                .into_iter()
                .try_for_each(|p| state.apply_prepared(p, &schema).map(|_| ()))
        })
        .await
        .map_err(blocking_failed)
        .and_then(|r| r.map_err(ReplicaError::from));
        if let Err(e) = applied {
            tracing::error!(error = %e, revision = revisions.last().copied().unwrap_or(head), "a committed batch could not be applied locally yet");
        }
        if revisions.len() > 1 {
            tracing::debug!(
                writes = revisions.len(),
                first = revisions[0],
                "writes committed together"
            );
        }
        for ((_, reply), revision) in members.into_iter().zip(revisions) {
            let _ = reply.send(Ok(Some(Written {
                revision,
                replayed: false,
            })));
        }
    }

    /// Follows the source's log until `stop` fires.
    pub async fn follow(self: Arc<Self>, mut stop: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_prune = Instant::now();
        // Applied batches are made durable locally once caught up, and at least every
        // SYNC_EVERY under a steady stream (the source has them durably meanwhile).
        let mut synced_at = (self.state.revision(), Instant::now());
        // How long a poll that finds a batch takes (the query and the apply), as last seen.
        let mut busy = Duration::from_millis(2);
        loop {
            // A change committed just after a poll read the log is found by the next one and
            // visible when that one has applied it: so the next poll is due an interval after
            // this one began, less what finding and applying takes and a twentieth of the
            // interval for timers that fire late and queries slower than the last on a loaded
            // machine, and a change is visible within one interval of its commit.
            let polled_at = Instant::now();
            let step = self.step().await;
            if matches!(step, Ok(true)) {
                busy = polled_at.elapsed().min(self.config.poll / 2);
            }
            let revision = self.state.revision();
            let caught_up = matches!(step, Ok(false));
            if revision != synced_at.0 && (caught_up || synced_at.1.elapsed() >= SYNC_EVERY) {
                let state = self.state.clone();
                match tokio::task::spawn_blocking(move || state.sync()).await {
                    Ok(Ok(())) => synced_at = (revision, Instant::now()),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot sync the local copy"),
                    Err(e) => tracing::warn!(error = %e, "cannot sync the local copy"),
                }
            }
            let wait = match step {
                Ok(true) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(false) => {
                    backoff = Duration::from_millis(100);
                    self.config
                        .poll
                        .saturating_sub(polled_at.elapsed())
                        .saturating_sub(busy + self.config.poll / 20)
                }
                Err(e) => {
                    match &e {
                        ReplicaError::Source(e) | ReplicaError::State(StateError::Source(e)) => {
                            self.status.failed(e);
                            // Writes need the source too: they fail until a write or a probe
                            // of the head succeeds.
                            self.state.set_source_fault(Some(e.to_string()));
                        }
                        e => {
                            tracing::error!(error = %e, revision = self.state.revision(), "cannot apply the next batch of the shared source: retrying (it is never skipped)")
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                if let Some(age) = self.config.max_age {
                    match self.source.prune_older_than(age).await {
                        Ok(through) if through > 0 => {
                            tracing::info!(through, "change log pruned by age")
                        }
                        Ok(_) => {}
                        Err(e) => self.status.failed(&e),
                    }
                }
                match self.source.prune_keys().await {
                    Ok(n) if n > 0 => {
                        tracing::debug!(keys = n, "idempotency keys past the window forgotten")
                    }
                    Ok(_) => {}
                    Err(e) => self.status.failed(&e),
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = self.source.notified.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One poll; true when it applied something (poll again at once).
    async fn step(&self) -> Result<bool, ReplicaError> {
        let current = self.state.revision();
        match self.source.poll(current, POLL_BATCHES).await? {
            Poll::Batches { head, .. } if head < current => {
                tracing::warn!(
                    revision = current,
                    source_revision = head,
                    "the shared source is behind this replica (it was replaced): reading a new snapshot"
                );
                self.rebootstrap().await?;
                Ok(true)
            }
            Poll::Batches { head, batches } => {
                self.status.answered(head);
                if batches.is_empty() {
                    return Ok(false);
                }
                let state = self.state.clone();
                tokio::task::spawn_blocking(move || state.apply_batches(batches))
                    .await
                    .map_err(blocking_failed)??;
                Ok(true)
            }
            Poll::Pruned {
                pruned_through,
                head,
            } => {
                self.status.answered(head);
                tracing::warn!(
                    revision = current,
                    pruned_through,
                    "this replica's position was pruned from the change log: reading a new snapshot"
                );
                self.rebootstrap().await?;
                Ok(true)
            }
        }
    }
}

#[tonic::async_trait]
impl DataPath for Arc<Replica> {
    async fn write(&self, w: Write) -> Result<Written, WriteError> {
        Replica::write(self, w).await
    }

    async fn keyed_write(
        &self,
        key: &str,
        abandon: bool,
    ) -> Result<Option<(u64, String)>, WriteError> {
        self.source.keyed_write(key, abandon).await.map_err(|e| {
            self.status.failed(&e);
            e.into()
        })
    }

    async fn probe(&self) -> Result<(), WriteError> {
        if self.state.write_fault().is_none() {
            return Ok(());
        }
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.probe_storage())
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))??;
        match self.source.probe_write().await {
            Ok(()) => {
                self.state.set_source_fault(None);
                Ok(())
            }
            Err(e) => {
                self.write_failed(&e);
                Err(e.into())
            }
        }
    }

    async fn watch(&self, from: u64) -> Result<ChangeStream, WatchError> {
        // Refuse a pruned position before the stream starts, so the caller gets the status;
        // 0 starts at the oldest batch the log retains.
        let (mut cursor, first) = match self.source.poll(from, WATCH_BATCHES).await? {
            Poll::Pruned { pruned_through, .. } if from == 0 => (pruned_through, None),
            Poll::Pruned { pruned_through, .. } => {
                return Err(WatchError::Pruned {
                    from,
                    pruned_through,
                })
            }
            Poll::Batches { batches, .. } => (from, Some(batches)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut revisions = self.state.subscribe();
        let replica = self.clone();
        tokio::spawn(async move {
            let mut next = first.unwrap_or_default();
            let mut first_round = true;
            loop {
                let got = !next.is_empty();
                for b in next.drain(..) {
                    cursor = b.revision();
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                if !got && !first_round {
                    // Wake on this replica's next batch (it follows the same log), or poll.
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = revisions.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                first_round = false;
                match replica.source.poll(cursor, WATCH_BATCHES).await {
                    Ok(Poll::Batches { batches, .. }) => next = batches,
                    Ok(Poll::Pruned { pruned_through, .. }) => {
                        let _ = tx
                            .send(Err(WatchError::Pruned {
                                from: cursor,
                                pruned_through,
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn view(&self) -> DataView {
        let view = self.status.view();
        let revision = self.state.revision();
        let fault = self.state.write_fault_since();
        let writable = view.reachable && fault.is_none();
        let error = fault.or(view.last_error);
        DataView {
            source: "postgres",
            revision,
            source_revision: view.head.max(revision),
            reachable: view.reachable,
            since_answered: view.since_answered,
            writable,
            last_error_at_unix_ms: error.as_ref().map(|e| e.1),
            last_error: error.map(|e| e.0).unwrap_or_default(),
        }
    }
}
