//! The policy-loading path: read a policy pack (schema, `*.cedar` files, enabled overlays),
//! name every policy by its `@id`, validate strictly against the schema, and index the policies
//! by action. Every problem is reported with file:line:col and Cedar's own diagnostic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema,
    ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::error::{LoadError, Location, PolicyDiagnostic, Severity};

/// The schema file inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// The folder of optional overlays inside a policy directory.
pub const OVERLAY_DIR: &str = "optional";

/// What to load: a policy directory and the overlays to enable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSpec {
    pub dir: PathBuf,
    pub overlays: Vec<String>,
}

impl PackSpec {
    pub fn new(dir: impl Into<PathBuf>, overlays: &[String]) -> Self {
        let mut overlays: Vec<String> = overlays
            .iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        overlays.sort();
        overlays.dedup();
        PackSpec {
            dir: dir.into(),
            overlays,
        }
    }
}

/// One policy ready for Cedar's evaluator: its whole condition (scope and `when`/`unless`
/// clauses) as one expression, built once at load instead of per request, and without source
/// locations (evaluation would otherwise copy them into every intermediate value).
#[derive(Debug)]
pub struct Compiled {
    pub id: cedar_policy_core::ast::PolicyID,
    /// The id as decisions name it.
    pub name: String,
    pub forbid: bool,
    pub condition: cedar_policy_core::ast::Expr,
}

/// Everything the decision path needs to know about one action.
#[derive(Debug)]
pub struct ActionEntry {
    /// The policies whose action scope can match this action, compiled for evaluation.
    pub compiled: Vec<Compiled>,
    /// The action entity with its action-group ancestors, for the per-request slice (as
    /// cedar-policy-core's entity: slices are built from core entities).
    pub core_entity: Arc<cedar_policy_core::ast::Entity>,
    pub principal_types: HashSet<EntityTypeName>,
    pub resource_types: HashSet<EntityTypeName>,
    /// Entity literals in those policies: a slice keeps ancestors that match them.
    pub literals: Vec<EntityUid>,
    /// The action's context is an empty record: a request without context needs no parsing.
    pub empty_context: bool,
    /// Which entities reached through attributes the slice must carry.
    pub needs: Needs,
    /// The policies compiled for evaluation over the index, if all are in the subset a plan
    /// covers (see [`crate::plan`]).
    pub plan: Option<crate::plan::Plan>,
}

/// A loaded, strictly validated policy pack. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct PolicyPack {
    pub spec: PackSpec,
    pub schema: Schema,
    /// All policies, named by their `@id`.
    pub policies: PolicySet,
    /// The file each policy came from.
    pub origin: BTreeMap<String, PathBuf>,
    /// Content hash of the schema, the policy files and the enabled overlays.
    pub version: String,
    /// Content hash of the schema alone (entities validated under it stay valid while it holds).
    pub schema_version: String,
    actions: hashbrown::HashMap<EntityUid, ActionEntry>,
    /// Entity type names by their text, so requests skip Cedar's name parser.
    entity_types: hashbrown::HashMap<String, EntityTypeName>,
    /// The parent types each entity type declares (`entity User in [Role, ...]`), direct only.
    parent_types: HashMap<EntityTypeName, HashSet<EntityTypeName>>,
}

