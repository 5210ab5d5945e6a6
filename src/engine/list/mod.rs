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
use crate::engine::narrow::{At, Finder, Listed};
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
    let target = target(pack, store, req)?;
    let (other, action, listed_type, _) = &target;
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
    let scoped = Scoped::of(pack, store, req, target)?;
    let query = Query {
        pack,
        store,
        req,
        scoped: &scoped,
        cursor: cursor.as_deref(),
        page_size,
        depth,
        fingerprint: query,
    };
    if scoped.overlay.is_empty() {
        query.run(store)
    } else {
        query.run(&store.list_view(&scoped.overlay))
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

/// A listing's request checked once: the other side (and its index entry), the action and
/// its entry, the listed type, the request-scoped entities, and the context checked with a
/// stand-in for the listed entity.
struct Scoped<'p> {
    other: EntityUid,
    other_ix: Option<Ix>,
    action: EntityUid,
    listed_type: EntityTypeName,
    entry: &'p ActionEntry,
    overlay: Overlay,
    placeholder: EntityUid,
    probe: request::CheckedRequest,
}

type Target<'p> = (EntityUid, EntityUid, EntityTypeName, &'p ActionEntry);

impl<'p> Scoped<'p> {
    fn of(
        pack: &PolicyPack,
        store: &EntityStore,
        req: &ListRequest<'_>,
        (other, action, listed_type, entry): Target<'p>,
    ) -> Result<Self, RequestError> {
        let (overlay, placeholder, probe) = scope(pack, store, req, &other, &action, &listed_type)?;
        Ok(Scoped {
            other_ix: store.lookup(&other),
            other,
            action,
            listed_type,
            entry,
            overlay,
            placeholder,
            probe,
        })
    }

    /// For comparing two packs, which reads the stored entities alone.
    fn stored(
        pack: &'p PolicyPack,
        store: &EntityStore,
        req: &ListRequest<'_>,
    ) -> Result<Self, RequestError> {
        let scoped = Scoped::of(pack, store, req, target(pack, store, req)?)?;
        if !scoped.overlay.is_empty() {
            return Err(RequestError::new(
                Field::Entities(None),
                "request-scoped entities are not read here",
            ));
        }
        Ok(scoped)
    }

    fn context(&self) -> Option<&cedar_policy_core::ast::Context> {
        context_of(self.probe.request.as_ref())
    }

    /// What the finders evaluate their known parts against.
    fn at<'a, L: Lookup>(&'a self, facts: &'a L, listed: Listed) -> At<'a, L> {
        At {
            facts,
            listed,
            listed_type: self.listed_type.as_ref(),
            placeholder: self.placeholder.as_ref(),
            other: self.other.as_ref(),
            context: self.context(),
        }
    }

    /// The candidates the finders keep (None: a finder does not narrow), else every entity
    /// of the listed type; unsorted, with repeats.
    fn found<'f, L: Lookup>(
        &self,
        facts: &L,
        listed: Listed,
        finders: Option<impl Iterator<Item = Option<&'f Finder>>>,
    ) -> (Vec<Ix>, bool) {
        let at = self.at(facts, listed);
        let found = finders.and_then(|fs| {
            let mut all = Vec::new();
            for finder in fs {
                all.extend(finder?.find(&at)?);
            }
            Some(all)
        });
        let narrowed = found.is_some();
        let ixs = found.unwrap_or_else(|| {
            let mut all = Vec::new();
            facts.of_type(self.listed_type.as_ref(), &mut all);
            all
        });
        (ixs, narrowed)
    }

    /// Decides one listed entity as `IsAuthorized` would: the plan straight over the index
    /// where it answers (`ix`: the entity's index entry, without request-scoped entities),
    /// else the whole decision path for `uid()`.
    fn decide(
        &self,
        (pack, store): (&PolicyPack, &EntityStore),
        req: &ListRequest<'_>,
        ix: Option<Ix>,
        uid: impl FnOnce() -> EntityUid,
        depth: usize,
    ) -> Result<decide::Decision, RequestError> {
        let planned = ix.filter(|_| self.overlay.is_empty()).and_then(|ix| {
            let other = match self.other_ix {
                Some(o) => Ent::Ix(o),
                None => Ent::Other(self.other.as_ref()),
            };
            let other = (other, self.other.as_ref().entity_type());
            let me = (Ent::Ix(ix), self.listed_type.as_ref());
            let (p, r) = match req.listed {
                Listed::Resources => (other, me),
                Listed::Principals => (me, other),
            };
            decide::decide_planned_at(self.entry, store, p, r, self.context())
        });
        if let Some(d) = planned {
            return Ok(d);
        }
        let uid = uid();
        let (p, r) = match req.listed {
            Listed::Resources => (self.other.clone(), uid),
            Listed::Principals => (uid, self.other.clone()),
        };
        let checked = request::check_parsed(
            pack,
            (p, self.action.clone(), r),
            req.context,
            self.overlay.clone(),
        )?;
        Ok(decide::decide(pack, store, &checked, depth))
    }
}

struct Query<'a> {
    pack: &'a PolicyPack,
    store: &'a EntityStore,
    req: &'a ListRequest<'a>,
    scoped: &'a Scoped<'a>,
    cursor: Option<&'a str>,
    page_size: usize,
    depth: usize,
    fingerprint: [u8; 8],
}

impl Query<'_> {
    /// The candidates, deduplicated and ordered by id; whether the finders narrowed them.
    fn candidates<L: Lookup>(&self, facts: &L) -> (Vec<Ix>, bool) {
        let listed = self.req.listed;
        let finders = self.scoped.entry.finders.as_ref();
        let (mut ixs, narrowed) =
            self.scoped
                .found(facts, listed, finders.map(|f| f.permits(listed).map(Some)));
        let core_type = self.scoped.listed_type.as_ref();
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
        // leaves to Cedar goes the whole way.
        for ix in candidates {
            let d = self.scoped.decide(
                (self.pack, self.store),
                self.req,
                Some(ix),
                || facts.uid(ix),
                self.depth,
            )?;
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
    let scoped = Scoped::stored(pack, store, req)?;
    let finders = scoped
        .entry
        .finders
        .as_ref()
        .map(|f| selected.iter().map(move |&i| f.policy(req.listed, i)));
    let (ixs, _) = scoped.found(store, req.listed, finders);
    Ok(sorted_ids(store, ixs, scoped.listed_type.as_ref()))
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
    let scoped = Scoped::stored(pack, store, req)?;
    ids.iter()
        .map(|id| {
            let uid =
                EntityUid::from_type_name_and_id(scoped.listed_type.clone(), EntityId::new(id));
            scoped.decide((pack, store), req, store.lookup(&uid), || uid, depth)
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
