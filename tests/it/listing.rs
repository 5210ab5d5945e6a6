//! Listing against brute force: for generated data, every `ListResources` and `ListSubjects`
//! answer equals deciding every entity of the type with `IsAuthorized`'s path, with and without
//! each overlay, with request-scoped entities, and with policies outside the narrowing subset;
//! pages concatenate to the whole answer.

use crate::common;

use std::collections::BTreeMap;

use crate::common::live_pack;
use blue_authz::bench::gen;
use blue_authz::engine::error::{Field, ListedSide, Part};
use blue_authz::engine::index::EntityStore;
use blue_authz::engine::list::{self, ListRequest, Page, Side};
use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::engine::request::{self, ContextMap, DecisionRequest, UidRef};
use blue_authz::engine::View;

pub(crate) struct Data {
    pub store: EntityStore,
    /// Entity ids by type name.
    pub ids: BTreeMap<String, Vec<String>>,
}

pub(crate) fn data(pack: &PolicyPack, scale: f64, seed: u64) -> Data {
    let mut store = EntityStore::default();
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    gen::generate(scale, seed, &mut |e| {
        let ty = e["uid"]["type"].as_str().unwrap().to_string();
        ids.entry(ty)
            .or_default()
            .push(e["uid"]["id"].as_str().unwrap().to_string());
        store.bulk_insert(&e).unwrap();
    });
    store.finish_bulk(1).unwrap();
    // Checked against the pack's schema as a server would have on write.
    let store = store.rebuild(&pack.entities).unwrap();
    Data { store, ids }
}

/// Contexts worth trying for an action: every role or level its policies compare with.
pub(crate) fn contexts(action: &str, users: &[String]) -> Vec<String> {
    match action {
        "inviteMember" | "changeMemberRole" => ["admin", "member", "client", "comment", "view"]
            .iter()
            .map(|r| format!(r#"{{"role": "{r}"}}"#))
            .collect(),
        "shareDashboard" => ["viewer", "editor"]
            .iter()
            .flat_map(|l| {
                users[..3].iter().map(move |u| {
                    format!(r#"{{"level": "{l}", "with": {{"type": "Blue::User", "id": "{u}"}}}}"#)
                })
            })
            .collect(),
        _ => vec![String::new()],
    }
}

/// The whole listing, page by page; checks each page's size and token.
fn whole(
    pack: &PolicyPack,
    store: &EntityStore,
    req: ListRequest<'_>,
) -> (Vec<(String, Vec<String>)>, bool) {
    let mut token = String::new();
    let mut out = Vec::new();
    let mut narrowed = true;
    loop {
        let page: Page = View::new(pack, store)
            .list(&ListRequest {
                page_token: &token,
                ..req
            })
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert!(page.items.len() <= req.page_size as usize);
        if !page.next_token.is_empty() {
            assert_eq!(
                page.items.len(),
                req.page_size as usize,
                "a short page with a next token"
            );
        }
        narrowed &= page.narrowed;
        out.extend(page.items.into_iter().map(|l| (l.id, l.determining)));
        if page.next_token.is_empty() {
            return (out, narrowed);
        }
        token = page.next_token;
    }
}

/// Brute force: every entity of the type decided as `IsAuthorized` decides it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn brute(
    pack: &PolicyPack,
    store: &EntityStore,
    listed: Side,
    other: (&str, &str),
    action: &str,
    candidates: &[String],
    listed_type: &str,
    context: &str,
    entities: &str,
) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&String> = candidates.iter().collect();
    sorted.sort();
    sorted.dedup();
    for id in sorted {
        let me = UidRef {
            ty: listed_type,
            id,
        };
        let them = UidRef {
            ty: other.0,
            id: other.1,
        };
        let (principal, resource) = match listed {
            Side::Resources => (them, me),
            Side::Principals => (me, them),
        };
        let input = json(context, entities);
        let d = View::new(pack, store)
            .is_authorized(&DecisionRequest {
                principal,
                action: request::action_id(action),
                resource,
                context: input.context.as_ref(),
                entities: &input.entities,
            })
            .unwrap();
        if d.allow {
            out.push((id.clone(), d.determining));
        }
    }
    out
}

/// A context and request-scoped entities read from their JSON text, as an edge reads them.
pub(crate) struct Json {
    pub context: Option<ContextMap>,
    pub entities: Vec<serde_json::Value>,
}

pub(crate) fn json(context: &str, entities: &str) -> Json {
    Json {
        context: match context {
            "" => None,
            c => Some(serde_json::from_str(c).unwrap()),
        },
        entities: match entities {
            "" => Vec::new(),
            e => serde_json::from_str(e).unwrap(),
        },
    }
}

fn req<'a>(
    listed: Side,
    other: (&'a str, &'a str),
    action: &'a str,
    listed_type: &'a str,
    input: &'a Json,
    page_size: u32,
) -> ListRequest<'a> {
    ListRequest {
        listed,
        other: UidRef {
            ty: other.0,
            id: other.1,
        },
        action: request::action_id(action),
        listed_type,
        context: input.context.as_ref(),
        entities: &input.entities,
        page_size,
        page_token: "",
    }
}

