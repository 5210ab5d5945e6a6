//! Proving a pack's invariants: each declared property, and "no policy ever errors", for
//! every request environment (principal type, action, resource type) of the schema and every
//! entity store it allows. One solver process serves a whole run; each pack is compiled once
//! per environment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy::{
    ActionConstraint, EntityUid, Policy, PolicyId, PolicySet, RequestEnv, Schema, ValidationMode,
    Validator,
};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::counterexample::Counterexample;
use super::memo::{known_to_hold, remember, SALT};
use super::run::block_on;
use super::{solver, AnalysisError};
use crate::engine::pack::{PackSpec, PolicyPack, Property, TableClaim, OVERLAY_DIR};
use crate::engine::schema::EntitySchema;

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
            None => format!("ok   {} ({} queries, {ms} ms)", self.id, self.queries),
            Some(at) => format!("FAIL {} at {at} ({ms} ms)", self.id),
        }
    }

    /// The failure as a rejection reason: what failed, where, and the counterexample as JSON.
    pub fn reason(&self) -> Option<String> {
        let at = self.failed_at.as_ref()?;
        let mut out = if self.id.starts_with("matrix ") {
            format!("{} fails: {at}", self.id)
        } else {
            format!("invariant {} fails at {at}", self.id)
        };
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
    /// How many rows of the permission table were proved.
    pub table_rows: usize,
    /// How many policies were proved never to error (when that property is on).
    pub never_errors_policies: usize,
    /// Queries the solver answered (the others were remembered, or held because both sides
    /// had the same policies).
    pub solved: usize,
    /// Queries proved before, by this process or another sharing the proof file, for the same
    /// schema and policies.
    pub remembered: usize,
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
                "{} invariants hold, {} table rows proved, {} policies never error \
                 ({} solver queries, {} remembered, {secs:.1} s)",
                self.invariants,
                self.table_rows,
                self.never_errors_policies,
                self.solved,
                self.remembered
            )
        } else {
            format!(
                "{failed} of {} properties fail ({secs:.1} s)",
                self.findings.len()
            )
        }
    }
}

/// Proves every invariant of `pack` and every row of its permission table in `table`
/// (blocking; it runs its own runtime and solver process), under its data assumptions.
pub fn analyze(pack: &PolicyPack, table: &[TableClaim]) -> Result<Report, AnalysisError> {
    block_on(analyze_async(pack, table))
}

