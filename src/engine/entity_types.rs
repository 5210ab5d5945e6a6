//! The schema's entity type descriptions, built once per schema for Cedar's entity parser.
//! Cedar's own `CoreSchema` builds a description afresh for every entity it parses: a clone of
//! the type's declaration and a walk over every type for the allowed parents. A write batch
//! parses thousands of entities of a few types, so the descriptions are built once here and
//! shared; parsing and validation are Cedar's, unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy_core::ast::{Eid, EntityType, UnreservedId};
use cedar_policy_core::entities::{self, SchemaType};
use cedar_policy_core::validator::{CoreSchema, ValidatorSchema};
use nonempty::NonEmpty;
use smol_str::SmolStr;

type Description = cedar_policy_core::validator::EntityTypeDescription;

/// Every entity type's description, keyed by type.
#[derive(Debug, Clone, Default)]
pub struct EntityTypes {
    types: HashMap<EntityType, Shared>,
}

impl EntityTypes {
    pub fn new(schema: &ValidatorSchema) -> Self {
        let core = CoreSchema::new(schema);
        let types = schema
            .entity_types()
            .filter_map(|t| {
                let name = t.name().clone();
                entities::Schema::entity_type(&core, &name).map(|d| (name, Shared(Arc::new(d))))
            })
            .collect();
        EntityTypes { types }
    }

    /// Cedar's schema for parsing entities, with these descriptions.
    pub fn schema<'a>(&'a self, schema: &'a ValidatorSchema) -> Described<'a> {
        Described {
            core: CoreSchema::new(schema),
            types: &self.types,
        }
    }
}

/// A description shared by every entity of its type.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Description>);

impl entities::EntityTypeDescription for Shared {
    fn entity_type(&self) -> EntityType {
        self.0.entity_type()
    }
    fn attr_type(&self, attr: &str) -> Option<SchemaType> {
        self.0.attr_type(attr)
    }
    fn tag_type(&self) -> Option<SchemaType> {
        self.0.tag_type()
    }
    fn required_attrs<'s>(&'s self) -> Box<dyn Iterator<Item = SmolStr> + 's> {
        self.0.required_attrs()
    }
    fn allowed_parent_types(&self) -> Arc<HashSet<EntityType>> {
        self.0.allowed_parent_types()
    }
    fn open_attributes(&self) -> bool {
        self.0.open_attributes()
    }
    fn enum_entity_eids(&self) -> Option<&NonEmpty<Eid>> {
        self.0.enum_entity_eids()
    }
    fn is_external(&self) -> bool {
        self.0.is_external()
    }
}

/// Cedar's `CoreSchema`, answering entity types from [`EntityTypes`].
pub struct Described<'a> {
    core: CoreSchema<'a>,
    types: &'a HashMap<EntityType, Shared>,
}

impl<'a> entities::Schema for Described<'a> {
    type EntityTypeDescription = Shared;
    type ActionEntityIterator = <CoreSchema<'a> as entities::Schema>::ActionEntityIterator;

    fn entity_type(&self, entity_type: &EntityType) -> Option<Shared> {
        self.types.get(entity_type).cloned()
    }
    fn action(
        &self,
        action: &cedar_policy_core::ast::EntityUID,
    ) -> Option<Arc<cedar_policy_core::ast::Entity>> {
        self.core.action(action)
    }
    fn entity_types_with_basename<'b>(
        &'b self,
        basename: &'b UnreservedId,
    ) -> Box<dyn Iterator<Item = EntityType> + 'b> {
        self.core.entity_types_with_basename(basename)
    }
    fn action_entities(&self) -> Self::ActionEntityIterator {
        self.core.action_entities()
    }
}
