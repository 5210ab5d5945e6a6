//! Both services over Unix domain sockets, as a sidecar's neighbour would call them.

use std::os::unix::fs::PermissionsExt;

use crate::common::{config, uid, unix_channel, TOKEN};
use blue_authz::service::grpc::pb::{
    self, authorizer_client::AuthorizerClient, entity_store_client::EntityStoreClient,
};
use blue_authz::service::server::{self, Limits};
use tonic::Code;

#[tokio::test]
async fn decisions_and_data_over_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Limits::default());
    let decisions_sock = dir.path().join("authz.sock");
    let data_sock = dir.path().join("data.sock");
    cfg.unix = Some(decisions_sock.clone());
    cfg.data_unix = Some(data_sock.clone());
    cfg.unix_mode = 0o600;
    let mut running = server::start(cfg).await.unwrap();
    running.load().await.unwrap();
    for sock in [&decisions_sock, &data_sock] {
        let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sock.display());
    }

    let mut decisions = AuthorizerClient::new(unix_channel(&decisions_sock).await);
    let ask = |user: &str| pb::IsAuthorizedRequest {
        principal: uid("Blue::User", user),
        action: uid("Blue::Action", "editWiki"),
        resource: uid("Blue::Project", "apollo"),
        ..Default::default()
    };
    let r = decisions
        .is_authorized(ask("max"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32);
    assert_eq!(r.determining_policies, vec!["project.editWiki"]);
    let r = decisions
        .is_authorized(ask("cleo"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Deny as i32);

    // The data service on its own socket, still behind the token.
    let channel = unix_channel(&data_sock).await;
    let mut anonymous = EntityStoreClient::new(channel.clone());
    let op = pb::WriteOp {
        op: Some(pb::write_op::Op::AddParent(pb::Edge {
            child: uid("Blue::User", "cleo"),
            parent: uid("Blue::Role", "apollo/member"),
        })),
    };
    let err = anonymous
        .write_entities(pb::WriteEntitiesRequest {
            ops: vec![op.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut data =
        EntityStoreClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", header.clone());
            Ok(req)
        });
    let revision = data
        .write_entities(pb::WriteEntitiesRequest {
            ops: vec![op],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let r = decisions
        .is_authorized(pb::IsAuthorizedRequest {
            min_revision: revision,
            ..ask("cleo")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Allow as i32);

    running.shutdown().await.unwrap();
    assert!(
        !decisions_sock.exists() && !data_sock.exists(),
        "sockets removed on shutdown"
    );
}
