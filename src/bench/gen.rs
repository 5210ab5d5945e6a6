//! A generator of realistic Blue data for benchmarks, deterministic by seed. At scale 1.0:
//! 100 companies, 10,000 projects, 100,000 users, about 1,000,000 project memberships (users in
//! about 10 projects of their company each), 1,000,000 records with creators, 10,000
//! dashboards with about 250,000 shares.
//!
//! This is test data in Blue's entity conventions (README "Entity data"); the engine's
//! decisions do not depend on it.

use serde_json::{json, Value};

/// xorshift64*: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

pub const ROLES: [&str; 5] = ["admin", "member", "client", "comment", "view"];

/// Role of a project membership, in realistic proportions: 5% admin, 45% member, 15% client,
/// 15% comment, 20% view.
fn project_role(rng: &mut Rng) -> &'static str {
    match rng.below(100) {
        0..=4 => "admin",
        5..=49 => "member",
        50..=64 => "client",
        65..=79 => "comment",
        _ => "view",
    }
}

/// Company role: 2% admin, 68% member, 10% client, 5% comment, 15% view.
fn company_role(rng: &mut Rng) -> &'static str {
    match rng.below(100) {
        0..=1 => "admin",
        2..=69 => "member",
        70..=79 => "client",
        80..=84 => "comment",
        _ => "view",
    }
}

/// The sizes at a scale.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub companies: usize,
    pub projects: usize,
    pub users: usize,
    pub projects_per_user: usize,
    pub records: usize,
    pub dashboards: usize,
    pub shares_per_dashboard: usize,
}

impl Sizes {
    pub fn at(scale: f64) -> Sizes {
        let n = |full: f64| ((full * scale).round() as usize).max(1);
        Sizes {
            companies: n(100.0),
            projects: n(10_000.0),
            users: n(100_000.0),
            projects_per_user: 10,
            records: n(1_000_000.0),
            dashboards: n(10_000.0),
            shares_per_dashboard: 25,
        }
    }
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": format!("Blue::{ty}"), "id": id})
}

fn ent(ty: &str, id: &str) -> Value {
    json!({"__entity": uid(ty, id)})
}

