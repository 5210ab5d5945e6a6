//! A plan as a parameterized PostgreSQL `WHERE` fragment: the caller maps each attribute the
//! plan reads (and `id`) to a column, entity values become their ids, a set becomes
//! `= ANY($n)` over an array parameter, a set-valued attribute's test `$n = ANY(col)` or
//! `col && $n`. No value is ever written into the SQL text; column names are checked to be
//! plain (optionally qualified) identifiers.

use std::collections::BTreeMap;

use super::{Condition, Value};

/// One parameter, in order (`$1` is the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Long(i64),
    Bool(bool),
    Texts(Vec<String>),
    Longs(Vec<i64>),
    Bools(Vec<bool>),
}

/// The fragment and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Where {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Why a plan has no SQL: the key of the column mapping at fault (`project`), or None for
/// the mapping as a whole, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub key: Option<String>,
    pub message: String,
}

/// Checks a column mapping against the resource's attributes (`attrs`; `id` is the id).
pub fn check_columns(columns: &BTreeMap<String, String>, attrs: &[&str]) -> Result<(), SqlError> {
    for (key, column) in columns {
        if key != "id" && !attrs.contains(&key.as_str()) {
            return Err(SqlError {
                key: Some(key.clone()),
                message: format!(
                    "names no attribute of the resource type (its attributes: {})",
                    if attrs.is_empty() {
                        "none".to_string()
                    } else {
                        attrs.join(", ")
                    }
                ),
            });
        }
        if !crate::engine::pack::plain_column(column) {
            return Err(SqlError {
                key: Some(key.clone()),
                message: format!(
                    "`{}` is not a plain column name (letters, digits and `_`, optionally \
                     `table.column`)",
                    column.escape_debug()
                ),
            });
        }
    }
    Ok(())
}

/// The `WHERE` fragment of a condition, with `columns` checked by [`check_columns`].
pub fn to_sql(c: &Condition, columns: &BTreeMap<String, String>) -> Result<Where, SqlError> {
    let mut w = Where {
        sql: String::new(),
        params: Vec::new(),
    };
    w.sql = write(c, columns, &mut w.params)?;
    Ok(w)
}

fn column<'a>(columns: &'a BTreeMap<String, String>, path: &str) -> Result<&'a str, SqlError> {
    columns
        .get(path)
        .map(String::as_str)
        .ok_or_else(|| SqlError {
            key: None,
            message: format!("maps no column for `{path}`, which the plan reads"),
        })
}

fn scalar(v: &Value) -> Param {
    match v {
        Value::Entity { id, .. } => Param::Text(id.clone()),
        Value::String(s) => Param::Text(s.clone()),
        Value::Long(n) => Param::Long(*n),
        Value::Bool(b) => Param::Bool(*b),
    }
}

/// An array parameter of values of one kind (a plan's sets are of one attribute's kind).
fn array(vs: &[Value]) -> Param {
    match vs.first() {
        Some(Value::Long(_)) => Param::Longs(
            vs.iter()
                .filter_map(|v| match v {
                    Value::Long(n) => Some(*n),
                    _ => None,
                })
                .collect(),
        ),
        Some(Value::Bool(_)) => Param::Bools(
            vs.iter()
                .filter_map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect(),
        ),
        _ => Param::Texts(
            vs.iter()
                .filter_map(|v| match v {
                    Value::Entity { id, .. } => Some(id.clone()),
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
    }
}

fn write(
    c: &Condition,
    columns: &BTreeMap<String, String>,
    params: &mut Vec<Param>,
) -> Result<String, SqlError> {
    let mut push = |p: Param| {
        params.push(p);
        format!("${}", params.len())
    };
    Ok(match c {
        Condition::Literal(true) => "TRUE".into(),
        Condition::Literal(false) => "FALSE".into(),
        Condition::Eq { path, value } => {
            let col = column(columns, path)?;
            format!("{col} = {}", push(scalar(value)))
        }
        Condition::In { values, .. } | Condition::Overlaps { values, .. } if values.is_empty() => {
            "FALSE".into()
        }
        Condition::In { path, values } => {
            let col = column(columns, path)?;
            format!("{col} = ANY({})", push(array(values)))
        }
        Condition::Contains { path, value } => {
            let col = column(columns, path)?;
            format!("{} = ANY({col})", push(scalar(value)))
        }
        Condition::Overlaps { path, values } => {
            let col = column(columns, path)?;
            format!("{col} && {}", push(array(values)))
        }
        Condition::Has { path } => format!("{} IS NOT NULL", column(columns, path)?),
        Condition::Policies { condition, .. } => write(condition, columns, params)?,
        Condition::Not(x) => match unwrapped(x) {
            Condition::Not(y) => write(y, columns, params)?,
            x => format!("NOT ({})", write(x, columns, params)?),
        },
        Condition::And(xs) | Condition::Or(xs) => {
            let (op, empty) = match c {
                Condition::And(_) => (" AND ", "TRUE"),
                _ => (" OR ", "FALSE"),
            };
            if xs.is_empty() {
                return Ok(empty.into());
            }
            let mut parts = Vec::with_capacity(xs.len());
            for x in xs {
                parts.push(write(x, columns, params)?);
            }
            format!("({})", parts.join(op))
        }
    })
}

/// A condition without its branch label.
fn unwrapped(c: &Condition) -> &Condition {
    match c {
        Condition::Policies { condition, .. } => unwrapped(condition),
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(id: &str) -> Value {
        Value::Entity {
            ty: "N::P".into(),
            id: id.into(),
        }
    }

    #[test]
    fn values_become_parameters_never_text() {
        let cols: BTreeMap<String, String> =
            [("project", "project_id"), ("creator", "r.creator_id")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        let c = Condition::And(vec![
            Condition::Or(vec![
                Condition::In {
                    path: "project".into(),
                    values: vec![ent("a'; DROP TABLE x; --"), ent("b")],
                },
                Condition::Eq {
                    path: "creator".into(),
                    value: ent("ada"),
                },
            ]),
            Condition::Not(Box::new(Condition::In {
                path: "project".into(),
                values: vec![],
            })),
        ]);
        let w = to_sql(&c, &cols).unwrap();
        assert_eq!(
            w.sql,
            "((project_id = ANY($1) OR r.creator_id = $2) AND NOT (FALSE))"
        );
        assert_eq!(
            w.params,
            [
                Param::Texts(vec!["a'; DROP TABLE x; --".into(), "b".into()]),
                Param::Text("ada".into())
            ]
        );
        // A column the plan needs but the mapping lacks, an attribute the type lacks, and a
        // column name that is not an identifier are refused.
        let missing = to_sql(&Condition::Has { path: "due".into() }, &cols).unwrap_err();
        assert!(missing.message.contains("`due`"), "{missing}");
        let bad = check_columns(&cols, &["project"]).unwrap_err();
        assert_eq!(bad.key.as_deref(), Some("creator"));
        let mut evil = cols.clone();
        evil.insert("project".into(), "x; DROP".into());
        let bad = check_columns(&evil, &["project", "creator"]).unwrap_err();
        assert_eq!(bad.key.as_deref(), Some("project"));
    }
}
