//! The policy-loading path: read a policy pack (schema, `*.cedar` files, enabled overlays),
//! name every policy by its `@id`, validate strictly against the schema, and index the policies
//! by action. Every problem is reported with file:line:col and Cedar's own diagnostic.

mod actions;
mod assumptions;
mod diagnostics;
mod files;
mod invariants;
mod lifecycle;
mod names;
mod routes;
mod shapes;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    Validator,
};
use sha2::{Digest, Sha256};

use self::actions::index_actions;
pub use self::actions::ActionEntry;
pub use self::assumptions::ASSUMPTIONS_FILE;
pub use self::diagnostics::line_col;
use self::diagnostics::{at_policy_text, diagnostic, Captured};
pub use self::files::overlay_names;
use self::files::{cedar_files, digest_tree, read};
pub use self::invariants::{Invariant, Invariants, Property, INVARIANTS_FILE};
pub use self::lifecycle::LIFECYCLE_FILE;
pub use self::names::{plain_column, ActionProperties, Names, Open, NAMES_FILE};
pub use self::routes::{Mapped, PrincipalFrom, Routes, ROUTES_FILE};
pub use self::shapes::{Kind, Record, Shapes};
pub use self::table::TableClaim;
use crate::engine::error::{LoadError, PolicyDiagnostic, Severity};
use crate::engine::schema::{plain_type, EntitySchema};

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

/// A loaded, strictly validated policy pack. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct PolicyPack {
    pub spec: PackSpec,
    pub schema: Schema,
    /// The schema as the entity index validates entities with it.
    pub entities: EntitySchema,
    /// All policies, named by their `@id`.
    pub policies: PolicySet,
    /// The file each policy came from.
    pub origin: BTreeMap<String, PathBuf>,
    /// Content hash of the schema, the policy files and the enabled overlays.
    pub version: String,
    /// Content hash of the schema alone (entities validated under it stay valid while it holds).
    pub schema_version: String,
    /// Content hash of the schema and the data assumptions: what the data service records
    /// beside the entities it wrote, so a start-up on data checked under both trusts it, and
    /// one on data from elsewhere (an import, an older pack) checks it again. The schema's
    /// version when the pack declares no assumptions.
    pub data_version: String,
    /// Content hash of every file of the pack directory: `version`'s files and also the suites,
    /// tables and fixtures that only the gate reads. A reload compares this, so a changed
    /// suite alone is a candidate that goes through the gate.
    pub files: String,
    actions: hashbrown::HashMap<EntityUid, ActionEntry>,
    /// Entity type names by their text, so requests skip Cedar's name parser.
    entity_types: hashbrown::HashMap<String, EntityTypeName>,
    /// What callers outside Cedar call the pack's types and actions (`names.toml`).
    pub names: Names,
    /// The record shapes of the schema's entity types and action contexts.
    pub shapes: Shapes,
    /// How HTTP requests map to Cedar requests, for ext_authz (`routes.toml`), if declared.
    pub routes: Option<Routes>,
    /// What must hold for all data the schema allows (`invariants.toml`).
    pub invariants: Invariants,
    /// What the serving gate's analysis said of this pack (`proved: ...` or `skipped: ...`),
    /// set once when it has run.
    pub analysis: std::sync::OnceLock<String>,
}