impl PolicyPack {
    /// Loads and strictly validates a pack. Warnings count as problems: a pack that loads has
    /// zero errors and zero warnings.
    pub fn load(spec: &PackSpec) -> Result<Arc<PolicyPack>, LoadError> {
        let dir = &spec.dir;
        let mut diags = Vec::new();
        let mut hasher = Sha256::new();

        let schema_path = dir.join(SCHEMA_FILE);
        let schema_text = read(&schema_path)?;
        hasher.update(SCHEMA_FILE.as_bytes());
        hasher.update(schema_text.as_bytes());
        let schema_version = hex8(&Sha256::digest(schema_text.as_bytes()));
        let schema = match Schema::from_cedarschema_str(&schema_text) {
            Ok((schema, warnings)) => {
                for w in warnings {
                    diags.push(diagnostic(&schema_path, &schema_text, Severity::Warning, w));
                }
                Some(schema)
            }
            Err(e) => {
                diags.push(diagnostic(&schema_path, &schema_text, Severity::Error, e));
                None
            }
        };

        let mut files = cedar_files(dir)?;
        let available = overlay_names(dir)?;
        for name in &spec.overlays {
            if !available.contains(name) {
                return Err(LoadError::UnknownOverlay {
                    name: name.clone(),
                    available: available.join(", "),
                });
            }
            files.push(dir.join(OVERLAY_DIR).join(format!("{name}.cedar")));
        }

        let mut policies = PolicySet::new();
        let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut texts: HashMap<PathBuf, String> = HashMap::new();
        for path in &files {
            let text = read(path)?;
            let rel = path.strip_prefix(dir).unwrap_or(path);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match PolicySet::from_str(&text) {
                Err(errs) => {
                    let first = diags.len();
                    for e in errs.iter() {
                        diags.push(locate(path, &text, Severity::Error, e));
                    }
                    // Cedar's own diagnostic (all errors, with spans) rides on the first.
                    diags[first].cedar = Some(Box::new(errs));
                }
                Ok(set) => {
                    if let Some(t) = set.templates().next() {
                        diags.push(at_policy_text(
                            path,
                            &text,
                            &t.to_string(),
                            "templates are not supported: write static policies",
                        ));
                    }
                    let mut parsed: Vec<&Policy> = set.policies().collect();
                    // `policy0`, `policy1`, ... follow source order.
                    parsed.sort_by_key(|p| {
                        p.id().to_string()[6..]
                            .parse::<usize>()
                            .unwrap_or(usize::MAX)
                    });
                    for p in parsed {
                        add_named(p, path, &text, &mut policies, &mut origin, &mut diags);
                    }
                }
            }
            texts.insert(path.clone(), text);
        }
        hasher.update(spec.overlays.join(",").as_bytes());

        let Some(schema) = schema else {
            return Err(LoadError::Invalid(diags));
        };
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for e in result.validation_errors() {
            let file = origin.get(&e.policy_id().to_string()).cloned();
            let file = file.unwrap_or_else(|| schema_path.clone());
            let text = texts.get(&file).map(String::as_str).unwrap_or("");
            diags.push(diagnostic(&file, text, Severity::Error, e.clone()));
        }
        for w in result.validation_warnings() {
            let file = origin.get(&w.policy_id().to_string()).cloned();
            let file = file.unwrap_or_else(|| schema_path.clone());
            let text = texts.get(&file).map(String::as_str).unwrap_or("");
            diags.push(diagnostic(&file, text, Severity::Warning, w.clone()));
        }
        if !diags.is_empty() {
            return Err(LoadError::Invalid(diags));
        }

        let actions = index_actions(&schema, &policies, &schema_path)?;
        let parent_types = declared_parent_types(&schema_text);
        let entity_types = schema
            .entity_types()
            .chain(actions.keys().map(EntityUid::type_name))
            .map(|t| (t.to_string(), EntityTypeName::from(plain_type(t.as_ref()))))
            .collect();
        let version = hex8(&hasher.finalize());
        Ok(Arc::new(PolicyPack {
            spec: spec.clone(),
            schema,
            policies,
            origin,
            version,
            schema_version,
            actions,
            entity_types,
            parent_types,
        }))
    }

    pub fn action(&self, uid: &EntityUid) -> Option<&ActionEntry> {
        self.actions.get(uid)
    }

    /// Actions whose policies are not all in the compiled plans' subset, sorted by id: their
    /// decisions go through Cedar's evaluator over a slice (the same answers, more slowly).
    pub fn unplanned_actions(&self) -> Vec<&EntityUid> {
        let mut out: Vec<&EntityUid> = self
            .actions
            .iter()
            .filter(|(_, e)| e.plan.is_none())
            .map(|(a, _)| a)
            .collect();
        out.sort_by_key(|a| a.to_string());
        out
    }

