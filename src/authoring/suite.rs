//! Policy test suites: data files in `policies/tests/*.toml` that pin the behaviour of the
//! policies with named principals and resources, the expected decision and, for allows, the
//! determining policy ids. Each case runs through the same decision path as the service
//! (schema-validated request, store slice, per-action policy index).
//!
//! A suite with `overlay = "name"` runs only when that overlay is enabled; its cases replace the
//! default cases with the same principal, action, resource and context.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::EntityUid;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::decide::Decision;
use crate::engine::error::{DataError, LoadError};
use crate::engine::index::EntityStore;
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::engine::request;
use crate::engine::View;
use crate::files::{read_toml, FileError};

/// The folder of suites inside a policy directory.
pub const SUITE_DIR: &str = "tests";

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: test {index}: {message}")]
    Case {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// A suite file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    #[serde(default)]
    description: String,
    /// Namespace prefixed to short type names (`User::ada` means `Blue::User::"ada"`).
    #[serde(default)]
    namespace: String,
    /// Entities file, relative to the suite file.
    entities: String,
    /// Type of the principals named as keys of `expect`.
    principal_type: String,
    /// The overlay this suite belongs to; none for the default suites.
    overlay: Option<String>,
    #[serde(default, rename = "test")]
    tests: Vec<TestFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    name: Option<String>,
    action: String,
    resource: toml::Spanned<String>,
    #[serde(default)]
    context: Option<toml::Table>,
    /// principal id -> "allow <policy ids>" | "deny [<policy ids>]"
    expect: BTreeMap<toml::Spanned<String>, String>,
    /// Evaluation errors are expected (e.g. an unknown resource).
    #[serde(default)]
    errors: bool,
    /// The case names a principal or resource the suite's entities do not hold, on purpose:
    /// it is decided as Cedar decides an unknown entity (with or without errors, as the
    /// policies make it).
    #[serde(default)]
    unknown: bool,
}

/// The expected outcome of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub allow: bool,
    pub determining: Vec<String>,
    /// `invalid <field>`: the request is refused (INVALID_ARGUMENT) naming this field.
    pub invalid: Option<String>,
}

impl FromStr for Expect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut words = s.split_whitespace();
        let allow = match words.next() {
            Some("allow") => true,
            Some("deny") => false,
            Some("invalid") => {
                let (Some(field), None) = (words.next(), words.next()) else {
                    return Err(format!(
                        "expectation `{s}` must name the one refused field after `invalid` \
                         (`invalid context.role`)"
                    ));
                };
                return Ok(Expect {
                    allow: false,
                    determining: Vec::new(),
                    invalid: Some(field.to_string()),
                });
            }
            _ => {
                return Err(format!(
                    "expectation `{s}` must start with `allow`, `deny` or `invalid`"
                ))
            }
        };
        let mut determining: Vec<String> = words.map(str::to_string).collect();
        determining.sort();
        if allow && determining.is_empty() {
            return Err(format!(
                "expectation `{s}` must name the determining policy ids after `allow`"
            ));
        }
        Ok(Expect {
            allow,
            determining,
            invalid: None,
        })
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(field) = &self.invalid {
            return write!(f, "invalid {field}");
        }
        f.write_str(if self.allow { "allow" } else { "deny" })?;
        for d in &self.determining {
            write!(f, " {d}")?;
        }
        Ok(())
    }
}

/// One case: one principal, action, resource and context, with its expectation.
#[derive(Debug, Clone)]
pub struct Case {
    pub suite: PathBuf,
    pub name: String,
    pub principal: EntityUid,
    pub action: String,
    pub resource: EntityUid,
    pub context: Value,
    pub expect: Expect,
    pub errors_expected: bool,
    /// The case names an entity the suite's entities do not hold, on purpose.
    pub unknown: bool,
    /// The line of the suite file that names this case's principal.
    pub line: usize,
    /// The line that names its resource.
    pub resource_line: usize,
    entities: PathBuf,
}

impl Case {
    /// What makes two cases the same question (used for overlay overrides).
    pub fn key(&self) -> String {
        format!(
            "{} {} {} {}",
            self.principal, self.action, self.resource, self.context
        )
    }
}

/// A loaded suite.
#[derive(Debug)]
pub struct Suite {
    pub path: PathBuf,
    pub description: String,
    pub overlay: Option<String>,
    pub cases: Vec<Case>,
}

