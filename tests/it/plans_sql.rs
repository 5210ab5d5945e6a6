//! Resource plans through the real binary into a real PostgreSQL: Blue's records, dashboards
//! and projects loaded into tables of a schema of the test's own (`id`, the attribute columns,
//! and for records `title` and `due`), then for users and actions the rows a plan's SQL
//! selects equal `ListResources`'s answer over gRPC, and on a sample equal `IsAuthorized`;
//! on the demo data (every user) and on `gen --scale 0.1` (users by stride; every user in an
//! ignored test run on purpose in a release build), with and without each overlay. Also: the
//! HTTP extension's shape, read-your-writes with `min_revision`, bad input named by field, and
//! a second pack.

use std::collections::BTreeSet;
use std::path::Path;

use blue_authz::service::grpc::pb::{
    self, authorizer_client::AuthorizerClient, sql_param, PlanDecision,
};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tonic::transport::Channel;

use crate::common::fleet::{channel, data_at, schema, write};
use crate::common::http::Http;
use crate::common::server::{Binary, Server};
use crate::common::{self, live_pack, TOKEN};

/// The columns of the test's tables, per type.
fn columns(ty: &str) -> Vec<(&'static str, &'static str)> {
    match ty {
        "Blue::Record" => vec![
            ("id", "id"),
            ("project", "project_id"),
            ("creator", "creator_id"),
        ],
        "Blue::Dashboard" => vec![
            ("id", "id"),
            ("company", "company_id"),
            ("owner", "owner_id"),
            ("editors", "editors_id"),
            ("viewers", "viewers_id"),
        ],
        _ => vec![
            ("id", "id"),
            ("company", "company_id"),
            ("admin", "admin_id"),
            ("member", "member_id"),
            ("client", "client_id"),
            ("comment", "comment_id"),
            ("view", "view_id"),
        ],
    }
}

fn table(ty: &str) -> &'static str {
    match ty {
        "Blue::Record" => "records",
        "Blue::Dashboard" => "dashboards",
        _ => "projects",
    }
}

