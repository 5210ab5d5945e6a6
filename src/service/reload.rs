//! Policy hot reload. A change under the policy directory (or a SIGHUP, or a changed config
//! file) makes a candidate: loaded, strictly validated, and run against the policy test suites;
//! when the schema changed, every stored entity is also revalidated against it. Only a
//! candidate that passes everything replaces the live set, atomically (calls in flight finish
//! on the set they started with). A rejected candidate changes nothing; why it was rejected is
//! logged with file:line:col, counted, and kept for `GetPolicyStatus`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::error::SettingsError;
use super::gate::{self, Analysis, GateError};
use super::state::{unix_ms, State};
use crate::authoring::impact::Impact;
use crate::engine::pack::{PackSpec, PolicyPack};

/// Where the candidate's spec comes from: called on every reload, so configuration changes
/// (overlays switched on or off) take effect then.
pub type SpecSource = Box<dyn Fn() -> Result<PackSpec, SettingsError> + Send + Sync>;

/// A rejected candidate.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub at_unix_ms: u64,
    /// The candidate's content hash, when it got far enough to have one.
    pub candidate_version: Option<String>,
    /// Why, one line (or block) each: located diagnostics, failed test cases, data errors,
    /// and for failed cases or invariants a closing tally.
    pub reasons: Vec<String>,
    /// How many problems the reasons describe: a failed case counts once, not again in the
    /// tally line.
    pub problems: usize,
}

impl Rejection {
    /// A rejection for one problem, described by `reason`.
    pub fn one(candidate_version: Option<String>, reason: String) -> Self {
        Rejection {
            at_unix_ms: unix_ms(),
            candidate_version,
            reasons: vec![reason],
            problems: 1,
        }
    }
}

/// What the last accepted reload changed on the stored data, as counts.
#[derive(Debug, Clone, Default)]
pub struct ImpactSummary {
    pub from_version: String,
    pub to_version: String,
    /// Pairs that gained an action, and pairs that lost one.
    pub gained: usize,
    pub lost: usize,
    /// The store revision it was computed at.
    pub revision: u64,
    pub elapsed_ms: u64,
    /// Per action and resource type, those with a change: (action, resource type, gained,
    /// lost).
    pub actions: Vec<(String, String, usize, usize)>,
    /// Changed actions not compared, with the reason.
    pub skipped: Vec<String>,
    /// The comparison stopped early (at max_reload_impact, or after its time budget): the
    /// counts are lower bounds.
    pub truncated: bool,
}

impl ImpactSummary {
    /// The counts of an impact, between two versions.
    pub fn of(from: &str, to: &str, impact: &Impact) -> Self {
        let mut actions: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
        for a in &impact.actions {
            if a.gained.is_empty() && a.lost.is_empty() {
                continue;
            }
            let e = actions
                .entry((a.action.clone(), a.resource_type.clone()))
                .or_default();
            e.0 += a.gained.len();
            e.1 += a.lost.len();
        }
        ImpactSummary {
            from_version: from.to_string(),
            to_version: to.to_string(),
            gained: impact.gained(),
            lost: impact.lost(),
            revision: impact.revision,
            elapsed_ms: impact.elapsed.as_millis() as u64,
            actions: actions
                .into_iter()
                .map(|((a, t), (g, l))| (a, t, g, l))
                .collect(),
            skipped: impact
                .skipped
                .iter()
                .map(|(a, why)| format!("{a}: {why}"))
                .collect(),
            truncated: impact.truncated,
        }
    }
}

/// What operators can ask about the live policy set.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    pub live_version: String,
    /// The content hash of every file of the live pack (suites and tables included).
    pub live_files: String,
    pub live_overlays: Vec<String>,
    pub live_policies: usize,
    pub live_since_unix_ms: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Candidates that changed nothing.
    pub unchanged: u64,
    pub last_rejection: Option<Rejection>,
    /// What the gate's analysis said of the live set (`proved: ...`, `skipped: ...`).
    pub live_analysis: String,
    /// What the last accepted reload that changed the policies changed on the stored data.
    pub last_impact: Option<ImpactSummary>,
}

/// The outcome of one reload attempt.
#[derive(Debug)]
pub enum Outcome {
    Unchanged,
    /// A new pack serves; `policies_changed` is false when only files the gate alone reads
    /// (suites, tables, fixtures) changed and the version stays.
    Swapped {
        version: String,
        policies_changed: bool,
        /// What it changed on the stored data (None: nothing served before it).
        impact: Option<ImpactSummary>,
    },
    Rejected(Rejection),
}