    /// All actions of the schema, sorted by id.
    pub fn actions(&self) -> Vec<&EntityUid> {
        let mut all: Vec<&EntityUid> = self.actions.keys().collect();
        all.sort_by_key(|a| a.to_string());
        all
    }

    /// The actions that apply to this principal and resource type, sorted by id.
    pub fn actions_for(
        &self,
        principal: &EntityTypeName,
        resource: &EntityTypeName,
    ) -> Vec<(&EntityUid, &ActionEntry)> {
        let mut all: Vec<(&EntityUid, &ActionEntry)> = self
            .actions
            .iter()
            .filter(|(_, e)| {
                e.principal_types.contains(principal) && e.resource_types.contains(resource)
            })
            .collect();
        all.sort_by(|(a, _), (b, _)| a.id().unescaped().cmp(b.id().unescaped()));
        all
    }

    /// Whether the schema lets an entity of type `child` have a direct parent of type
    /// `parent` (Cedar itself only checks transitive ancestor types).
    pub fn allows_parent(&self, child: &EntityTypeName, parent: &EntityTypeName) -> bool {
        self.parent_types
            .get(child)
            .is_some_and(|p| p.contains(parent))
    }

    /// A declared entity type (or the action type), by its text.
    pub fn entity_type(&self, ty: &str) -> Option<&EntityTypeName> {
        self.entity_types.get(ty)
    }

    /// The action type name of this schema (`Blue::Action`), taken from its first action.
    pub fn action_type(&self) -> Option<&EntityTypeName> {
        self.actions.keys().next().map(EntityUid::type_name)
    }
}

/// The first 8 bytes of a digest, in hex.
fn hex8(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The direct parent types each entity type declares, read from the schema's JSON form
/// (`memberOfTypes`, relative to the type's namespace).
fn declared_parent_types(schema_text: &str) -> HashMap<EntityTypeName, HashSet<EntityTypeName>> {
    let mut out = HashMap::new();
    let Ok((fragment, _)) = cedar_policy::SchemaFragment::from_cedarschema_str(schema_text) else {
        return out;
    };
    let Ok(json) = fragment.to_json_value() else {
        return out;
    };
    let qualify = |ns: &str, name: &str| -> Option<EntityTypeName> {
        let full = if ns.is_empty() || name.contains("::") {
            name.to_string()
        } else {
            format!("{ns}::{name}")
        };
        full.parse().ok()
    };
    for (ns, body) in json.as_object().into_iter().flatten() {
        let types = body.get("entityTypes").and_then(|t| t.as_object());
        for (name, def) in types.into_iter().flatten() {
            let Some(ty) = qualify(ns, name) else {
                continue;
            };
            let parents = def
                .get("memberOfTypes")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().and_then(|p| qualify(ns, p)))
                .collect();
            out.insert(ty, parents);
        }
    }
    out
}

/// Names of the overlays available in `dir/optional/`, sorted.
pub fn overlay_names(dir: &Path) -> Result<Vec<String>, LoadError> {
    let odir = dir.join(OVERLAY_DIR);
    if !odir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = list(&odir, "cedar")?
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// The `*.cedar` files directly in `dir`, sorted by name.
fn cedar_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    list(dir, "cedar")
}