/// Every action of the pack, listed both ways for a few principals and resources, against
/// brute force. Returns (listings compared, non-empty ones).
fn compare_all(
    pack: &PolicyPack,
    d: &Data,
    picks: usize,
    entities: &str,
    extra: &[(&str, &str)],
) -> (usize, usize) {
    let users = &d.ids["Blue::User"];
    let with_extra = |ty: &str| -> Vec<String> {
        let mut v = d.ids.get(ty).cloned().unwrap_or_default();
        v.extend(
            extra
                .iter()
                .filter(|(t, _)| *t == ty)
                .map(|(_, id)| id.to_string()),
        );
        v
    };
    let (mut compared, mut nonempty) = (0, 0);
    for action in pack.actions() {
        let entry = pack.action(action).unwrap();
        let name = action.id().unescaped();
        for rt in &entry.resource_types {
            let rt = rt.to_string();
            let resources = with_extra(&rt);
            for context in contexts(name, users) {
                // Resources of the type, for some users.
                for u in users
                    .iter()
                    .step_by((users.len() / picks).max(1))
                    .take(picks)
                {
                    let other = ("Blue::User", u.as_str());
                    let (ours, _) = whole(
                        pack,
                        &d.store,
                        req(
                            Side::Resources,
                            other,
                            name,
                            &rt,
                            &json(&context, entities),
                            list::MAX_PAGE_SIZE,
                        ),
                    );
                    let theirs = brute(
                        pack,
                        &d.store,
                        Side::Resources,
                        other,
                        name,
                        &resources,
                        &rt,
                        &context,
                        entities,
                    );
                    assert_eq!(ours, theirs, "ListResources {u} {name} {rt} {context}");
                    compared += 1;
                    nonempty += usize::from(!ours.is_empty());
                }
                // Users who may act on some resources of the type.
                let all_users = with_extra("Blue::User");
                for r in resources
                    .iter()
                    .step_by((resources.len() / picks).max(1))
                    .take(picks)
                {
                    let other = (rt.as_str(), r.as_str());
                    let (ours, _) = whole(
                        pack,
                        &d.store,
                        req(
                            Side::Principals,
                            other,
                            name,
                            "Blue::User",
                            &json(&context, entities),
                            list::MAX_PAGE_SIZE,
                        ),
                    );
                    let theirs = brute(
                        pack,
                        &d.store,
                        Side::Principals,
                        other,
                        name,
                        &all_users,
                        "Blue::User",
                        &context,
                        entities,
                    );
                    assert_eq!(ours, theirs, "ListSubjects {rt}::{r} {name} {context}");
                    compared += 1;
                    nonempty += usize::from(!ours.is_empty());
                }
            }
        }
    }
    (compared, nonempty)
}

#[test]
fn listings_equal_brute_force_with_and_without_each_overlay() {
    for overlays in [
        vec![],
        vec!["clients-read-only".to_string()],
        vec!["invite-client-and-above".to_string()],
        vec![
            "clients-read-only".to_string(),
            "invite-client-and-above".to_string(),
        ],
    ] {
        let pack = PolicyPack::load(&PackSpec::new(live_pack(), &overlays)).unwrap();
        assert!(
            list::unnarrowed(&pack).is_empty(),
            "{:?}",
            list::unnarrowed(&pack)
        );
        let d = data(&pack, 0.002, 5);
        let (compared, nonempty) = compare_all(&pack, &d, 6, "", &[]);
        println!("{overlays:?}: {compared} listings equal brute force, {nonempty} non-empty");
        assert!(
            nonempty * 3 > compared,
            "too few non-empty listings: {nonempty} of {compared}"
        );
    }
}

