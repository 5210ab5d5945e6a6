//! The pack's data assumptions on a write batch: which entities the batch can have changed the
//! truth of an assumption for (those of its type it writes, and those whose attributes name
//! an entity it writes or whose ancestors it changes), and checking each.

use std::collections::HashSet;

use cedar_policy::EntityUid;

use super::write::Working;
use crate::engine::assume::Violation;
use crate::engine::schema::EntitySchema;

impl Working<'_> {
    /// The first assumption some entity breaks as the batch leaves the data, if any. With
    /// `own_only` (a batch into an empty store, which holds nothing else to affect), only the
    /// batch's own entities of each assumption's type are checked.
    pub(super) fn check_assumptions(
        &self,
        schema: &EntitySchema,
        own_only: bool,
    ) -> Result<(), Violation> {
        for a in &schema.assumptions {
            let ty = &a.entity_type;
            let attrs: Vec<_> = schema
                .entity_attrs_of(ty)
                .into_iter()
                .filter(|(attr, _)| a.reads.iter().any(|r| r == attr))
                .collect();
            let held: Vec<_> = attrs.iter().map(|(_, t)| *t).collect();
            // Entities of these types can be, or be above, an entity an attribute names.
            let above = schema.with_ancestor_types(&held);
            let mut check: Vec<EntityUid> = Vec::new();
            let mut seen = HashSet::new();
            for uid in self.touched_uids() {
                if uid.type_name() == ty {
                    check.push(uid.clone());
                }
                if own_only || !above.contains(uid.type_name()) {
                    continue;
                }
                // It and its descendants that can be named: their holders of type `ty`.
                let mut stack = vec![uid.clone()];
                while let Some(x) = stack.pop() {
                    if !seen.insert(x.clone()) {
                        continue;
                    }
                    for (attr, t) in &attrs {
                        if *t == x.type_name() {
                            check.extend(
                                self.holders(attr, &x)
                                    .into_iter()
                                    .filter(|h| h.type_name() == ty),
                            );
                        }
                    }
                    stack.extend(
                        self.children(&x)
                            .into_iter()
                            .filter(|c| above.contains(c.type_name())),
                    );
                }
            }
            let mut done = HashSet::new();
            for uid in check {
                if done.insert(uid.clone()) {
                    a.check(&uid, &|u| self.json(u))?;
                }
            }
        }
        Ok(())
    }
}

impl super::EntityStore {
    /// Checks every stored entity of each assumption's type: at start-up, and before a pack
    /// whose assumptions differ from the live one's goes live. Returns how many were checked,
    /// or the first that breaks one.
    pub fn check_assumptions(&self, schema: &EntitySchema) -> Result<usize, Violation> {
        let mut checked = 0;
        for a in &schema.assumptions {
            let Some(ty) = self.types.iter().position(|t| t == &a.entity_type) else {
                continue;
            };
            for (ix, key, node) in self.each_stored() {
                if !node.present || key.ty as usize != ty {
                    continue;
                }
                let uid = self.uid_of(ix);
                a.check(&uid, &|u| self.get_json(u))?;
                checked += 1;
            }
        }
        Ok(checked)
    }
}
