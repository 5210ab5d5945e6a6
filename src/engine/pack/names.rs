//! Outside names of a pack's entity types and actions, declared by the pack in `names.toml`:
//! what callers that do not speak Cedar (the AuthZEN API's subject and resource `type`s and
//! action `name`s) call them, and the values a context field may take (`[context.<action>]`:
//! a request with any other value is refused naming the field, not decided as a quiet DENY).
//! Its `[requests]` table says how requests from outside are read: where AuthZEN action
//! `properties` go (`action_properties`: ignored by default, merged into the context, or one
//! context attribute), and for which actions and entity types members the schema does not
//! declare are dropped rather than refused (`open_context`, `open_properties`; strict by
//! default). Its `[keys]` table names String attributes by which a caller may name an
//! entity instead of its id (`user = ["email", "pid"]`). Its `[columns.<type>]` tables map a
//! resource type's attributes (and `id`) to the columns of the caller's own table, the default
//! for resource plans' SQL (`project = "project_id"`). Checked against the schema when the
//! pack loads; without the file, a `type` is a Cedar entity type name (`Blue::User`) and a
//! `name` an action id, and any value is taken.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::diagnostics::{parse_toml, toml_error};
use crate::engine::error::LoadError;

/// The names file inside a policy directory.
pub const NAMES_FILE: &str = "names.toml";

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamesFile {
    /// Outside type name → Cedar entity type (`user = "Blue::User"`).
    #[serde(default)]
    types: BTreeMap<toml::Spanned<String>, toml::Spanned<String>>,
    /// Outside action name → action id, where they differ (`can_read = "read"`).
    #[serde(default)]
    actions: BTreeMap<toml::Spanned<String>, toml::Spanned<String>>,
    /// Action id → context field → the string values it may take.
    #[serde(default)]
    context: BTreeMap<toml::Spanned<String>, BTreeMap<toml::Spanned<String>, Vec<String>>>,
    /// How requests from outside are read.
    #[serde(default)]
    requests: RequestsFile,
    /// Entity type (outside or Cedar name) → String attributes that name an entity as its id
    /// does.
    #[serde(default)]
    keys: BTreeMap<toml::Spanned<String>, Vec<toml::Spanned<String>>>,
    /// Entity type (outside or Cedar name) → attribute (or `id`) → column, for plans' SQL.
    #[serde(default)]
    columns:
        BTreeMap<toml::Spanned<String>, BTreeMap<toml::Spanned<String>, toml::Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsFile {
    /// Where AuthZEN action `properties` go: `"context.<name>"`, `"context"` or `"ignore"`.
    #[serde(default)]
    action_properties: Option<toml::Spanned<String>>,
    /// Action ids (or `"*"`) whose context members the schema does not declare are dropped.
    #[serde(default)]
    open_context: Vec<toml::Spanned<String>>,
    /// Entity types (outside or Cedar names, or `"*"`) whose undeclared properties are dropped.
    #[serde(default)]
    open_properties: Vec<toml::Spanned<String>>,
}

/// Where the `properties` of an AuthZEN action go (`[requests] action_properties`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum ActionProperties {
    /// Dropped (logged at debug level): the default, since Cedar actions carry no attributes.
    #[default]
    Ignore,
    /// Merged into the request's context; a member both give is refused.
    Merge,
    /// The context attribute of this name, as a record.
    Attribute(String),
}

/// A set of names a `[requests]` list declares, or every name (`"*"`).
#[derive(Debug, Default, Clone)]
pub enum Open {
    #[default]
    None,
    All,
    Some(std::collections::HashSet<String>),
}

impl Open {
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Open::None => false,
            Open::All => true,
            Open::Some(set) => set.contains(name),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Open::None)
    }
}

/// The pack's outside names, both ways. Every name not declared is its Cedar name.
#[derive(Debug, Default, Clone)]
pub struct Names {
    to_type: HashMap<String, String>,
    from_type: HashMap<String, String>,
    to_action: HashMap<String, String>,
    from_action: HashMap<String, String>,
    /// Action id → (context field, the values it may take), fields sorted.
    context_values: HashMap<String, Vec<(String, Vec<String>)>>,
    /// Where AuthZEN action properties go.
    pub action_properties: ActionProperties,
    /// Action ids whose undeclared context members are dropped rather than refused.
    pub open_context: Open,
    /// Entity types (Cedar names) whose undeclared request attributes are dropped.
    pub open_properties: Open,
    /// Per entity type (Cedar name), the attributes that name its entities besides the id.
    pub keys: Vec<(cedar_policy::EntityTypeName, Vec<String>)>,
    /// Per entity type (Cedar name), the default column of each attribute (and `id`) for
    /// resource plans' SQL.
    pub columns: HashMap<String, BTreeMap<String, String>>,
    /// Whether the pack has a names file.
    pub declared: bool,
}

