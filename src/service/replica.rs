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

use super::state::{State, StateError};
use crate::engine::index::{EntityStore, WriteOp};
use crate::engine::pack::PolicyPack;
use crate::storage::{ChangeSet, Head, PgSource, Poll, RedbStorage, SourceError, Storage};

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

/// A write waiting for its turn to be committed.
struct Pending {
    ops: Vec<WriteOp>,
    /// The seed: written only when the source holds nothing yet.
    only_if_empty: bool,
    reply: oneshot::Sender<Result<Option<u64>, StateError>>,
}

/// The writes queued on this replica, and the turn to commit them.
#[derive(Default)]
struct WriteQueue {
    pending: Mutex<VecDeque<Pending>>,
    turn: tokio::sync::Mutex<()>,
}

impl WriteQueue {
    /// The next group: the oldest writes, within [`GROUP_WRITES`] and [`GROUP_OPS`].
    fn next_group(&self) -> Vec<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut group = Vec::new();
        let mut ops = 0;
        while let Some(next) = pending.front() {
            if !group.is_empty()
                && (group.len() >= GROUP_WRITES || ops + next.ops.len() > GROUP_OPS)
            {
                break;
            }
            ops += next.ops.len();
            group.extend(pending.pop_front());
        }
        group
    }
}

/// The same failure, for each write of a group it failed whole.
fn shared(e: &StateError) -> StateError {
    match e {
        StateError::Source(e) => StateError::Source(e.clone()),
        StateError::Storage(e) => StateError::Storage(e.clone()),
        StateError::NotReady => StateError::NotReady,
        StateError::Gap { current, got } => StateError::Gap {
            current: *current,
            got: *got,
        },
        other => local_failure(other.to_string()),
    }
}

/// What this replica last heard from its source (for GetDataStatus, metrics and the log).
#[derive(Debug, Default)]
pub struct SourceStatus {
    head: AtomicU64,
    reachable: AtomicBool,
    answered: Mutex<Option<Instant>>,
    last_error: Mutex<String>,
}

/// A snapshot of [`SourceStatus`].
#[derive(Debug, Clone)]
pub struct SourceView {
    pub head: u64,
    pub reachable: bool,
    pub since_answered: Option<Duration>,
    pub last_error: String,
}