pub struct Reloader {
    engine: Arc<State>,
    spec: SpecSource,
    analysis: Analysis,
    accepted: AtomicU64,
    rejected: AtomicU64,
    unchanged: AtomicU64,
    status: Mutex<(u64, Option<Rejection>)>,
    last_impact: Mutex<Option<ImpactSummary>>,
    /// Serializes reloads.
    running: Mutex<()>,
}

impl Reloader {
    pub fn new(engine: Arc<State>, spec: SpecSource, analysis: Analysis) -> Arc<Self> {
        Arc::new(Reloader {
            engine,
            spec,
            analysis,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            status: Mutex::new((unix_ms(), None)),
            last_impact: Mutex::new(None),
            running: Mutex::new(()),
        })
    }

    /// The spec a candidate would be built from now.
    pub fn spec(&self) -> Result<PackSpec, SettingsError> {
        (self.spec)()
    }

    pub fn status(&self) -> PolicyStatus {
        // The counts first: each is raised (Release) after the state it counts is kept, so a
        // reader that sees a count (Acquire) sees that state below.
        let accepted = self.accepted.load(Ordering::Acquire);
        let rejected = self.rejected.load(Ordering::Acquire);
        let unchanged = self.unchanged.load(Ordering::Acquire);
        let (since, last) = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let live = self.engine.pack();
        PolicyStatus {
            live_version: live.as_ref().map(|p| p.version.clone()).unwrap_or_default(),
            live_files: live.as_ref().map(|p| p.files.clone()).unwrap_or_default(),
            live_overlays: live
                .as_ref()
                .map(|p| p.spec.overlays.clone())
                .unwrap_or_default(),
            live_policies: live
                .as_ref()
                .map(|p| p.policies.policies().count())
                .unwrap_or(0),
            live_since_unix_ms: since,
            accepted,
            rejected,
            unchanged,
            last_rejection: last,
            live_analysis: live
                .as_ref()
                .and_then(|p| p.analysis.get().cloned())
                .unwrap_or_default(),
            last_impact: self
                .last_impact
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Builds and checks a candidate; swaps it in if it passes.
    pub fn reload(&self) -> Outcome {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let before = self.engine.pack();
        let outcome = match self.candidate() {
            Ok(Some(pack)) => {
                let version = pack.version.clone();
                let policies_changed = before.as_ref().is_none_or(|b| b.version != version);
                match self.engine.swap_pack_checked(pack) {
                    Ok(impact) => Outcome::Swapped {
                        impact: impact.map(|i| {
                            let from = before.as_ref().map(|b| b.version.as_str());
                            ImpactSummary::of(from.unwrap_or(""), &version, &i)
                        }),
                        version,
                        policies_changed,
                    },
                    Err(reasons) => Outcome::Rejected(Rejection {
                        at_unix_ms: unix_ms(),
                        candidate_version: Some(version),
                        problems: reasons.len(),
                        reasons,
                    }),
                }
            }
            Ok(None) => Outcome::Unchanged,
            Err(rejection) => Outcome::Rejected(rejection),
        };
        match &outcome {
            Outcome::Swapped {
                version,
                policies_changed,
                impact,
            } => {
                {
                    // A rejection before this accepted set is history, not the state.
                    let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
                    status.0 = unix_ms();
                    status.1 = None;
                }
                if let Some(i) = impact.as_ref().filter(|_| *policies_changed) {
                    *self.last_impact.lock().unwrap_or_else(|e| e.into_inner()) = Some(i.clone());
                }
                // Counted once the status says so: a reader that sees the count sees the state.
                self.accepted.fetch_add(1, Ordering::Release);
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if !policies_changed {
                    tracing::info!(%version, elapsed_ms, "policy pack reloaded: its suites or tables changed and pass the gate; the policies did not change");
                    return outcome;
                }
                tracing::info!(%version, elapsed_ms, "policy set reloaded");
                if let Some(i) = impact {
                    for (action, ty, gained, lost) in &i.actions {
                        tracing::info!(%version, action, resource_type = ty, gained, lost, "reload impact");
                    }
                    tracing::info!(
                        %version,
                        gained = i.gained,
                        lost = i.lost,
                        revision = i.revision,
                        impact_ms = i.elapsed_ms,
                        complete = !i.truncated,
                        "reload impact on the stored data: {} pair(s) gained an action, {} lost one",
                        i.gained,
                        i.lost
                    );
                }
                if let (Some(old), Some(new)) = (before, self.engine.pack()) {
                    // Off the reload's path: what the new set decides differently.
                    std::thread::spawn(move || log_semantic_diff(&old, &new));
                }
            }
            Outcome::Unchanged => {
                self.unchanged.fetch_add(1, Ordering::Release);
                tracing::info!("policy files changed nothing: the live set stays as it is")
            }
            Outcome::Rejected(r) => {
                for reason in &r.reasons {
                    tracing::warn!(
                        candidate = r.candidate_version.as_deref().unwrap_or("none"),
                        "{reason}"
                    );
                }
                tracing::warn!(
                    candidate = r.candidate_version.as_deref().unwrap_or("none"),
                    problems = r.problems,
                    "policy reload rejected; the last good set keeps serving"
                );
                self.status.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(r.clone());
                // Counted once the rejection is kept: a reader that sees the count sees why.
                self.rejected.fetch_add(1, Ordering::Release);
            }
        }
        outcome
    }

    /// The candidate pack if any file of it (or the overlays enabled) differs from the live
    /// one and it passes the gate; Ok(None) if nothing changed.
    fn candidate(&self) -> Result<Option<Arc<PolicyPack>>, Rejection> {
        let spec = (self.spec)().map_err(|e| Rejection::one(None, e.to_string()))?;
        // Paths in the reasons are relative to the policy directory (`company.cedar:10:37`),
        // whatever directory the server was given.
        let dir = format!("{}/", spec.dir.display());
        let gated = |e: GateError| Rejection {
            at_unix_ms: unix_ms(),
            candidate_version: e.version().map(str::to_string),
            reasons: e.reasons().iter().map(|r| r.replace(&dir, "")).collect(),
            problems: e.problems(),
        };
        let pack = PolicyPack::load(&spec).map_err(|e| gated(e.into()))?;
        if self
            .engine
            .pack()
            .is_some_and(|live| live.files == pack.files && live.spec == pack.spec)
        {
            return Ok(None);
        }
        gate::check(pack, self.analysis).map(Some).map_err(gated)
    }
}

/// Logs what `new` decides differently from `old`, for the data its assumptions allow, in words (when the solver
/// is there; without it, says that no semantic diff was made).
fn log_semantic_diff(old: &PolicyPack, new: &PolicyPack) {
    let (from, to) = (old.version.as_str(), new.version.as_str());
    match crate::analysis::diff(old, new, crate::analysis::Data::Assumed) {
        Ok(report) => {
            for line in report.lines() {
                tracing::info!(from, to, "policy change: {line}");
            }
            tracing::info!(
                from,
                to,
                changed = %report.changed_actions().join(","),
                elapsed_ms = report.elapsed.as_millis() as u64,
                "semantic diff of the reload: {} action(s) decide differently",
                report.changed_actions().len()
            );
        }
        Err(e) => tracing::info!(from, to, "no semantic diff of the reload: {e}"),
    }
}

/// Watches the policy directory (and the config file, if any) and reloads on changes, after a
/// short quiet period so that an editor's burst of writes makes one candidate.
///
/// A file is watched through its directory: an editor's save-by-rename (or `sed -i`) replaces
/// the file's inode, and a watch on the file itself would see only the first such save.
pub fn watch(
    reloader: Arc<Reloader>,
    paths: Vec<PathBuf>,
    quiet: Duration,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        if path.is_dir() {
            dirs.push(std::fs::canonicalize(path)?);
        } else {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            let name = path.file_name().ok_or_else(|| {
                notify::Error::generic(&format!("{} names no file", path.display()))
            })?;
            files.push(std::fs::canonicalize(parent)?.join(name));
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (watched_dirs, watched_files) = (dirs.clone(), files.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(e) = event else { return };
        if !(e.kind.is_create() || e.kind.is_modify() || e.kind.is_remove()) {
            return;
        }
        // A watched file's directory reports its neighbours too: only the file counts.
        let ours = e
            .paths
            .iter()
            .any(|p| watched_dirs.iter().any(|d| p.starts_with(d)) || watched_files.contains(p));
        if ours {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::Recursive)?;
    }
    for file in &files {
        let dir = file.parent().unwrap_or(file);
        if !dirs.iter().any(|d| dir.starts_with(d)) {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
    }
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Drain the burst: wait until nothing changed for `quiet`.
                while rx.recv_timeout(quiet).is_ok() {}
                reloader.reload();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
