//! `assumptions.toml`: the structural facts a pack declares about its data, each a Cedar
//! condition on every entity of one type (written with the entity as `resource`). Checked when
//! the pack loads (the type exists, the condition validates strictly, reads only `resource`
//! and its attributes one hop deep, so a write can tell which entities to check again); the
//! index enforces them on writes and the analysis assumes them. Without the file a pack
//! assumes nothing beyond its schema.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{EntityTypeName, PolicySet, ValidationMode, Validator};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::diagnostics::{parse_toml, toml_error};
use crate::engine::assume::Assumption;
use crate::engine::error::LoadError;

/// The assumptions file inside a policy directory.
pub const ASSUMPTIONS_FILE: &str = "assumptions.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    assumption: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: Spanned<String>,
    #[serde(default)]
    why: Option<String>,
    #[serde(rename = "type")]
    ty: Spanned<String>,
    holds: Spanned<String>,
}

/// Reads `dir/assumptions.toml` if there is one: the assumptions and the file's text (for the
/// pack's version).
pub(super) fn load(
    dir: &Path,
    schema: &cedar_policy::Schema,
) -> Result<(Vec<Assumption>, Option<String>), LoadError> {
    let path = dir.join(ASSUMPTIONS_FILE);
    if !path.is_file() {
        return Ok((Vec::new(), None));
    }
    let text = super::files::read(&path)?;
    let diag = |offset: usize, message: String| toml_error(&path, &text, offset, message);
    let file: File = parse_toml(&path, &text)?;
    let mut diags = Vec::new();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in file.assumption {
        let id_at = entry.id.span().start;
        let id = entry.id.into_inner();
        if id.trim().is_empty() || !seen.insert(id.clone()) {
            diags.push(diag(
                id_at,
                format!("assumption id `{id}` is empty or repeated"),
            ));
            continue;
        }
        let ty_at = entry.ty.span().start;
        let Some(entity_type) = entry
            .ty
            .get_ref()
            .parse::<EntityTypeName>()
            .ok()
            .filter(|t| schema.entity_types().any(|e| e == t))
        else {
            diags.push(diag(
                ty_at,
                format!(
                    "assumption `{id}`: `{}` is not an entity type of the schema",
                    entry.ty.get_ref()
                ),
            ));
            continue;
        };
        let holds_at = entry.holds.span().start;
        let condition = entry.holds.into_inner();
        match checked(schema, &entity_type, &condition) {
            Ok((policy, condition_json)) => out.push(Assumption {
                id,
                why: entry.why,
                entity_type,
                condition,
                reads: attributes_read(&condition_json),
                condition_json,
                policy,
            }),
            Err(problem) => diags.push(diag(
                holds_at,
                format!("assumption `{id}`: the condition {problem}"),
            )),
        }
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    Ok((out, Some(text)))
}

/// The condition strictly validated for an entity of `ty` as `resource`, as the policy the
/// index evaluates and as an expression in Cedar's JSON format.
fn checked(
    schema: &cedar_policy::Schema,
    ty: &EntityTypeName,
    condition: &str,
) -> Result<(PolicySet, Value), String> {
    let scoped = format!("permit (principal, action, resource is {ty}) when {{ {condition} }};");
    let set = PolicySet::from_str(&scoped).map_err(|e| {
        let first = e.iter().next().map(|d| d.to_string()).unwrap_or_default();
        format!("does not parse: {first}")
    })?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        return Err(format!("does not validate against the schema: {e}"));
    }
    if let Some(w) = result.validation_warnings().next() {
        return Err(format!(
            "draws a validation warning (is `{ty}` the resource of any action?): {w}"
        ));
    }
    let policy = set.policies().next().ok_or("is empty")?;
    let json = policy.to_json().map_err(|e| e.to_string())?;
    let body = json["conditions"][0]["body"].clone();
    reads_one_hop(&body)?;
    let plain = PolicySet::from_str(&format!(
        "permit (principal, action, resource) when {{ {condition} }};"
    ))
    .map_err(|e| e.to_string())?;
    Ok((plain, body))
}

/// The attributes of `resource` an expression reads (`resource.a`, `resource has a`), sorted.
fn attributes_read(expr: &Value) -> Vec<String> {
    fn walk(e: &Value, out: &mut BTreeSet<String>) {
        match e {
            Value::Object(map) => {
                for op in [".", "has"] {
                    if let Some(inner) = map.get(op) {
                        let on_resource = inner
                            .get("left")
                            .and_then(|l| l.get("Var"))
                            .and_then(Value::as_str)
                            == Some("resource");
                        if let (true, Some(a)) =
                            (on_resource, inner.get("attr").and_then(Value::as_str))
                        {
                            out.insert(a.to_string());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(expr, &mut out);
    out.into_iter().collect()
}

/// Refuses a condition that reads anything but `resource`, or reads deeper than the entities
/// `resource`'s attributes name (`resource.a.b`): a write checks again the entities whose
/// attributes name what it changed, one hop.
fn reads_one_hop(expr: &Value) -> Result<(), String> {
    fn hops(e: &Value) -> Option<usize> {
        if e.get("Var").and_then(Value::as_str) == Some("resource") {
            return Some(0);
        }
        let inner = e.get(".")?;
        hops(inner.get("left")?).map(|h| h + 1)
    }
    match expr {
        Value::Object(map) => {
            if let Some(v) = map.get("Var").and_then(Value::as_str) {
                if v != "resource" {
                    return Err(format!(
                        "reads `{v}`: an assumption speaks of `resource` alone"
                    ));
                }
            }
            if map.contains_key(".") && hops(expr).is_some_and(|h| h > 1) {
                return Err(
                    "reads an attribute of an entity `resource` names (`resource.a.b`): an \
                     assumption reads `resource`'s attributes and their ancestors only"
                        .into(),
                );
            }
            map.values().try_for_each(reads_one_hop)
        }
        Value::Array(items) => items.iter().try_for_each(reads_one_hop),
        _ => Ok(()),
    }
}