fn list(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<String, LoadError> {
    fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Renames a parsed policy to its `@id` and adds it, or records why it cannot be added.
fn add_named(
    p: &Policy,
    path: &Path,
    text: &str,
    policies: &mut PolicySet,
    origin: &mut BTreeMap<String, PathBuf>,
    diags: &mut Vec<PolicyDiagnostic>,
) {
    let src = p.to_string();
    let Some(id) = p.annotation("id") else {
        diags.push(at_policy_text(
            path,
            text,
            &src,
            "policy has no @id(\"area.action\") annotation",
        ));
        return;
    };
    if id.trim().is_empty() || id.chars().any(char::is_whitespace) {
        diags.push(at_policy_text(
            path,
            text,
            &src,
            &format!("@id \"{id}\" must be a non-empty name without spaces"),
        ));
        return;
    }
    if let Some(first) = origin.get(id) {
        diags.push(at_policy_text(
            path,
            text,
            &src,
            &format!("duplicate @id \"{id}\" (first used in {})", first.display()),
        ));
        return;
    }
    match policies.add(p.new_id(PolicyId::new(id))) {
        Ok(()) => {
            origin.insert(id.to_string(), path.to_path_buf());
        }
        Err(e) => diags.push(at_policy_text(path, text, &src, &e.to_string())),
    }
}

/// Builds the per-action index: which policies can apply, the action entity, and what the
/// action applies to.
fn index_actions(
    schema: &Schema,
    policies: &PolicySet,
    schema_path: &Path,
) -> Result<hashbrown::HashMap<EntityUid, ActionEntry>, LoadError> {
    let action_entities: Entities = schema.action_entities().map_err(|e| {
        let message = format!("cannot build the action hierarchy: {e}");
        at_schema(schema_path, message, Some(Box::new(e)))
    })?;
    let mut out = hashbrown::HashMap::new();
    for action in schema.actions() {
        let ancestors: HashSet<EntityUid> = action_entities
            .ancestors(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let mut set = PolicySet::new();
        let mut literals = Vec::new();
        for p in policies.policies() {
            let applies = match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(list) => {
                    list.iter().any(|a| a == action || ancestors.contains(a))
                }
            };
            if applies {
                // Ids are unique in `policies`, so adding to a fresh set cannot fail.
                let _ = set.add(p.clone());
                if let Ok(json) = p.to_json() {
                    crate::store::value_refs(&json, &mut literals);
                }
            }
        }
        let principal_types = schema
            .principals_for_action(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let resource_types = schema
            .resources_for_action(action)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        literals.retain(|l| l.type_name() != action.type_name());
        literals.sort_by_key(|l| l.to_string());
        literals.dedup();
        let core = |u: &EntityUid| -> cedar_policy_core::ast::EntityUID { u.as_ref().clone() };
        let core_entity = Arc::new(cedar_policy_core::ast::Entity::new_with_attr_partial_value(
            core(action),
            [],
            std::collections::HashSet::new(),
            ancestors.iter().map(core).collect(),
            [],
        ));
        let empty_context =
            cedar_policy::Context::from_json_value(serde_json::json!({}), Some((schema, action)))
                .is_ok();
        let needs = Needs::of(&set);
        let compiled = compile(&set).map_err(|message| at_schema(schema_path, message, None))?;
        let plan = crate::plan::Plan::compile(
            &compiled,
            &crate::plan::ActionFacts {
                uid: core_entity.uid(),
                ancestors: &core_entity.ancestors().cloned().collect(),
            },
        );
        out.insert(
            action.clone(),
            ActionEntry {
                needs,
                compiled,
                core_entity,
                principal_types,
                resource_types,
                literals,
                empty_context,
                plan,
            },
        );
    }
    Ok(out)
}

/// The same entity type without a source location. Types taken from the schema point into its
/// text, and every clone on the decision path (each uid of each slice) would bump that text's
/// shared counter from every thread at once.
pub fn plain_type(t: &cedar_policy_core::ast::EntityType) -> cedar_policy_core::ast::EntityType {
    use cedar_policy_core::ast::{InternalName, Name};
    let name: &InternalName = t.name().as_ref();
    let plain = InternalName::new(
        name.basename().clone(),
        name.namespace_components().cloned(),
        None,
    );
    match Name::try_from(plain) {
        Ok(n) => cedar_policy_core::ast::EntityType::from(n),
        // A reserved name cannot come from a validated schema; keep it as it is.
        Err(_) => t.clone(),
    }
}

/// Compiles a policy set for evaluation: each policy goes through Cedar's JSON form (which
/// carries no source locations) and its condition is built once.
pub(crate) fn compile(set: &PolicySet) -> Result<Vec<Compiled>, String> {
    let mut plain = PolicySet::new();
    for p in set.policies() {
        let json = p
            .to_json()
            .map_err(|e| format!("policy `{}` has no JSON form: {e}", p.id()))?;
        let again = Policy::from_json(Some(p.id().clone()), json)
            .map_err(|e| format!("policy `{}` does not round-trip through JSON: {e}", p.id()))?;
        plain
            .add(again)
            .map_err(|e| format!("policy `{}`: {e}", p.id()))?;
    }
    let ast: &cedar_policy_core::ast::PolicySet = plain.as_ref();
    Ok(ast
        .policies()
        .map(|p| Compiled {
            id: p.id().clone(),
            name: p.id().to_string(),
            forbid: p.effect() == cedar_policy_core::ast::Effect::Forbid,
            condition: p.condition(),
        })
        .collect())
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
fn diagnostic<D>(path: &Path, text: &str, severity: Severity, d: D) -> PolicyDiagnostic
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
        cedar: None,
    }
}

/// A problem of the pack as a whole, reported at the top of the schema file.
fn at_schema(
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
        cedar,
    }])
}

