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

/// What listing reads of entity data besides [`Facts`]: the hierarchy in both directions,
/// the reverse attribute index (which entities hold a reference to a given one), and every
/// entity of a type. Each answer may be a superset (listing checks every candidate on the
/// decision path), never a subset.
pub trait Lookup: Facts {
    /// Every ancestor of `ix`, appended to `out`.
    fn ancestors(&self, ix: Ix, out: &mut Vec<Ix>);
    /// Every descendant of `ix`, appended to `out`.
    fn descendants(&self, ix: Ix, out: &mut Vec<Ix>);
    /// Every entity whose attribute `attr` is `target` or a set holding it, appended to `out`.
    fn holders(&self, attr: &str, target: Ix, out: &mut Vec<Ix>);
    /// [`Lookup::holders`] of each of `targets`, appended to `out`.
    fn holders_of_each(&self, attr: &str, targets: &[Ix], out: &mut Vec<Ix>) {
        for t in targets {
            self.holders(attr, *t, out);
        }
    }
    /// Whether attribute `attr` of some entity holds a record (so a path through it cannot be
    /// followed backwards by the reverse index).
    fn record_valued(&self, attr: &str) -> bool;
    /// Every present entity of a type, appended to `out`.
    fn of_type(&self, ty: &ast::EntityType, out: &mut Vec<Ix>);
    /// The id of an entity (its uid's id part).
    fn id(&self, ix: Ix) -> &str;
    /// The uid of an entity.
    fn uid(&self, ix: Ix) -> cedar_policy::EntityUid;
    /// The type name of an entity, as Cedar writes it (`Blue::Project`).
    fn type_text(&self, ix: Ix) -> std::borrow::Cow<'_, str>;
}
