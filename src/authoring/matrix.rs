//! The effective permission table, computed by evaluating the policies (never by reading the
//! suites). What to ask is data: `policies/matrix.toml` names the tables, their columns (a
//! principal each, highest first) and their rows (action, resource, context).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cedar_policy::{PolicySet, ValidationMode, Validator};
use serde::Deserialize;
use serde_json::Value;
use std::str::FromStr;

use crate::authoring::suite::short_uid;
use crate::engine::decide::Decision;
use crate::engine::index::EntityStore;
use crate::engine::pack::PolicyPack;
use crate::engine::pack::TableClaim;
use crate::engine::request;
use crate::engine::View;
use crate::files::{read_toml, FileError};

/// The matrix configuration file inside a policy directory.
pub const MATRIX_FILE: &str = "matrix.toml";

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: table `{table}`, row `{row}`: {message}")]
    Row {
        path: PathBuf,
        table: String,
        row: String,
        message: String,
    },
    #[error(transparent)]
    Data(#[from] crate::engine::error::DataError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    #[serde(default)]
    namespace: String,
    /// Entities file, relative to the policy directory.
    entities: String,
    #[serde(rename = "table")]
    tables: Vec<TableSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    title: String,
    #[serde(default)]
    intro: String,
    principal_type: String,
    /// Highest first; a column's principal may be empty for "nobody in particular".
    columns: Vec<Column>,
    #[serde(rename = "row")]
    rows: Vec<RowSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Column {
    name: String,
    principal: String,
    /// What the column stands for, for all data: per resource type (as rows name it), a Cedar
    /// condition on `principal` and `resource`. The gate proves each row's `allowed` with it.
    #[serde(default)]
    holds: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowSpec {
    action: String,
    /// `Type::id`; `{principal}` is replaced by the column's principal id.
    resource: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    context: Option<toml::Table>,
    /// The columns the row allows (the rest it denies): checked on the fixture, and proved for
    /// all data under the pack's assumptions with the columns' `holds` conditions.
    #[serde(default)]
    allowed: Option<Vec<String>>,
    /// The situation the row stands for, as a Cedar condition (for the proof); without it,
    /// the row's context members that are strings, numbers or booleans, each `==` its value.
    #[serde(default)]
    given: Option<String>,
}

/// Computes the matrix and renders it as Markdown.
pub fn render(pack: &PolicyPack) -> Result<String, MatrixError> {
    compute(pack).map(|(text, _, _)| text)
}

/// One table of the matrix as data: what `render` shows, for a page to draw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridTable {
    pub title: String,
    pub intro: String,
    pub columns: Vec<String>,
    pub rows: Vec<GridRow>,
}

/// One row: the action (with its note), the resource type, and a cell per column.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridRow {
    pub action: String,
    pub note: String,
    pub resource_type: String,
    pub cells: Vec<GridCell>,
}

/// One cell: the decision, and the policies that determined it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GridCell {
    pub allowed: bool,
    pub policies: Vec<String>,
}

/// The matrix as data, computed as `render` computes it. No file, no tables.
pub fn grid(pack: &PolicyPack) -> Result<Vec<GridTable>, MatrixError> {
    if !pack.spec.dir.join(MATRIX_FILE).is_file() {
        return Ok(Vec::new());
    }
    compute(pack).map(|(_, _, grid)| grid)
}

/// The contexts of the matrix rows of several packs (an edit's old and new), merged per
/// action without repeats: what an impact compares each action's pairs under.
pub fn merged_row_contexts(
    packs: &[&PolicyPack],
) -> Result<BTreeMap<String, Vec<serde_json::Map<String, Value>>>, MatrixError> {
    let mut out: BTreeMap<String, Vec<serde_json::Map<String, Value>>> = BTreeMap::new();
    for pack in packs {
        for (action, cs) in row_contexts(pack)? {
            let all = out.entry(action).or_default();
            for c in cs {
                if !all.contains(&c) {
                    all.push(c);
                }
            }
        }
    }
    Ok(out)
}

