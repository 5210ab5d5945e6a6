//! The engine state every call shares: the live policy pack, the entity index, the durable
//! storage behind it, and the store revision. Writes are serialized, validated whole, made
//! durable, then made visible at once; decisions read one consistent view.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::authoring::impact::{self, Impact};
use crate::authoring::matrix;
use crate::engine::error::{DataError, RequestError};
use crate::engine::index::{EntityStore, Prepared, Staging, WriteOp};
use crate::engine::pack::PolicyPack;
use crate::engine::View;
use crate::storage::{ChangeSet, SourceError, Storage, StorageError, WriteKey};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The engine's own limits (the slice depth), which every view of the live state carries.
    pub engine: crate::engine::view::Limits,
    /// Requests per `BatchIsAuthorized` call.
    pub max_batch: usize,
    /// Operations per `WriteEntities` batch (a batch is committed to the index under its
    /// write lock, which decisions wait for).
    pub max_write_ops: usize,
    /// Encoded size of one request message.
    pub max_message_bytes: usize,
    /// Bytes of request bodies all calls in flight may hold at once, on every listener.
    pub max_inflight_bytes: usize,
    /// Longest wait for `min_revision` when the call has no deadline.
    pub max_revision_wait: Duration,
    /// Longest a write may take when the call has no deadline (and the most it may take).
    pub max_write_wait: Duration,
    /// How long idempotency keys are remembered.
    pub key_window: Duration,
    /// Most (principal, resource) pairs of the stored data whose decision a reload may
    /// change; a candidate that changes more is refused (None: any number).
    pub max_reload_impact: Option<usize>,
}

/// How long a reload's impact on the stored data may take when no `max_reload_impact` asks
/// for it whole: it is then for the log and the status, and a longer one is cut short.
pub const RELOAD_IMPACT_BUDGET: Duration = Duration::from_secs(10);
/// Entities of one side compared per read lock of the index during a reload's impact.
const RELOAD_IMPACT_CHUNK: usize = 64;

/// The default of `max_inflight_bytes`: sixteen requests of the largest size.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            engine: crate::engine::view::Limits::default(),
            max_batch: 10_000,
            max_write_ops: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            max_revision_wait: Duration::from_secs(5),
            max_write_wait: Duration::from_secs(10),
            key_window: crate::storage::DEFAULT_KEY_WINDOW,
            max_reload_impact: None,
        }
    }
}

/// Why a write or a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error("no validated policy set and entity data are loaded yet")]
    NotReady,
    #[error("revision {wanted} not reached within {waited:?} (this node is at {current})")]
    RevisionNotReached {
        wanted: u64,
        current: u64,
        waited: Duration,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A batch from the shared source does not follow this replica's revision.
    #[error("batch {got} does not follow revision {current}")]
    Gap { current: u64, got: u64 },
    /// A write's condition did not hold: nothing was applied.
    #[error("{field}: {message}")]
    PreconditionFailed { field: String, message: String },
    /// A write's deadline passed before it could commit: nothing was applied.
    #[error("the write's deadline passed before it committed: nothing was applied")]
    DeadlineExceeded,
}

/// One write batch as the write path takes it: the operations, the deadline by which it
/// commits or never does, its conditions and its idempotency key.
#[derive(Debug)]
pub struct Write {
    pub ops: Vec<WriteOp>,
    pub deadline: Instant,
    pub conditions: Conditions,
    pub key: Option<WriteKey>,
}

impl Write {
    /// A plain write: no conditions, no key.
    pub fn new(ops: Vec<WriteOp>, deadline: Instant) -> Self {
        Write {
            ops,
            deadline,
            conditions: Conditions::default(),
            key: None,
        }
    }
}

/// What a write made: its revision, and whether it was a replay of a key already committed
/// (nothing applied now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub revision: u64,
    pub replayed: bool,
}

