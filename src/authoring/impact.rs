//! Impact: which (principal, resource) pairs of the data a store holds would gain or lose each
//! action if a candidate pack replaced the live one, with the policies responsible.
//!
//! Only actions whose policies differ are compared (same policies, same data: same
//! decisions). For each, the two packs list the allowed side over every entity of the other
//! side, through the listing machinery (finders over the hierarchy and the reverse index, each
//! candidate decided on the decision path), so the pairs are exactly those whose single
//! decisions differ. The side enumerated is the one with fewer entities whose listing narrows.
//! An action that reads a context is asked with the contexts given and those of the packs'
//! matrix rows, each separately; without any it is skipped and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cedar_policy::EntityTypeName;
use serde_json::{json, Value};

use crate::engine::decide::Decision;
use crate::engine::error::RequestError;
use crate::engine::index::EntityStore;
use crate::engine::list::{ListRequest, Side};
use crate::engine::pack::{ActionEntry, PolicyPack};
use crate::engine::request::{self, ContextMap, UidRef};
use crate::engine::View;

/// What to compare.
pub struct ImpactInput<'a> {
    /// The pack that serves now, and the store as it validated it.
    pub old: (&'a PolicyPack, &'a EntityStore),
    /// The candidate, and the same data as it validates it (the same store when the schema
    /// did not change).
    pub new: (&'a PolicyPack, &'a EntityStore),
    /// Contexts to ask the actions that read one, by action id, beside the matrix rows'.
    pub contexts: &'a BTreeMap<String, Vec<ContextMap>>,
    /// Threads to list on (at least one).
    pub threads: usize,
    /// Stop once more pairs than this have changed (the count is then a lower bound).
    pub limit: Option<usize>,
}

/// One pair whose decision changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub principal: String,
    pub resource: String,
    /// The policies that determined the decision before (the permits of a lost pair, the
    /// forbids that denied a gained one, or none).
    pub before: Vec<String>,
    /// The same after.
    pub after: Vec<String>,
}

/// How one action changes on one principal type, resource type and context.
#[derive(Debug, Clone)]
pub struct ActionImpact {
    pub action: String,
    pub principal_type: String,
    pub resource_type: String,
    /// The context asked (None: the action reads none).
    pub context: Option<ContextMap>,
    pub gained: Vec<Pair>,
    pub lost: Vec<Pair>,
    /// Candidates decided, both packs together.
    pub decided: usize,
    /// Which side was enumerated: "principals" (listing each one's resources) or "resources".
    pub enumerated: &'static str,
}

/// The whole impact.
#[derive(Debug, Clone)]
pub struct Impact {
    /// Actions whose policies differ, sorted.
    pub changed: Vec<String>,
    pub actions: Vec<ActionImpact>,
    /// Changed actions not compared, with the reason.
    pub skipped: Vec<(String, String)>,
    /// The limit was reached: the counts are lower bounds and the lists incomplete.
    pub truncated: bool,
    pub entities: usize,
    pub revision: u64,
    pub elapsed: Duration,
}

/// Why an impact could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ImpactError {
    #[error("action `{action}`: {source}")]
    Request {
        action: String,
        #[source]
        source: RequestError,
    },
}

impl Impact {
    /// Pairs that gain an action, over every action.
    pub fn gained(&self) -> usize {
        self.actions.iter().map(|a| a.gained.len()).sum()
    }

    /// Pairs that lose one.
    pub fn lost(&self) -> usize {
        self.actions.iter().map(|a| a.lost.len()).sum()
    }

    /// Gained and lost together.
    pub fn pairs(&self) -> usize {
        self.gained() + self.lost()
    }

    /// (gained, lost) per resource type, sorted by type.
    pub fn by_resource_type(&self) -> BTreeMap<String, (usize, usize)> {
        let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for a in &self.actions {
            let e = out.entry(a.resource_type.clone()).or_default();
            e.0 += a.gained.len();
            e.1 += a.lost.len();
        }
        out
    }

