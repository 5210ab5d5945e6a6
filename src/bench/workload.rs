//! Realistic request mixes over generated data (see [`crate::bench::gen`]), shared by the in-process
//! benchmarks and the `bench` load tool.

use crate::bench::gen::{Generated, Rng, ROLES};
use crate::engine::request::{self, ContextMap, DecisionRequest, UidRef};

/// One decision request, owned.
#[derive(Debug, Clone)]
pub struct Ask {
    pub principal: String,
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource: String,
    pub context_json: String,
}

impl Ask {
    /// The context, read from its text as the gRPC edge reads it.
    pub fn context(&self) -> Option<ContextMap> {
        serde_json::from_str(&self.context_json).ok()
    }

    /// The request as the engine takes it, with this context.
    pub fn request<'a>(&'a self, context: Option<&'a ContextMap>) -> DecisionRequest<'a> {
        DecisionRequest {
            principal: UidRef {
                ty: "Blue::User",
                id: &self.principal,
            },
            action: request::action_id(self.action),
            resource: UidRef {
                ty: self.resource_type,
                id: &self.resource,
            },
            context,
            entities: &[],
        }
    }
}

const PROJECT_ACTIONS: [&str; 16] = [
    "viewProject",
    "viewPeople",
    "editWiki",
    "editDocuments",
    "createRecord",
    "createList",
    "uploadFile",
    "editForms",
    "editProject",
    "copyProject",
    "archiveProject",
    "deleteProject",
    "importCsv",
    "exportCsv",
    "manageAutomations",
    "removeMember",
];
const RECORD_ACTIONS: [&str; 4] = ["viewRecord", "editRecord", "deleteRecord", "comment"];
const DASHBOARD_ACTIONS: [&str; 4] = [
    "viewDashboard",
    "editDashboard",
    "revokeDashboardAccess",
    "deleteDashboard",
];

/// A request mix: 45% project actions by project members, 30% record actions, 10% invites
/// (with a role context), 10% dashboard actions, 5% asked by users of another company.
pub fn mix(g: &Generated, seed: u64, n: usize) -> Vec<Ask> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    let s = &g.sizes;
    while out.len() < n {
        let roll = rng.below(100);
        let p = rng.below(s.projects);
        let members = &g.members[p];
        let member = if members.is_empty() {
            rng.below(s.users)
        } else {
            members[rng.below(members.len())].0
        };
        let ask = match roll {
            0..=44 => Ask {
                principal: format!("u{member}"),
                action: PROJECT_ACTIONS[rng.below(PROJECT_ACTIONS.len())],
                resource_type: "Blue::Project",
                resource: format!("p{p}"),
                context_json: String::new(),
            },
            45..=74 => {
                // A record of this project: records are laid out round-robin over projects.
                let per = (s.records / s.projects).max(1);
                let r = p + s.projects * rng.below(per);
                Ask {
                    principal: format!("u{member}"),
                    action: RECORD_ACTIONS[rng.below(RECORD_ACTIONS.len())],
                    resource_type: "Blue::Record",
                    resource: format!("r{}", r.min(s.records - 1)),
                    context_json: String::new(),
                }
            }
            75..=84 => Ask {
                principal: format!("u{member}"),
                action: "inviteMember",
                resource_type: "Blue::Project",
                resource: format!("p{p}"),
                context_json: format!("{{\"role\":\"{}\"}}", ROLES[rng.below(ROLES.len())]),
            },
            85..=94 => {
                let (d, c, owner) = g.dashboards[rng.below(g.dashboards.len())];
                let user = if rng.below(3) == 0 {
                    owner
                } else {
                    // Someone of the same company (users are laid out round-robin).
                    c + s.companies * rng.below((s.users / s.companies).max(1))
                };
                Ask {
                    principal: format!("u{}", user.min(s.users - 1)),
                    action: DASHBOARD_ACTIONS[rng.below(DASHBOARD_ACTIONS.len())],
                    resource_type: "Blue::Dashboard",
                    resource: format!("d{d}"),
                    context_json: String::new(),
                }
            }
            _ => Ask {
                principal: format!("u{}", rng.below(s.users)),
                action: PROJECT_ACTIONS[rng.below(PROJECT_ACTIONS.len())],
                resource_type: "Blue::Project",
                resource: format!("p{p}"),
                context_json: String::new(),
            },
        };
        out.push(ask);
    }
    out
}

/// (user, project) pairs where the user is a member.
pub fn member_pairs(g: &Generated, seed: u64, n: usize) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = rng.below(g.sizes.projects);
        if let Some((u, _)) = g.members[p].get(rng.below(g.members[p].len().max(1))) {
            out.push((format!("u{u}"), format!("p{p}")));
        }
    }
    out
}