/// What a write must find when it commits (compare-and-set).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// The store's newest revision.
    pub expected_revision: Option<u64>,
    /// Entities' last changes.
    pub entities: Vec<Precondition>,
}

/// One entity's expected last change.
#[derive(Debug, Clone)]
pub struct Precondition {
    /// The entity's uid text, as stored.
    pub uid: String,
    /// The revision of its last change; None: it must not exist.
    pub last_changed_at: Option<u64>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.expected_revision.is_none() && self.entities.is_empty()
    }

    /// The uids whose last change the entity conditions need.
    pub fn uids(&self) -> Vec<&str> {
        self.entities.iter().map(|p| p.uid.as_str()).collect()
    }

    /// Checks the conditions against the store's newest revision and the entities' last
    /// changes (parallel to [`Conditions::uids`]; None: absent).
    pub fn check(&self, head: u64, last: &[Option<u64>]) -> Result<(), StateError> {
        if let Some(expected) = self.expected_revision {
            if expected != head {
                return Err(StateError::PreconditionFailed {
                    field: "expected_revision".into(),
                    message: format!("the store is at revision {head}, not {expected}"),
                });
            }
        }
        for (i, (p, found)) in self.entities.iter().zip(last).enumerate() {
            let holds = match (p.last_changed_at, found) {
                (None, None) => true,
                (Some(want), Some(at)) => want == *at,
                _ => false,
            };
            if !holds {
                let want = match p.last_changed_at {
                    Some(r) => format!("last changed at revision {r}"),
                    None => "absent".into(),
                };
                let found = match found {
                    Some(r) => format!("last changed at revision {r}"),
                    None => "absent".into(),
                };
                return Err(StateError::PreconditionFailed {
                    field: format!("preconditions[{i}]"),
                    message: format!("{} is {found}, not {want}", p.uid),
                });
            }
        }
        Ok(())
    }
}

/// The answer to a write whose key was committed before: the original revision when it is
/// the same write, a refusal when the key was used for another.
pub fn replay(key: &WriteKey, revision: u64, fingerprint: &str) -> Result<Written, StateError> {
    if fingerprint == crate::storage::ABANDONED {
        Err(StateError::PreconditionFailed {
            field: "idempotency_key".into(),
            message: format!(
                "{:?} was abandoned by GetWrite: a write that carries it never commits",
                key.key
            ),
        })
    } else if key.fingerprint == fingerprint {
        Ok(Written {
            revision,
            replayed: true,
        })
    } else {
        Err(RequestError::edge(
            "idempotency_key",
            format!(
                "{:?} was used for a different batch, committed at revision {revision}",
                key.key
            ),
        )
        .into())
    }
}

/// Why writes fail now: the local database, or the shared source (None: they succeed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub local: Option<String>,
    pub source: Option<String>,
    /// When writes began to fail (Unix ms); None while they succeed.
    pub since_unix_ms: Option<u64>,
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it): what status
/// timestamps (a write fault, a source error, a policy rejection) are given in.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Faults {
    /// Keeps `since_unix_ms` true after a change of `local` or `source`.
    fn stamp(&mut self) {
        let failing = self.local.is_some() || self.source.is_some();
        match (failing, self.since_unix_ms) {
            (true, None) => self.since_unix_ms = Some(unix_ms()),
            (false, Some(_)) => self.since_unix_ms = None,
            _ => {}
        }
    }
}

/// Entries of a published batch folded into the index per hold of its lock: tens of
/// microseconds, whatever the batch's size.
const FOLD_STEP: usize = 256;

/// The shared engine state.
pub struct State {
    pack: ArcSwapOption<PolicyPack>,
    store: RwLock<EntityStore>,
    /// Taken out (and so closed) by [`State::close`].
    storage: Mutex<Option<Arc<dyn Storage>>>,
    /// Serializes writers; decisions never take it.
    writer: Mutex<()>,
    revision: watch::Sender<u64>,
    /// Why writes fail now (None: the last write or probe succeeded).
    write_fault: watch::Sender<Faults>,
    /// Calls waiting now in [`State::wait_for_revision`].
    waiters: std::sync::atomic::AtomicUsize,
    pub limits: Limits,
}

