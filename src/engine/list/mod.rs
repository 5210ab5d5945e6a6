//! Listing: every resource of a type a principal may act on, or every principal of a type
//! that may act on a resource, exactly as single decisions would answer, one key-ordered page
//! at a time.
//!
//! Candidates come from the action's finders ([`crate::engine::narrow`]) over the hierarchy
//! and the reverse attribute index; an action whose permits do not all narrow has every
//! entity of the type as candidates. Each candidate is then decided on the normal decision
//! path ([`decide::decide`]), so forbids, errors and request-scoped entities count exactly as
//! they do for `IsAuthorized`. Pages are ordered by entity id and resume after the last id
//! returned ([`token`]), so an entity present throughout a paginated read is returned exactly
//! once, whatever is written between pages.

pub mod actions;
pub mod token;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

use crate::engine::decide;
use crate::engine::error::{quote, Field, ListedSide, Part, RequestError};
use crate::engine::facts::{Ent, Ix, Lookup};
use crate::engine::index::{EntityStore, Overlay};
use crate::engine::narrow::{At, Listed};
use crate::engine::pack::{ActionEntry, PolicyPack};
use crate::engine::request::{self, context_of, ContextMap, UidRef};

pub use crate::engine::narrow::Listed as Side;

/// A page holds this many entities when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page a caller may ask for; more is an error, never a quiet cut.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// A listing request as it arrives.
#[derive(Debug, Clone, Copy)]
pub struct ListRequest<'a> {
    pub listed: Listed,
    /// The principal (listing resources) or the resource (listing principals).
    pub other: UidRef<'a>,
    pub action: UidRef<'a>,
    /// The entity type to list.
    pub listed_type: &'a str,
    /// None: `{}`.
    pub context: Option<&'a ContextMap>,
    /// Request-scoped entities in Cedar's JSON form.
    pub entities: &'a [serde_json::Value],
    /// 0: [`DEFAULT_PAGE_SIZE`].
    pub page_size: u32,
    /// Empty: the first page.
    pub page_token: &'a str,
}

/// One allowed entity with the policies that allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub id: String,
    pub determining: Vec<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Listing>,
    /// Empty when no allowed entity follows this page.
    pub next_token: String,
    /// Whether the candidates were narrowed by the finders (false: every entity of the type
    /// was a candidate).
    pub narrowed: bool,
    /// How many candidates were decided for this page.
    pub decided: usize,
}

impl ListRequest<'_> {
    /// The field naming the other side, and the listed type's field.
    fn fields(&self) -> (fn(Part) -> Field, Field) {
        match self.listed {
            Listed::Resources => (Field::Principal, Field::ListedType(ListedSide::Resources)),
            Listed::Principals => (Field::Resource, Field::ListedType(ListedSide::Principals)),
        }
    }
}

/// Lists one page. Every refusal names the request field at fault.
pub fn list(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &ListRequest<'_>,
    depth: usize,
) -> Result<Page, RequestError> {
    let (other, action, listed_type, entry) = target(pack, store, req)?;
    let page_size = match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(RequestError::new(
                Field::PageSize,
                format!("{n} is more than the maximum of {MAX_PAGE_SIZE}"),
            ))
        }
        n => n,
    } as usize;
    let (context_text, entities_text) = (
        request::context_text(req.context),
        request::entities_text(req.entities),
    );
    let query = token::fingerprint(&[
        match req.listed {
            Listed::Resources => "resources",
            Listed::Principals => "principals",
        },
        &other.to_string(),
        &action.to_string(),
        &listed_type.to_string(),
        &context_text,
        &entities_text,
    ]);
    let cursor = match req.page_token {
        "" => None,
        t => Some(token::decode(t, query).map_err(|e| RequestError::new(Field::PageToken, e))?),
    };
    let (overlay, placeholder, probe) = scope(pack, store, req, &other, &action, &listed_type)?;
    let query = Query {
        pack,
        store,
        entry,
        req,
        action: &action,
        listed_type: &listed_type,
        placeholder: &placeholder,
        other: &other,
        context: context_of(probe.request.as_ref()),
        overlay: &overlay,
        cursor: cursor.as_deref(),
        page_size,
        depth,
        fingerprint: query,
    };
    if overlay.is_empty() {
        query.run(store)
    } else {
        query.run(&store.list_view(&overlay))
    }
}

