//! Diagnostics of a policy pack located at file:line:col, keeping Cedar's own diagnostic (with
//! all its labels and spans) as the source.

use std::fmt;
use std::path::Path;

use miette::{Diagnostic, LabeledSpan};

use crate::engine::error::{LoadError, Location, PolicyDiagnostic, Severity};

/// An error at a byte offset of one of the pack's TOML files (names.toml, invariants.toml, ...).
pub(super) fn toml_error(
    path: &Path,
    text: &str,
    offset: usize,
    message: String,
) -> PolicyDiagnostic {
    let (line, col, source_line) = line_col(text, offset);
    PolicyDiagnostic {
        location: Location {
            file: path.to_path_buf(),
            line,
            col,
        },
        severity: Severity::Error,
        message,
        help: None,
        source_line: Some(source_line),
        source_text: Some(text.to_string()),
        cedar: None,
    }
}

/// One of the pack's TOML files parsed into `T`; a syntax or shape error at its file:line:col.
pub(super) fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, LoadError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        LoadError::Invalid(vec![toml_error(
            path,
            text,
            offset,
            e.message().to_string(),
        )])
    })
}

/// 1-based line and column of a byte offset in `text`, and that line.
pub fn line_col(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[start..offset].chars().count() + 1;
    let end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    (line, col, text[start..end].to_string())
}

/// A diagnostic located by Cedar's first source label, in `path` whose text is `text`; keeps
/// Cedar's diagnostic as the source.
pub(super) fn diagnostic<D>(path: &Path, text: &str, severity: Severity, d: D) -> PolicyDiagnostic
where
    D: miette::Diagnostic + Send + Sync + 'static,
{
    let mut out = locate(path, text, severity, &d);
    out.cedar = Some(Box::new(d));
    out
}

/// Location, message and help of a Cedar diagnostic in `path` whose text is `text`.
fn locate(
    path: &Path,
    text: &str,
    severity: Severity,
    d: &dyn miette::Diagnostic,
) -> PolicyDiagnostic {
    let offset = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    let (line, col, source_line) = match offset {
        Some(o) => {
            let (l, c, s) = line_col(text, o);
            (l, c, Some(s))
        }
        None => (1, 1, None),
    };
    PolicyDiagnostic {
        location: Location {
            file: path.to_path_buf(),
            line,
            col,
        },
        severity,
        message: d.to_string(),
        help: d.help().map(|h| h.to_string()),
        source_line,
        source_text: Some(text.to_string()),
        cedar: None,
    }
}

/// A problem of the pack as a whole, reported at the top of the schema file.
pub(super) fn at_schema(
    schema_path: &Path,
    message: String,
    cedar: Option<Box<dyn miette::Diagnostic + Send + Sync>>,
) -> LoadError {
    LoadError::Invalid(vec![PolicyDiagnostic {
        location: Location {
            file: schema_path.to_path_buf(),
            line: 1,
            col: 1,
        },
        severity: Severity::Error,
        message,
        help: None,
        source_line: None,
        source_text: None,
        cedar,
    }])
}

/// A diagnostic of ours (no Cedar error), located at the policy whose text is `policy_text`.
pub(super) fn at_policy_text(
    path: &Path,
    text: &str,
    policy_text: &str,
    message: &str,
) -> PolicyDiagnostic {
    let offset = text.find(policy_text.trim()).unwrap_or(0);
    let (line, col, source_line) = line_col(text, offset);
    PolicyDiagnostic {
        location: Location {
            file: path.to_path_buf(),
            line,
            col,
        },
        severity: Severity::Error,
        message: message.to_string(),
        help: None,
        source_line: Some(source_line),
        source_text: Some(text.to_string()),
        cedar: None,
    }
}

/// One of Cedar's diagnostics taken out of a borrowed error (its message, code, help and every
/// labelled span), so that it can travel with the diagnostic that locates it.
#[derive(Debug)]
pub(super) struct Captured {
    message: String,
    code: Option<String>,
    help: Option<String>,
    labels: Vec<LabeledSpan>,
}

impl Captured {
    pub(super) fn of(d: &dyn Diagnostic) -> Self {
        Captured {
            message: d.to_string(),
            code: d.code().map(|c| c.to_string()),
            help: d.help().map(|h| h.to_string()),
            labels: d.labels().map(|l| l.collect()).unwrap_or_default(),
        }
    }
}

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Captured {}

impl Diagnostic for Captured {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code
            .as_ref()
            .map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        (!self.labels.is_empty()).then(|| Box::new(self.labels.iter().cloned()) as Box<_>)
    }
}