/// A consistent view for one call: the store, read-locked (a write becomes visible all at
/// once, never half), and the pack that goes with it.
pub struct Live<'a> {
    pub pack: Arc<PolicyPack>,
    store: RwLockReadGuard<'a, EntityStore>,
    limits: crate::engine::view::Limits,
}

impl Live<'_> {
    pub fn store(&self) -> &EntityStore {
        &self.store
    }

    /// The engine's front door onto this state: every decision and listing of a call goes
    /// through it.
    pub fn view(&self) -> View<'_> {
        View::with_limits(&self.pack, &self.store, self.limits)
    }
}

impl State {
    pub fn new(limits: Limits) -> Self {
        State {
            pack: ArcSwapOption::empty(),
            store: RwLock::new(EntityStore::default()),
            storage: Mutex::new(None),
            writer: Mutex::new(()),
            revision: watch::channel(0).0,
            write_fault: watch::channel(Faults::default()).0,
            waiters: Default::default(),
            limits,
        }
    }

    /// The live state, or None until a validated pack and the data are loaded.
    pub fn live(&self) -> Option<Live<'_>> {
        // The store lock first: a reload that rebuilds the store swaps the pack while holding
        // the write lock, so store and pack always match.
        let store = self.read_store();
        let pack = self.pack.load_full()?;
        Some(Live {
            pack,
            store,
            limits: self.limits.engine,
        })
    }

    fn read_store(&self) -> RwLockReadGuard<'_, EntityStore> {
        // Commits cannot fail halfway (see `EntityStore::commit`), so a poisoned lock still
        // guards consistent data.
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pack(&self) -> Option<Arc<PolicyPack>> {
        self.pack.load_full()
    }

    /// Installs the data and then the pack: from here on decisions are served.
    pub fn install(
        &self,
        pack: Arc<PolicyPack>,
        mut store: EntityStore,
        storage: Arc<dyn Storage>,
    ) {
        store.set_keys(&pack.entities.keys);
        let revision = store.revision();
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = store;
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = Some(storage);
        self.revision.send_replace(revision);
        self.pack.store(Some(pack));
    }

    fn storage(&self) -> Option<Arc<dyn Storage>> {
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes the database (once no write or export holds it any more): a clean close makes
    /// the next start quick. Writes after this answer UNAVAILABLE.
    pub fn close(&self) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let storage = self
            .storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(storage) = storage {
            if let Err(e) = storage.sync() {
                tracing::warn!(error = %e, "cannot sync the database at shutdown");
            }
        }
    }

    /// Replaces the live policy pack; calls in flight finish on the one they started with.
    /// When the schema changed, the entity index is first rebuilt under the new schema, and a
    /// stored entity that no longer conforms rejects the swap. A candidate whose data
    /// assumptions differ has the stored entities checked against them too.
    pub fn swap_pack_checked(&self, pack: Arc<PolicyPack>) -> Result<Option<Impact>, Vec<String>> {
        // Same schema: the impact is worked out before the writer lock, so writes go on while
        // it runs (it reads the data as they leave it; the figures say at which revision).
        let same_schema = |live: &PolicyPack| live.schema_version == pack.schema_version;
        let early = match self.pack() {
            Some(live) if same_schema(&live) => Some(self.reload_impact(&live, &pack, None)?),
            _ => None,
        };
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.pack();
        let schema_changed = live
            .as_ref()
            .is_some_and(|live| live.schema_version != pack.schema_version);
        let assumptions = |p: &PolicyPack| -> Vec<(String, String, String)> {
            let a = &p.entities.assumptions;
            a.iter()
                .map(|a| (a.id.clone(), a.entity_type.to_string(), a.condition.clone()))
                .collect()
        };
        let assumptions_changed = live
            .as_ref()
            .is_some_and(|live| assumptions(live) != assumptions(&pack));
        let broken = |v: crate::engine::assume::Violation| {
            vec![format!(
                "the stored entities break the candidate's data assumptions: {v}"
            )]
        };
        if !schema_changed {
            if assumptions_changed {
                self.read_store()
                    .check_assumptions(&pack.entities)
                    .map_err(broken)?;
            }
            let keys_changed = live
                .as_ref()
                .is_some_and(|live| live.entities.keys != pack.entities.keys);
            if keys_changed {
                let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
                store.set_keys(&pack.entities.keys);
            }
            self.pack.store(Some(pack));
            return Ok(early);
        }
        let rebuilt = self.read_store().rebuild(&pack.entities).map_err(|e| {
            vec![format!(
                "the stored entities do not conform to the candidate schema: {e}"
            )]
        })?;
        rebuilt.check_assumptions(&pack.entities).map_err(broken)?;
        // Writes wait for this comparison (the writer lock is held); decisions do not.
        let impact = match &live {
            Some(live) => Some(self.reload_impact(live, &pack, Some(&rebuilt))?),
            None => None,
        };
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        *store = rebuilt;
        self.pack.store(Some(pack));
        Ok(impact)
    }

    /// What a candidate would change on the live store, for a preview (the console): as a
    /// reload computes it without a limit, within its time budget.
    pub fn preview_impact(
        &self,
        live: &PolicyPack,
        candidate: &PolicyPack,
    ) -> Result<Impact, Vec<String>> {
        if live.schema_version != candidate.schema_version {
            return Err(vec![
                "the draft changes the schema: its impact is computed at reload".to_string(),
            ]);
        }
        self.reload_impact_within(live, candidate, None, None)
    }

    fn reload_impact(
        &self,
        live: &PolicyPack,
        pack: &PolicyPack,
        rebuilt: Option<&EntityStore>,
    ) -> Result<Impact, Vec<String>> {
        self.reload_impact_within(live, pack, rebuilt, self.limits.max_reload_impact)
    }

    /// What replacing `live` by the candidate changes on the stored data (`rebuilt`: the
    /// store as the candidate's new schema reads it); past `max_reload_impact` pairs, a
    /// refusal that says so. The index's read lock is taken for a few entities at a time, so
    /// writes go on between them unless the caller holds the writer lock. Without a limit the
    /// comparison is for the log and the status, and stops after [`RELOAD_IMPACT_BUDGET`].
    fn reload_impact_within(
        &self,
        live: &PolicyPack,
        pack: &PolicyPack,
        rebuilt: Option<&EntityStore>,
        limit: Option<usize>,
    ) -> Result<Impact, Vec<String>> {
        let started = Instant::now();
        let contexts =
            matrix::merged_row_contexts(&[live, pack]).map_err(|e| vec![e.to_string()])?;
        let budget = limit.is_none().then_some(RELOAD_IMPACT_BUDGET);
        let failed = |e: impact::ImpactError| {
            vec![format!("the candidate's impact on the stored data: {e}")]
        };
        let plan = impact::targets(live, pack, &BTreeMap::new(), &contexts);
        let total = AtomicUsize::new(0);
        let over = |total: &AtomicUsize| limit.is_some_and(|l| total.load(Ordering::Relaxed) > l);
        let mut actions = Vec::new();
        let mut stopped = false;
        'targets: for t in &plan.targets {
            let e = {
                let store = self.read_store();
                impact::enumerate((live, &store), (pack, rebuilt.unwrap_or(&store)), t)
            };
            let mut action = impact::ActionImpact::new(t, &e);
            for chunk in e.others.chunks(RELOAD_IMPACT_CHUNK) {
                if over(&total) || budget.is_some_and(|b| started.elapsed() > b) {
                    stopped = true;
                    action.finish();
                    actions.push(action);
                    break 'targets;
                }
                let store = self.read_store();
                let (old, new) = ((live, &*store), (pack, rebuilt.unwrap_or(&store)));
                impact::compare_some(old, new, t, &e, chunk, (1, limit, &total), &mut action)
                    .map_err(failed)?;
            }
            action.finish();
            actions.push(action);
        }
        let store = self.read_store();
        let report = Impact {
            changed: plan.changed,
            actions,
            skipped: plan.skipped,
            truncated: stopped || over(&total),
            entities: store.len(),
            revision: store.revision(),
            elapsed: started.elapsed(),
        };
        drop(store);
        if let Some(max) = limit.filter(|max| report.pairs() > *max) {
            let mut biggest: Vec<(usize, String)> = report
                .actions
                .iter()
                .filter(|a| !a.gained.is_empty() || !a.lost.is_empty())
                .map(|a| {
                    (
                        a.gained.len() + a.lost.len(),
                        format!(
                            "{} on {}: +{} -{}",
                            a.action,
                            a.resource_type,
                            a.gained.len(),
                            a.lost.len()
                        ),
                    )
                })
                .collect();
            biggest.sort_by_key(|b| std::cmp::Reverse(b.0));
            return Err(vec![format!(
                "the candidate changes the decisions of more than max_reload_impact ({max}) \
                 pairs of the stored data: at least {} gain an action and {} lose one ({}); \
                 `blue-authz impact` lists them, and a larger max_reload_impact lets such an \
                 edit through",
                report.gained(),
                report.lost(),
                biggest
                    .into_iter()
                    .take(5)
                    .map(|(_, words)| words)
                    .collect::<Vec<_>>()
                    .join(", ")
            )]);
        }
        Ok(report)
    }

    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Follows the revision as it advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn ready(&self) -> Result<(Arc<PolicyPack>, Arc<dyn Storage>), StateError> {
        let pack = self.pack().ok_or(StateError::NotReady)?;
        let storage = self.storage().ok_or(StateError::NotReady)?;
        Ok((pack, storage))
    }

    /// Makes a prepared batch durable (or, `relaxed`, durable with the next sync: a batch a
    /// shared source holds durably), recording that the stored entities conform to `schema`
    /// and the write's key, then visible. The caller holds the writer lock.
    fn commit_prepared(
        &self,
        storage: &dyn Storage,
        mut prepared: Prepared,
        schema: &str,
        key: Option<WriteKey>,
        relaxed: bool,
    ) -> Result<u64, StateError> {
        let set = ChangeSet {
            changes: std::mem::take(&mut prepared.changes),
            schema: Some(schema.to_string()),
            key,
            ..Default::default()
        };
        let made = if relaxed {
            storage.apply_relaxed(&set)
        } else {
            storage.apply(&set)
        };
        self.note_write(made.as_ref().err())?;
        let revision = prepared.revision();
        let entities = set.changes.puts.len() + set.changes.deletes.len();
        drop(set);
        // The batch's uids resolved, its entities decoded and its closures worked out beside
        // decisions (a read lock; the writer lock keeps the store as it was); under the write
        // lock only what is new to the store is interned, and what is old is dropped after.
        prepared.resolve(&self.read_store());
        // Staged beside decisions too: a batch that names nothing new to the store is then
        // published whole in constant time and folded in short steps (`index::pending`).
        let staged = prepared.stage(&self.read_store());
        let waited = std::time::Instant::now();
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        let held = std::time::Instant::now();
        let (retired, staged) = match staged {
            Staging::Staged(staged) => (store.publish(staged), true),
            Staging::Whole(prepared) => (store.commit(prepared), false),
        };
        drop(store);
        let held_for = held.elapsed();
        drop(retired);
        self.revision.send_replace(revision);
        let (steps, longest) = if staged { self.fold() } else { (0, held_for) };
        // How long decisions waited for this batch (publishing it, or committing it whole, and
        // the fold's steps are the only parts of a write that hold the decisions' lock).
        tracing::debug!(
            revision,
            entities,
            staged,
            lock_wait_us = (held - waited).as_micros() as u64,
            lock_held_us = held_for.as_micros() as u64,
            fold_steps = steps,
            fold_step_max_us = longest.as_micros() as u64,
            "batch visible"
        );
        Ok(revision)
    }

    /// Folds the published batch into the index in steps of [`FOLD_STEP`] entries, letting
    /// decisions in between; returns the steps and the longest. The caller holds the writer
    /// lock.
    fn fold(&self) -> (usize, Duration) {
        let (mut steps, mut longest) = (0, Duration::ZERO);
        loop {
            let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
            let held = Instant::now();
            let (done, retired) = store.fold(FOLD_STEP);
            drop(store);
            longest = longest.max(held.elapsed());
            steps += 1;
            drop(retired);
            if done {
                return (steps, longest);
            }
            // Decisions queued behind this step go first.
            std::thread::yield_now();
        }
    }

    /// Records whether the data path can write (a failed write or probe degrades it, a
    /// successful one restores it); passes the error on.
    fn note_write(&self, failed: Option<&StorageError>) -> Result<(), StateError> {
        match failed {
            Some(e) => {
                let why = e.to_string();
                let changed = self.write_fault.send_if_modified(|f| {
                    let was_ok = f.local.is_none();
                    f.local = Some(why.clone());
                    f.stamp();
                    was_ok
                });
                if changed {
                    tracing::error!(error = %why, "writes fail: the data path is degraded; decisions go on from memory");
                }
                Err(StateError::Storage(e.clone()))
            }
            None => {
                if self.write_fault.send_if_modified(|f| {
                    let was = f.local.take().is_some();
                    f.stamp();
                    was
                }) {
                    tracing::info!("writes succeed again: the data path is restored");
                }
                Ok(())
            }
        }
    }

    /// Records whether writes through the shared source fail (None: a write or a probe of
    /// the source's head succeeded).
    pub fn set_source_fault(&self, fault: Option<String>) {
        let changed = self.write_fault.send_if_modified(|f| {
            let changed = f.source.is_some() != fault.is_some();
            f.source = fault.clone();
            f.stamp();
            changed
        });
        match fault {
            Some(why) if changed => {
                tracing::error!(error = %why, "writes through the shared source fail; decisions go on from the local copy")
            }
            None if changed => tracing::info!("writes through the shared source succeed again"),
            _ => {}
        }
    }

    /// Why writes fail now, if they do.
    pub fn write_fault(&self) -> Option<String> {
        let f = self.write_fault.borrow();
        f.local.clone().or_else(|| f.source.clone())
    }

    /// Why writes fail now and since when (Unix ms), if they do.
    pub fn write_fault_since(&self) -> Option<(String, u64)> {
        let f = self.write_fault.borrow();
        let why = f.local.clone().or_else(|| f.source.clone())?;
        Some((why, f.since_unix_ms.unwrap_or(0)))
    }

    /// Follows whether writes fail.
    pub fn subscribe_write_fault(&self) -> watch::Receiver<Faults> {
        self.write_fault.subscribe()
    }

    /// Tries whether a write could succeed now (the storage reopened after an I/O error, a
    /// write that needs new pages), restoring the data path if so.
    pub fn probe_storage(&self) -> Result<(), StateError> {
        let (_, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let probed = storage.probe();
        self.note_write(probed.as_ref().err())
    }

    /// Applies batches of the shared source in order, each validated under the live schema,
    /// made durable and then visible whole. Batches already applied are skipped; one that does
    /// not follow the current revision stops the run (a gap is never stepped over). Returns the
    /// revision reached.
    pub fn apply_batches(&self, batches: Vec<ChangeSet>) -> Result<u64, StateError> {
        let (pack, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.apply_locked(&pack, storage.as_ref(), batches)
    }

    fn apply_locked(
        &self,
        pack: &PolicyPack,
        storage: &dyn Storage,
        batches: Vec<ChangeSet>,
    ) -> Result<u64, StateError> {
        for batch in batches {
            let current = self.revision();
            if batch.revision() <= current {
                continue;
            }
            if batch.revision() != current + 1 {
                return Err(StateError::Gap {
                    current,
                    got: batch.revision(),
                });
            }
            let prepared = self
                .read_store()
                .prepare_changes(&batch.changes, &pack.entities)?;
            self.commit_prepared(storage, prepared, &pack.data_version, None, true)?;
        }
        Ok(self.revision())
    }

    /// For a group of writes through the shared source, whose head is `head` (and locked):
    /// applies the batches this replica lacks, then validates each write as the next revision
    /// after the accepted ones before it (a refused write has its error in its place), under
    /// the schema version it returns.
    #[allow(clippy::type_complexity)]
    pub fn prepare_chain_on(
        &self,
        behind: Vec<ChangeSet>,
        head: u64,
        writes: Vec<Vec<WriteOp>>,
    ) -> Result<(String, Vec<Result<Prepared, StateError>>), StateError> {
        let (pack, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let reached = self.apply_locked(&pack, storage.as_ref(), behind)?;
        if reached != head {
            return Err(StateError::Gap {
                current: reached,
                got: head + 1,
            });
        }
        let prepared = self.read_store().prepare_chain(writes, &pack.entities);
        let prepared = prepared
            .into_iter()
            .map(|p| p.map_err(StateError::from))
            .collect();
        Ok((pack.schema_version.clone(), prepared))
    }

    /// Makes a batch the shared source committed durable and visible here (its entities
    /// validated under `schema`), unless the follower got there first.
    pub fn apply_prepared(&self, prepared: Prepared, schema: &str) -> Result<u64, StateError> {
        let (_, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.revision();
        if prepared.revision() <= current {
            return Ok(prepared.revision());
        }
        if prepared.revision() != current + 1 {
            return Err(StateError::Gap {
                current,
                got: prepared.revision(),
            });
        }
        self.commit_prepared(storage.as_ref(), prepared, schema, None, true)
    }

    /// Makes the batches applied from a shared source durable locally (until then a crash
    /// loses them whole, and the replica applies them again from the source).
    pub fn sync(&self) -> Result<(), StateError> {
        let (_, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        Ok(storage.sync()?)
    }

    /// Replaces the whole store and its storage at once (a replica that re-read a snapshot):
    /// `switch` runs first, under the writer lock (it moves the new database file into place).
    pub fn replace(
        &self,
        store: EntityStore,
        storage: Arc<dyn Storage>,
        switch: impl FnOnce() -> Result<(), StorageError>,
    ) -> Result<(), StateError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        switch()?;
        let revision = store.revision();
        let old = {
            let mut live = self.store.write().unwrap_or_else(|e| e.into_inner());
            let old = std::mem::replace(&mut *live, store);
            *self.storage.lock().unwrap_or_else(|e| e.into_inner()) = Some(storage);
            old
        };
        self.revision.send_replace(revision);
        drop(old);
        Ok(())
    }

    /// Validates a batch whole against the schema and the data, commits it durably, then
    /// makes it visible; returns the new revision. An invalid batch changes nothing.
    pub fn write(&self, ops: Vec<WriteOp>) -> Result<u64, StateError> {
        let deadline = Instant::now() + Duration::from_secs(3600);
        self.write_checked(Write::new(ops, deadline))
            .map(|w| w.revision)
    }

    /// A write to the local database: refused once its deadline has passed, answered with
    /// the original revision when its key was committed before, applied only if its
    /// conditions hold; then as [`State::write`]. All under the writer lock, so the checks and
    /// the commit see the same data.
    pub fn write_checked(&self, w: Write) -> Result<Written, StateError> {
        let (pack, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if Instant::now() >= w.deadline {
            return Err(StateError::DeadlineExceeded);
        }
        if let Some(key) = &w.key {
            if let Some((revision, fingerprint)) = storage.keyed_write(&key.key)? {
                return replay(key, revision, &fingerprint);
            }
        }
        if !w.conditions.is_empty() {
            let last = if w.conditions.entities.is_empty() {
                Vec::new()
            } else {
                storage.last_changes(&w.conditions.uids())?
            };
            w.conditions.check(self.revision(), &last)?;
        }
        let prepared = self.read_store().prepare(w.ops, &pack.entities)?;
        let revision =
            self.commit_prepared(storage.as_ref(), prepared, &pack.data_version, w.key, false)?;
        Ok(Written {
            revision,
            replayed: false,
        })
    }

    /// For each uid, the revision of the entity's last change in the local database (None:
    /// absent).
    pub fn last_changes(&self, uids: &[&str]) -> Result<Vec<Option<u64>>, StateError> {
        let storage = self.storage().ok_or(StateError::NotReady)?;
        Ok(storage.last_changes(uids)?)
    }

    /// The revision and fingerprint of the local write that committed `key`, if any; with
    /// `abandon`, a key that did not commit is recorded so that it never will.
    pub fn keyed_write(
        &self,
        key: &str,
        abandon: bool,
    ) -> Result<Option<(u64, String)>, StateError> {
        let (_, storage) = self.ready()?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let found = storage.keyed_write(key)?;
        if found.is_none() && abandon {
            storage.abandon_key(key)?;
            return Ok(Some((0, crate::storage::ABANDONED.to_string())));
        }
        Ok(found)
    }

    /// Waits until the store has reached `min` (0: no wait), for at most `deadline` and never
    /// longer than the configured maximum.
    pub async fn wait_for_revision(
        &self,
        min: u64,
        deadline: Option<Duration>,
    ) -> Result<(), StateError> {
        if min <= self.revision() {
            return Ok(());
        }
        // Answer a little before the caller's deadline, so the caller hears why; never wait
        // longer than the configured maximum, whatever deadline the call sets.
        let waited = deadline
            .map(|d| d.saturating_sub(d / 10))
            .unwrap_or(self.limits.max_revision_wait)
            .min(self.limits.max_revision_wait);
        let mut rx = self.revision.subscribe();
        let _waiting = Waiting::count(&self.waiters);
        let reached = matches!(
            tokio::time::timeout(waited, rx.wait_for(|r| *r >= min)).await,
            Ok(Ok(_))
        );
        if reached {
            return Ok(());
        }
        Err(StateError::RevisionNotReached {
            wanted: min,
            current: self.revision(),
            waited,
        })
    }

    /// How many calls wait now for their `min_revision` (a metric, and what tests wait on).
    pub fn revision_waiters(&self) -> usize {
        self.waiters.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Streams a consistent snapshot of the durable store, chunk by chunk.
    pub fn export(
        &self,
        chunk: usize,
        visit: &mut dyn FnMut(u64, Vec<Vec<u8>>) -> bool,
    ) -> Result<(), StateError> {
        let storage = self.storage().ok_or(StateError::NotReady)?;
        let chunk = chunk.max(1);
        let mut batch = Vec::with_capacity(chunk);
        let mut last = 0;
        let mut go_on = true;
        storage.scan(&mut |revision, bytes| {
            last = revision;
            batch.push(bytes.to_vec());
            if batch.len() >= chunk {
                go_on = visit(revision, std::mem::take(&mut batch));
            }
            go_on
        })?;
        if go_on && !batch.is_empty() {
            visit(last, batch);
        }
        Ok(())
    }
}

/// One call counted as waiting for a revision while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