/// What a listing or a plan is over, checked: the other side's entity, the action, the
/// listed type and the action's entry, each refused naming the request field at fault.
pub(crate) fn target<'p>(
    pack: &'p PolicyPack,
    store: &EntityStore,
    req: &ListRequest<'_>,
) -> Result<(EntityUid, EntityUid, EntityTypeName, &'p ActionEntry), RequestError> {
    let (other_field, type_field) = req.fields();
    let other = request::parse_named_uid(pack, store, req.other, other_field)?;
    let action = request::parse_action(pack, req.action)?;
    let listed_type = listed_type(pack, req.listed_type, type_field.clone())?;
    let entry = pack
        .action(&action)
        .ok_or_else(|| RequestError::new(Field::Action(Part::Whole), "unknown action"))?;
    let (other_types, listed_types, what) = match req.listed {
        Listed::Resources => (&entry.principal_types, &entry.resource_types, "resources"),
        Listed::Principals => (&entry.resource_types, &entry.principal_types, "principals"),
    };
    let applies = |types: &std::collections::HashSet<EntityTypeName>, ty, field: Field, what| {
        if types.contains(ty) {
            Ok(())
        } else {
            Err(RequestError::new(
                field,
                format!(
                    "action `{}` does not apply to {what} of type `{ty}`",
                    action.id().unescaped()
                ),
            ))
        }
    };
    let other_what = match req.listed {
        Listed::Resources => "principals",
        Listed::Principals => "resources",
    };
    applies(
        other_types,
        other.type_name(),
        other_field(Part::Type),
        other_what,
    )?;
    applies(listed_types, &listed_type, type_field, what)?;
    Ok((other, action, listed_type, entry))
}

/// The request-scoped entities, a stand-in uid of the listed type, and the context checked
/// once against the schema with that stand-in.
pub(crate) fn scope(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &ListRequest<'_>,
    other: &EntityUid,
    action: &EntityUid,
    listed_type: &EntityTypeName,
) -> Result<(Overlay, EntityUid, request::CheckedRequest), RequestError> {
    let overlay = request::parse_overlay(pack, store, req.entities)?;
    // The context, checked once against the schema (with a stand-in for the listed entity).
    let placeholder = EntityUid::from_type_name_and_id(listed_type.clone(), EntityId::new("?"));
    let uids = |listed: &EntityUid| match req.listed {
        Listed::Resources => (other.clone(), listed.clone()),
        Listed::Principals => (listed.clone(), other.clone()),
    };
    let (p, r) = uids(&placeholder);
    let probe = request::check_parsed(
        pack,
        (p, action.clone(), r),
        req.context,
        Overlay::default(),
    )?;
    Ok((overlay, placeholder, probe))
}

fn listed_type(pack: &PolicyPack, ty: &str, field: Field) -> Result<EntityTypeName, RequestError> {
    if ty.is_empty() {
        return Err(RequestError::new(field, "is empty"));
    }
    pack.entity_type(ty)
        .cloned()
        .ok_or_else(|| RequestError::new(field, format!("unknown entity type `{}`", quote(ty))))
}

struct Query<'a> {
    pack: &'a PolicyPack,
    store: &'a EntityStore,
    entry: &'a ActionEntry,
    req: &'a ListRequest<'a>,
    action: &'a EntityUid,
    listed_type: &'a EntityTypeName,
    placeholder: &'a EntityUid,
    other: &'a EntityUid,
    context: Option<&'a cedar_policy_core::ast::Context>,
    overlay: &'a Overlay,
    cursor: Option<&'a str>,
    page_size: usize,
    depth: usize,
    fingerprint: [u8; 8],
}