    /// The summary as JSON: counts per action and per resource type, and up to `sample`
    /// pairs of each direction per action.
    pub fn to_json(&self, sample: usize) -> Value {
        let pairs = |ps: &[Pair]| ps.iter().take(sample).map(pair_json).collect::<Vec<_>>();
        json!({
            "changed_actions": self.changed,
            "gained": self.gained(),
            "lost": self.lost(),
            "truncated": self.truncated,
            "entities": self.entities,
            "revision": self.revision,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "by_resource_type": self.by_resource_type().into_iter().map(|(t, (g, l))| {
                json!({"resource_type": t, "gained": g, "lost": l})
            }).collect::<Vec<_>>(),
            "actions": self.actions.iter().map(|a| json!({
                "action": a.action,
                "principal_type": a.principal_type,
                "resource_type": a.resource_type,
                "context": a.context,
                "gained": a.gained.len(),
                "lost": a.lost.len(),
                "decided": a.decided,
                "enumerated": a.enumerated,
                "sample_gained": pairs(&a.gained),
                "sample_lost": pairs(&a.lost),
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(a, why)| json!({"action": a, "reason": why}))
                .collect::<Vec<_>>(),
        })
    }

    /// Every changed pair as one JSON object per line.
    pub fn lines(&self) -> impl Iterator<Item = Value> + '_ {
        self.actions.iter().flat_map(|a| {
            let one = move |change: &'static str, p: &Pair| {
                let mut v = pair_json(p);
                v["action"] = json!(a.action);
                v["change"] = json!(change);
                if let Some(c) = &a.context {
                    v["context"] = Value::Object(c.clone());
                }
                v
            };
            (a.gained.iter().map(move |p| one("gained", p)))
                .chain(a.lost.iter().map(move |p| one("lost", p)))
        })
    }
}

fn pair_json(p: &Pair) -> Value {
    json!({"principal": p.principal, "resource": p.resource, "before": p.before, "after": p.after})
}

/// The ids of the actions whose policies differ between two packs (or that only one has),
/// sorted. After a schema change every action counts: requests and data validate anew.
pub fn changed_actions(old: &PolicyPack, new: &PolicyPack) -> Vec<String> {
    let ids: BTreeSet<String> = old
        .action_ids()
        .into_iter()
        .chain(new.action_ids())
        .collect();
    if old.schema_version != new.schema_version {
        return ids.into_iter().collect();
    }
    ids.into_iter()
        .filter(|id| {
            signature(old.action_by_id(id).map(|e| &e.compiled[..]))
                != signature(new.action_by_id(id).map(|e| &e.compiled[..]))
        })
        .collect()
}

/// What decides an action: its policies' names, effects and conditions, sorted.
fn signature(compiled: Option<&[crate::engine::compiled::Compiled]>) -> Option<Vec<String>> {
    compiled.map(|cs| {
        let mut out: Vec<String> = cs.iter().map(policy_signature).collect();
        out.sort();
        out
    })
}

/// Computes the impact of replacing `input.old` by `input.new`. `matrix_contexts` are the
/// contexts the packs' matrix rows ask, by action id.
pub fn impact(
    input: &ImpactInput<'_>,
    matrix_contexts: &BTreeMap<String, Vec<ContextMap>>,
) -> Result<Impact, ImpactError> {
    let started = Instant::now();
    let (old, new) = (input.old, input.new);
    let plan = targets(old.0, new.0, input.contexts, matrix_contexts);
    let total = AtomicUsize::new(0);
    let over = |total: &AtomicUsize| {
        input
            .limit
            .is_some_and(|l| total.load(Ordering::Relaxed) > l)
    };
    let mut actions = Vec::new();
    for t in &plan.targets {
        if over(&total) {
            break;
        }
        let e = enumerate(old, new, t);
        let mut action = ActionImpact::new(t, &e);
        let how = (input.threads, input.limit, &total);
        compare_some(old, new, t, &e, &e.others, how, &mut action)?;
        action.finish();
        actions.push(action);
    }
    Ok(Impact {
        changed: plan.changed,
        actions,
        skipped: plan.skipped,
        truncated: over(&total),
        entities: new.1.len(),
        revision: new.1.revision(),
        elapsed: started.elapsed(),
    })
}