/// Parses `Type::id` or `Type::"id"`, prefixing `namespace` to a bare type name.
pub fn short_uid(s: &str, namespace: &str) -> Result<EntityUid, String> {
    let (ty, id) = s
        .rsplit_once("::")
        .ok_or_else(|| format!("`{s}` is not an entity reference (Type::id)"))?;
    let id = id
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .unwrap_or(id);
    let ty = if ty.contains("::") || namespace.is_empty() {
        ty.to_string()
    } else {
        format!("{namespace}::{ty}")
    };
    let ty = ty
        .parse()
        .map_err(|e| format!("`{ty}` is not a type name: {e}"))?;
    Ok(EntityUid::from_type_name_and_id(
        ty,
        cedar_policy::EntityId::new(id),
    ))
}

/// Loads every suite in `dir` (sorted by file name).
pub fn load_suites(dir: &Path) -> Result<Vec<Suite>, SuiteError> {
    let io = |source| SuiteError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|p| load_suite(p)).collect()
}

fn load_suite(path: &Path) -> Result<Suite, SuiteError> {
    let file: SuiteFile = read_toml(path)?;
    let text = fs::read_to_string(path).map_err(|source| SuiteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let line_of = |span: std::ops::Range<usize>| crate::engine::pack::line_col(&text, span.start).0;
    let base = path.parent().unwrap_or(Path::new("."));
    let entities = base.join(&file.entities);
    let mut cases = Vec::new();
    for (index, t) in file.tests.iter().enumerate() {
        let err = |message: String| SuiteError::Case {
            path: path.to_path_buf(),
            index: index + 1,
            message,
        };
        let resource = short_uid(t.resource.get_ref(), &file.namespace).map_err(err)?;
        let resource_line = line_of(t.resource.span());
        let context = match &t.context {
            Some(c) => serde_json::to_value(c).map_err(|e| err(e.to_string()))?,
            None => Value::Object(Default::default()),
        };
        if t.expect.is_empty() {
            return Err(err("`expect` names no principal".into()));
        }
        for (who_at, expect) in &t.expect {
            let who = who_at.get_ref();
            let principal = short_uid(&format!("{}::{who}", file.principal_type), &file.namespace)
                .map_err(err)?;
            let expect: Expect = expect.parse().map_err(err)?;
            let base_name = t.name.clone().unwrap_or_else(|| t.action.clone());
            cases.push(Case {
                suite: path.to_path_buf(),
                name: format!("{base_name} / {who}"),
                principal,
                action: t.action.clone(),
                resource: resource.clone(),
                context: context.clone(),
                expect,
                errors_expected: t.errors,
                unknown: t.unknown,
                line: line_of(who_at.span()),
                resource_line,
                entities: entities.clone(),
            });
        }
    }
    Ok(Suite {
        path: path.to_path_buf(),
        description: file.description,
        overlay: file.overlay,
        cases,
    })
}

/// The cases that apply with these overlays enabled: the default suites, with the cases of
/// each enabled overlay's suites replacing (or adding to) them.
pub fn effective_cases(suites: &[Suite], overlays: &[String]) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let default = suites.iter().filter(|s| s.overlay.is_none());
    let enabled = suites
        .iter()
        .filter(|s| s.overlay.as_ref().is_some_and(|o| overlays.contains(o)));
    for suite in default.chain(enabled) {
        for case in &suite.cases {
            match index.get(&case.key()) {
                Some(&i) => cases[i] = case.clone(),
                None => {
                    index.insert(case.key(), cases.len());
                    cases.push(case.clone());
                }
            }
        }
    }
    cases
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: Case,
    /// The decision, or why the request was refused.
    pub actual: Result<Decision, String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        if let Some(field) = &self.case.expect.invalid {
            return matches!(&self.actual, Err(e) if e.starts_with(&format!("{field}: ")));
        }
        match &self.actual {
            Ok(d) => {
                d.allow == self.case.expect.allow
                    && d.determining == self.case.expect.determining
                    && (self.case.errors_expected != d.errors.is_empty())
            }
            Err(_) => false,
        }
    }

    /// The failure report: the case, expected and actual decision, determining policies.
    pub fn describe(&self) -> String {
        let c = &self.case;
        let actual = match &self.actual {
            Ok(d) => {
                let mut s = if d.allow { "allow" } else { "deny" }.to_string();
                for p in &d.determining {
                    s.push(' ');
                    s.push_str(p);
                }
                if !d.errors.is_empty() {
                    s.push_str(&format!("\n  errors:   {}", d.errors.join("; ")));
                } else if c.errors_expected {
                    s.push_str("\n  errors:   none, but the case expects evaluation errors");
                }
                s
            }
            Err(e) => format!("request refused: {e}"),
        };
        format!(
            "FAIL {}:{}: {}\n  request:  {} {} {} {}\n  expected: {}\n  actual:   {}",
            c.suite.display(),
            c.line,
            c.name,
            c.principal,
            c.action,
            c.resource,
            c.context,
            c.expect,
            actual
        )
    }
}