impl Query<'_> {
    /// The candidates, deduplicated and ordered by id; whether the finders narrowed them.
    fn candidates<L: Lookup>(&self, facts: &L) -> (Vec<Ix>, bool) {
        let core_type = self.listed_type.as_ref();
        let at = At {
            facts,
            listed: self.req.listed,
            listed_type: core_type,
            placeholder: self.placeholder.as_ref(),
            other: self.other.as_ref(),
            context: self.context,
        };
        let mut found: Option<Vec<Ix>> = self.entry.finders.as_ref().and_then(|f| {
            let mut all = Vec::new();
            for finder in f.permits(self.req.listed) {
                all.extend(finder.find(&at)?);
            }
            Some(all)
        });
        let narrowed = found.is_some();
        let mut ixs = found.take().unwrap_or_else(|| {
            let mut all = Vec::new();
            facts.of_type(core_type, &mut all);
            all
        });
        ixs.retain(|ix| {
            facts.present(*ix)
                && facts.type_is(*ix, core_type)
                && self.cursor.is_none_or(|c| facts.id(*ix) > c)
        });
        ixs.sort_unstable_by(|a, b| facts.id(*a).cmp(facts.id(*b)));
        ixs.dedup();
        (ixs, narrowed)
    }

    fn run<L: Lookup>(&self, facts: &L) -> Result<Page, RequestError> {
        let (candidates, narrowed) = self.candidates(facts);
        let mut items = Vec::new();
        let mut decided = 0;
        let mut more = false;
        // Without request-scoped entities the candidates are the index's own, and the plan
        // decides them as `IsAuthorized` would, without building uids; anything the plan
        // leaves to Cedar goes the whole way below.
        let direct = self.overlay.is_empty() && self.entry.plan.is_some();
        let other_ent = match self.store.lookup(self.other) {
            Some(ix) => Ent::Ix(ix),
            None => Ent::Other(self.other.as_ref()),
        };
        let other = (other_ent, self.other.as_ref().entity_type());
        let listed_type = self.listed_type.as_ref();
        for ix in candidates {
            let planned = if direct {
                let me = (Ent::Ix(ix), listed_type);
                let (p, r) = match self.req.listed {
                    Listed::Resources => (other, me),
                    Listed::Principals => (me, other),
                };
                decide::decide_planned_at(self.entry, self.store, p, r, self.context)
            } else {
                None
            };
            let d = match planned {
                Some(d) => d,
                None => {
                    let uid = facts.uid(ix);
                    let (p, r) = match self.req.listed {
                        Listed::Resources => (self.other.clone(), uid),
                        Listed::Principals => (uid, self.other.clone()),
                    };
                    let checked = request::check_parsed(
                        self.pack,
                        (p, self.action.clone(), r),
                        self.req.context,
                        self.overlay.clone(),
                    )?;
                    decide::decide(self.pack, self.store, &checked, self.depth)
                }
            };
            decided += 1;
            if !d.allow {
                continue;
            }
            if items.len() == self.page_size {
                more = true;
                break;
            }
            items.push(Listing {
                id: facts.id(ix).to_string(),
                determining: d.determining,
            });
        }
        let next_token = match (more, items.last()) {
            (true, Some(last)) => token::encode(self.fingerprint, &last.id),
            _ => String::new(),
        };
        Ok(Page {
            items,
            next_token,
            narrowed,
            decided,
        })
    }
}

