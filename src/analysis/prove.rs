//! Proving a pack's invariants: each declared property, and "no policy ever errors", for
//! every request environment (principal type, action, resource type) of the schema and every
//! entity store it allows. One solver process serves a whole run; each pack is compiled once
//! per environment.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cedar_policy::{ActionConstraint, Policy, PolicySet, RequestEnv, Schema};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet};

use super::counterexample::Counterexample;
use super::run::block_on;
use super::{solver, AnalysisError};
use crate::engine::pack::{PackSpec, PolicyPack, Property, OVERLAY_DIR};

/// One proved (or refuted) property.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The invariant's id, or `never_errors:<policy id>` for a policy that can error.
    pub id: String,
    pub why: Option<String>,
    pub holds: bool,
    /// The solver queries it took.
    pub queries: usize,
    pub elapsed: Duration,
    /// Where it failed: the action (or the policy and action), in words.
    pub failed_at: Option<String>,
    pub counterexample: Option<Counterexample>,
}

impl Finding {
    /// One line: `ok   project.adminOnly (10 queries, 41 ms)` or the failure with its place.
    pub fn line(&self) -> String {
        let ms = self.elapsed.as_millis();
        match &self.failed_at {
            None => format!(
                "ok   {} ({} queries, {ms} ms)",
                self.id, self.queries
            ),
            Some(at) => format!("FAIL {} at {at} ({ms} ms)", self.id),
        }
    }

    /// The failure as a rejection reason: what failed, where, and the counterexample as JSON.
    pub fn reason(&self) -> Option<String> {
        let at = self.failed_at.as_ref()?;
        let mut out = format!("invariant {} fails at {at}", self.id);
        if let Some(why) = &self.why {
            out.push_str(&format!(" ({why})"));
        }
        if let Some(c) = &self.counterexample {
            out.push_str(&format!(": counterexample {}", c.to_json()));
        }
        Some(out)
    }
}

/// All findings of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// How many invariants were declared.
    pub invariants: usize,
    /// How many policies were proved never to error (when that property is on).
    pub never_errors_policies: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.findings.iter().all(|f| f.holds)
    }

    pub fn failed(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| !f.holds).collect()
    }

    /// `8 invariants hold, 37 policies never error (2.1 s)`, or how many failed.
    pub fn summary(&self) -> String {
        let failed = self.failed().len();
        let secs = self.elapsed.as_secs_f64();
        if failed == 0 {
            format!(
                "{} invariants hold, {} policies never error ({secs:.1} s)",
                self.invariants, self.never_errors_policies
            )
        } else {
            format!(
                "{failed} of {} properties fail ({secs:.1} s)",
                self.findings.len()
            )
        }
    }
}

/// Proves every invariant of `pack` (blocking; it runs its own runtime and solver process).
pub fn analyze(pack: &PolicyPack) -> Result<Report, AnalysisError> {
    block_on(analyze_async(pack))
}