#[test]
fn listings_with_request_scoped_entities_equal_brute_force() {
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).unwrap();
    let d = data(&pack, 0.001, 9);
    let users = &d.ids["Blue::User"];
    let (p0, p1) = (&d.ids["Blue::Project"][0], &d.ids["Blue::Project"][1]);
    let (u0, u1) = (&users[0], &users[1]);
    // A new record in p0, an existing record moved to p1, a new user in p1's member group, and
    // an existing user given p0's admin group (replacing their stored parents).
    let r0 = &d.ids["Blue::Record"][0];
    let entities = serde_json::json!([
        {"uid": {"type": "Blue::Record", "id": "draft"}, "attrs": {
            "project": {"__entity": {"type": "Blue::Project", "id": p0}},
            "creator": {"__entity": {"type": "Blue::User", "id": u1}}}, "parents": []},
        {"uid": {"type": "Blue::Record", "id": r0}, "attrs": {
            "project": {"__entity": {"type": "Blue::Project", "id": p1}},
            "creator": {"__entity": {"type": "Blue::User", "id": u0}}}, "parents": []},
        {"uid": {"type": "Blue::User", "id": "newcomer"}, "attrs": {},
            "parents": [{"type": "Blue::Role", "id": format!("{p1}/member")}]},
        {"uid": {"type": "Blue::User", "id": u0}, "attrs": {},
            "parents": [{"type": "Blue::Role", "id": format!("{p0}/admin")}]},
    ])
    .to_string();
    let extra = [("Blue::Record", "draft"), ("Blue::User", "newcomer")];
    let (compared, nonempty) = compare_all(&pack, &d, 3, &entities, &extra);
    println!("with request entities: {compared} listings equal brute force, {nonempty} non-empty");
    assert!(nonempty > 0);
    // The newcomer and the draft show up where the overlay puts them.
    let (editors, _) = whole(
        &pack,
        &d.store,
        req(
            Side::Principals,
            ("Blue::Project", p1),
            "editWiki",
            "Blue::User",
            &json("", &entities),
            1000,
        ),
    );
    assert!(
        editors.iter().any(|(id, _)| id == "newcomer"),
        "{editors:?}"
    );
    let (records, _) = whole(
        &pack,
        &d.store,
        req(
            Side::Resources,
            ("Blue::User", u0),
            "editRecord",
            "Blue::Record",
            &json("", &entities),
            1000,
        ),
    );
    assert!(records.iter().any(|(id, _)| id == "draft"), "{records:?}");
}

#[test]
fn policies_outside_the_narrowing_subset_are_listed_exactly_and_named() {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&common::pack(), dir.path());
    std::fs::write(
        dir.path().join("extra.cedar"),
        r#"
// In the plans' subset, but a negation narrows nothing: records outside one's projects.
@id("extra.outsiders")
permit (principal is Blue::User, action == Blue::Action::"viewRecord", resource is Blue::Record)
unless { principal in resource.project.view };

// Outside the plans' subset (arithmetic): no plan, so no finder.
@id("extra.arithmetic")
permit (principal is Blue::User, action == Blue::Action::"comment", resource is Blue::Record)
when { principal in resource.project.admin && [2].contains(1 + 1) };
"#,
    )
    .unwrap();
    let pack = PolicyPack::load(&PackSpec::new(dir.path(), &[])).unwrap();
    let unnarrowed = list::unnarrowed(&pack);
    let named = |a: &str, what: &str| {
        unnarrowed
            .iter()
            .any(|(x, w, t)| x == a && *w == what && t == "Blue::Record")
    };
    assert!(
        named("viewRecord", "resources") && named("comment", "resources"),
        "{unnarrowed:?}"
    );
    assert!(!named("editRecord", "resources"), "{unnarrowed:?}");
    let d = data(&pack, 0.001, 4);
    let (compared, nonempty) = compare_all(&pack, &d, 4, "", &[]);
    println!(
        "with unnarrowable policies: {compared} listings equal brute force, {nonempty} non-empty"
    );
    // The scan is reported as such.
    let u = &d.ids["Blue::User"][0];
    let page = View::new(&pack, &d.store)
        .list(&req(
            Side::Resources,
            ("Blue::User", u),
            "viewRecord",
            "Blue::Record",
            &json("", ""),
            10,
        ))
        .unwrap();
    assert!(!page.narrowed);
    let page = View::new(&pack, &d.store)
        .list(&req(
            Side::Resources,
            ("Blue::User", u),
            "editRecord",
            "Blue::Record",
            &json("", ""),
            10,
        ))
        .unwrap();
    assert!(page.narrowed);
}