/// The contexts the pack's matrix rows ask, by action id (as written, before any namespace),
/// each once. No file, none.
pub fn row_contexts(
    pack: &PolicyPack,
) -> Result<BTreeMap<String, Vec<serde_json::Map<String, Value>>>, MatrixError> {
    let path = pack.spec.dir.join(MATRIX_FILE);
    let mut out: BTreeMap<String, Vec<serde_json::Map<String, Value>>> = BTreeMap::new();
    if !path.is_file() {
        return Ok(out);
    }
    let spec: MatrixFile = read_toml(&path)?;
    for table in &spec.tables {
        for row in &table.rows {
            let Some(context) = &row.context else {
                continue;
            };
            let err = |message: String| MatrixError::Row {
                path: path.clone(),
                table: table.title.clone(),
                row: row_name(row),
                message,
            };
            let Value::Object(m) = serde_json::to_value(context).map_err(|e| err(e.to_string()))?
            else {
                return Err(err("context: must be a table".to_string()));
            };
            let seen = out.entry(row.action.clone()).or_default();
            if !seen.contains(&m) {
                seen.push(m);
            }
        }
    }
    Ok(out)
}

/// The rows whose cells on the fixture differ from the columns they say they allow, each in
/// words (empty: every row's `allowed` is what the policies answer). No file, no rows.
pub fn unexpected(pack: &PolicyPack) -> Result<Vec<String>, MatrixError> {
    if !pack.spec.dir.join(MATRIX_FILE).is_file() {
        return Ok(Vec::new());
    }
    compute(pack).map(|(_, unexpected, _)| unexpected)
}

/// The rendered matrix, the rows that differ from their `allowed`, and the matrix as data.
fn compute(pack: &PolicyPack) -> Result<(String, Vec<String>, Vec<GridTable>), MatrixError> {
    let dir = &pack.spec.dir;
    let path = dir.join(MATRIX_FILE);
    let spec: MatrixFile = read_toml(&path)?;
    let store = EntityStore::load_file(&dir.join(&spec.entities), &pack.entities)?;

    let mut out = String::new();
    out.push_str("# Effective permissions\n\n");
    let overlays = if pack.spec.overlays.is_empty() {
        "none".to_string()
    } else {
        pack.spec.overlays.join(", ")
    };
    let _ = writeln!(
        out,
        "Computed by `blue-authz matrix` by evaluating the policies on the entities of \
         `{}` (overlays: {overlays}). Do not edit by hand: regenerate it, and \
         `blue-authz matrix --check` compares.\n\n\
         Columns are highest first; \"lowest\" is the lowest column allowed when every higher \
         column is allowed too.",
        spec.entities
    );
    let mut unexpected = Vec::new();
    let mut grid = Vec::new();
    for table in &spec.tables {
        let mut cx = TableOut {
            out: &mut out,
            unexpected: &mut unexpected,
            grid: &mut grid,
        };
        render_table(pack, &store, &path, &spec.namespace, table, &mut cx)?;
    }
    Ok((out, unexpected, grid))
}

/// Where a table's rendering goes.
struct TableOut<'a> {
    out: &'a mut String,
    unexpected: &'a mut Vec<String>,
    grid: &'a mut Vec<GridTable>,
}

/// How the gate and failures name a row: `editWiki` or `deleteRecord (own record)`.
fn row_name(row: &RowSpec) -> String {
    if row.note.is_empty() {
        row.action.clone()
    } else {
        format!("{} ({})", row.action, row.note)
    }
}