async fn analyze_async(pack: &PolicyPack) -> Result<Report, AnalysisError> {
    let started = Instant::now();
    let mut cx = Prover::new(&pack.schema)?;
    let mut findings = Vec::new();
    for inv in &pack.invariants.list {
        let t = Instant::now();
        let mut f = Finding {
            id: inv.id.clone(),
            why: inv.why.clone(),
            holds: true,
            queries: 0,
            elapsed: Duration::ZERO,
            failed_at: None,
            counterexample: None,
        };
        match &inv.property {
            Property::AllowedOnlyWhen {
                actions, reference, ..
            } => {
                'outer: for env in cx.envs_of(actions) {
                    let what = format!("{} on {}", env.action(), env.resource());
                    let live = cx.compile(&pack.policies, &env, "pack", &what)?;
                    let refp = cx.compile_fresh(reference, &env, &what)?;
                    f.queries += 1;
                    if let Some(cex) = cx.implies(live.as_ref(), refp.as_ref(), &what).await? {
                        f.fail(&env, cex, &what)?;
                        break 'outer;
                    }
                }
            }
            Property::NeverAllowed { actions } => {
                for env in cx.envs_of(actions) {
                    let what = format!("{} on {}", env.action(), env.resource());
                    let live = cx.compile(&pack.policies, &env, "pack", &what)?;
                    f.queries += 1;
                    if let Some(cex) = cx.always_denies(live.as_ref(), &what).await? {
                        f.fail(&env, cex, &what)?;
                        break;
                    }
                }
            }
            Property::OverlaysOnlyRestrict { overlays } => {
                let base = base_policies(pack);
                'overlays: for name in overlays {
                    let with = with_overlay(pack, &base, name)?;
                    for env in cx.envs_of(&[]) {
                        let what = format!(
                            "overlay {name}, {} on {}",
                            env.action(),
                            env.resource()
                        );
                        let w = cx.compile(&with, &env, &format!("overlay:{name}"), &what)?;
                        let b = cx.compile(&base, &env, "base", &what)?;
                        f.queries += 1;
                        if let Some(cex) = cx.implies(w.as_ref(), b.as_ref(), &what).await? {
                            f.fail(&env, cex, &what)?;
                            break 'overlays;
                        }
                    }
                }
            }
        }
        f.elapsed = t.elapsed();
        findings.push(f);
    }

    let mut never_errors_policies = 0;
    if pack.invariants.never_errors {
        for policy in pack.policies.policies() {
            let t = Instant::now();
            let id = policy.id().to_string();
            let mut f = Finding {
                id: format!("never_errors:{id}"),
                why: Some(format!("policy {id} evaluates without error")),
                holds: true,
                queries: 0,
                elapsed: Duration::ZERO,
                failed_at: None,
                counterexample: None,
            };
            for env in cx.envs_of_policy(policy) {
                let what = format!("policy {id}, {} on {}", env.action(), env.resource());
                let compiled = CompiledPolicy::compile(policy, &env, cx.schema)
                    .map_err(|e| symcc(&what, e))?;
                f.queries += 1;
                let found = cx
                    .compiler
                    .check_never_errors_with_counterexample_opt(&compiled)
                    .await
                    .map_err(|e| symcc(&what, e))?;
                if let Some(env_found) = found {
                    f.fail(&env, Counterexample::from_env(&env_found, &what)?, &what)?;
                    break;
                }
            }
            never_errors_policies += 1;
            // Only failures are listed one by one; the rest are counted.
            if !f.holds {
                f.elapsed = t.elapsed();
                findings.push(f);
            }
        }
    }
    Ok(Report {
        findings,
        invariants: pack.invariants.list.len(),
        never_errors_policies,
        elapsed: started.elapsed(),
    })
}

impl Finding {
    fn fail(
        &mut self,
        env: &RequestEnv,
        cex: Counterexample,
        what: &str,
    ) -> Result<(), AnalysisError> {
        let _ = env;
        self.holds = false;
        self.failed_at = Some(what.to_string());
        self.counterexample = Some(cex);
        Ok(())
    }
}

/// The solver session and the per-environment compilation cache of one run.
pub(super) struct Prover<'s> {
    pub schema: &'s Schema,
    pub compiler: CedarSymCompiler<LocalSolver>,
    envs: Vec<RequestEnv>,
    /// Each action's groups (its ancestors among the schema's actions).
    action_groups: HashMap<cedar_policy::EntityUid, Vec<cedar_policy::EntityUid>>,
    cache: HashMap<(String, String), std::sync::Arc<CompiledPolicySet>>,
}

/// A compiled set that is shared from the cache or made for one query.
pub(super) enum Compiled {
    Shared(std::sync::Arc<CompiledPolicySet>),
    Own(CompiledPolicySet),
}

impl AsRef<CompiledPolicySet> for Compiled {
    fn as_ref(&self) -> &CompiledPolicySet {
        match self {
            Compiled::Shared(c) => c,
            Compiled::Own(c) => c,
        }
    }
}

pub(super) fn symcc(what: &str, e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Symcc {
        what: what.to_string(),
        message: e.to_string(),
    }
}

fn env_key(env: &RequestEnv) -> String {
    format!("{}|{}|{}", env.principal(), env.action(), env.resource())
}

impl<'s> Prover<'s> {
    pub fn new(schema: &'s Schema) -> Result<Self, AnalysisError> {
        let compiler = CedarSymCompiler::new(solver::start()?).map_err(|e| symcc("solver", e))?;
        let mut envs: Vec<RequestEnv> = schema.request_envs().collect();
        envs.sort_by_key(env_key);
        let actions = schema
            .action_entities()
            .map_err(|e| symcc("the schema's actions", e))?;
        let action_groups = envs
            .iter()
            .map(|e| {
                let groups = actions
                    .ancestors(e.action())
                    .map(|a| a.cloned().collect())
                    .unwrap_or_default();
                (e.action().clone(), groups)
            })
            .collect();
        Ok(Prover {
            schema,
            compiler,
            envs,
            action_groups,
            cache: HashMap::new(),
        })
    }