async fn analyze_async(pack: &PolicyPack, table: &[TableClaim]) -> Result<Report, AnalysisError> {
    let started = Instant::now();
    let mut cx = Prover::new(&pack.schema, &pack.schema_version)?;
    cx.assume(&pack.entities);
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
                let live = Named::new("pack", &pack.policies);
                let reference = Named::new(&format!("invariant:{}", inv.id), reference);
                for env in cx.envs_of(actions) {
                    let what = format!("{} on {}", env.action(), env.resource());
                    f.queries += 1;
                    if let Some(cex) = cx.implies_assuming(&live, &reference, &env, &what).await? {
                        f.fail(cex, &what);
                        break;
                    }
                }
            }
            Property::NeverAllowed { actions } => {
                let live = Named::new("pack", &pack.policies);
                for env in cx.envs_of(actions) {
                    let what = format!("{} on {}", env.action(), env.resource());
                    f.queries += 1;
                    if let Some(cex) = cx.always_denies_assuming(&live, &env, &what).await? {
                        f.fail(cex, &what);
                        break;
                    }
                }
            }
            Property::OverlaysOnlyRestrict { overlays } => {
                let base = base_policies(pack);
                let base = Named::new("base", &base);
                'overlays: for name in overlays {
                    let with = with_overlay(pack, base.set, name)?;
                    let with = Named::new(&format!("overlay:{name}"), &with);
                    for env in cx.envs_of(&[]) {
                        let what =
                            format!("overlay {name}, {} on {}", env.action(), env.resource());
                        f.queries += 1;
                        if let Some(cex) = cx.implies_assuming(&with, &base, &env, &what).await? {
                            f.fail(cex, &what);
                            break 'overlays;
                        }
                    }
                }
            }
        }
        f.elapsed = t.elapsed();
        findings.push(f);
    }

    // The table describes the pack without its overlays (each overlay's effect is its own
    // invariant's business).
    let base = base_policies(pack);
    for claim in table {
        let t = Instant::now();
        let mut f = Finding {
            id: format!("matrix {}", claim.row),
            why: None,
            holds: true,
            queries: 0,
            elapsed: Duration::ZERO,
            failed_at: None,
            counterexample: None,
        };
        let env = cx.envs.iter().find(|e| {
            e.principal() == &claim.principal_type
                && e.action() == &claim.action
                && e.resource() == &claim.resource_type
        });
        let Some(env) = env.cloned() else {
            return Err(symcc(
                &claim.row,
                "the schema has no such principal, action and resource",
            ));
        };
        let live = Named::new("base", &base);
        let what = format!("{} on {}", env.action(), env.resource());
        let at_most = Named::new(&format!("{}:at_most", claim.row), &claim.at_most);
        f.queries += 1;
        if let Some(cex) = cx.implies_assuming(&live, &at_most, &env, &what).await? {
            let cols = claim.allowed.join(", ");
            f.fail(
                cex,
                &format!(
                    "{what}: the pack allows someone in no allowed column ({})",
                    if cols.is_empty() { "none" } else { &cols }
                ),
            );
        } else {
            // All allowed columns in one query (a set allows when one of its permits does);
            // only a failure asks column by column, to name the one the pack denies.
            let mut all = PolicySet::new();
            for (_, set) in &claim.at_least {
                for p in set.policies() {
                    let id = PolicyId::new(format!("column{}", all.policies().count()));
                    all.add(p.new_id(id)).map_err(|e| symcc(&what, e))?;
                }
            }
            let at_least = Named::new(&format!("{}:at_least", claim.row), &all);
            f.queries += 1;
            if !claim.at_least.is_empty()
                && cx
                    .assumed_implies(&at_least, &live, &env, &what)
                    .await?
                    .is_some()
            {
                for (col, set) in &claim.at_least {
                    let one = Named::new(&format!("{}:{col}", claim.row), set);
                    f.queries += 1;
                    if let Some(cex) = cx.assumed_implies(&one, &live, &env, &what).await? {
                        f.fail(
                            cex,
                            &format!(
                                "{what}: the table allows column `{col}`, the pack denies \
                                 someone in it"
                            ),
                        );
                        break;
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
                f.queries += 1;
                if let Some(cex) = cx.never_errors(policy, &env, &what).await? {
                    f.fail(cex, &what);
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
        table_rows: table.len(),
        never_errors_policies,
        solved: cx.solved,
        remembered: cx.remembered,
        elapsed: started.elapsed(),
    })
}

impl Finding {
    fn fail(&mut self, cex: Counterexample, what: &str) {
        self.holds = false;
        self.failed_at = Some(what.to_string());
        self.counterexample = Some(cex);
    }
}

/// A policy set with the name its compilations are cached under in one run.
pub(super) struct Named<'a> {
    name: String,
    pub set: &'a PolicySet,
}

impl<'a> Named<'a> {
    pub fn new(name: &str, set: &'a PolicySet) -> Self {
        Named {
            name: name.to_string(),
            set,
        }
    }
}

/// The solver session and the per-environment compilation cache of one run.
pub(super) struct Prover<'s> {
    pub schema: &'s Schema,
    schema_version: String,
    compiler: CedarSymCompiler<LocalSolver>,
    envs: Vec<RequestEnv>,
    /// Each action's groups (its ancestors among the schema's actions).
    action_groups: HashMap<EntityUid, Vec<EntityUid>>,
    cache: HashMap<(String, String), Arc<CompiledPolicySet>>,
    /// Per environment, forbids that state the pack's data assumptions for the entities a
    /// request of it reaches (see [`Prover::assume`]).
    assumed: HashMap<String, Vec<(String, Policy)>>,
    /// Queries sent to the solver (the rest were known to hold, or held trivially).
    pub solved: usize,
    /// Queries known to hold from before.
    pub remembered: usize,
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
    pub fn new(schema: &'s Schema, schema_version: &str) -> Result<Self, AnalysisError> {
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
            schema_version: schema_version.to_string(),
            compiler,
            envs,
            action_groups,
            cache: HashMap::new(),
            assumed: HashMap::new(),
            solved: 0,
            remembered: 0,
        })
    }

    /// Assume the pack's data assumptions from now on: for each environment, every entity of an
    /// assumption's type a request reaches (the principal, the resource, or an entity one of
    /// their attributes names) satisfies it. Stated as `forbid (..) unless { condition }`
    /// over that path, added to the allowing side of a query when the query fails without it:
    /// sound, since the store refuses data that breaks one.
    pub fn assume(&mut self, entities: &EntitySchema) {
        for env in &self.envs {
            let mut stated = Vec::new();
            for a in &entities.assumptions {
                for (root, ty) in [("principal", env.principal()), ("resource", env.resource())] {
                    let mut paths = Vec::new();
                    if ty == &a.entity_type {
                        paths.push((root.to_string(), json!({ "Var": root })));
                    }
                    for (attr, held) in entities.entity_attrs_of(ty) {
                        if held == &a.entity_type {
                            paths.push((
                                format!("{root}.{attr}"),
                                json!({ ".": { "left": { "Var": root }, "attr": attr } }),
                            ));
                        }
                    }
                    for (name, path) in paths {
                        let body = substitute(&a.condition_json, &path);
                        let policy = json!({
                            "effect": "forbid",
                            "principal": { "op": "is", "entity_type": env.principal().to_string() },
                            "action": { "op": "==", "entity": {
                                "type": env.action().type_name().to_string(),
                                "id": env.action().id().unescaped(),
                            }},
                            "resource": { "op": "is", "entity_type": env.resource().to_string() },
                            "conditions": [{ "kind": "unless", "body": body }],
                        });
                        let id = PolicyId::new(format!("assumption:{}@{name}", a.id));
                        let Ok(policy) = Policy::from_json(Some(id), policy) else {
                            continue;
                        };
                        // A path the condition does not type-check on (a set, an optional
                        // attribute) is left out: assuming less stays sound.
                        let mut one = PolicySet::new();
                        if one.add(policy.clone()).is_err() {
                            continue;
                        }
                        let checked = Validator::new(self.schema.clone())
                            .validate(&one, ValidationMode::Strict);
                        if checked.validation_errors().next().is_none() {
                            stated.push((name, policy));
                        }
                    }
                }
            }
            if !stated.is_empty() {
                self.assumed.insert(env_key(env), stated);
            }
        }
    }

    /// [`Prover::implies`] for the data the store can hold: when `a` allows a request `b`
    /// denies, asked again with the assumptions on `a`'s side (if any apply).
    pub async fn implies_assuming(
        &mut self,
        a: &Named<'_>,
        b: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let plain = self.implies(a, b, env, what).await?;
        if plain.is_none() {
            return Ok(plain);
        }
        match self.with_assumptions(a.set, &[a.set, b.set], env, what)? {
            Some(set) => {
                let assumed = Named::new(&format!("{}+assumed", a.name), &set);
                self.implies(&assumed, b, env, what).await
            }
            // Nothing to assume: the plain answer stands (not asked again).
            None => Ok(plain),
        }
    }

    /// [`Prover::implies`] with the assumptions on `a`'s side from the start (for a query that
    /// is not expected to hold without them).
    pub async fn assumed_implies(
        &mut self,
        a: &Named<'_>,
        b: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        match self.with_assumptions(a.set, &[a.set, b.set], env, what)? {
            Some(set) => {
                let assumed = Named::new(&format!("{}+assumed", a.name), &set);
                self.implies(&assumed, b, env, what).await
            }
            None => self.implies(a, b, env, what).await,
        }
    }

    /// `set` with the assumptions stated for `env` that the query can need: those about the
    /// principal or the resource itself, and those about an entity an attribute names only
    /// where a policy of `reading` reads that attribute (assuming less stays sound, and each
    /// statement costs the solver). None: nothing to assume.
    fn with_assumptions(
        &self,
        set: &PolicySet,
        reading: &[&PolicySet],
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<PolicySet>, AnalysisError> {
        let Some(stated) = self.assumed.get(&env_key(env)) else {
            return Ok(None);
        };
        let texts: Vec<String> = reading.iter().map(|r| self.relevant(r, env)).collect();
        let reads = |path: &str| {
            !path.contains('.')
                || texts.iter().any(|t| {
                    t.match_indices(path).any(|(i, _)| {
                        // `resource.project` followed by something that ends the name.
                        !t[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    })
                })
        };
        let mut out = set.clone();
        let mut any = false;
        for (path, policy) in stated {
            if reads(path) {
                out.add(policy.clone()).map_err(|e| symcc(what, e))?;
                any = true;
            }
        }
        Ok(any.then_some(out))
    }

    /// [`Prover::always_denies`] for the data the store can hold.
    pub async fn always_denies_assuming(
        &mut self,
        a: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let plain = self.always_denies(a, env, what).await?;
        if plain.is_none() {
            return Ok(plain);
        }
        match self.with_assumptions(a.set, &[a.set], env, what)? {
            Some(set) => {
                let assumed = Named::new(&format!("{}+assumed", a.name), &set);
                self.always_denies(&assumed, env, what).await
            }
            None => Ok(plain),
        }
    }

    /// The environments of these actions (all environments when `actions` is empty).
    pub fn envs_of(&self, actions: &[EntityUid]) -> Vec<RequestEnv> {
        self.envs
            .iter()
            .filter(|e| actions.is_empty() || actions.contains(e.action()))
            .cloned()
            .collect()
    }

    /// Whether a policy's action scope can match `env`'s action.
    fn applies(&self, policy: &Policy, env: &RequestEnv) -> bool {
        match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => &a == env.action(),
            // An action group matches its members.
            ActionConstraint::In(list) => {
                list.contains(env.action())
                    || self
                        .action_groups
                        .get(env.action())
                        .is_some_and(|groups| groups.iter().any(|g| list.contains(g)))
            }
        }
    }

    /// The environments a policy's scope can match (by its action constraint).
    fn envs_of_policy(&self, policy: &Policy) -> Vec<RequestEnv> {
        self.envs
            .iter()
            .filter(|e| self.applies(policy, e))
            .cloned()
            .collect()
    }

    /// The text of the policies of `set` that can apply to `env`, sorted by id.
    fn relevant(&self, set: &PolicySet, env: &RequestEnv) -> String {
        let mut parts: Vec<(String, String)> = set
            .policies()
            .filter(|p| self.applies(p, env))
            .map(|p| (p.id().to_string(), p.to_string()))
            .collect();
        parts.sort();
        parts
            .into_iter()
            .map(|(id, text)| format!("{id}\u{0}{text}\u{0}"))
            .collect()
    }

    fn key(&self, kind: &str, env: &RequestEnv, parts: &[&str]) -> [u8; 32] {
        let mut h = Sha256::new();
        for piece in [SALT, kind, &self.schema_version, &env_key(env)] {
            h.update(piece.as_bytes());
            h.update([0xff]);
        }
        for p in parts {
            h.update(p.as_bytes());
            h.update([0xff]);
        }
        h.finalize().into()
    }

    /// `set` compiled for `env`, cached under its name.
    fn compile(
        &mut self,
        set: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Arc<CompiledPolicySet>, AnalysisError> {
        let key = (set.name.clone(), env_key(env));
        if let Some(c) = self.cache.get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            CompiledPolicySet::compile(set.set, env, self.schema).map_err(|e| symcc(what, e))?,
        );
        self.cache.insert(key, c.clone());
        Ok(c)
    }

    /// A request in `env` that `a` allows and `b` denies, if there is one.
    pub async fn implies(
        &mut self,
        a: &Named<'_>,
        b: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let (ra, rb) = (self.relevant(a.set, env), self.relevant(b.set, env));
        if ra == rb {
            // The same policies decide the same way.
            return Ok(None);
        }
        let key = self.key("implies", env, &[&ra, &rb]);
        if known_to_hold(&key) {
            self.remembered += 1;
            return Ok(None);
        }
        let (ca, cb) = (self.compile(a, env, what)?, self.compile(b, env, what)?);
        self.solved += 1;
        let found = self
            .compiler
            .check_implies_with_counterexample_opt(&ca, &cb)
            .await
            .map_err(|e| symcc(what, e))?;
        self.settle(key, found, what)
    }

    /// A request in `env` that `a` allows, if there is one.
    pub async fn always_denies(
        &mut self,
        a: &Named<'_>,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let ra = self.relevant(a.set, env);
        let key = self.key("always_denies", env, &[&ra]);
        if known_to_hold(&key) {
            self.remembered += 1;
            return Ok(None);
        }
        let ca = self.compile(a, env, what)?;
        self.solved += 1;
        let found = self
            .compiler
            .check_always_denies_with_counterexample_opt(&ca)
            .await
            .map_err(|e| symcc(what, e))?;
        self.settle(key, found, what)
    }

    /// A request in `env` on which `policy` errors, if there is one.
    pub async fn never_errors(
        &mut self,
        policy: &Policy,
        env: &RequestEnv,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        let text = policy.to_string();
        let key = self.key("never_errors", env, &[&text]);
        if known_to_hold(&key) {
            self.remembered += 1;
            return Ok(None);
        }
        let compiled =
            CompiledPolicy::compile(policy, env, self.schema).map_err(|e| symcc(what, e))?;
        self.solved += 1;
        let found = self
            .compiler
            .check_never_errors_with_counterexample_opt(&compiled)
            .await
            .map_err(|e| symcc(what, e))?;
        self.settle(key, found, what)
    }

    fn settle(
        &self,
        key: [u8; 32],
        found: Option<cedar_policy_symcc::Env>,
        what: &str,
    ) -> Result<Option<Counterexample>, AnalysisError> {
        match found {
            None => {
                remember(key);
                Ok(None)
            }
            Some(env) => Counterexample::from_env(&env, what).map(Some),
        }
    }
}

/// `expr` with every `resource` replaced by `path`.
fn substitute(expr: &Value, path: &Value) -> Value {
    match expr {
        Value::Object(map) => {
            if map.get("Var").and_then(Value::as_str) == Some("resource") {
                return path.clone();
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), substitute(v, path)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, path)).collect()),
        other => other.clone(),
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
    let file = pack
        .spec
        .dir
        .join(OVERLAY_DIR)
        .join(format!("{name}.cedar"));
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