impl PolicyPack {
    /// Loads and strictly validates a pack. Warnings count as problems: a pack that loads has
    /// zero errors and zero warnings.
    pub fn load(spec: &PackSpec) -> Result<Arc<PolicyPack>, LoadError> {
        let dir = &spec.dir;
        // Before anything is read, so a file saved while the pack loads makes the next reload
        // differ rather than be missed.
        let all_files = digest_tree(dir)?;
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
                    // Each error with Cedar's own diagnostic (its labels and spans).
                    for e in errs.iter() {
                        diags.push(diagnostic(path, &text, Severity::Error, Captured::of(e)));
                    }
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
        let mut entities = EntitySchema::new(schema.clone(), &schema_text);
        let (lifecycle, lifecycle_text) = lifecycle::load(dir, &entities)?;
        entities.lifecycle = lifecycle;
        let (assumed, assumptions_text) = assumptions::load(dir, &schema)?;
        entities.assumptions = assumed;
        let entity_types = schema
            .entity_types()
            .chain(actions.keys().map(EntityUid::type_name))
            .map(|t| (t.to_string(), EntityTypeName::from(plain_type(t.as_ref()))))
            .collect();
        let action_type = actions.keys().next().map(EntityUid::type_name);
        let shapes = shapes::of_schema(&schema_text);
        let (names, names_text) = names::load(
            dir,
            |t| schema.entity_types().any(|e| e.to_string() == t),
            |id| {
                action_type.is_some_and(|ty| {
                    let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id));
                    actions.contains_key(&uid)
                })
            },
            |action, field| string_context_field(&schema, action_type, action, field),
            |ty, attr| shapes.entities.get(ty).is_some_and(|r| r.is_string(attr)),
            &shapes,
        )?;
        entities.keys = names.keys.clone();
        if let Some(text) = names_text {
            hasher.update(NAMES_FILE.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        let action_uid = |id: &str| {
            let ty = action_type?;
            let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id));
            actions.contains_key(&uid).then_some(uid)
        };
        let type_names = |set: &std::collections::HashSet<EntityTypeName>| -> Vec<String> {
            set.iter().map(|t| t.to_string()).collect()
        };
        let (routes, routes_text) = routes::load(
            dir,
            &routes::Schema {
                is_entity_type: &|t| schema.entity_types().any(|e| e.to_string() == t),
                applies: &|id| {
                    let entry = actions.get(&action_uid(id)?)?;
                    Some((
                        type_names(&entry.principal_types),
                        type_names(&entry.resource_types),
                    ))
                },
                shapes: &shapes,
            },
        )?;
        if let Some(text) = routes_text {
            hasher.update(ROUTES_FILE.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        let (invariants, invariants_text) = invariants::load(
            dir,
            &invariants::Context {
                schema: &schema,
                action: &action_uid,
                overlays: &available,
            },
        )?;
        if let Some(text) = lifecycle_text {
            hasher.update(LIFECYCLE_FILE.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        let data_version = match &assumptions_text {
            None => schema_version.clone(),
            Some(text) => hex8(&Sha256::digest(
                format!("{schema_text}\u{0}{text}").as_bytes(),
            )),
        };
        if let Some(text) = assumptions_text {
            hasher.update(ASSUMPTIONS_FILE.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        if let Some(text) = invariants_text {
            hasher.update(INVARIANTS_FILE.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
        }
        let version = hex8(&hasher.finalize());
        Ok(Arc::new(PolicyPack {
            spec: spec.clone(),
            schema,
            policies,
            origin,
            version,
            schema_version,
            data_version,
            files: all_files,
            actions,
            entity_types,
            entities,
            names,
            shapes,
            routes,
            invariants,
            analysis: std::sync::OnceLock::new(),
        }))
    }

    pub fn action(&self, uid: &EntityUid) -> Option<&ActionEntry> {
        self.actions.get(uid)
    }

    /// An action by its id alone (in the schema's action type).
    pub fn action_by_id(&self, id: &str) -> Option<&ActionEntry> {
        let ty = self.action_type()?.clone();
        self.actions
            .get(&EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
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

    /// A declared entity type (or the action type), by its text.
    pub fn entity_type(&self, ty: &str) -> Option<&EntityTypeName> {
        self.entity_types.get(ty)
    }

    /// The entity types of the schema (not the action type), by their Cedar names.
    pub fn entity_type_names(&self) -> Vec<String> {
        self.schema.entity_types().map(|t| t.to_string()).collect()
    }

    /// The ids of the schema's actions.
    pub fn action_ids(&self) -> Vec<String> {
        self.actions
            .keys()
            .map(|a| a.id().unescaped().to_string())
            .collect()
    }

    /// The action type name of this schema (`Blue::Action`), taken from its first action.
    pub fn action_type(&self) -> Option<&EntityTypeName> {
        self.actions.keys().next().map(EntityUid::type_name)
    }

    /// The context an action is decided with: the given one, or, where `names.toml` reads
    /// the action's context open, a copy without the members its schema does not declare
    /// (logged at debug level). A strict pack never copies.
    pub fn open_context<'c>(
        &self,
        action_id: &str,
        context: &'c serde_json::Map<String, serde_json::Value>,
    ) -> std::borrow::Cow<'c, serde_json::Map<String, serde_json::Value>> {
        use std::borrow::Cow;
        if !self.names.open_context.contains(action_id) {
            return Cow::Borrowed(context);
        }
        let Some(shape) = self.shapes.contexts.get(action_id) else {
            return Cow::Borrowed(context);
        };
        if !shape.has_undeclared(context) {
            return Cow::Borrowed(context);
        }
        let mut pruned = context.clone();
        let mut dropped = Vec::new();
        shape.prune(&mut pruned, "context", &mut dropped);
        tracing::debug!(
            action = action_id,
            ?dropped,
            "dropped undeclared context members"
        );
        Cow::Owned(pruned)
    }

    /// Drops, from a request-scoped entity's attributes (Cedar JSON), those its type does not
    /// declare, where `names.toml` reads that type's properties open. Logged at debug level.
    pub fn open_attrs(&self, entity: &mut serde_json::Value) {
        if self.names.open_properties.is_none() {
            return;
        }
        let Some((ty, shape)) = entity
            .get("uid")
            .and_then(|u| u.get("type"))
            .and_then(serde_json::Value::as_str)
            .filter(|ty| self.names.open_properties.contains(ty))
            .and_then(|ty| self.shapes.entities.get_key_value(ty))
        else {
            return;
        };
        if let Some(serde_json::Value::Object(attrs)) = entity.get_mut("attrs") {
            if shape.has_undeclared(attrs) {
                let mut dropped = Vec::new();
                shape.prune(attrs, "properties", &mut dropped);
                tracing::debug!(entity_type = ty, ?dropped, "dropped undeclared properties");
            }
        }
    }
}

/// Whether `field` is a String field of `action`'s context: a policy that compares it with a
/// string must validate strictly (an unknown field, or one of another type, does not).
fn string_context_field(
    schema: &Schema,
    action_type: Option<&EntityTypeName>,
    action: &str,
    field: &str,
) -> Result<(), String> {
    let ty = action_type.ok_or("the schema has no actions")?;
    let uid = EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(action));
    let text = format!(
        "permit (principal, action == {uid}, resource) when {{ context has \"{f}\" && context[\"{f}\"] == \"\" }};",
        f = field.escape_default()
    );
    let set = PolicySet::from_str(&text).map_err(|e| e.to_string())?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    let clean = result.validation_errors().next().is_none()
        && result.validation_warnings().next().is_none();
    if clean {
        Ok(())
    } else {
        Err("not a String field of the action's context".into())
    }
}

/// The first 8 bytes of a digest, in hex.
fn hex8(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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