impl SourceStatus {
    fn answered(&self, head: u64) {
        self.head.fetch_max(head, Ordering::Relaxed);
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!(head, "the shared source answers");
        }
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
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

fn blocking_failed(e: tokio::task::JoinError) -> StateError {
    local_failure(format!("a blocking task failed: {e}"))
}

/// A failure of this replica's own machinery, of no file in particular.
fn local_failure(message: String) -> StateError {
    StateError::Storage(crate::storage::StorageError {
        path: PathBuf::new(),
        message,
        in_use: false,
        full: false,
    })
}

impl Replica {
    pub fn new(state: Arc<State>, db: &Path, config: SourceConfig) -> Result<Self, SourceError> {
        let source = PgSource::new(&config.url)?;
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
    ) -> Result<(EntityStore, Arc<dyn Storage>, Option<Head>), StateError> {
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
                    tracing::warn!(error = %e, "the shared source does not answer and there is no local copy yet: waiting for it");
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
    async fn snapshot(&self) -> Result<Arc<dyn Storage>, StateError> {
        let started = Instant::now();
        let path = bootstrap_path(&self.db);
        let _ = std::fs::remove_file(&path);
        let storage = Arc::new(RedbStorage::open(&path)?);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(String, Vec<u8>)>>(2);
        let local = storage.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<u64, StateError> {
            let mut n = 0u64;
            while let Some(puts) = rx.blocking_recv() {
                n += puts.len() as u64;
                // Revision 0 until the end: a crash mid-way leaves nothing that looks whole.
                local.apply_relaxed(&ChangeSet {
                    puts,
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
                revision: mark.revision,
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
    async fn rebootstrap(&self) -> Result<(), StateError> {
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

    /// Commits a batch through the source; returns its (global) revision once committed
    /// there and applied here.
    pub async fn write(self: &Arc<Self>, ops: Vec<WriteOp>) -> Result<u64, StateError> {
        self.submit(ops, false).await.map(|r| r.unwrap_or(0))
    }

    /// Writes the seed file's entities when the source is empty (None: it was not).
    pub async fn seed(self: &Arc<Self>, path: &Path) -> Result<Option<u64>, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            crate::engine::error::DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| {
            crate::engine::error::DataError::Json {
                what: path.display().to_string(),
                source,
            }
        })?;
        let ops = match value {
            serde_json::Value::Array(items) => items.into_iter().map(WriteOp::Upsert).collect(),
            _ => {
                return Err(crate::engine::error::DataError::Invalid {
                    what: path.display().to_string(),
                    message: "is not a JSON array of entities".into(),
                }
                .into())
            }
        };
        self.submit(ops, true).await
    }

    /// Queues a write and waits for its outcome.
    async fn submit(
        self: &Arc<Self>,
        ops: Vec<WriteOp>,
        only_if_empty: bool,
    ) -> Result<Option<u64>, StateError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending {
                ops,
                only_if_empty,
                reply,
            });
        // A task of its own, not this request's future (which its client may cancel), waits
        // for the next turn and commits every write queued by then: this one, or a write
        // queued before whose task has not had its turn yet.
        let this = self.clone();
        tokio::spawn(async move { this.commit_queued().await });
        outcome.await.unwrap_or_else(|_| {
            Err(local_failure(
                "the task committing this write stopped: its outcome is unknown".into(),
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

    /// Commits a group of writes in one transaction at the source, each its own revision,
    /// then applies them here; answers each write.
    async fn commit_group(&self, group: Vec<Pending>) {
        let fail_all = |replies: Vec<oneshot::Sender<_>>, e: &StateError| {
            for reply in replies {
                let _ = reply.send(Err(shared(e)));
            }
        };
        let mut txn = match self.source.begin_write().await {
            Ok(txn) => txn,
            Err(e) => {
                self.status.failed(&e);
                fail_all(group.into_iter().map(|p| p.reply).collect(), &e.into());
                return;
            }
        };
        let head = txn.head();
        let (mut writes, mut replies) = (Vec::new(), Vec::new());
        for (i, p) in group.into_iter().enumerate() {
            if p.only_if_empty && (head > 0 || i > 0) {
                let _ = p.reply.send(Ok(None));
            } else {
                writes.push(p.ops);
                replies.push(p.reply);
            }
        }
        if writes.is_empty() {
            txn.rollback().await;
            return;
        }
        let local = self.state.revision();
        let behind = if local < head {
            match txn.batches_after(local).await {
                Ok(b) => b,
                Err(e) => {
                    self.status.failed(&e);
                    fail_all(replies, &e.into());
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let state = self.state.clone();
        let prepared =
            tokio::task::spawn_blocking(move || state.prepare_chain_on(behind, head, writes))
                .await
                .map_err(blocking_failed)
                .and_then(|r| r);
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                txn.rollback().await;
                fail_all(replies, &e);
                return;
            }
        };
        let (mut accepted, mut waiting) = (Vec::new(), Vec::new());
        for (p, reply) in prepared.into_iter().zip(replies) {
            match p {
                Ok(p) => {
                    accepted.push(p);
                    waiting.push(reply);
                }
                // Refused alone: the writes after it were validated without it.
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            txn.rollback().await;
            return;
        }
        let changes: Vec<&ChangeSet> = accepted.iter().map(|p| &p.changes).collect();
        if let Err(e) = txn.commit(&changes, self.config.keep_batches).await {
            self.status.failed(&e);
            fail_all(waiting, &e.into());
            return;
        }
        let revisions: Vec<u64> = accepted.iter().map(|p| p.revision()).collect();
        self.status
            .answered(revisions.last().copied().unwrap_or(head));
        let state = self.state.clone();
        // Committed at the source: acknowledged even if the local copy cannot take them now
        // (the follower applies them from the log).
        let applied = tokio::task::spawn_blocking(move || {
            accepted
                .into_iter()
                .try_for_each(|p| state.apply_prepared(p).map(|_| ()))
        })
        .await
        .map_err(blocking_failed)
        .and_then(|r| r);
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
        for (reply, revision) in waiting.into_iter().zip(revisions) {
            let _ = reply.send(Ok(Some(revision)));
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
                        StateError::Source(e) => self.status.failed(e),
                        e => {
                            tracing::error!(error = %e, revision = self.state.revision(), "cannot apply the next batch of the shared source: retrying (it is never skipped)")
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            if let Some(age) = self.config.max_age {
                if last_prune.elapsed() >= PRUNE_EVERY {
                    last_prune = Instant::now();
                    match self.source.prune_older_than(age).await {
                        Ok(through) if through > 0 => {
                            tracing::info!(through, "change log pruned by age")
                        }
                        Ok(_) => {}
                        Err(e) => self.status.failed(&e),
                    }
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
    async fn step(&self) -> Result<bool, StateError> {
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