/// A diagnostic of ours (no Cedar error), located at the policy whose text is `policy_text`.
fn at_policy_text(path: &Path, text: &str, policy_text: &str, message: &str) -> PolicyDiagnostic {
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
        cedar: None,
    }
}

/// Which entities reached through attributes a slice must carry as Cedar entities, for one
/// action: those whose attributes, tags or ancestors some policy reads. An entity that is
/// only compared (`principal == resource.owner`) or only the right-hand side of `in`
/// (`principal in resource.admin`) needs no Cedar form: its uid, kept in the ancestor sets,
/// is enough. Computed from the policies' JSON form; anything the analysis does not
/// recognise makes it fall back to every attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needs {
    pub principal: Need,
    pub resource: Need,
}

/// For one slice member: the attributes whose entity values must be members too, each with
/// its own needs in turn. `All` follows every attribute (up to the slice depth).
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    All,
    Attrs(std::collections::BTreeMap<String, Need>),
}

impl Default for Need {
    fn default() -> Self {
        Need::Attrs(Default::default())
    }
}

/// Follows every attribute: what a slice did before the analysis, and what it does for
/// entities named in the context.
pub static NEED_ALL: Need = Need::All;

impl Need {
    /// What a member reached through attribute `name` needs; None: it need not be a member.
    pub fn child(&self, name: &str) -> Option<&Need> {
        match self {
            Need::All => Some(&NEED_ALL),
            Need::Attrs(map) => map.get(name),
        }
    }

    fn mark(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if let Need::Attrs(map) = self {
            map.entry(first.to_string()).or_default().mark(rest);
        }
    }

    fn merge(&mut self, other: &Need) {
        match (&mut *self, other) {
            (Need::All, _) => {}
            (_, Need::All) => *self = Need::All,
            (Need::Attrs(a), Need::Attrs(b)) => {
                for (k, v) in b {
                    a.entry(k.clone()).or_default().merge(v);
                }
            }
        }
    }
}

impl Needs {
    /// Follows every attribute of the principal and the resource.
    pub fn all() -> Needs {
        Needs {
            principal: Need::All,
            resource: Need::All,
        }
    }

    pub fn merge(&mut self, other: &Needs) {
        self.principal.merge(&other.principal);
        self.resource.merge(&other.resource);
    }

    /// The needs of the policies in `set`.
    pub fn of(set: &PolicySet) -> Needs {
        let mut needs = Needs::default();
        for p in set.policies() {
            let Ok(json) = p.to_json() else {
                return Needs::all();
            };
            let Some(conditions) = json.get("conditions").and_then(|c| c.as_array()) else {
                continue;
            };
            for c in conditions {
                match c.get("body") {
                    Some(body) if needs.walk(body) => {}
                    _ => return Needs::all(),
                }
            }
        }
        needs
    }