/// What to compare: the actions whose policies differ, and for each its principal types,
/// resource types and contexts.
pub struct Targets {
    pub changed: Vec<String>,
    pub targets: Vec<Target>,
    /// Changed actions that cannot be compared, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// One action, principal type, resource type and context to compare.
#[derive(Debug, Clone)]
pub struct Target {
    pub action: String,
    pub principal_type: String,
    pub resource_type: String,
    pub context: Option<ContextMap>,
}

/// The targets of a comparison of two packs.
pub fn targets(
    old: &PolicyPack,
    new: &PolicyPack,
    contexts: &BTreeMap<String, Vec<ContextMap>>,
    matrix_contexts: &BTreeMap<String, Vec<ContextMap>>,
) -> Targets {
    let changed = changed_actions(old, new);
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for id in &changed {
        let present: Vec<&ActionEntry> = [old.action_by_id(id), new.action_by_id(id)]
            .into_iter()
            .flatten()
            .collect();
        let types = |f: fn(&ActionEntry) -> &std::collections::HashSet<EntityTypeName>| {
            present
                .iter()
                .flat_map(|e| f(e).iter().map(|t| t.to_string()))
                .collect::<BTreeSet<String>>()
        };
        let asked: Vec<Option<ContextMap>> = if present.iter().all(|e| e.empty_context) {
            vec![None]
        } else {
            let mut seen = BTreeSet::new();
            contexts
                .get(id)
                .into_iter()
                .chain(matrix_contexts.get(id))
                .flatten()
                .filter(|c| seen.insert(Value::Object((*c).clone()).to_string()))
                .map(|c| Some(c.clone()))
                .collect()
        };
        if asked.is_empty() {
            skipped.push((
                id.clone(),
                format!(
                    "reads a context, and neither --context {id}=<json> nor a matrix row gives one"
                ),
            ));
            continue;
        }
        for pt in types(|e| &e.principal_types) {
            for rt in types(|e| &e.resource_types) {
                for context in &asked {
                    targets.push(Target {
                        action: id.clone(),
                        principal_type: pt.clone(),
                        resource_type: rt.clone(),
                        context: context.clone(),
                    });
                }
            }
        }
    }
    Targets {
        changed,
        targets,
        skipped,
    }
}

/// Which side a target is compared by: the entities of the other side, each listed for.
pub struct Enumeration {
    listed: Side,
    /// The ids of the other side's entities, sorted.
    pub others: Vec<String>,
    selected: (Vec<usize>, Vec<usize>),
}

/// Chooses the side to enumerate for a target: the one with fewer entities, unless only the
/// other side's listing keeps from scanning a whole type.
pub fn enumerate(
    old: (&PolicyPack, &EntityStore),
    new: (&PolicyPack, &EntityStore),
    t: &Target,
) -> Enumeration {
    let selected = (
        changed_policies(old.0, new.0, &t.action),
        changed_policies(new.0, old.0, &t.action),
    );
    let union = |ty: &str| {
        let mut all: BTreeSet<String> = ids(old.1, old.0, ty).into_iter().collect();
        all.extend(ids(new.1, new.0, ty));
        all.into_iter().collect::<Vec<String>>()
    };
    let (principals, resources) = (union(&t.principal_type), union(&t.resource_type));
    let both = |listed, ty: &str| {
        narrows(old.0, &t.action, &selected.0, listed, ty)
            && narrows(new.0, &t.action, &selected.1, listed, ty)
    };
    let by_count = if principals.len() <= resources.len() {
        Side::Resources
    } else {
        Side::Principals
    };
    let listed = match (
        both(Side::Resources, &t.resource_type),
        both(Side::Principals, &t.principal_type),
    ) {
        (true, false) => Side::Resources,
        (false, true) => Side::Principals,
        _ => by_count,
    };
    Enumeration {
        listed,
        others: match listed {
            Side::Resources => principals,
            Side::Principals => resources,
        },
        selected,
    }
}

impl ActionImpact {
    /// An empty result for a target.
    pub fn new(t: &Target, e: &Enumeration) -> Self {
        ActionImpact {
            action: t.action.clone(),
            principal_type: t.principal_type.clone(),
            resource_type: t.resource_type.clone(),
            context: t.context.clone(),
            gained: Vec::new(),
            lost: Vec::new(),
            decided: 0,
            enumerated: match e.listed {
                Side::Resources => "principals",
                Side::Principals => "resources",
            },
        }
    }

