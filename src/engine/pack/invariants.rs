//! The properties a pack declares about itself in `invariants.toml`: what must hold for every
//! entity store and request its schema allows, whatever its policies say. Read and checked
//! when the pack loads (ids, actions, overlays, each condition strictly validated against the
//! schema); proving them is the analysis room's work. Without the file a pack declares only
//! the default, that no policy ever errors.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{EntityUid, PolicySet, ValidationMode, Validator};
use serde::Deserialize;
use toml::Spanned;

use super::diagnostics::{line_col, parse_toml, toml_error};
use crate::engine::error::{LoadError, Location};

/// The invariants file inside a policy directory.
pub const INVARIANTS_FILE: &str = "invariants.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// "No policy ever errors", for every policy and every request it applies to.
    #[serde(default = "yes")]
    never_errors: bool,
    #[serde(default)]
    invariant: Vec<Entry>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: Spanned<String>,
    /// What the property means, for a reader of the results.
    #[serde(default)]
    why: Option<String>,
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    /// A Cedar condition every ALLOW of `actions` implies.
    #[serde(default)]
    allowed_only_when: Option<Spanned<String>>,
    /// `actions` are never allowed.
    #[serde(default)]
    never_allowed: bool,
    /// Each named overlay only takes rights away: the pack with it implies the pack without.
    #[serde(default)]
    overlays_only_restrict: Vec<Spanned<String>>,
}

/// What one invariant states.
#[derive(Debug, Clone)]
pub enum Property {
    /// Every ALLOW of one of `actions` implies `condition`. `reference` is the one policy
    /// `permit (principal, action in [actions], resource) when { condition };`: the pack must
    /// imply it.
    AllowedOnlyWhen {
        actions: Vec<EntityUid>,
        condition: String,
        reference: Box<PolicySet>,
    },
    /// None of `actions` is ever allowed.
    NeverAllowed { actions: Vec<EntityUid> },
    /// Each overlay only takes rights away.
    OverlaysOnlyRestrict { overlays: Vec<String> },
}

/// One declared invariant.
#[derive(Debug, Clone)]
pub struct Invariant {
    pub id: String,
    pub why: Option<String>,
    pub property: Property,
    /// Where it is declared.
    pub location: Location,
}

/// A pack's declared invariants.
#[derive(Debug, Clone)]
pub struct Invariants {
    /// Whether every policy must be proved never to error (on unless the file turns it off).
    pub never_errors: bool,
    pub list: Vec<Invariant>,
    /// Whether the pack has an invariants file.
    pub declared: bool,
}

impl Default for Invariants {
    fn default() -> Self {
        Invariants {
            never_errors: true,
            list: Vec::new(),
            declared: false,
        }
    }
}

/// What the loader knows that the file is checked against.
pub(super) struct Context<'a> {
    pub schema: &'a cedar_policy::Schema,
    /// The action uid of an action id, if the schema has it.
    pub action: &'a dyn Fn(&str) -> Option<EntityUid>,
    /// The overlays the policy directory offers.
    pub overlays: &'a [String],
}

/// Reads `dir/invariants.toml` if there is one. Returns the invariants and the file's text (for
/// the pack's version).
pub(super) fn load(
    dir: &Path,
    cx: &Context<'_>,
) -> Result<(Invariants, Option<String>), LoadError> {
    let path = dir.join(INVARIANTS_FILE);
    if !path.is_file() {
        return Ok((Invariants::default(), None));
    }
    let text = super::files::read(&path)?;
    let at = |offset: usize| {
        let (line, col, _) = line_col(&text, offset);
        Location {
            file: path.clone(),
            line,
            col,
        }
    };
    let diag = |offset: usize, message: String| toml_error(&path, &text, offset, message);
    let file: File = parse_toml(&path, &text)?;

    let mut diags = Vec::new();
    let mut seen = BTreeSet::new();
    let mut list = Vec::new();
    for entry in file.invariant {
        let id_at = entry.id.span().start;
        let id = entry.id.into_inner();
        if id.trim().is_empty() {
            diags.push(diag(id_at, "an invariant id is empty".into()));
            continue;
        }
        if !seen.insert(id.clone()) {
            diags.push(diag(id_at, format!("invariant `{id}` is declared twice")));
            continue;
        }
        let kinds = usize::from(entry.allowed_only_when.is_some())
            + usize::from(entry.never_allowed)
            + usize::from(!entry.overlays_only_restrict.is_empty());
        if kinds != 1 {
            diags.push(diag(
                id_at,
                format!(
                    "invariant `{id}` must state exactly one of `allowed_only_when`, \
                     `never_allowed = true` or `overlays_only_restrict` (it states {kinds})"
                ),
            ));
            continue;
        }
        let mut actions = Vec::new();
        for a in &entry.actions {
            match (cx.action)(a.get_ref()) {
                Some(uid) => actions.push(uid),
                None => diags.push(diag(
                    a.span().start,
                    format!("`{}` is not an action id of the schema", a.get_ref()),
                )),
            }
        }
        let property = if !entry.overlays_only_restrict.is_empty() {
            if !entry.actions.is_empty() {
                diags.push(diag(
                    id_at,
                    format!("invariant `{id}`: `overlays_only_restrict` takes no `actions`"),
                ));
                continue;
            }
            let mut overlays = Vec::new();
            for o in &entry.overlays_only_restrict {
                if cx.overlays.contains(o.get_ref()) {
                    overlays.push(o.get_ref().clone());
                } else {
                    diags.push(diag(
                        o.span().start,
                        format!(
                            "`{}` is not an overlay of this directory (available: {})",
                            o.get_ref(),
                            cx.overlays.join(", ")
                        ),
                    ));
                }
            }
            Property::OverlaysOnlyRestrict { overlays }
        } else {
            if entry.actions.is_empty() {
                diags.push(diag(id_at, format!("invariant `{id}` names no `actions`")));
                continue;
            }
            match entry.allowed_only_when {
                None => Property::NeverAllowed { actions },
                Some(condition) => {
                    let cond_at = condition.span().start;
                    let condition = condition.into_inner();
                    match reference_policy(cx.schema, &actions, &condition) {
                        Ok(reference) => Property::AllowedOnlyWhen {
                            actions,
                            condition,
                            reference: Box::new(reference),
                        },
                        Err(problem) => {
                            diags.push(diag(
                                cond_at,
                                format!("invariant `{id}`: the condition {problem}"),
                            ));
                            continue;
                        }
                    }
                }
            }
        };
        list.push(Invariant {
            id,
            why: entry.why,
            property,
            location: at(id_at),
        });
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    Ok((
        Invariants {
            never_errors: file.never_errors,
            list,
            declared: true,
        },
        Some(text),
    ))
}

/// The policy an ALLOW must imply, strictly validated against the schema for every action it
/// names (so a condition that reads an attribute some action's resource lacks is refused here,
/// with Cedar's message).
fn reference_policy(
    schema: &cedar_policy::Schema,
    actions: &[EntityUid],
    condition: &str,
) -> Result<PolicySet, String> {
    let list: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    let text = format!(
        "permit (principal, action in [{}], resource) when {{ {condition} }};",
        list.join(", ")
    );
    let set = PolicySet::from_str(&text).map_err(|e| {
        let first = e.iter().next().map(|d| d.to_string()).unwrap_or_default();
        format!("does not parse: {first}")
    })?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(e) = result.validation_errors().next() {
        return Err(format!("does not validate against the schema: {e}"));
    }
    if let Some(w) = result.validation_warnings().next() {
        return Err(format!("draws a validation warning: {w}"));
    }
    Ok(set)
}