#[test]
fn pages_of_1_7_and_1000_concatenate_to_the_whole_answer() {
    let pack = PolicyPack::load(&PackSpec::new(live_pack(), &[])).unwrap();
    let d = data(&pack, 0.003, 2);
    let mut checked = 0;
    for u in d.ids["Blue::User"].iter().take(8) {
        let other = ("Blue::User", u.as_str());
        let (all, _) = whole(
            &pack,
            &d.store,
            req(
                Side::Resources,
                other,
                "viewRecord",
                "Blue::Record",
                &json("", ""),
                list::MAX_PAGE_SIZE,
            ),
        );
        for size in [1, 7, 1000] {
            let (paged, _) = whole(
                &pack,
                &d.store,
                req(
                    Side::Resources,
                    other,
                    "viewRecord",
                    "Blue::Record",
                    &json("", ""),
                    size,
                ),
            );
            assert_eq!(paged, all, "{u} in pages of {size}");
        }
        checked += all.len();
    }
    for p in d.ids["Blue::Project"].iter().take(5) {
        let other = ("Blue::Project", p.as_str());
        let (all, _) = whole(
            &pack,
            &d.store,
            req(
                Side::Principals,
                other,
                "viewProject",
                "Blue::User",
                &json("", ""),
                list::MAX_PAGE_SIZE,
            ),
        );
        for size in [1, 7, 1000] {
            let (paged, _) = whole(
                &pack,
                &d.store,
                req(
                    Side::Principals,
                    other,
                    "viewProject",
                    "Blue::User",
                    &json("", ""),
                    size,
                ),
            );
            assert_eq!(paged, all, "{p} in pages of {size}");
        }
        checked += all.len();
    }
    assert!(checked > 100, "only {checked} entities listed");
}

