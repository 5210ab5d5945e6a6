//! The effective permission table, computed by evaluating the policies (never by reading the
//! suites). What to ask is data: `policies/matrix.toml` names the tables, their columns (a
//! principal each, highest first) and their rows (action, resource, context).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::authoring::suite::short_uid;
use crate::engine::decide::Decision;
use crate::engine::index::EntityStore;
use crate::engine::pack::PolicyPack;
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
}

/// Computes the matrix and renders it as Markdown.
pub fn render(pack: &PolicyPack) -> Result<String, MatrixError> {
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
    for table in &spec.tables {
        render_table(pack, &store, &path, &spec.namespace, table, &mut out)?;
    }
    Ok(out)
}

fn render_table(
    pack: &PolicyPack,
    store: &EntityStore,
    path: &Path,
    namespace: &str,
    table: &TableSpec,
    out: &mut String,
) -> Result<(), MatrixError> {
    let _ = writeln!(out, "\n## {}\n", table.title);
    if !table.intro.is_empty() {
        let _ = writeln!(out, "{}\n", table.intro.trim());
    }
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
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
