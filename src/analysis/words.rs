//! A counterexample in words a reviewer reads: how its principal stands to its resource
//! ("a `User` in `Project.client`, not in `Project.member`"), read off the counterexample's own
//! entities through the resource's entity-valued attributes (two levels deep), never from any
//! knowledge of the pack.

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde_json::Value;

use super::counterexample::Counterexample;

/// `Type::"id"` of an entity reference in Cedar JSON (`{"__entity": {...}}` or `{type, id}`).
fn uid_text(v: &Value) -> Option<String> {
    let v = v.get("__entity").unwrap_or(v);
    let ty = v.get("type")?.as_str()?;
    let id = v.get("id")?.as_str()?;
    let ty: cedar_policy::EntityTypeName = ty.parse().ok()?;
    Some(
        cedar_policy::EntityUid::from_type_name_and_id(ty, cedar_policy::EntityId::new(id))
            .to_string(),
    )
}

/// The last segment of a type name: `Blue::Project` → `Project`.
fn short_type(uid_or_type: &str) -> &str {
    let ty = uid_or_type
        .rsplit_once("::\"")
        .map_or(uid_or_type, |(t, _)| t);
    ty.rsplit("::").next().unwrap_or(ty)
}

struct Store {
    parents: HashMap<String, Vec<String>>,
    attrs: HashMap<String, serde_json::Map<String, Value>>,
}

impl Store {
    fn of(entities: &Value) -> Self {
        let mut parents = HashMap::new();
        let mut attrs = HashMap::new();
        for e in entities.as_array().into_iter().flatten() {
            let Some(uid) = e.get("uid").and_then(uid_text) else {
                continue;
            };
            let ps = e
                .get("parents")
                .and_then(Value::as_array)
                .map(|ps| ps.iter().filter_map(uid_text).collect())
                .unwrap_or_default();
            parents.insert(uid.clone(), ps);
            if let Some(Value::Object(a)) = e.get("attrs") {
                attrs.insert(uid, a.clone());
            }
        }
        Store { parents, attrs }
    }

    /// Whether `a in b` holds: `a` is `b` or `b` is one of `a`'s ancestors.
    fn is_in(&self, a: &str, b: &str) -> bool {
        if a == b {
            return true;
        }
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([a]);
        while let Some(x) = queue.pop_front() {
            for p in self.parents.get(x).into_iter().flatten() {
                if p == b {
                    return true;
                }
                if seen.insert(p.as_str()) {
                    queue.push_back(p);
                }
            }
        }
        false
    }

    /// The entity-valued attributes of `uid`, as (path, referenced uid), `depth` levels deep.
    fn entity_attrs(&self, uid: &str, prefix: &str, depth: usize, out: &mut Vec<(String, String)>) {
        let Some(attrs) = self.attrs.get(uid) else {
            return;
        };
        let mut names: Vec<&String> = attrs.keys().collect();
        names.sort();
        for name in names {
            if let Some(target) = uid_text(&attrs[name]) {
                let path = format!("{prefix}.{name}");
                out.push((path.clone(), target.clone()));
                if depth > 1 {
                    self.entity_attrs(&target, &path, depth - 1, out);
                }
            }
        }
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the counterexample's principal stands to its resource.
pub(super) fn principal_phrase(cex: &Counterexample) -> String {
    let store = Store::of(&cex.entities);
    let p = &cex.principal;
    let r = &cex.resource;
    let r_ty = short_type(r);
    let mut attrs = Vec::new();
    store.entity_attrs(r, r_ty, 2, &mut attrs);
    // The resource's own attributes first; those of its attributes' entities only where the
    // principal stands in no relation to the resource's own.
    let mut is = Vec::new();
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    let mut deeper_inside = Vec::new();
    for (path, target) in &attrs {
        let direct = path.matches('.').count() == 1;
        if target == p {
            is.push(path.clone());
        } else if store.is_in(p, target) {
            if direct {
                inside.push(path.clone());
            } else {
                deeper_inside.push(path.clone());
            }
        } else if target != r && direct {
            outside.push(path.clone());
        }
    }
    if is.is_empty() && inside.is_empty() {
        inside = deeper_inside;
    }
    let mut phrase = format!("a `{}`", short_type(p));
    if !is.is_empty() {
        phrase.push_str(&format!(" that is {}", quoted(&is)));
    }
    if !inside.is_empty() {
        phrase.push_str(&format!(
            "{} in {}",
            if is.is_empty() { "" } else { " and" },
            quoted(&inside)
        ));
        if !outside.is_empty() {
            phrase.push_str(&format!(", not in {}", quoted(&outside)));
        }
    } else if is.is_empty() && !outside.is_empty() {
        phrase.push_str(&format!(" in none of {}", quoted(&outside)));
    }
    if store.is_in(p, r) && p != r {
        phrase.push_str(&format!(" (inside the `{r_ty}` itself)"));
    }
    phrase
}

/// "a `User` in `Project.client` may now `editWiki` a `Project`", with the context when there
/// is one.
pub(super) fn sentence(cex: &Counterexample, verb: &str) -> String {
    let mut s = format!(
        "{} {verb} `{}` a `{}`",
        principal_phrase(cex),
        cex.action,
        short_type(&cex.resource)
    );
    if cex.context.as_object().is_some_and(|c| !c.is_empty()) {
        s.push_str(&format!(" with context {}", context_words(cex)));
    }
    s
}

/// The context, with entity references written `Type::"id"` and how the principal stands to
/// them left out (they are named by the JSON).
fn context_words(cex: &Counterexample) -> String {
    let Some(obj) = cex.context.as_object() else {
        return cex.context.to_string();
    };
    let store = Store::of(&cex.entities);
    let r_ty = short_type(&cex.resource);
    let mut attrs = Vec::new();
    store.entity_attrs(&cex.resource, r_ty, 2, &mut attrs);
    let parts: Vec<String> = obj
        .iter()
        .map(|(k, v)| match uid_text(v) {
            Some(u) => {
                let rel: Vec<String> = attrs
                    .iter()
                    .filter(|(_, t)| store.is_in(&u, t))
                    .map(|(p, _)| p.clone())
                    .collect();
                if rel.is_empty() {
                    format!(
                        "{k}: a `{}` outside every attribute of the `{r_ty}`",
                        short_type(&u)
                    )
                } else {
                    format!("{k}: a `{}` in {}", short_type(&u), quoted(&rel))
                }
            }
            None => format!("{k}: {v}"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}
