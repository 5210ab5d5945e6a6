//! `lifecycle.toml`: what deleting an entity with the data service's `delete_owned` takes with
//! it, declared by the pack (an owner's attributes it owns, and the entities whose attribute
//! names an owner), checked against the schema when the pack loads: every type must be an
//! entity type and every attribute one that holds entities. Without the file, `delete_owned`
//! deletes the entity alone.

use std::path::Path;

use cedar_policy::EntityTypeName;
use serde::Deserialize;

use super::diagnostics::{parse_toml, toml_error};
use crate::engine::error::LoadError;
use crate::engine::schema::{EntitySchema, Lifecycle};

/// The file in the policy directory.
pub const LIFECYCLE_FILE: &str = "lifecycle.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LifecycleFile {
    #[serde(default)]
    owns: Vec<toml::Spanned<Owns>>,
    #[serde(default)]
    owned_by: Vec<toml::Spanned<OwnedBy>>,
}

/// `[[owns]] type = "..", attributes = [..]`: an owner owns what these attributes name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Owns {
    #[serde(rename = "type")]
    ty: String,
    attributes: Vec<String>,
}

/// `[[owned_by]] type = "..", attribute = ".."`: an entity of this type is owned by the
/// entity its attribute names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnedBy {
    #[serde(rename = "type")]
    ty: String,
    attribute: String,
}

/// Reads and checks `lifecycle.toml` if the pack has one. Returns the rules and the file's
/// text (for the pack's version).
pub(super) fn load(
    dir: &Path,
    entities: &EntitySchema,
) -> Result<(Lifecycle, Option<String>), LoadError> {
    let path = dir.join(LIFECYCLE_FILE);
    if !path.is_file() {
        return Ok((Lifecycle::default(), None));
    }
    let text = super::files::read(&path)?;
    let at = |offset: usize, message: String| toml_error(&path, &text, offset, message);
    let file: LifecycleFile = parse_toml(&path, &text)?;
    let mut diags = Vec::new();
    let mut rules = Lifecycle::default();
    let entity_type = |name: &str| -> Result<EntityTypeName, String> {
        name.parse::<EntityTypeName>()
            .ok()
            .filter(|t| entities.schema.entity_types().any(|e| e == t))
            .ok_or_else(|| format!("`{name}` is not an entity type of the schema"))
    };
    for rule in &file.owns {
        let start = rule.span().start;
        let owns = rule.get_ref();
        match entity_type(&owns.ty) {
            Err(m) => diags.push(at(start, m)),
            Ok(ty) => {
                for attr in &owns.attributes {
                    if entities.entity_attr(&ty, attr).is_none() {
                        diags.push(at(
                            start,
                            format!(
                                "`{}` has no attribute `{attr}` that holds entities",
                                owns.ty
                            ),
                        ));
                    }
                }
                rules
                    .owns
                    .entry(ty)
                    .or_default()
                    .extend(owns.attributes.iter().cloned());
            }
        }
    }
    for rule in &file.owned_by {
        let start = rule.span().start;
        let owned = rule.get_ref();
        match entity_type(&owned.ty) {
            Err(m) => diags.push(at(start, m)),
            Ok(ty) => match entities.entity_attr(&ty, &owned.attribute) {
                None => diags.push(at(
                    start,
                    format!(
                        "`{}` has no attribute `{}` that holds entities",
                        owned.ty, owned.attribute
                    ),
                )),
                Some(owner) => rules
                    .owned_by
                    .entry(owner.clone())
                    .or_default()
                    .push((ty, owned.attribute.clone())),
            },
        }
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    Ok((rules, Some(text)))
}