/// Creates the three tables and fills them from Cedar JSON entities.
async fn load_tables(pg: &tokio_postgres::Client, entities: &[Value]) {
    pg.batch_execute(
        "CREATE TABLE records (id text PRIMARY KEY, project_id text NOT NULL, creator_id text NOT NULL, title text NOT NULL, due date NOT NULL);
         CREATE INDEX ON records (project_id); CREATE INDEX ON records (creator_id); CREATE INDEX ON records (due);
         CREATE TABLE dashboards (id text PRIMARY KEY, company_id text, owner_id text, editors_id text, viewers_id text);
         CREATE TABLE projects (id text PRIMARY KEY, company_id text, admin_id text, member_id text, client_id text, comment_id text, view_id text);",
    )
    .await
    .unwrap();
    for ty in ["Blue::Record", "Blue::Dashboard", "Blue::Project"] {
        let cols = columns(ty);
        let mut arrays: Vec<Vec<String>> = vec![Vec::new(); cols.len()];
        for e in entities.iter().filter(|e| e["uid"]["type"] == ty) {
            for (i, (attr, _)) in cols.iter().enumerate() {
                let v = if *attr == "id" {
                    e["uid"]["id"].as_str().unwrap().to_string()
                } else {
                    let a = &e["attrs"][attr];
                    a.get("__entity").unwrap_or(a)["id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                };
                arrays[i].push(v);
            }
        }
        let names: Vec<&str> = cols.iter().map(|(_, c)| *c).collect();
        let unnest: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
        let (extra_cols, extra_vals) = if ty == "Blue::Record" {
            (
                ", title, due",
                ", 'Record ' || u.id, date '2027-01-01' + (abs(hashtext(u.id)) % 365)",
            )
        } else {
            ("", "")
        };
        let sql = format!(
            "INSERT INTO {} ({}{extra_cols}) SELECT u.*{extra_vals} FROM unnest({}) AS u({})",
            table(ty),
            names.join(", "),
            unnest.join(", "),
            names.join(", ")
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        pg.execute(&sql, &params).await.unwrap();
    }
}

/// A plan's SQL parameters as PostgreSQL values.
fn params(ps: &[pb::SqlParam]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    ps.iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p.kind.clone().unwrap() {
                sql_param::Kind::Text(s) => Box::new(s),
                sql_param::Kind::Long(n) => Box::new(n),
                sql_param::Kind::Boolean(b) => Box::new(b),
                sql_param::Kind::Texts(t) => Box::new(t.items),
                sql_param::Kind::Longs(t) => Box::new(t.items),
                sql_param::Kind::Bools(t) => Box::new(t.items),
            }
        })
        .collect()
}

async fn select(pg: &tokio_postgres::Client, ty: &str, sql: &pb::SqlWhere) -> BTreeSet<String> {
    ids_where(pg, table(ty), sql).await
}

/// The ids of a table's rows that a plan's SQL selects.
async fn ids_where(
    pg: &tokio_postgres::Client,
    table: &str,
    sql: &pb::SqlWhere,
) -> BTreeSet<String> {
    let ps = params(&sql.params);
    let refs: Vec<&(dyn ToSql + Sync)> = ps.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let q = format!("SELECT id FROM {table} WHERE {}", sql.r#where);
    pg.query(&q, &refs)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn uid(ty: &str, id: &str) -> Option<pb::EntityUid> {
    common::uid(ty, id)
}

fn plan_request(user: &str, action: &str, ty: &str, context: &str) -> pb::PlanResourcesRequest {
    pb::PlanResourcesRequest {
        principal: uid("Blue::User", user),
        action: uid("Blue::Action", action),
        resource_type: ty.into(),
        context_json: context.into(),
        sql_columns: columns(ty)
            .into_iter()
            .map(|(a, c)| (a.to_string(), c.to_string()))
            .collect(),
        ..Default::default()
    }
}

async fn listed(
    authz: &mut AuthorizerClient<Channel>,
    user: &str,
    action: &str,
    ty: &str,
    context: &str,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = authz
            .list_resources(pb::ListResourcesRequest {
                principal: uid("Blue::User", user),
                action: uid("Blue::Action", action),
                resource_type: ty.into(),
                context_json: context.into(),
                page_size: 10_000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.resources.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The actions planned per type, with the contexts worth trying.
fn cases(users: &[String]) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    for a in ["viewRecord", "editRecord", "deleteRecord", "comment"] {
        out.push(("Blue::Record", a, String::new()));
    }
    for a in [
        "viewDashboard",
        "editDashboard",
        "revokeDashboardAccess",
        "deleteDashboard",
    ] {
        out.push(("Blue::Dashboard", a, String::new()));
    }
    for level in ["viewer", "editor"] {
        for u in users.iter().take(2) {
            out.push((
                "Blue::Dashboard",
                "shareDashboard",
                format!(r#"{{"level": "{level}", "with": {{"type": "Blue::User", "id": "{u}"}}}}"#),
            ));
        }
    }
    for a in ["viewProject", "editWiki", "deleteProject", "createRecord"] {
        out.push(("Blue::Project", a, String::new()));
    }
    for role in ["admin", "member", "view"] {
        out.push((
            "Blue::Project",
            "inviteMember",
            format!(r#"{{"role": "{role}"}}"#),
        ));
    }
    out
}

/// For each user and case: the SQL's rows equal ListResources; on a sample of resources,
/// membership equals IsAuthorized. Returns (plans compared, non-empty).
async fn compare(
    pg: &tokio_postgres::Client,
    authz: &mut AuthorizerClient<Channel>,
    users: &[String],
    all_users: &[String],
    ids: &std::collections::BTreeMap<String, Vec<String>>,
) -> (usize, usize) {
    let (mut compared, mut nonempty) = (0, 0);
    for (ty, action, context) in cases(all_users) {
        for u in users {
            let rows = compare_one(pg, authz, u, (ty, action, &context), ids, true).await;
            compared += 1;
            nonempty += usize::from(rows > 0);
        }
    }
    (compared, nonempty)
}

/// One user and case: the plan's SQL rows equal ListResources's answer, and with `sample`,
/// about 40 resources of the type, spread out, are decided by IsAuthorized as the rows say.
/// Returns how many rows the plan selects.
async fn compare_one(
    pg: &tokio_postgres::Client,
    authz: &mut AuthorizerClient<Channel>,
    u: &str,
    (ty, action, context): (&str, &str, &str),
    ids: &std::collections::BTreeMap<String, Vec<String>>,
    sample: bool,
) -> usize {
    let plan = authz
        .plan_resources(plan_request(u, action, ty, context))
        .await
        .unwrap_or_else(|e| panic!("plan {u} {action}: {e}"))
        .into_inner();
    let sql = plan.sql.clone().expect("a mapping was given");
    let rows = select(pg, ty, &sql).await;
    let list = listed(authz, u, action, ty, context).await;
    assert_eq!(
        rows, list,
        "{u} {action} {ty} {context}: the plan's rows and ListResources differ\n{}\n{:?}",
        plan.residual, sql
    );
    match PlanDecision::try_from(plan.decision).unwrap() {
        PlanDecision::AlwaysDenied => assert!(rows.is_empty()),
        PlanDecision::AlwaysAllowed => assert_eq!(rows.len(), ids[ty].len()),
        _ => {}
    }
    if !sample {
        return rows.len();
    }
    let step = (ids[ty].len() / 40).max(1);
    let sample: Vec<&String> = ids[ty].iter().step_by(step).take(40).collect();
    let batch = authz
        .batch_is_authorized(pb::BatchIsAuthorizedRequest {
            requests: sample
                .iter()
                .map(|r| pb::IsAuthorizedRequest {
                    principal: uid("Blue::User", u),
                    action: uid("Blue::Action", action),
                    resource: uid(ty, r),
                    context_json: context.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (r, d) in sample.iter().zip(&batch.responses) {
        let allowed = d.decision == pb::Decision::Allow as i32;
        assert_eq!(
            rows.contains(*r),
            allowed,
            "{u} {action} {ty}::{r} {context}"
        );
    }
    rows.len()
}

fn bin_import(pack: &Path, file: &Path, db: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blue-authz"))
        .args(["--policies", pack.to_str().unwrap(), "import"])
        .arg(file)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn serve(db: &Path, overlays: &[&str], data: bool) -> Server {
    let mut b = Binary::serve(&live_pack(), db).env("BLUE_AUTHZ_LOG", "warn");
    for o in overlays {
        b = b.args(["--overlay", o]);
    }
    if data {
        b = b
            .args([
                "--data-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN);
    }
    let mut s = b.spawn();
    s.wait_serving();
    s
}

fn ids_by_type(entities: &[Value]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut ids: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in entities {
        ids.entry(e["uid"]["type"].as_str().unwrap().to_string())
            .or_default()
            .push(e["uid"]["id"].as_str().unwrap().to_string());
    }
    for v in ids.values_mut() {
        v.sort();
    }
    ids
}

/// `gen --scale 0.1 --seed 7`, written by the binary and imported into a database in `dir`:
/// the entities, their ids by type and the database.
fn generated(
    dir: &Path,
) -> (
    Vec<Value>,
    std::collections::BTreeMap<String, Vec<String>>,
    std::path::PathBuf,
) {
    let gen_file = dir.join("gen.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blue-authz"))
        .args(["gen", "--scale", "0.1", "--seed", "7", "--out"])
        .arg(&gen_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&gen_file).unwrap()).unwrap();
    let ids = ids_by_type(&generated);
    let db = dir.join("gen.redb");
    bin_import(&live_pack(), &gen_file, &db);
    (generated, ids, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_sql_selects_exactly_what_is_authorized_on_demo_and_generated_data() {
    let Some((pg, _)) = schema("plans_sql").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The demo data: every user.
    let demo_file = common::root().join("data/demo.json");
    let demo: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&demo_file).unwrap()).unwrap();
    let demo_ids = ids_by_type(&demo);
    let demo_db = dir.path().join("demo.redb");
    bin_import(&live_pack(), &demo_file, &demo_db);
    let (generated, gen_ids, gen_db) = generated(dir.path());
    for (name, entities, db, ids, stride) in [
        ("demo", &demo, &demo_db, &demo_ids, 1),
        ("gen 0.1", &generated, &gen_db, &gen_ids, 331),
    ] {
        pg.batch_execute("DROP TABLE IF EXISTS records, dashboards, projects")
            .await
            .unwrap();
        load_tables(&pg, entities).await;
        let users = &ids["Blue::User"];
        let picked: Vec<String> = users.iter().step_by(stride).cloned().collect();
        for overlays in [
            vec![],
            vec!["clients-read-only"],
            vec!["invite-client-and-above"],
        ] {
            let mut server = serve(db, &overlays, false);
            let mut authz = AuthorizerClient::new(channel(server.decisions()).await);
            let (compared, nonempty) = compare(&pg, &mut authz, &picked, users, ids).await;
            println!(
                "{name} {overlays:?}: {compared} plans' SQL equal ListResources and the sampled \
                 decisions, {nonempty} non-empty ({} users)",
                picked.len()
            );
            assert!(nonempty * 4 > compared, "{nonempty} of {compared}");
            server.kill();
        }
    }
}

/// Every user of `gen --scale 0.1` (10,000), every record and dashboard action (sharing at
/// both levels), with and
/// without each overlay: the plan's SQL rows equal `ListResources`, and for every 331st user
/// a sample equals `IsAuthorized`. Minutes in a release build, so run on purpose:
/// `cargo test --release --test it -- --ignored every_user`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes in a release build: cargo test --release --test it -- --ignored every_user"]
async fn plan_sql_equals_listing_for_every_user_of_generated_data() {
    let Some((pg, _)) = schema("plans_sql_every_user").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (generated, ids, db) = generated(dir.path());
    load_tables(&pg, &generated).await;
    let pg = std::sync::Arc::new(pg);
    let ids = std::sync::Arc::new(ids);
    let users = ids["Blue::User"].clone();
    let started = std::time::Instant::now();
    for overlays in [
        vec![],
        vec!["clients-read-only"],
        vec!["invite-client-and-above"],
    ] {
        let mut server = serve(&db, &overlays, false);
        let authz = AuthorizerClient::new(channel(server.decisions()).await);
        // Four workers, each every fourth user, over one connection each way.
        // The record and dashboard cases, sharing with the first two users.
        let record_and_dashboard: Vec<_> = cases(&users)
            .into_iter()
            .filter(|(ty, _, _)| *ty != "Blue::Project")
            .collect();
        let mut workers = tokio::task::JoinSet::new();
        for k in 0..4 {
            let (pg, ids, mut authz) = (pg.clone(), ids.clone(), authz.clone());
            let cases = record_and_dashboard.clone();
            let users: Vec<(usize, String)> = users
                .iter()
                .cloned()
                .enumerate()
                .skip(k)
                .step_by(4)
                .collect();
            workers.spawn(async move {
                let (mut compared, mut nonempty) = (0usize, 0usize);
                for (i, u) in &users {
                    for (ty, action, context) in &cases {
                        let rows = compare_one(
                            &pg,
                            &mut authz,
                            u,
                            (ty, action, context),
                            &ids,
                            i % 331 == 0,
                        )
                        .await;
                        compared += 1;
                        nonempty += usize::from(rows > 0);
                    }
                }
                (compared, nonempty)
            });
        }
        let (mut compared, mut nonempty) = (0, 0);
        while let Some(done) = workers.join_next().await {
            let (c, n) = done.unwrap();
            compared += c;
            nonempty += n;
        }
        println!(
            "gen 0.1 {overlays:?}: {compared} plans' SQL equal ListResources ({nonempty} \
             non-empty), {} users x 12 record and dashboard cases, {:.0} s so far",
            users.len(),
            started.elapsed().as_secs_f64()
        );
        // Four record actions, four dashboard actions, and `shareDashboard` at both levels
        // with two users to share with.
        assert_eq!(compared, users.len() * 12);
        assert!(nonempty * 4 > compared, "{nonempty} of {compared}");
        server.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_over_http_follow_writes_and_name_bad_fields() {
    let Some((pg, _)) = schema("plans_http").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo_file = common::root().join("data/demo.json");
    let demo: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&demo_file).unwrap()).unwrap();
    load_tables(&pg, &demo).await;
    let db = dir.path().join("demo.redb");
    bin_import(&live_pack(), &demo_file, &db);
    let mut server = serve(&db, &[], true);
    let started = server.wait_serving().clone();
    let mut http = Http::connect(started.http.unwrap(), false).await;
    // The HTTP shape, with the pack's default columns (names.toml [columns.record]).
    let a = http
        .post(
            blue_authz::service::authzen::PLAN_RESOURCE,
            &json!({"subject": {"type": "user", "id": "carol"}, "action": {"name": "deleteRecord"},
                    "resource": {"type": "record"}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let body = a.body;
    assert_eq!(body["decision"], "conditional", "{body}");
    assert_eq!(
        body["sql"]["where"], "(creator_id = $1 AND project_id = $2)",
        "{body}"
    );
    assert_eq!(body["sql"]["params"], json!(["carol", "website"]));
    assert_eq!(body["condition"]["policies"], json!(["record.deleteOwn"]));
    assert_eq!(
        body["condition"]["and"][0]["eq"]["value"],
        json!({"type": "user", "id": "carol"})
    );
    assert!(body["context"]["residual"]
        .as_str()
        .unwrap()
        .contains("resource.creator == Blue::User::\"carol\""));
    // The caller's own mapping; sets are JSON arrays for `= ANY($n)`.
    let a = http
        .post(
            blue_authz::service::authzen::PLAN_RESOURCE,
            &json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "viewRecord"},
                    "resource": {"type": "record"},
                    "sql": {"columns": {"project": "r.project_id"}}}),
        )
        .await;
    let body = a.body;
    assert_eq!(body["sql"]["where"], "r.project_id = ANY($1)", "{body}");
    assert!(body["sql"]["params"][0].is_array(), "{body}");
    // Read-your-writes: frank joins mobile-app's view group at revision N; a plan asked with
    // min_revision N (the x-min-revision header over HTTP) includes its records.
    let before = http
        .post(
            blue_authz::service::authzen::PLAN_RESOURCE,
            &json!({"subject": {"type": "user", "id": "frank"}, "action": {"name": "viewRecord"},
                    "resource": {"type": "record"}}),
        )
        .await;
    assert!(
        !before.body.to_string().contains("mobile-app"),
        "{}",
        before.body
    );
    let mut data = data_at(started.data.unwrap()).await;
    let revision = write(
        &mut data,
        vec![common::edge(
            true,
            ("Blue::User", "frank"),
            ("Blue::Role", "mobile-app/view"),
        )],
    )
    .await
    .unwrap();
    let mut authz = AuthorizerClient::new(channel(started.decisions.unwrap()).await);
    let plan = authz
        .plan_resources(pb::PlanResourcesRequest {
            min_revision: revision,
            ..plan_request("frank", "viewRecord", "Blue::Record", "")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(plan.revision >= revision);
    let rows = select(&pg, "Blue::Record", plan.sql.as_ref().unwrap()).await;
    let mobile: BTreeSet<String> = demo
        .iter()
        .filter(|e| {
            e["uid"]["type"] == "Blue::Record"
                && e["attrs"]["project"]["__entity"]["id"] == "mobile-app"
        })
        .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!mobile.is_empty() && mobile.is_subset(&rows), "{rows:?}");
    let after = http
        .send(
            "POST",
            blue_authz::service::authzen::PLAN_RESOURCE,
            &[
                ("content-type", "application/json"),
                ("x-min-revision", &revision.to_string()),
            ],
            &json!({"subject": {"type": "user", "id": "frank"}, "action": {"name": "viewRecord"},
                    "resource": {"type": "record"}})
            .to_string(),
        )
        .await;
    assert!(
        after.body.to_string().contains("mobile-app"),
        "{}",
        after.body
    );
    // Bad input names the field: an unknown type, a mapping that names no attribute, a column
    // that is not a plain name.
    for (req, field) in [
        (
            json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "viewRecord"}, "resource": {"type": "recrod"}}),
            "resource.type",
        ),
        (
            json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "viewRecord"}, "resource": {"type": "record"},
                   "sql": {"columns": {"owner": "owner_id"}}}),
            "sql.columns.owner",
        ),
        (
            json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "viewRecord"}, "resource": {"type": "record"},
                   "sql": {"columns": {"project": "project_id; DROP TABLE records"}}}),
            "sql.columns.project",
        ),
    ] {
        let a = http
            .post(blue_authz::service::authzen::PLAN_RESOURCE, &req)
            .await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert_eq!(a.body["error"]["field"], field, "{}", a.body);
    }
    let e = authz
        .plan_resources(pb::PlanResourcesRequest {
            sql_columns: [("nope".to_string(), "x".to_string())].into(),
            ..plan_request("bob", "viewRecord", "Blue::Record", "")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("sql_columns[nope]"),
        "{}",
        e.message()
    );
    let e = authz
        .plan_resources(plan_request("bob", "viewRecord", "Blue::Nope", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("resource_type"), "{}", e.message());
    server.kill();
}

/// The docs pack: set-valued and boolean columns (`text[]`, `boolean`) in PostgreSQL, and a
/// policy no filter can express refused over both edges, naming the policy and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pack_plans_into_array_columns_and_refuses_what_it_cannot_push_down() {
    let Some((pg, _)) = schema("plans_docs").await else {
        return;
    };
    let docs = common::root().join("examples/docs");
    let dir = tempfile::tempdir().unwrap();
    // A copy of the pack with a policy no filter can say (two paths compared); it never fires,
    // so the pack's suite still passes and the gate lets it serve.
    let pack = dir.path().join("policies");
    common::copy_dir(&docs.join("policies"), &pack);
    std::fs::copy(docs.join("data.json"), dir.path().join("data.json")).unwrap();
    std::fs::write(
        pack.join("extra.cedar"),
        r#"
@id("docs.selfOwned")
permit (principal, action == Docs::Action::"delete", resource)
when { resource.owner == resource.owner && resource.locked && !resource.locked };
"#,
    )
    .unwrap();
    let data: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(docs.join("data.json")).unwrap()).unwrap();
    pg.batch_execute(
        "CREATE TABLE documents (id text PRIMARY KEY, owner_id text, editors text[], viewers text[], public boolean, locked boolean)",
    )
    .await
    .unwrap();
    let ids_of = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["__entity"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all_docs = BTreeSet::new();
    for e in data.iter().filter(|e| e["uid"]["type"] == "Docs::Document") {
        let a = &e["attrs"];
        let id = e["uid"]["id"].as_str().unwrap().to_string();
        pg.execute(
            "INSERT INTO documents VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &a["owner"]["__entity"]["id"].as_str().unwrap(),
                &ids_of(&a["editors"]),
                &ids_of(&a["viewers"]),
                &a["public"].as_bool().unwrap(),
                &a["locked"].as_bool().unwrap(),
            ],
        )
        .await
        .unwrap();
        all_docs.insert(id);
    }
    let db = dir.path().join("docs.redb");
    bin_import(&pack, &docs.join("data.json"), &db);
    let mut server = Binary::serve(&pack, &db)
        .args(["--http-listen", "127.0.0.1:0"])
        .spawn();
    let started = server.wait_serving().clone();
    let mut authz = AuthorizerClient::new(channel(started.decisions.unwrap()).await);
    let cols: std::collections::HashMap<String, String> = [
        ("id", "id"),
        ("owner", "owner_id"),
        ("editors", "editors"),
        ("viewers", "viewers"),
        ("public", "public"),
        ("locked", "locked"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut nonempty = 0;
    for user in ["alice", "bob", "carol", "dave"] {
        for (action, context) in [
            ("read", ""),
            ("edit", ""),
            ("share", r#"{"mfa": true}"#),
            ("share", ""),
        ] {
            let plan = authz
                .plan_resources(pb::PlanResourcesRequest {
                    principal: uid("Docs::User", user),
                    action: uid("Docs::Action", action),
                    resource_type: "Docs::Document".into(),
                    context_json: context.into(),
                    sql_columns: cols.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let sql = plan.sql.unwrap();
            let rows = ids_where(&pg, "documents", &sql).await;
            let q = &sql.r#where;
            let mut allowed = BTreeSet::new();
            for d in &all_docs {
                let r = authz
                    .is_authorized(pb::IsAuthorizedRequest {
                        principal: uid("Docs::User", user),
                        action: uid("Docs::Action", action),
                        resource: uid("Docs::Document", d),
                        context_json: context.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if r.decision == pb::Decision::Allow as i32 {
                    allowed.insert(d.clone());
                }
            }
            assert_eq!(rows, allowed, "{user} {action} {context}: {q}");
            nonempty += usize::from(!rows.is_empty());
        }
    }
    assert!(nonempty >= 6, "{nonempty}");
    // delete cannot be planned: refused naming the policy and the expression, on both edges.
    let e = authz
        .plan_resources(pb::PlanResourcesRequest {
            principal: uid("Docs::User", "alice"),
            action: uid("Docs::Action", "delete"),
            resource_type: "Docs::Document".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("action: policy `docs.selfOwned`")
            && e.message().contains("resource.owner == resource.owner"),
        "{}",
        e.message()
    );
    let mut http = Http::connect(started.http.unwrap(), false).await;
    let a = http
        .post(
            blue_authz::service::authzen::PLAN_RESOURCE,
            &json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "can_delete"},
                    "resource": {"type": "document"}}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["field"], "action", "{}", a.body);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("docs.selfOwned"));
    server.kill();
}
