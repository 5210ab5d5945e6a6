//! Slice analysis: from each action's policies, which entities reached through attributes a
//! per-request slice must carry as Cedar entities.

use std::collections::BTreeMap;

use cedar_policy::PolicySet;

/// Which entities reached through attributes a slice must carry as Cedar entities, for one
/// action: those whose attributes, tags or ancestors some policy reads. An entity that is
/// only compared (`principal == resource.owner`) or only the right-hand side of `in`
/// (`principal in resource.admin`) needs no Cedar form: its uid, kept in the ancestor sets,
/// is enough. Computed from the policies' JSON form; anything the analysis does not
/// recognise makes it fall back to every attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub principal: Need,
    pub resource: Need,
}

/// For one slice member: the attributes whose entity values must be members too, each with
/// its own needs in turn. `All` follows every attribute (up to the slice depth).
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    All,
    Attrs(BTreeMap<String, Need>),
}

impl Default for Need {
    fn default() -> Self {
        Need::Attrs(Default::default())
    }
}

/// Follows every attribute: what a slice did before the analysis, and what it does for
/// entities named in the context.
pub static NEED_ALL: Need = Need::All;

impl Need {
    /// What a member reached through attribute `name` needs; None: it need not be a member.
    pub fn child(&self, name: &str) -> Option<&Need> {
        match self {
            Need::All => Some(&NEED_ALL),
            Need::Attrs(map) => map.get(name),
        }
    }

    fn mark(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if let Need::Attrs(map) = self {
            map.entry(first.to_string()).or_default().mark(rest);
        }
    }

    fn merge(&mut self, other: &Need) {
        match (&mut *self, other) {
            (Need::All, _) => {}
            (_, Need::All) => *self = Need::All,
            (Need::Attrs(a), Need::Attrs(b)) => {
                for (k, v) in b {
                    a.entry(k.clone()).or_default().merge(v);
                }
            }
        }
    }
}

impl Needs {
    /// Follows every attribute of the principal and the resource.
    pub fn all() -> Needs {
        Needs {
            principal: Need::All,
            resource: Need::All,
        }
    }

    pub fn merge(&mut self, other: &Needs) {
        self.principal.merge(&other.principal);
        self.resource.merge(&other.resource);
    }

    /// The needs of the policies in `set`.
    pub fn of(set: &PolicySet) -> Needs {
        let mut needs = Needs::default();
        for p in set.policies() {
            let Ok(json) = p.to_json() else {
                return Needs::all();
            };
            let Some(conditions) = json.get("conditions").and_then(|c| c.as_array()) else {
                continue;
            };
            for c in conditions {
                match c.get("body") {
                    Some(body) if needs.walk(body) => {}
                    _ => return Needs::all(),
                }
            }
        }
        needs
    }

    /// Marks what `e` dereferences; false when the expression is not understood.
    fn walk(&mut self, e: &serde_json::Value) -> bool {
        use serde_json::Value;
        match e {
            Value::Array(items) => items.iter().all(|i| self.walk(i)),
            Value::Object(map) if map.len() == 1 => {
                let (op, arg) = map.iter().next().expect("one entry");
                match op.as_str() {
                    "Value" | "Var" | "Slot" | "Unknown" => true,
                    // Reads the left-hand entity's attributes, tags or ancestors.
                    "." | "has" | "in" | "getTag" | "hasTag" => {
                        let Some(left) = arg.get("left") else {
                            return false;
                        };
                        self.deref(left)
                            && self.walk(left)
                            && arg.get("right").is_none_or(|r| self.walk(r))
                    }
                    "is" => {
                        let Some(left) = arg.get("left") else {
                            return false;
                        };
                        match arg.get("in") {
                            Some(within) => {
                                self.deref(left) && self.walk(left) && self.walk(within)
                            }
                            None => self.walk(left),
                        }
                    }
                    "Record" => arg
                        .as_object()
                        .is_some_and(|fields| fields.values().all(|v| self.walk(v))),
                    // Every other operator and extension call: its operands, wherever they are.
                    _ => self.walk_operands(arg),
                }
            }
            _ => false,
        }
    }

    fn walk_operands(&mut self, arg: &serde_json::Value) -> bool {
        use serde_json::Value;
        match arg {
            Value::Array(items) => items.iter().all(|i| self.walk(i)),
            Value::Object(fields) => {
                fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != "pattern")
                    .all(|(_, v)| match v {
                        Value::String(_) => true,
                        other => self.walk(other),
                    })
            }
            _ => false,
        }
    }

    /// The entity `e` evaluates to must be a slice member.
    fn deref(&mut self, e: &serde_json::Value) -> bool {
        let mut path = Vec::new();
        let mut at = e;
        loop {
            if let Some(dot) = at.get(".") {
                match (dot.get("left"), dot.get("attr").and_then(|a| a.as_str())) {
                    (Some(left), Some(attr)) => {
                        path.push(attr);
                        at = left;
                    }
                    _ => return false,
                }
            } else if let Some(var) = at.get("Var").and_then(|v| v.as_str()) {
                path.reverse();
                match var {
                    "principal" => self.principal.mark(&path),
                    "resource" => self.resource.mark(&path),
                    // The action is always in the slice; entities named in the context are
                    // seeds, followed through every attribute.
                    _ => {}
                }
                return true;
            } else {
                // A literal, a conditional, a record field, a tag: not analysed.
                self.principal = Need::All;
                self.resource = Need::All;
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Need, Needs};
    use std::collections::BTreeMap;

    fn needs(src: &str) -> Needs {
        Needs::of(&src.parse().expect("policies"))
    }

    fn attrs(items: &[(&str, Need)]) -> Need {
        Need::Attrs(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn compared_or_right_of_in_needs_no_member() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { principal in resource.admin || principal == resource.owner };"#,
        );
        assert_eq!(n, Needs::default());
    }

    #[test]
    fn dereferenced_paths_are_members_down_to_the_entity_read() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { principal in resource.project.client && resource.creator.name == "x" };
               forbid (principal, action, resource)
               unless { principal.manager in resource.team && resource has owner };"#,
        );
        assert_eq!(
            n.resource,
            attrs(&[("project", attrs(&[])), ("creator", attrs(&[]))])
        );
        assert_eq!(n.principal, attrs(&[("manager", attrs(&[]))]));
    }

    #[test]
    fn what_is_not_analysed_follows_every_attribute() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { (if context.flag then resource.a else resource.b).x == 1 };"#,
        );
        assert_eq!(n, Needs::all());
        // Context entities are seeds of their own; reading them needs nothing here.
        let n = needs(
            r#"permit (principal, action, resource)
               when { context.with in resource.company && context.with.active };"#,
        );
        assert_eq!(n, Needs::default());
    }
}