#[test]
fn bad_listing_requests_name_the_field() {
    let pack = PolicyPack::load(&PackSpec::new(common::pack(), &[])).unwrap();
    let store =
        EntityStore::load_file(&common::pack().join("tests/fixture.json"), &pack.entities).unwrap();
    let ada = ("Blue::User", "ada");
    let field = |r: ListRequest<'_>| View::new(&pack, &store).list(&r).unwrap_err();
    let e = field(req(
        Side::Resources,
        ada,
        "viewRecord",
        "Blue::Nope",
        &json("", ""),
        0,
    ));
    assert_eq!(
        (&e.field, e.message.contains("unknown entity type")),
        (&Field::ListedType(ListedSide::Resources), true),
        "{e}"
    );
    let e = field(req(
        Side::Resources,
        ada,
        "flyAway",
        "Blue::Record",
        &json("", ""),
        0,
    ));
    assert_eq!(e.field, Field::Action(Part::Id), "{e}");
    let e = field(req(
        Side::Resources,
        ada,
        "viewRecord",
        "Blue::Project",
        &json("", ""),
        0,
    ));
    assert_eq!(
        (&e.field, e.message.contains("does not apply")),
        (&Field::ListedType(ListedSide::Resources), true),
        "{e}"
    );
    let e = field(req(
        Side::Principals,
        ("Blue::Project", "apollo"),
        "editWiki",
        "Blue::Role",
        &json("", ""),
        0,
    ));
    assert_eq!(e.field, Field::ListedType(ListedSide::Principals), "{e}");
    let e = field(req(
        Side::Resources,
        ada,
        "viewRecord",
        "Blue::Record",
        &json("", ""),
        list::MAX_PAGE_SIZE + 1,
    ));
    assert_eq!(
        (&e.field, e.message.contains("maximum")),
        (&Field::PageSize, true),
        "{e}"
    );
    let e = field(req(
        Side::Resources,
        ada,
        "inviteMember",
        "Blue::Project",
        &json(r#"{"role": 3}"#, ""),
        0,
    ));
    assert_eq!(e.field, Field::Context(None), "{e}");
    let e = field(ListRequest {
        page_token: "00ff",
        ..req(
            Side::Resources,
            ada,
            "viewRecord",
            "Blue::Record",
            &json("", ""),
            0,
        )
    });
    assert_eq!(e.field, Field::PageToken, "{e}");
}

mod grpc {
    use std::collections::BTreeSet;

    use blue_authz::service::grpc::pb::{
        self, authorizer_client::AuthorizerClient, entity_store_client::EntityStoreClient,
    };
    use blue_authz::service::server::{self, Limits, Running};
    use tonic::transport::Channel;
    use tonic::Code;

    use super::common::{config, delete, uid, upsert, TOKEN};

    async fn start(dir: &std::path::Path) -> (Running, AuthorizerClient<Channel>) {
        let mut running = server::start(config(dir, Limits::default())).await.unwrap();
        running.load().await.unwrap();
        let client = AuthorizerClient::connect(format!("http://{}", running.addr.unwrap()))
            .await
            .unwrap();
        (running, client)
    }

    async fn write(running: &Running, ops: Vec<pb::WriteOp>) {
        let channel = Channel::from_shared(format!("http://{}", running.data_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut data = EntityStoreClient::new(channel);
        let mut req = tonic::Request::new(pb::WriteEntitiesRequest {
            ops,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        data.write_entities(req).await.unwrap();
    }

    fn record(id: &str) -> pb::WriteOp {
        upsert(serde_json::json!({
            "uid": {"type": "Blue::Record", "id": id},
            "attrs": {
                "project": {"__entity": {"type": "Blue::Project", "id": "apollo"}},
                "creator": {"__entity": {"type": "Blue::User", "id": "ada"}}},
            "parents": []}))
    }

    fn records_of(user: &str, size: u32, token: &str) -> pb::ListResourcesRequest {
        pb::ListResourcesRequest {
            principal: uid("Blue::User", user),
            action: uid("Blue::Action", "viewRecord"),
            resource_type: "Blue::Record".into(),
            page_size: size,
            page_token: token.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn pages_over_grpc_survive_writes_between_them_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (running, mut c) = start(dir.path()).await;
        write(
            &running,
            (0..40).map(|i| record(&format!("r-{i:02}"))).collect(),
        )
        .await;
        let first = c
            .list_resources(records_of("ada", 1000, ""))
            .await
            .unwrap()
            .into_inner();
        let before: BTreeSet<String> = first.resources.iter().map(|r| r.id.clone()).collect();
        assert!(before.len() >= 40, "{before:?}");
        assert!(first.next_page_token.is_empty());

        // Pages of 7; between pages, a record is deleted ahead of the cursor, and new ones are
        // added behind it and ahead of it.
        let (mut seen, mut deleted) = (Vec::new(), BTreeSet::new());
        let mut token = String::new();
        let mut revision = 0;
        for k in 0.. {
            let page = c
                .list_resources(records_of("ada", 7, &token))
                .await
                .unwrap()
                .into_inner();
            assert!(page.revision >= revision, "pages go back in revisions");
            revision = page.revision;
            seen.extend(page.resources.iter().map(|r| r.id.clone()));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
            let gone = format!("r-{:02}", 39 - k);
            deleted.insert(gone.clone());
            write(
                &running,
                vec![
                    delete("Blue::Record", &gone),
                    record(&format!("a-new-{k}")),
                    record(&format!("z-new-{k}")),
                ],
            )
            .await;
        }
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an entity came twice: {seen:?}");
        for id in before.difference(&deleted) {
            assert!(unique.contains(id), "{id}, present throughout, was dropped");
        }

        // A damaged token, and a token of another query, are refused naming the field.
        let page = c
            .list_resources(records_of("ada", 5, ""))
            .await
            .unwrap()
            .into_inner();
        let mut damaged = page.next_page_token.clone().into_bytes();
        damaged[4] = if damaged[4] == b'a' { b'b' } else { b'a' };
        let damaged = String::from_utf8(damaged).unwrap();
        let e = c
            .list_resources(records_of("ada", 5, &damaged))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("page_token"), "{}", e.message());
        let e = c
            .list_resources(records_of("bob", 5, &page.next_page_token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("another query"), "{}", e.message());
        let expected = c
            .list_resources(records_of("ada", 5, &page.next_page_token))
            .await
            .unwrap()
            .into_inner();

        // The token survives a restart of the server.
        running.shutdown().await.unwrap();
        let (running, mut c) = start(dir.path()).await;
        let after = c
            .list_resources(records_of("ada", 5, &page.next_page_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.resources, expected.resources);
        assert!(!after.resources.is_empty());

        // Subjects, and bad input naming the field.
        let editors = c
            .list_subjects(pb::ListSubjectsRequest {
                resource: uid("Blue::Project", "apollo"),
                action: uid("Blue::Action", "editWiki"),
                principal_type: "Blue::User".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            editors
                .subjects
                .iter()
                .any(|s| s.id == "ada" && s.determining_policies == ["project.editWiki"]),
            "{editors:?}"
        );
        for (req, field) in [
            (
                pb::ListResourcesRequest {
                    resource_type: "Blue::Nope".into(),
                    ..records_of("ada", 0, "")
                },
                "resource_type",
            ),
            (
                pb::ListResourcesRequest {
                    resource_type: "Blue::Project".into(),
                    ..records_of("ada", 0, "")
                },
                "resource_type",
            ),
            (
                pb::ListResourcesRequest {
                    action: uid("Blue::Action", "fly"),
                    ..records_of("ada", 0, "")
                },
                "action",
            ),
            (records_of("ada", 10_001, ""), "page_size"),
        ] {
            let e = c.list_resources(req).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(field), "{field}: {}", e.message());
        }
        running.shutdown().await.unwrap();
    }
}