fn render_table(
    pack: &PolicyPack,
    store: &EntityStore,
    path: &Path,
    namespace: &str,
    table: &TableSpec,
    cx: &mut TableOut<'_>,
) -> Result<(), MatrixError> {
    let out = &mut *cx.out;
    let _ = writeln!(out, "\n## {}\n", table.title);
    if !table.intro.is_empty() {
        let _ = writeln!(out, "{}\n", table.intro.trim());
    }
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    cx.grid.push(GridTable {
        title: table.title.clone(),
        intro: table.intro.trim().to_string(),
        columns: names.iter().map(|n| n.to_string()).collect(),
        rows: Vec::new(),
    });
    let _ = writeln!(
        out,
        "| action | resource | {} | lowest | allowed by | denied by |",
        names.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---|{}---|---|---|",
        ":-:|".repeat(table.columns.len())
    );
    for row in &table.rows {
        let err = |message: String| MatrixError::Row {
            path: path.to_path_buf(),
            table: table.title.clone(),
            row: format!("{} {}", row.action, row.note),
            message,
        };
        let context = match &row.context {
            Some(c) => match serde_json::to_value(c).map_err(|e| err(e.to_string()))? {
                Value::Object(m) => m,
                _ => return Err(err("context: must be a table".to_string())),
            },
            None => Default::default(),
        };
        let view = View::new(pack, store);
        let action = request::parse_action(pack, request::action_id(&row.action))
            .map_err(|e| err(e.to_string()))?;
        let mut cells = Vec::new();
        let mut resource_type = String::new();
        for col in &table.columns {
            let resource = short_uid(
                &row.resource.replace("{principal}", &col.principal),
                namespace,
            )
            .map_err(err)?;
            resource_type = resource.type_name().basename().to_string();
            let principal = short_uid(
                &format!("{}::{}", table.principal_type, col.principal),
                namespace,
            )
            .map_err(err)?;
            let req = request::check_parsed(
                pack,
                (principal, action.clone(), resource),
                Some(&context),
                Default::default(),
            )
            .map_err(|e| err(e.to_string()))?;
            let d: Decision = view.decide(&req);
            if !d.errors.is_empty() {
                return Err(err(format!(
                    "column `{}`: evaluation errors: {}",
                    col.name,
                    d.errors.join("; ")
                )));
            }
            cells.push(d);
        }
        let allowed: Vec<bool> = cells.iter().map(|d| d.allow).collect();
        if let Some(expected) = &row.allowed {
            for name in expected {
                if !names.contains(&name.as_str()) {
                    return Err(err(format!("allowed: `{name}` is not a column")));
                }
            }
            for (name, got) in names.iter().zip(&allowed) {
                let want = expected.iter().any(|e| e == name);
                if want != *got {
                    let (policies, table_says) = if *got {
                        ("allow", "denies")
                    } else {
                        ("deny", "allows")
                    };
                    cx.unexpected.push(format!(
                        "{}: table `{}`, row `{}`: on the fixture the policies {policies} \
                         column `{name}`, the table {table_says} it",
                        MATRIX_FILE,
                        table.title,
                        row_name(row),
                    ));
                }
            }
        }
        if let Some(t) = cx.grid.last_mut() {
            t.rows.push(GridRow {
                action: row.action.clone(),
                note: row.note.clone(),
                resource_type: resource_type.clone(),
                cells: cells
                    .iter()
                    .map(|d| GridCell {
                        allowed: d.allow,
                        policies: d.determining.clone(),
                    })
                    .collect(),
            });
        }
        let lowest = lowest(&names, &allowed);
        let allowed_by = policy_list(cells.iter().filter(|d| d.allow));
        let denied_by = policy_list(cells.iter().filter(|d| !d.allow));
        let mut label = format!("`{}`", row.action);
        if !row.note.is_empty() {
            let _ = write!(label, " ({})", row.note);
        }
        let marks: Vec<&str> = allowed
            .iter()
            .map(|a| if *a { "✅" } else { "❌" })
            .collect();
        let _ = writeln!(
            out,
            "| {label} | {resource_type} | {} | {lowest} | {allowed_by} | {denied_by} |",
            marks.join(" | "),
        );
    }
    Ok(())
}

/// The determining policies of these cells, as a sorted Markdown list.
fn policy_list<'a>(cells: impl Iterator<Item = &'a Decision>) -> String {
    let mut ids: Vec<String> = cells
        .flat_map(|d| d.determining.iter().map(|p| format!("`{p}`")))
        .collect();
    ids.sort();
    ids.dedup();
    ids.join(" ")
}

/// The lowest column allowed, when the allowed columns are exactly the first ones.
fn lowest(names: &[&str], allowed: &[bool]) -> String {
    let count = allowed.iter().take_while(|a| **a).count();
    if allowed[count..].iter().any(|a| *a) {
        let who: Vec<&str> = names
            .iter()
            .zip(allowed)
            .filter(|(_, a)| **a)
            .map(|(n, _)| *n)
            .collect();
        format!("only {}", who.join(", "))
    } else if count == 0 {
        "nobody".to_string()
    } else {
        names[count - 1].to_string()
    }
}

/// Compares a rendered matrix with the expected text: the differing lines, or none.
pub fn diff(expected: &str, actual: &str) -> Vec<String> {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = Vec::new();
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            out.push(format!(
                "line {}:\n  expected: {}\n  actual:   {}",
                i + 1,
                x.unwrap_or(&"<missing>"),
                y.unwrap_or(&"<missing>")
            ));
        }
    }
    out
}

