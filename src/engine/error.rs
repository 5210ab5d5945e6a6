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

/// A request the decision path refuses, naming the field that is wrong. Each edge spells the
/// field its own way (gRPC as proto field paths, AuthZEN as JSON paths, the CLI as flags); the
/// engine's own spelling ([`Field`]'s `Display`) is for logs and tests.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    pub field: Field,
    pub message: String,
}

/// Which part of an entity reference is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    Type,
    Id,
}

/// Which side a listing lists (its entity type is a field of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedSide {
    Resources,
    Principals,
}

/// The field of a request at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The request as a whole (its size, its shape).
    Request,
    Principal(Part),
    Action(Part),
    Resource(Part),
    /// The context, or one member of it.
    Context(Option<String>),
    /// The request-scoped entities, or the one at this index.
    Entities(Option<usize>),
    /// The context given for one action of ListAllowedActions.
    ActionContext(String),
    /// The entity type a listing lists.
    ListedType(ListedSide),
    PageSize,
    PageToken,
    /// The operations of a write batch, or the one at this index.
    Ops(Option<usize>),
    /// The column mapping of a resource plan's SQL, or the entry for one attribute.
    Columns(Option<String>),
    /// Item `n` of a batch, and the field within it.
    Item(usize, Box<Field>),
    /// A field only an edge knows (named in that edge's own words).
    Edge(String),
}

impl Field {
    /// Field `self` of item `n` of a batch.
    pub fn item(self, n: usize) -> Field {
        Field::Item(n, Box::new(self))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, name: &str, p: Part) -> fmt::Result {
            match p {
                Part::Whole => f.write_str(name),
                Part::Type => write!(f, "{name}.type"),
                Part::Id => write!(f, "{name}.id"),
            }
        }
        match self {
            Field::Request => f.write_str("request"),
            Field::Principal(p) => part(f, "principal", *p),
            Field::Action(p) => part(f, "action", *p),
            Field::Resource(p) => part(f, "resource", *p),
            Field::Context(None) => f.write_str("context"),
            Field::Context(Some(m)) => write!(f, "context.{m}"),
            Field::Entities(None) => f.write_str("entities"),
            Field::Entities(Some(i)) => write!(f, "entities[{i}]"),
            Field::ActionContext(a) => write!(f, "action_contexts[{a}]"),
            Field::ListedType(ListedSide::Resources) => f.write_str("resource_type"),
            Field::ListedType(ListedSide::Principals) => f.write_str("principal_type"),
            Field::PageSize => f.write_str("page_size"),
            Field::PageToken => f.write_str("page_token"),
            Field::Ops(None) => f.write_str("ops"),
            Field::Ops(Some(i)) => write!(f, "ops[{i}]"),
            Field::Columns(None) => f.write_str("sql.columns"),
            Field::Columns(Some(k)) => write!(f, "sql.columns.{k}"),
            Field::Item(i, inner) => write!(f, "[{i}].{inner}"),
            Field::Edge(name) => f.write_str(name),
        }
    }
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
    pub fn new(field: Field, message: impl fmt::Display) -> Self {
        let mut message = message.to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let total = message.len();
            message = format!(
                "{}… (message cut at {MAX_MESSAGE_BYTES} of {total} bytes)",
                prefix(&message, MAX_MESSAGE_BYTES)
            );
        }
        let field = match field {
            Field::Edge(name) if name.len() > MAX_MESSAGE_BYTES / 4 => Field::Edge(quote(&name)),
            Field::ActionContext(a) if a.len() > MAX_MESSAGE_BYTES / 4 => {
                Field::ActionContext(quote(&a))
            }
            f => f,
        };
        RequestError { field, message }
    }

    /// An error in a field only an edge names.
    pub fn edge(field: impl Into<String>, message: impl fmt::Display) -> Self {
        RequestError::new(Field::Edge(field.into()), message)
    }

    /// The same error in item `n` of a batch.
    pub fn item(self, n: usize) -> Self {
        RequestError {
            field: self.field.item(n),
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

/// Why a name a caller gave is not one of `valid`: the nearest valid name, when one is near
/// enough to be a slip ("did you mean `Blue::User`?"), and every valid name, sorted.
/// `what` is the kind of name, plural (`types`, `actions`).
pub fn unknown_name(what: &str, given: &str, valid: &[String]) -> String {
    let mut names: Vec<&str> = valid.iter().map(String::as_str).collect();
    names.sort_unstable();
    let lower = given.to_lowercase();
    // The last path segment too, so `User` and `blue::user` find `Blue::User`.
    let tail = |s: &str| s.rsplit("::").next().unwrap_or(s).to_lowercase();
    let nearest = names
        .iter()
        .map(|n| {
            let whole = strsim::levenshtein(&lower, &n.to_lowercase());
            let short = strsim::levenshtein(&tail(&lower), &tail(n));
            (whole.min(short), *n)
        })
        .filter(|(d, n)| *d <= (tail(n).chars().count() / 3).max(1))
        .min();
    let mut out = String::new();
    if let Some((_, n)) = nearest {
        out.push_str(&format!("did you mean `{n}`? "));
    }
    out.push_str(&format!("(this pack's {what}: {})", names.join(", ")));
    format!(
        "unknown {} `{}`; {out}",
        what.trim_end_matches('s'),
        quote(given)
    )
}