    /// Sorts the pairs, once every part is in.
    pub fn finish(&mut self) {
        self.gained.sort();
        self.lost.sort();
    }
}

/// A policy as it decides: its name, effect and condition.
fn policy_signature(c: &crate::engine::compiled::Compiled) -> String {
    format!("{} {} {}", c.name, c.forbid, c.condition)
}

/// The indexes of `pack`'s policies for an action that `other` does not have as they are
/// (all of them after a schema change).
fn changed_policies(pack: &PolicyPack, other: &PolicyPack, action: &str) -> Vec<usize> {
    let Some(entry) = pack.action_by_id(action) else {
        return Vec::new();
    };
    let theirs: BTreeSet<String> = other
        .action_by_id(action)
        .filter(|_| pack.schema_version == other.schema_version)
        .map(|o| o.compiled.iter().map(policy_signature).collect())
        .unwrap_or_default();
    (entry.compiled.iter().enumerate())
        .filter(|(_, c)| !theirs.contains(&policy_signature(c)))
        .map(|(i, _)| i)
        .collect()
}

/// Whether the finders of the selected policies all keep from scanning one side's type (or
/// there are none to read).
fn narrows(pack: &PolicyPack, action: &str, selected: &[usize], listed: Side, ty: &str) -> bool {
    let (Some(entry), Some(t)) = (pack.action_by_id(action), pack.entity_type(ty)) else {
        return true;
    };
    selected.is_empty()
        || entry.finders.as_ref().is_some_and(|f| {
            selected
                .iter()
                .all(|&i| f.policy_bounded(listed, i, t.as_ref()))
        })
}

/// Whether a pack has the action for these principal and resource types.
fn applies(pack: &PolicyPack, t: &Target) -> bool {
    pack.action_by_id(&t.action).is_some_and(|e| {
        let has = |types: &std::collections::HashSet<EntityTypeName>, ty: &str| {
            pack.entity_type(ty).is_some_and(|x| types.contains(x))
        };
        has(&e.principal_types, &t.principal_type) && has(&e.resource_types, &t.resource_type)
    })
}

fn ids(store: &EntityStore, pack: &PolicyPack, ty: &str) -> Vec<String> {
    pack.entity_type(ty)
        .map(|t| store.ids_of_type(t))
        .unwrap_or_default()
}

/// Compares a target for some of its enumeration's entities (`others`, a part of
/// `e.others`) on `threads` threads, adding the changed pairs to `into`; stops once more than
/// `limit` pairs changed over every call sharing `total`.
pub fn compare_some(
    old: (&PolicyPack, &EntityStore),
    new: (&PolicyPack, &EntityStore),
    t: &Target,
    e: &Enumeration,
    others: &[String],
    (threads, limit, total): (usize, Option<usize>, &AtomicUsize),
    into: &mut ActionImpact,
) -> Result<(), ImpactError> {
    let listed = e.listed;
    let (other_type, listed_type) = match listed {
        Side::Resources => (t.principal_type.as_str(), t.resource_type.as_str()),
        Side::Principals => (t.resource_type.as_str(), t.principal_type.as_str()),
    };
    let sides = [
        (old, applies(old.0, t), &e.selected.0[..]),
        (new, applies(new.0, t), &e.selected.1[..]),
    ];
    let chunk = others.len().div_ceil(threads.max(1)).max(1);
    let results: Vec<Result<Part, ImpactError>> = std::thread::scope(|s| {
        let handles: Vec<_> = others
            .chunks(chunk)
            .map(|ids| {
                let sides = &sides;
                s.spawn(move || {
                    let mut part = Part::default();
                    for id in ids {
                        if limit.is_some_and(|l| total.load(Ordering::Relaxed) > l) {
                            break;
                        }
                        let side = Listing {
                            t,
                            listed,
                            other: UidRef { ty: other_type, id },
                            listed_type,
                        };
                        let mut candidates = Vec::new();
                        for ((pack, store), applies, selected) in sides {
                            if *applies && !selected.is_empty() {
                                candidates.extend(side.candidates(pack, store, selected)?);
                            }
                        }
                        candidates.sort_unstable();
                        candidates.dedup();
                        let [before, after] = [0, 1].map(|i| {
                            let ((pack, store), applies, _) = sides[i];
                            side.decide(pack, store, applies, &candidates)
                        });
                        let (before, after) = (before?, after?);
                        part.decided += 2 * candidates.len();
                        let mut changed = 0;
                        for ((listed_id, before), after) in candidates.iter().zip(before).zip(after)
                        {
                            if before.allow != after.allow {
                                let gained = after.allow;
                                let pair =
                                    side.pair(listed_id, before.determining, after.determining);
                                if gained {
                                    part.gained.push(pair);
                                } else {
                                    part.lost.push(pair);
                                }
                                changed += 1;
                            }
                        }
                        total.fetch_add(changed, Ordering::Relaxed);
                    }
                    Ok(part)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for r in results {
        let part = r?;
        into.gained.extend(part.gained);
        into.lost.extend(part.lost);
        into.decided += part.decided;
    }
    Ok(())
}

#[derive(Default)]
struct Part {
    gained: Vec<Pair>,
    lost: Vec<Pair>,
    decided: usize,
}

/// One entity of the other side, and the side listed for it.
struct Listing<'a> {
    t: &'a Target,
    listed: Side,
    other: UidRef<'a>,
    listed_type: &'a str,
}

impl Listing<'_> {
    fn request_error(&self, source: RequestError) -> ImpactError {
        ImpactError::Request {
            action: self.t.action.to_string(),
            source,
        }
    }

    fn request(&self) -> ListRequest<'_> {
        ListRequest {
            listed: self.listed,
            other: self.other,
            action: request::action_id(&self.t.action),
            listed_type: self.listed_type,
            context: self.t.context.as_ref(),
            entities: &[],
            page_size: 0,
            page_token: "",
        }
    }

    /// The listed entities the selected policies' finders keep.
    fn candidates(
        &self,
        pack: &PolicyPack,
        store: &EntityStore,
        selected: &[usize],
    ) -> Result<Vec<String>, ImpactError> {
        View::new(pack, store)
            .candidates(&self.request(), selected)
            .map_err(|e| self.request_error(e))
    }

    /// The (principal, resource) uids of the other entity and a listed one.
    fn uids<'b>(&'b self, listed_id: &'b str) -> (UidRef<'b>, UidRef<'b>) {
        let me = UidRef {
            ty: self.listed_type,
            id: listed_id,
        };
        match self.listed {
            Side::Resources => (self.other, me),
            Side::Principals => (me, self.other),
        }
    }

    /// The decisions of listed entities under one pack (denies by nothing where it lacks the
    /// action).
    fn decide(
        &self,
        pack: &PolicyPack,
        store: &EntityStore,
        applies: bool,
        listed: &[String],
    ) -> Result<Vec<Decision>, ImpactError> {
        if !applies {
            return Ok(vec![Decision::default(); listed.len()]);
        }
        View::new(pack, store)
            .decide_listed(&self.request(), listed)
            .map_err(|e| self.request_error(e))
    }

    fn pair(&self, listed_id: &str, before: Vec<String>, after: Vec<String>) -> Pair {
        let (p, r) = self.uids(listed_id);
        Pair {
            principal: format!("{}::{}", p.ty, json!(p.id)),
            resource: format!("{}::{}", r.ty, json!(r.id)),
            before,
            after,
        }
    }
}