/// Each row with `allowed`, as claims the analysis proves for all data: an ALLOW of the row's
/// action in the row's situation (`given`) implies one of its allowed columns' conditions,
/// and each allowed column's condition (in that situation) implies an ALLOW. A table file
/// without `allowed` rows claims nothing.
pub fn claims(pack: &PolicyPack) -> Result<Vec<TableClaim>, MatrixError> {
    let path = pack.spec.dir.join(MATRIX_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let spec: MatrixFile = read_toml(&path)?;
    // A table that says what rows allow says it for every row: a row cannot leave the proof
    // by losing its `allowed`.
    let says = spec
        .tables
        .iter()
        .flat_map(|t| &t.rows)
        .any(|r| r.allowed.is_some());
    let mut out = Vec::new();
    for table in &spec.tables {
        for row in &table.rows {
            let Some(allowed) = &row.allowed else {
                if says {
                    return Err(MatrixError::Row {
                        path: path.clone(),
                        table: table.title.clone(),
                        row: row_name(row),
                        message: "says nothing of the columns it allows (`allowed = [..]`), \
                                  as every other row does"
                            .into(),
                    });
                }
                continue;
            };
            let err = |message: String| MatrixError::Row {
                path: path.clone(),
                table: table.title.clone(),
                row: row_name(row),
                message,
            };
            let ns = &spec.namespace;
            let resource =
                short_uid(&row.resource.replace("{principal}", "someone"), ns).map_err(err)?;
            let principal =
                short_uid(&format!("{}::someone", table.principal_type), ns).map_err(err)?;
            let action = request::parse_action(pack, request::action_id(&row.action))
                .map_err(|e| err(e.to_string()))?;
            let short_type = resource.type_name().basename().to_string();
            let holds = |name: &str| -> Result<String, MatrixError> {
                let col = table
                    .columns
                    .iter()
                    .find(|c| c.name == name)
                    .ok_or_else(|| err(format!("allowed: `{name}` is not a column")))?;
                col.holds.get(&short_type).cloned().ok_or_else(|| {
                    err(format!(
                        "column `{name}` says nothing of what it holds on a {short_type} \
                         (`holds = {{ {short_type} = \"<Cedar condition>\" }}`)"
                    ))
                })
            };
            let given = match &row.given {
                Some(g) => g.clone(),
                None => context_given(row.context.as_ref()),
            };
            let scope = format!(
                "permit (principal is {}, action == {action}, resource is {})",
                principal.type_name(),
                resource.type_name()
            );
            let policy = |what: &str, condition: String| -> Result<PolicySet, MatrixError> {
                let text = format!("{scope} when {{ {condition} }};");
                let set = PolicySet::from_str(&text)
                    .map_err(|e| err(format!("{what} does not parse: {e}")))?;
                let checked =
                    Validator::new(pack.schema.clone()).validate(&set, ValidationMode::Strict);
                if let Some(e) = checked.validation_errors().next() {
                    return Err(err(format!("{what} does not validate: {e}")));
                }
                Ok(set)
            };
            let mut any = Vec::new();
            let mut at_least = Vec::new();
            for name in allowed {
                let h = holds(name)?;
                at_least.push((
                    name.clone(),
                    policy(
                        &format!("column `{name}`'s condition"),
                        format!("({given}) && ({h})"),
                    )?,
                ));
                any.push(format!("({h})"));
            }
            let bound = if any.is_empty() {
                format!("!({given})")
            } else {
                format!("!({given}) || {}", any.join(" || "))
            };
            out.push(TableClaim {
                row: format!("table `{}`, row `{}`", table.title, row_name(row)),
                allowed: allowed.clone(),
                principal_type: principal.type_name().clone(),
                action,
                resource_type: resource.type_name().clone(),
                at_most: policy("the row's `given`", bound)?,
                at_least,
            });
        }
    }
    Ok(out)
}

/// A row's situation from its context: each string, number or boolean member `==` its value.
fn context_given(context: Option<&toml::Table>) -> String {
    let mut parts = Vec::new();
    for (k, v) in context.into_iter().flatten() {
        let literal = match v {
            toml::Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => continue,
        };
        parts.push(format!("context[{}] == {literal}", serde_json::json!(k)));
    }
    if parts.is_empty() {
        "true".to_string()
    } else {
        parts.join(" && ")
    }
}