    /// The environments of these actions (all environments when `actions` is empty).
    pub fn envs_of(&self, actions: &[cedar_policy::EntityUid]) -> Vec<RequestEnv> {
        self.envs
            .iter()
            .filter(|e| actions.is_empty() || actions.contains(e.action()))
            .cloned()
            .collect()
    }

    /// The environments a policy's scope can match (by its action constraint).
    fn envs_of_policy(&self, policy: &Policy) -> Vec<RequestEnv> {
        match policy.action_constraint() {
            ActionConstraint::Any => self.envs.clone(),
            ActionConstraint::Eq(a) => self.envs_of(std::slice::from_ref(&a)),
            ActionConstraint::In(list) => {
                // An action group matches its members: keep environments whose action is listed
                // or descends from a listed group.
                self.envs
                    .iter()
                    .filter(|e| {
                        list.contains(e.action())
                            || self
                                .action_groups
                                .get(e.action())
                                .is_some_and(|groups| groups.iter().any(|g| list.contains(g)))
                    })
                    .cloned()
                    .collect()
            }
        }
    }

    /// `set` compiled for `env`, cached under `name` (one name per policy set of a run).
    pub fn compile(
        &mut self,
        set: &PolicySet,
        env: &RequestEnv,
        name: &str,
        what: &str,
    ) -> Result<Compiled, AnalysisError> {
        let key = (name.to_string(), env_key(env));
        if let Some(c) = self.cache.get(&key) {
            return Ok(Compiled::Shared(c.clone()));
        }
        let c = std::sync::Arc::new(
            CompiledPolicySet::compile(set, env, self.schema).map_err(|e| symcc(what, e))?,
        );
        self.cache.insert(key, c.clone());
        Ok(Compiled::Shared(c))
    }

    /// `set` compiled for `env`, not cached.
    pub fn compile_fresh(
        &self,
        set: &PolicySet,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Compiled, AnalysisError> {
        Ok(Compiled::Own(
            CompiledPolicySet::compile(set, env, self.schema).map_err(|e| symcc(what, e))?,
        ))
    }

    /// A request `a` allows and `b` denies, if there is one.
    pub async fn implies(
        &mut self,
        a: &CompiledPolicySet,
        b: &CompiledPolicySet,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let found = self
            .compiler
            .check_implies_with_counterexample_opt(a, b)
            .await
            .map_err(|e| symcc(what, e))?;
        found
            .map(|env| Counterexample::from_env(&env, what))
            .transpose()
    }

    /// A request `a` allows, if there is one.
    pub async fn always_denies(
        &mut self,
        a: &CompiledPolicySet,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let found = self
            .compiler
            .check_always_denies_with_counterexample_opt(a)
            .await
            .map_err(|e| symcc(what, e))?;
        found
            .map(|env| Counterexample::from_env(&env, what))
            .transpose()
    }
}

/// The pack's policies without any overlay's.
fn base_policies(pack: &PolicyPack) -> PolicySet {
    let overlay_dir = pack.spec.dir.join(OVERLAY_DIR);
    let mut out = PolicySet::new();
    for p in pack.policies.policies() {
        let from_overlay = pack
            .origin
            .get(&p.id().to_string())
            .is_some_and(|f| f.starts_with(&overlay_dir));
        if !from_overlay {
            // Ids are unique in the pack, so adding cannot fail.
            let _ = out.add(p.clone());
        }
    }
    out
}

/// The base policies and those of overlay `name`, loaded (and validated) from its file.
fn with_overlay(
    pack: &PolicyPack,
    base: &PolicySet,
    name: &str,
) -> Result<PolicySet, AnalysisError> {
    let spec = PackSpec::new(&pack.spec.dir, &[name.to_string()]);
    let loaded = PolicyPack::load(&spec).map_err(|e| AnalysisError::Overlay {
        name: name.to_string(),
        message: e.to_string(),
    })?;
    let file = pack.spec.dir.join(OVERLAY_DIR).join(format!("{name}.cedar"));
    let mut out = base.clone();
    for p in loaded.policies.policies() {
        if loaded.origin.get(&p.id().to_string()) == Some(&file) {
            out.add(p.clone()).map_err(|e| AnalysisError::Overlay {
                name: name.to_string(),
                message: e.to_string(),
            })?;
        }
    }
    Ok(out)
}
