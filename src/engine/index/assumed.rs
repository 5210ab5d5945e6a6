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
            let attrs = schema.entity_attrs_of(ty);
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
                    a.check(&uid, &|u| self.json(u), &schema.schema)?;
                }
            }
        }
        Ok(())
    }
}