    /// Marks what `e` dereferences; false when the expression is not understood.
    fn walk(&mut self, e: &serde_json::Value) -> bool {
        use serde_json::Value;
        match e {
            Value::Array(items) => items.iter().all(|i| self.walk(i)),
            Value::Object(map) if map.len() == 1 => {
                let (op, arg) = map.iter().next().expect("one entry");
                match op.as_str() {
                    "Value" | "Var" | "Slot" | "Unknown" => true,
                    // Reads the left-hand entity's attributes, tags or ancestors.
                    "." | "has" | "in" | "getTag" | "hasTag" => {
                        let Some(left) = arg.get("left") else {
                            return false;
                        };
                        self.deref(left)
                            && self.walk(left)
                            && arg.get("right").is_none_or(|r| self.walk(r))
                    }
                    "is" => {
                        let Some(left) = arg.get("left") else {
                            return false;
                        };
                        match arg.get("in") {
                            Some(within) => {
                                self.deref(left) && self.walk(left) && self.walk(within)
                            }
                            None => self.walk(left),
                        }
                    }
                    "Record" => arg
                        .as_object()
                        .is_some_and(|fields| fields.values().all(|v| self.walk(v))),
                    // Every other operator and extension call: its operands, wherever they are.
                    _ => self.walk_operands(arg),
                }
            }
            _ => false,
        }
    }

    fn walk_operands(&mut self, arg: &serde_json::Value) -> bool {
        use serde_json::Value;
        match arg {
            Value::Array(items) => items.iter().all(|i| self.walk(i)),
            Value::Object(fields) => {
                fields
                    .iter()
                    .filter(|(k, _)| k.as_str() != "pattern")
                    .all(|(_, v)| match v {
                        Value::String(_) => true,
                        other => self.walk(other),
                    })
            }
            _ => false,
        }
    }

    /// The entity `e` evaluates to must be a slice member.
    fn deref(&mut self, e: &serde_json::Value) -> bool {
        let mut path = Vec::new();
        let mut at = e;
        loop {
            if let Some(dot) = at.get(".") {
                match (dot.get("left"), dot.get("attr").and_then(|a| a.as_str())) {
                    (Some(left), Some(attr)) => {
                        path.push(attr);
                        at = left;
                    }
                    _ => return false,
                }
            } else if let Some(var) = at.get("Var").and_then(|v| v.as_str()) {
                path.reverse();
                match var {
                    "principal" => self.principal.mark(&path),
                    "resource" => self.resource.mark(&path),
                    // The action is always in the slice; entities named in the context are
                    // seeds, followed through every attribute.
                    _ => {}
                }
                return true;
            } else {
                // A literal, a conditional, a record field, a tag: not analysed.
                self.principal = Need::All;
                self.resource = Need::All;
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Need, Needs};
    use std::collections::BTreeMap;

    fn needs(src: &str) -> Needs {
        Needs::of(&src.parse().expect("policies"))
    }

    fn attrs(items: &[(&str, Need)]) -> Need {
        Need::Attrs(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn compared_or_right_of_in_needs_no_member() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { principal in resource.admin || principal == resource.owner };"#,
        );
        assert_eq!(n, Needs::default());
    }

    #[test]
    fn dereferenced_paths_are_members_down_to_the_entity_read() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { principal in resource.project.client && resource.creator.name == "x" };
               forbid (principal, action, resource)
               unless { principal.manager in resource.team && resource has owner };"#,
        );
        assert_eq!(
            n.resource,
            attrs(&[("project", attrs(&[])), ("creator", attrs(&[]))])
        );
        assert_eq!(n.principal, attrs(&[("manager", attrs(&[]))]));
    }

    #[test]
    fn what_is_not_analysed_follows_every_attribute() {
        let n = needs(
            r#"permit (principal, action, resource)
               when { (if context.flag then resource.a else resource.b).x == 1 };"#,
        );
        assert_eq!(n, Needs::all());
        // Context entities are seeds of their own; reading them needs nothing here.
        let n = needs(
            r#"permit (principal, action, resource)
               when { context.with in resource.company && context.with.active };"#,
        );
        assert_eq!(n, Needs::default());
    }
}
