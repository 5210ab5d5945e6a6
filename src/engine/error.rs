//! The engine's typed errors. Cedar's own diagnostics are kept (as sources), never flattened
//! to strings before the edge that prints them; the service maps these to gRPC statuses in
//! one place.

use std::fmt;
use std::path::PathBuf;

/// Where in a policy-pack file a diagnostic points (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found while loading a policy pack: where it is, and Cedar's own diagnostic
/// (message, help and source spans) when Cedar produced it.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {severity}: {message}")]
pub struct PolicyDiagnostic {
    pub location: Location,
    pub severity: Severity,
    pub message: String,
    /// Cedar's help text, if any.
    pub help: Option<String>,
    /// The source line the diagnostic points at, for display.
    pub source_line: Option<String>,
    /// The whole text of the file, so that an edge can render every label and span of
    /// Cedar's diagnostic against it.
    pub source_text: Option<String>,
    #[source]
    pub cedar: Option<Box<dyn miette::Diagnostic + Send + Sync + 'static>>,
}

impl PolicyDiagnostic {
    /// Renders the diagnostic the way the CLI and the logs print it: `file:line:col: error: msg`,
    /// Cedar's help line, and the offending source line with a caret.
    pub fn render(&self) -> String {
        let mut out = self.to_string();
        if let Some(help) = &self.help {
            out.push_str(&format!("\n  help: {help}"));
        }
        if let Some(line) = &self.source_line {
            out.push_str(&format!(
                "\n  | {line}\n  | {}^",
                " ".repeat(self.location.col.saturating_sub(1))
            ));
        }
        out
    }
}

/// Why a policy pack could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown overlay `{name}` (available: {available})")]
    UnknownOverlay { name: String, available: String },
    #[error("{} problem(s) in the policy pack:\n{}", .0.len(), render_all(.0))]
    Invalid(Vec<PolicyDiagnostic>),
}

fn render_all(diags: &[PolicyDiagnostic]) -> String {
    diags
        .iter()
        .map(PolicyDiagnostic::render)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A request the decision path refuses, naming the field that is wrong. The gRPC layer maps
/// this to INVALID_ARGUMENT; the CLI prints it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// The request field at fault (`principal`, `action`, `resource.type`, `context_json`, ...).
    pub field: String,
    pub message: String,
}

/// The longest message a [`RequestError`] carries: past it the message is cut, so that no
/// error echoes an unbounded input back (a client refuses a status message of hundreds of KB).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// How much of an offending value an error quotes.
pub const QUOTE_BYTES: usize = 64;

/// An offending value as an error quotes it: whole if short, else its first bytes and its
/// length.
pub fn quote(value: &str) -> String {
    if value.len() <= QUOTE_BYTES {
        return value.to_string();
    }
    format!("{}… ({} bytes)", prefix(value, QUOTE_BYTES), value.len())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl RequestError {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        let mut message = message.to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let total = message.len();
            message = format!(
                "{}… (message cut at {MAX_MESSAGE_BYTES} of {total} bytes)",
                prefix(&message, MAX_MESSAGE_BYTES)
            );
        }
        let mut field = field.into();
        if field.len() > MAX_MESSAGE_BYTES / 4 {
            field = quote(&field);
        }
        RequestError { field, message }
    }

    /// The same error inside a batch or a list: `requests[3].principal`.
    pub fn within(self, prefix: &str) -> Self {
        RequestError {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// Entity data that does not conform to the schema, or cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Entities {
        what: String,
        #[source]
        source: Box<cedar_policy::entities_errors::EntitiesError>,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
}

impl DataError {
    pub fn entities(
        what: impl fmt::Display,
        source: cedar_policy::entities_errors::EntitiesError,
    ) -> Self {
        DataError::Entities {
            what: what.to_string(),
            source: Box::new(source),
        }
    }
}

/// An entity that would be its own ancestor: a hierarchy with a cycle, which Cedar refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{uid} would be its own ancestor (the entity hierarchy must have no cycle)")]
pub struct CycleError {
    /// The entity on the cycle, as Cedar writes a uid.
    pub uid: String,
}

/// Why the Cedar entities of a per-request slice could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error("slice member {0} has no entity")]
    MissingMember(String),
    #[error("extension value `{text}` cannot be evaluated: {message}")]
    Extension { text: String, message: String },
}

/// A policy that cannot be compiled for evaluation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy `{policy}` {message}")]
pub struct CompileError {
    pub policy: String,
    pub message: String,
}

/// Why a parent edge of a write batch cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("entity {0} does not exist")]
    Missing(String),
    #[error(transparent)]
    Invalid(#[from] DataError),
}