/// Runs cases against a pack, each through the decision path with the store of its entities
/// file.
pub fn run_cases(pack: &PolicyPack, cases: &[Case]) -> Result<Vec<CaseResult>, SuiteError> {
    let mut stores: HashMap<PathBuf, EntityStore> = HashMap::new();
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        if !stores.contains_key(&case.entities) {
            let store = EntityStore::load_file(&case.entities, &pack.entities)?;
            stores.insert(case.entities.clone(), store);
        }
        let store = &stores[&case.entities];
        out.push(CaseResult {
            case: case.clone(),
            actual: missing(store, case).map_or_else(|| decide_case(pack, store, case), Err),
        });
    }
    Ok(out)
}

/// Why a case cannot test what it says, if it cannot: a principal or resource that is not in
/// the suite's entities (a misspelled name would otherwise pass as a quiet DENY). A case that
/// expects evaluation errors may name entities that do not exist on purpose.
fn missing(store: &EntityStore, case: &Case) -> Option<String> {
    let file = case
        .entities
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    if case.unknown {
        // A stale flag would hide a misspelling the next time: the case must name one.
        let holds_both = store.contains(&case.principal) && store.contains(&case.resource);
        return holds_both.then(|| {
            format!(
                "case `{}` ({}:{}) says `unknown = true`, but the suite's entities ({file}) hold \
                 both its principal and its resource",
                case.name,
                case.suite.display(),
                case.line
            )
        });
    }
    if case.errors_expected {
        return None;
    }
    let (what, uid, line) = if !store.contains(&case.principal) {
        ("principal", &case.principal, case.line)
    } else if !store.contains(&case.resource) {
        ("resource", &case.resource, case.resource_line)
    } else {
        return None;
    };
    Some(format!(
        "{what} `{uid}` ({}:{line}) is not in the suite's entities ({file}): a misspelled name? \
         (a case that names an unknown entity on purpose sets `unknown = true`)",
        case.suite.display()
    ))
}

/// One case through the decision path.
pub fn decide_case(
    pack: &PolicyPack,
    store: &EntityStore,
    case: &Case,
) -> Result<Decision, String> {
    let action =
        request::parse_action(pack, request::action_id(&case.action)).map_err(|e| e.to_string())?;
    let Value::Object(context) = &case.context else {
        return Err("context: must be a JSON object".to_string());
    };
    let req = request::check_parsed(
        pack,
        (case.principal.clone(), action, case.resource.clone()),
        Some(context),
        Default::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(View::new(pack, store).decide(&req))
}

/// A whole test run: the pack and every effective case's result.
pub struct Report {
    pub pack: Arc<PolicyPack>,
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn failed(&self) -> Vec<&CaseResult> {
        self.results.iter().filter(|r| !r.passed()).collect()
    }

    pub fn summary(&self) -> String {
        let failed = self.failed().len();
        format!("{} passed, {} failed", self.results.len() - failed, failed)
    }
}

/// Loads the pack and runs its suites, with the spec's overlays enabled.
pub fn run(spec: &PackSpec) -> Result<Report, SuiteError> {
    let pack = PolicyPack::load(spec)?;
    run_with(pack)
}

/// Runs the suites of an already loaded pack (used by hot reload on a candidate).
pub fn run_with(pack: Arc<PolicyPack>) -> Result<Report, SuiteError> {
    let suites = load_suites(&pack.spec.dir.join(SUITE_DIR))?;
    let cases = effective_cases(&suites, &pack.spec.overlays);
    let results = run_cases(&pack, &cases)?;
    Ok(Report { pack, results })
}
