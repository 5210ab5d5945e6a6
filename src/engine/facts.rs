//! What a decision reads of entity data, as an interface: the compiled plans evaluate over
//! [`Facts`], and the entity index implements it. Neither the plans nor the index know the
//! other; both know this.

use std::collections::BTreeMap;

use cedar_policy_core::ast;
use smol_str::SmolStr;

/// An entity's index in the entity index's uid table.
pub type Ix = u32;

/// An entity at run time: one the index knows (stored, or only referenced), or a uid it does
/// not know at all.
#[derive(Debug, Clone, Copy)]
pub enum Ent<'a> {
    Ix(Ix),
    Other(&'a ast::EntityUID),
}

impl Ent<'_> {
    pub fn same(&self, other: &Ent<'_>) -> bool {
        match (self, other) {
            (Ent::Ix(a), Ent::Ix(b)) => a == b,
            (Ent::Other(a), Ent::Other(b)) => a == b,
            // Every uid the index knows has an index, so the two differ.
            _ => false,
        }
    }
}

/// A value at run time.
#[derive(Debug, Clone)]
pub enum V<'a> {
    Bool(bool),
    Long(i64),
    Str(&'a str),
    Ent(Ent<'a>),
    Set(Vec<V<'a>>),
    /// The context, or a record inside it.
    Record(&'a BTreeMap<SmolStr, ast::Value>),
}

/// What a plan reads of the entity index.
pub trait Facts {
    /// The index of a uid the index knows.
    fn ix(&self, uid: &ast::EntityUID) -> Option<Ix>;
    /// Whether the entity is stored (not only referenced).
    fn present(&self, ix: Ix) -> bool;
    /// A stored entity's attribute: None if missing or outside the subset (records,
    /// extension values).
    fn attr(&self, ix: Ix, name: &str) -> Option<V<'_>>;
    fn has_attr(&self, ix: Ix, name: &str) -> bool;
    /// Whether `ancestor` is in the stored ancestor closure of `ix`.
    fn in_closure(&self, ix: Ix, ancestor: Ix) -> bool;
    fn type_is(&self, ix: Ix, ty: &ast::EntityType) -> bool;
}