/// For comparing two packs: the entities of the listed type that the finders of the selected
/// policies (permits or forbids, by their index in the action's compiled policies) keep for
/// the other side's entity, sorted by id. A superset of those for which any selected policy's
/// condition can hold; every entity of the type where one of them has no finder.
pub fn candidates(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &ListRequest<'_>,
    selected: &[usize],
) -> Result<Vec<String>, RequestError> {
    let (other, action, listed_type, entry) = target(pack, store, req)?;
    let (overlay, placeholder, probe) = scope(pack, store, req, &other, &action, &listed_type)?;
    if !overlay.is_empty() {
        return Err(RequestError::new(
            Field::Entities(None),
            "request-scoped entities are not read here",
        ));
    }
    let core_type = listed_type.as_ref();
    let at = At {
        facts: store,
        listed: req.listed,
        listed_type: core_type,
        placeholder: placeholder.as_ref(),
        other: other.as_ref(),
        context: context_of(probe.request.as_ref()),
    };
    let found = entry.finders.as_ref().and_then(|f| {
        let mut all = Vec::new();
        for &i in selected {
            all.extend(f.policy(req.listed, i)?.find(&at)?);
        }
        Some(all)
    });
    let ixs = found.unwrap_or_else(|| {
        let mut all = Vec::new();
        store.of_type(core_type, &mut all);
        all
    });
    Ok(sorted_ids(store, ixs, core_type))
}

/// For comparing two packs: decides the listed entities `ids` for the other side's entity, as
/// [`list`] decides its candidates (the plan straight over the index where it answers, else
/// the whole decision path). An id the store lacks is decided as an entity with no data.
pub fn decide_listed(
    pack: &PolicyPack,
    store: &EntityStore,
    req: &ListRequest<'_>,
    ids: &[String],
    depth: usize,
) -> Result<Vec<decide::Decision>, RequestError> {
    let (other, action, listed_type, entry) = target(pack, store, req)?;
    let (overlay, _, probe) = scope(pack, store, req, &other, &action, &listed_type)?;
    if !overlay.is_empty() {
        return Err(RequestError::new(
            Field::Entities(None),
            "request-scoped entities are not read here",
        ));
    }
    let context = context_of(probe.request.as_ref());
    let other_ent = match store.lookup(&other) {
        Some(ix) => Ent::Ix(ix),
        None => Ent::Other(other.as_ref()),
    };
    let other_side = (other_ent, other.as_ref().entity_type());
    let core_type = listed_type.as_ref();
    ids.iter()
        .map(|id| {
            let uid = EntityUid::from_type_name_and_id(listed_type.clone(), EntityId::new(id));
            let planned = store.lookup(&uid).and_then(|ix| {
                let me = (Ent::Ix(ix), core_type);
                let (p, r) = match req.listed {
                    Listed::Resources => (other_side, me),
                    Listed::Principals => (me, other_side),
                };
                decide::decide_planned_at(entry, store, p, r, context)
            });
            if let Some(d) = planned {
                return Ok(d);
            }
            let (p, r) = match req.listed {
                Listed::Resources => (other.clone(), uid),
                Listed::Principals => (uid, other.clone()),
            };
            let checked =
                request::check_parsed(pack, (p, action.clone(), r), req.context, overlay.clone())?;
            Ok(decide::decide(pack, store, &checked, depth))
        })
        .collect()
}

/// The ids of the present entities of a type among `ixs`, sorted, each once.
fn sorted_ids<L: Lookup>(
    facts: &L,
    mut ixs: Vec<Ix>,
    ty: &cedar_policy_core::ast::EntityType,
) -> Vec<String> {
    ixs.retain(|ix| facts.present(*ix) && facts.type_is(*ix, ty));
    let mut ids: Vec<String> = ixs.into_iter().map(|ix| facts.id(ix).to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The actions whose listing of some type checks every entity of the type, because a permit's
/// condition gives no way to narrow the candidates (or the action has no plan): `(action id,
/// "resources" or "principals", type)`, sorted.
pub fn unnarrowed(pack: &PolicyPack) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for action in pack.actions() {
        let Some(entry) = pack.action(action) else {
            continue;
        };
        for (listed, types, what) in [
            (Listed::Resources, &entry.resource_types, "resources"),
            (Listed::Principals, &entry.principal_types, "principals"),
        ] {
            for ty in types {
                let narrows = entry
                    .finders
                    .as_ref()
                    .is_some_and(|f| f.narrows(listed, ty.as_ref()));
                if !narrows {
                    out.push((action.id().unescaped().to_string(), what, ty.to_string()));
                }
            }
        }
    }
    out.sort();
    out
}
