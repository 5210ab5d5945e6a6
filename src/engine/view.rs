//! The engine's front door: a [`View`] of what is live (a policy pack, the entity index and
//! the engine's limits), through which every decision, listing and explanation enters. Edges
//! obtain one view per call and hand it requests whose context and entities they have already
//! read from their own wire format; errors come back naming a [`crate::engine::error::Field`]
//! that each edge spells its own way.

use crate::engine::decide::{self, Decision, DEFAULT_SLICE_DEPTH};
use crate::engine::error::RequestError;
use crate::engine::explain::{self, Explanation};
use crate::engine::index::EntityStore;
use crate::engine::list::actions::{self, Actions, ActionsRequest};
use crate::engine::list::{self, ListRequest, Page};
use crate::engine::pack::PolicyPack;
use crate::engine::planner::{self, PlanRequest, ResourcePlan};
use crate::engine::request::{self, CheckedRequest, DecisionRequest};

/// The engine's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attribute hops a slice for Cedar's evaluator follows from the request's entities.
    pub slice_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slice_depth: DEFAULT_SLICE_DEPTH,
        }
    }
}

/// One consistent view of a pack and the entity data it decides over.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub pack: &'a PolicyPack,
    pub store: &'a EntityStore,
    limits: Limits,
}

impl<'a> View<'a> {
    /// A view with the default limits.
    pub fn new(pack: &'a PolicyPack, store: &'a EntityStore) -> Self {
        View::with_limits(pack, store, Limits::default())
    }

    pub fn with_limits(pack: &'a PolicyPack, store: &'a EntityStore, limits: Limits) -> Self {
        View {
            pack,
            store,
            limits,
        }
    }

    /// Validates a request against the schema, naming the field at fault.
    pub fn check(&self, req: &DecisionRequest<'_>) -> Result<CheckedRequest, RequestError> {
        request::check(self.pack, self.store, req)
    }

    /// Decides a checked request, with the policies that determined it.
    pub fn decide(&self, req: &CheckedRequest) -> Decision {
        decide::decide(self.pack, self.store, req, self.limits.slice_depth)
    }

    /// Decides a checked request and explains it: for a deny that nothing permitted, each
    /// permit that could apply with the part of its condition that failed.
    pub fn explain(&self, req: &CheckedRequest) -> Explanation {
        explain::explain(self.pack, self.store, req, self.limits.slice_depth)
    }

    /// [`View::decide`] always through Cedar's evaluator over a slice, never a compiled plan:
    /// the reference the plans are tested against.
    pub fn decide_by_slice(&self, req: &CheckedRequest) -> Decision {
        decide::decide_by_slice(self.pack, self.store, req, self.limits.slice_depth)
    }

    /// Checks and decides one request.
    pub fn is_authorized(&self, req: &DecisionRequest<'_>) -> Result<Decision, RequestError> {
        Ok(self.decide(&self.check(req)?))
    }

    /// One page of the resources (or principals) a request allows.
    pub fn list(&self, req: &ListRequest<'_>) -> Result<Page, RequestError> {
        list::list(self.pack, self.store, req, self.limits.slice_depth)
    }

    /// For comparing two packs: the listed entities the finders of the selected policies keep
    /// (see [`list::candidates`]).
    pub fn candidates(
        &self,
        req: &ListRequest<'_>,
        selected: &[usize],
    ) -> Result<Vec<String>, RequestError> {
        list::candidates(self.pack, self.store, req, selected)
    }

    /// For comparing two packs: the decisions of listed entities for the other side's entity
    /// (see [`list::decide_listed`]).
    pub fn decide_listed(
        &self,
        req: &ListRequest<'_>,
        ids: &[String],
    ) -> Result<Vec<Decision>, RequestError> {
        list::decide_listed(self.pack, self.store, req, ids, self.limits.slice_depth)
    }

    /// The condition under which a resource of a type is allowed, over its own attributes.
    pub fn plan(&self, req: &PlanRequest<'_>) -> Result<ResourcePlan, RequestError> {
        planner::plan(self.pack, self.store, req)
    }

    /// Every action that applies to a principal and a resource, decided.
    pub fn list_actions(&self, req: &ActionsRequest<'_>) -> Result<Actions, RequestError> {
        actions::list_actions(self.pack, self.store, req, self.limits.slice_depth)
    }
}
