//! The semantic difference between two policy sets: for every request environment of the new
//! schema, whether both decide identically for all data; where not, a concrete request that is
//! newly allowed and one that is newly denied, in words and as JSON.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::counterexample::Counterexample;
use super::prove::{Named, Prover};
use super::run::block_on;
use super::{words, AnalysisError};
use crate::engine::pack::PolicyPack;

/// One direction of a change, with the request that shows it.
#[derive(Debug, Clone)]
pub struct Change {
    pub words: String,
    pub counterexample: Counterexample,
}

/// How one action (on one principal and resource type) changed.
#[derive(Debug, Clone)]
pub struct ActionChange {
    pub action: String,
    pub principal_type: String,
    pub resource_type: String,
    pub newly_allowed: Option<Change>,
    pub newly_denied: Option<Change>,
}

/// The difference between two packs.
#[derive(Debug, Clone)]
pub struct DiffReport {
    pub changed: Vec<ActionChange>,
    /// Actions (`action on Type`) that decide identically for all data.
    pub unchanged: Vec<String>,
    /// Actions only one of the schemas has.
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
    /// The new pack's data assumptions the comparison assumed (empty: none, or `Unassumed`).
    pub assumed: Vec<String>,
    pub elapsed: Duration,
}

/// Whether a diff speaks of the data the store can hold (the new pack's `assumptions.toml`)
/// or of every store the schema allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    Assumed,
    Unassumed,
}

impl DiffReport {
    /// The report as JSON, for CI.
    pub fn to_json(&self) -> Value {
        let change = |c: &Option<Change>| {
            c.as_ref()
                .map(|c| json!({"words": c.words, "counterexample": c.counterexample.to_json()}))
        };
        json!({
            "changed": self.changed.iter().map(|a| json!({
                "action": a.action,
                "principal_type": a.principal_type,
                "resource_type": a.resource_type,
                "newly_allowed": change(&a.newly_allowed),
                "newly_denied": change(&a.newly_denied),
            })).collect::<Vec<_>>(),
            "unchanged": self.unchanged,
            "only_old": self.only_old,
            "only_new": self.only_new,
            "assumed": self.assumed,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }

    /// The changed action ids, sorted and without repeats.
    pub fn changed_actions(&self) -> Vec<String> {
        let mut out: Vec<String> = self.changed.iter().map(|c| c.action.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every change in words, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.changed {
            for d in [&c.newly_allowed, &c.newly_denied].into_iter().flatten() {
                out.push(d.words.clone());
            }
        }
        for a in &self.only_old {
            out.push(format!("action {a} is gone"));
        }
        for a in &self.only_new {
            out.push(format!("action {a} is new"));
        }
        out
    }
}

/// Compares `old` with `new` under `new`'s schema (blocking; its own runtime and solver), for
/// the data `new`'s assumptions allow or for all data.
pub fn diff(old: &PolicyPack, new: &PolicyPack, data: Data) -> Result<DiffReport, AnalysisError> {
    block_on(diff_async(old, new, data))
}

fn env_name(env: &cedar_policy::RequestEnv) -> String {
    format!(
        "{} by {} on {}",
        env.action().id().unescaped(),
        env.principal(),
        env.resource()
    )
}

async fn diff_async(
    old: &PolicyPack,
    new: &PolicyPack,
    data: Data,
) -> Result<DiffReport, AnalysisError> {
    let started = Instant::now();
    let old_envs: Vec<String> = old.schema.request_envs().map(|e| env_name(&e)).collect();
    let mut prover = Prover::new(&new.schema, &new.schema_version)?;
    let assumed = match data {
        Data::Assumed => {
            prover.assume(&new.entities);
            new.entities
                .assumptions
                .iter()
                .map(|a| a.id.clone())
                .collect()
        }
        Data::Unassumed => Vec::new(),
    };
    let new_envs = prover.envs_of(&[]);
    let new_names: Vec<String> = new_envs.iter().map(env_name).collect();
    let mut report = DiffReport {
        changed: Vec::new(),
        unchanged: Vec::new(),
        only_old: old_envs
            .iter()
            .filter(|e| !new_names.contains(e))
            .cloned()
            .collect(),
        only_new: Vec::new(),
        assumed,
        elapsed: Duration::ZERO,
    };
    let (o, n) = (
        Named::new("old", &old.policies),
        Named::new("new", &new.policies),
    );
    for (env, name) in new_envs.iter().zip(&new_names) {
        if !old_envs.contains(name) {
            report.only_new.push(name.clone());
            continue;
        }
        let what = format!("the diff of {name}");
        let allowed = prover.implies_assuming(&n, &o, env, &what).await?;
        let denied = prover.implies_assuming(&o, &n, env, &what).await?;
        if allowed.is_none() && denied.is_none() {
            report.unchanged.push(name.clone());
            continue;
        }
        let change = |cex: Counterexample, verb: &str| Change {
            words: words::sentence(&cex, verb),
            counterexample: cex,
        };
        report.changed.push(ActionChange {
            action: env.action().id().unescaped().to_string(),
            principal_type: env.principal().to_string(),
            resource_type: env.resource().to_string(),
            newly_allowed: allowed.map(|c| change(c, "may now")),
            newly_denied: denied.map(|c| change(c, "may no longer")),
        });
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