/// The generated data, and facts about it that benchmarks draw requests from.
pub struct Generated {
    pub sizes: Sizes,
    /// For each project, its members (user number, role).
    pub members: Vec<Vec<(usize, &'static str)>>,
    /// For each record, (project, creator).
    pub records: Vec<(usize, usize)>,
    /// Each dashboard: (number, company, owner).
    pub dashboards: Vec<(usize, usize, usize)>,
}

pub fn company_of_project(p: usize, sizes: &Sizes) -> usize {
    p % sizes.companies
}

pub fn company_of_user(u: usize, sizes: &Sizes) -> usize {
    u % sizes.companies
}

/// Generates the data, handing each entity (Cedar JSON) to `emit` as it is made.
pub fn generate(scale: f64, seed: u64, emit: &mut dyn FnMut(Value)) -> Generated {
    let sizes = Sizes::at(scale);
    let mut rng = Rng::new(seed);
    let chain = |scope_ty: &str, id: &str, emit: &mut dyn FnMut(Value)| {
        for (i, r) in ROLES.iter().enumerate() {
            let parent = match ROLES.get(i + 1) {
                Some(next) => uid("Role", &format!("{id}/{next}")),
                None => uid(scope_ty, id),
            };
            emit(
                json!({"uid": uid("Role", &format!("{id}/{r}")), "attrs": {}, "parents": [parent]}),
            );
        }
    };
    let roles = |id: &str| -> serde_json::Map<String, Value> {
        ROLES
            .iter()
            .map(|r| (r.to_string(), ent("Role", &format!("{id}/{r}"))))
            .collect()
    };
    for c in 0..sizes.companies {
        let id = format!("c{c}");
        emit(json!({"uid": uid("Company", &id), "attrs": roles(&id), "parents": []}));
        chain("Company", &id, emit);
    }
    for p in 0..sizes.projects {
        let id = format!("p{p}");
        let mut attrs = roles(&id);
        attrs.insert(
            "company".into(),
            ent("Company", &format!("c{}", company_of_project(p, &sizes))),
        );
        emit(json!({"uid": uid("Project", &id), "attrs": attrs, "parents": []}));
        chain("Project", &id, emit);
    }
    // Projects of each company, to place users in their own company's projects.
    let mut company_projects: Vec<Vec<usize>> = vec![Vec::new(); sizes.companies];
    for p in 0..sizes.projects {
        company_projects[company_of_project(p, &sizes)].push(p);
    }
    // Memberships: each user in its company, and in ~10 of its company's projects.
    let mut members: Vec<Vec<(usize, &'static str)>> = vec![Vec::new(); sizes.projects];
    let mut company_users: Vec<Vec<usize>> = vec![Vec::new(); sizes.companies];
    let mut parents: Vec<Vec<Value>> = Vec::with_capacity(sizes.users);
    for u in 0..sizes.users {
        let c = company_of_user(u, &sizes);
        company_users[c].push(u);
        let mut mine_parents = vec![uid("Role", &format!("c{c}/{}", company_role(&mut rng)))];
        let mine = &company_projects[c];
        let mut chosen: Vec<usize> = Vec::new();
        for _ in 0..sizes.projects_per_user.min(mine.len()) {
            let mut p = mine[rng.below(mine.len())];
            while chosen.contains(&p) {
                p = mine[rng.below(mine.len())];
            }
            chosen.push(p);
            let role = project_role(&mut rng);
            members[p].push((u, role));
            mine_parents.push(uid("Role", &format!("p{p}/{role}")));
        }
        parents.push(mine_parents);
    }
    // Dashboards, owned by and shared with users of their company; a share is a parent edge.
    let mut dashboards = Vec::with_capacity(sizes.dashboards);
    for d in 0..sizes.dashboards {
        let c = d % sizes.companies;
        let users = &company_users[c];
        if users.is_empty() {
            continue;
        }
        let owner = users[rng.below(users.len())];
        dashboards.push((d, c, owner));
        let mut shared: Vec<usize> = Vec::new();
        for _ in 0..sizes
            .shares_per_dashboard
            .min(users.len().saturating_sub(1))
        {
            let u = users[rng.below(users.len())];
            if u == owner || shared.contains(&u) {
                continue;
            }
            shared.push(u);
            let group = if rng.below(10) < 3 {
                "editors"
            } else {
                "viewers"
            };
            parents[u].push(uid("DashboardGroup", &format!("d{d}/{group}")));
        }
    }
    for (u, p) in parents.into_iter().enumerate() {
        emit(json!({"uid": uid("User", &format!("u{u}")), "attrs": {}, "parents": p}));
    }
    let mut records = Vec::with_capacity(sizes.records);
    for r in 0..sizes.records {
        let p = r % sizes.projects;
        let creator = match members[p].len() {
            0 => rng.below(sizes.users),
            n => members[p][rng.below(n)].0,
        };
        records.push((p, creator));
        emit(json!({"uid": uid("Record", &format!("r{r}")), "attrs": {
            "project": ent("Project", &format!("p{p}")),
            "creator": ent("User", &format!("u{creator}"))}, "parents": []}));
    }
    for (d, c, owner) in &dashboards {
        let id = format!("d{d}");
        emit(json!({"uid": uid("Dashboard", &id), "attrs": {
            "company": ent("Company", &format!("c{c}")),
            "owner": ent("User", &format!("u{owner}")),
            "editors": ent("DashboardGroup", &format!("{id}/editors")),
            "viewers": ent("DashboardGroup", &format!("{id}/viewers"))}, "parents": []}));
        emit(
            json!({"uid": uid("DashboardGroup", &format!("{id}/editors")), "attrs": {}, "parents": [uid("DashboardGroup", &format!("{id}/viewers"))]}),
        );
        emit(
            json!({"uid": uid("DashboardGroup", &format!("{id}/viewers")), "attrs": {}, "parents": [uid("Dashboard", &id)]}),
        );
    }
    Generated {
        sizes,
        members,
        records,
        dashboards,
    }
}