impl Names {
    /// The Cedar entity type an outside `type` names (itself when not declared).
    pub fn cedar_type<'a>(&'a self, outside: &'a str) -> &'a str {
        self.to_type.get(outside).map_or(outside, String::as_str)
    }

    /// The outside name of a Cedar entity type (the type's own name when none is declared).
    pub fn outside_type<'a>(&'a self, cedar: &'a str) -> &'a str {
        self.from_type.get(cedar).map_or(cedar, String::as_str)
    }

    /// The action id an outside action `name` names (itself when not declared).
    pub fn action_id<'a>(&'a self, outside: &'a str) -> &'a str {
        self.to_action.get(outside).map_or(outside, String::as_str)
    }

    /// The outside name of an action id (the id itself when none is declared).
    pub fn action_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.from_action.get(id).map_or(id, String::as_str)
    }

    /// The declared values of an action's context fields (empty: no declaration).
    pub fn context_values(&self, action_id: &str) -> &[(String, Vec<String>)] {
        self.context_values
            .get(action_id)
            .map_or(&[], |v| v.as_slice())
    }

    /// The declared outside type names, sorted.
    pub fn outside_types(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.to_type.keys().map(String::as_str).collect();
        out.sort();
        out
    }
}

/// Reads `dir/names.toml` if there is one, checking every name against the pack's entity
/// types and action ids. Returns the names and the file's text (for the pack's version).
pub(super) fn load(
    dir: &Path,
    is_entity_type: impl Fn(&str) -> bool,
    is_action: impl Fn(&str) -> bool,
    is_string_field: impl Fn(&str, &str) -> Result<(), String>,
    is_string_attr: impl Fn(&str, &str) -> bool,
    shapes: &super::Shapes,
) -> Result<(Names, Option<String>), LoadError> {
    let path = dir.join(NAMES_FILE);
    if !path.is_file() {
        return Ok((Names::default(), None));
    }
    let text = super::files::read(&path)?;
    let at = |offset: usize, message: String| toml_error(&path, &text, offset, message);
    let file: NamesFile = parse_toml(&path, &text)?;
    let mut diags = Vec::new();
    let mut names = Names {
        declared: true,
        ..Names::default()
    };
    for (outside, cedar) in &file.types {
        let (o, c) = (outside.get_ref(), cedar.get_ref());
        if let Some(problem) = bad_outside_name(o) {
            diags.push(at(
                outside.span().start,
                format!("type name `{o}` {problem}"),
            ));
        } else if is_entity_type(o) && o != c {
            diags.push(at(
                outside.span().start,
                format!("`{o}` is already the name of another entity type"),
            ));
        } else if !is_entity_type(c) {
            diags.push(at(
                cedar.span().start,
                format!("`{c}` is not an entity type of the schema"),
            ));
        } else if let Some(first) = names.from_type.get(c) {
            diags.push(at(
                outside.span().start,
                format!("`{c}` already has the name `{first}`: one outside name per type"),
            ));
        } else {
            names.to_type.insert(o.clone(), c.clone());
            names.from_type.insert(c.clone(), o.clone());
        }
    }
    for (outside, id) in &file.actions {
        let (o, i) = (outside.get_ref(), id.get_ref());
        if o.is_empty() {
            diags.push(at(outside.span().start, "an action name is empty".into()));
        } else if !is_action(i) {
            diags.push(at(
                id.span().start,
                format!("`{i}` is not an action id of the schema"),
            ));
        } else if is_action(o) && o != i {
            diags.push(at(
                outside.span().start,
                format!("`{o}` is already the id of another action"),
            ));
        } else if let Some(first) = names.from_action.get(i) {
            diags.push(at(
                outside.span().start,
                format!("action `{i}` already has the name `{first}`: one outside name per action"),
            ));
        } else {
            names.to_action.insert(o.clone(), i.clone());
            names.from_action.insert(i.clone(), o.clone());
        }
    }
    for (action, fields) in &file.context {
        let a = action.get_ref();
        if !is_action(a) {
            diags.push(at(
                action.span().start,
                format!("`{a}` is not an action id of the schema"),
            ));
            continue;
        }
        let mut declared = Vec::new();
        for (field, values) in fields {
            let f = field.get_ref();
            if let Err(problem) = is_string_field(a, f) {
                diags.push(at(
                    field.span().start,
                    format!("context field `{f}` of `{a}`: {problem}"),
                ));
            } else if values.is_empty() {
                diags.push(at(
                    field.span().start,
                    format!("context field `{f}` of `{a}` declares no values"),
                ));
            } else {
                declared.push((f.clone(), values.clone()));
            }
        }
        names.context_values.insert(a.clone(), declared);
    }
    let requests = &file.requests;
    if let Some(place) = &requests.action_properties {
        match action_properties(place.get_ref()) {
            Ok(p) => names.action_properties = p,
            Err(problem) => diags.push(at(place.span().start, problem)),
        }
    }
    let mut open =
        |list: &[toml::Spanned<String>], what: &str, known: &dyn Fn(&str) -> Option<String>| {
            let mut set = std::collections::HashSet::new();
            for name in list {
                match (name.get_ref().as_str(), known(name.get_ref())) {
                    ("*", _) => return Open::All,
                    (_, Some(cedar)) => {
                        set.insert(cedar);
                    }
                    (n, None) => diags.push(at(
                        name.span().start,
                        format!("`{n}` is not {what} of the schema"),
                    )),
                }
            }
            if set.is_empty() {
                Open::None
            } else {
                Open::Some(set)
            }
        };
    names.open_context = open(&requests.open_context, "an action id", &|a| {
        is_action(a).then(|| a.to_string())
    });
    let cedar_type = |t: &str| {
        let c = names.to_type.get(t).map_or(t, String::as_str);
        is_entity_type(c).then(|| c.to_string())
    };
    names.open_properties = open(&requests.open_properties, "an entity type", &cedar_type);
    for (ty, attrs) in &file.keys {
        let Some(cedar) = cedar_type(ty.get_ref()) else {
            diags.push(at(
                ty.span().start,
                format!("`{}` is not an entity type of the schema", ty.get_ref()),
            ));
            continue;
        };
        let mut keyed = Vec::new();
        for attr in attrs {
            let a = attr.get_ref();
            if !is_string_attr(&cedar, a) {
                diags.push(at(
                    attr.span().start,
                    format!("key `{a}` of `{cedar}` is not a String attribute of that type"),
                ));
            } else if !keyed.contains(a) {
                keyed.push(a.clone());
            }
        }
        match cedar.parse() {
            Ok(t) if !keyed.is_empty() => names.keys.push((t, keyed)),
            _ => {}
        }
    }
    for (ty, columns) in &file.columns {
        let Some(cedar) = cedar_type(ty.get_ref()) else {
            diags.push(at(
                ty.span().start,
                format!("`{}` is not an entity type of the schema", ty.get_ref()),
            ));
            continue;
        };
        let attrs = shapes
            .entities
            .get(&cedar)
            .map(|r| r.attr_names())
            .unwrap_or_default();
        let mut mapped = BTreeMap::new();
        for (key, column) in columns {
            let (k, c) = (key.get_ref(), column.get_ref());
            if k != "id" && !attrs.contains(&k.as_str()) {
                diags.push(at(
                    key.span().start,
                    format!("`{k}` is not an attribute of `{cedar}` (nor `id`)"),
                ));
            } else if !plain_column(c) {
                diags.push(at(
                    column.span().start,
                    format!(
                        "column `{}` of `{k}` is not a plain column name (letters, digits and \
                         `_`, optionally `table.column`)",
                        c.escape_debug()
                    ),
                ));
            }
            mapped.insert(k.clone(), c.clone());
        }
        names.columns.insert(cedar, mapped);
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    Ok((names, Some(text)))
}

/// Whether a column name is a plain SQL identifier (letters, digits and `_`, not starting with
/// a digit, at most 63 bytes), optionally qualified by a table (`t.column`): the only text of
/// a caller's that a plan's SQL contains.
pub fn plain_column(s: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    // One or two plain parts, and no third (nothing collected: this runs once a plan).
    let mut parts = s.split('.');
    parts.by_ref().take(2).all(part) && parts.next().is_none()
}

/// Reads `action_properties`: `"ignore"`, `"context"` or `"context.<name>"`.
fn action_properties(place: &str) -> Result<ActionProperties, String> {
    match place {
        "ignore" => Ok(ActionProperties::Ignore),
        "context" => Ok(ActionProperties::Merge),
        _ => match place.strip_prefix("context.") {
            Some(name) if !name.is_empty() && !name.contains('.') => {
                Ok(ActionProperties::Attribute(name.to_string()))
            }
            _ => Err(format!(
                "action_properties `{place}` is not \"ignore\", \"context\" or \"context.<name>\""
            )),
        },
    }
}

/// Why an outside type name cannot be used, if it cannot: it must not be empty or look like a
/// Cedar path (which would make it ambiguous with the Cedar names every type also answers to).
fn bad_outside_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains("::") {
        Some("contains `::`: outside names are not Cedar paths")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::plain_column;

    #[test]
    fn plain_columns_are_one_or_two_plain_parts() {
        for ok in ["id", "_x1", "records.project_id", &"c".repeat(63)] {
            assert!(plain_column(ok), "{ok} is plain");
        }
        let long = "c".repeat(64);
        for bad in ["", "1x", "a.b.c", "a..b", ".a", "a.", "x; DROP", "é", &long] {
            assert!(!plain_column(bad), "{bad} is not plain");
        }
    }
}
