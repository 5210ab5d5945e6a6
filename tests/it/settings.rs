//! The real binary's settings and decision log: every setting in the README's list is taken
//! from its flag and from its environment variable; a server configured only by environment,
//! or only by flags, listens where it is told, requires its token and writes (or does not
//! write) its decision log.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::server::{Binary, Server};
use crate::common::{ask, pack, print_config, root, settings_table, uid, unix_channel, TOKEN};
use blue_authz::service::grpc::pb;
use blue_authz::service::grpc::pb::authorizer_client::AuthorizerClient;
use blue_authz::service::grpc::pb::entity_store_client::EntityStoreClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_blue-authz");

/// The binary with no BLUE_AUTHZ_* variable inherited from the test's environment.
fn bin() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("BLUE_AUTHZ_") {
            c.env_remove(k);
        }
    }
    c.current_dir(root());
    c
}

/// For each documented setting: a value to give, and what `--print-config` must then show.
fn samples() -> BTreeMap<&'static str, (&'static str, toml::Value, Vec<&'static str>)> {
    use toml::Value::{Array, Boolean, Float, Integer, String as S};
    let s = |v: &str| S(v.to_string());
    let tls = vec!["--tls-cert", "/tmp/c.pem", "--tls-key", "/tmp/k.pem"];
    BTreeMap::from([
        ("policies", ("/srv/p", s("/srv/p"), vec![])),
        (
            "overlays",
            (
                "clients-read-only",
                Array(vec![s("clients-read-only")]),
                vec![],
            ),
        ),
        ("listen", ("127.0.0.1:6001", s("127.0.0.1:6001"), vec![])),
        ("db", ("/srv/x.redb", s("/srv/x.redb"), vec![])),
        ("seed", ("/srv/seed.json", s("/srv/seed.json"), vec![])),
        (
            "data_listen",
            ("127.0.0.1:6002", s("127.0.0.1:6002"), vec![]),
        ),
        ("data_token", ("s3cret", s("<redacted>"), vec![])),
        (
            "data_token_file",
            ("/run/secrets/t", s("/run/secrets/t"), vec![]),
        ),
        ("listen_unix", ("/run/a.sock", s("/run/a.sock"), vec![])),
        (
            "data_listen_unix",
            ("/run/d.sock", s("/run/d.sock"), vec![]),
        ),
        ("unix_mode", ("600", s("600"), vec![])),
        (
            "tls_cert",
            ("/srv/c.pem", s("/srv/c.pem"), vec!["--tls-key", "/k"]),
        ),
        (
            "tls_key",
            ("/srv/k.pem", s("/srv/k.pem"), vec!["--tls-cert", "/c"]),
        ),
        ("tls_client_ca", ("/srv/ca.pem", s("/srv/ca.pem"), tls)),
        (
            "metrics_listen",
            ("127.0.0.1:9464", s("127.0.0.1:9464"), vec![]),
        ),
        (
            "health_listen",
            ("0.0.0.0:50053", s("0.0.0.0:50053"), vec![]),
        ),
        (
            "http_listen",
            ("127.0.0.1:6003", s("127.0.0.1:6003"), vec![]),
        ),
        ("http_token", ("s3cret", s("<redacted>"), vec![])),
        (
            "http_token_file",
            ("/run/secrets/h", s("/run/secrets/h"), vec![]),
        ),
        ("http_basic", ("pdp:s3cret", s("<redacted>"), vec![])),
        (
            "http_basic_file",
            ("/run/secrets/b", s("/run/secrets/b"), vec![]),
        ),
        ("http_decision_context", ("false", Boolean(false), vec![])),
        ("ext_authz_deny_policies", ("false", Boolean(false), vec![])),
        (
            "http_public_url",
            (
                "https://authz.example.com",
                s("https://authz.example.com"),
                vec![],
            ),
        ),
        ("decision_log", ("true", Boolean(true), vec![])),
        ("decision_log_sample", ("0.25", Float(0.25), vec![])),
        ("decision_log_context", ("true", Boolean(true), vec![])),
        ("log", ("blue_authz=debug", s("blue_authz=debug"), vec![])),
        ("log_format", ("json", s("json"), vec![])),
        ("max_batch", ("7", Integer(7), vec![])),
        (
            "source",
            (
                "postgres://u@db:5432/blue",
                s("postgres://u@db:5432/blue"),
                vec![],
            ),
        ),
        ("source_poll_ms", ("250", Integer(250), vec![])),
        ("source_notify", ("false", Boolean(false), vec![])),
        ("source_lock_timeout_ms", ("3100", Integer(3100), vec![])),
        (
            "source_statement_timeout_ms",
            ("4100", Integer(4100), vec![]),
        ),
        ("source_idle_timeout_ms", ("1100", Integer(1100), vec![])),
        ("idempotency_window_secs", ("600", Integer(600), vec![])),
        ("max_write_wait_ms", ("7000", Integer(7000), vec![])),
        ("log_retention_batches", ("99", Integer(99), vec![])),
        ("log_retention_hours", ("2", Integer(2), vec![])),
        ("max_write_ops", ("11", Integer(11), vec![])),
        ("max_message_bytes", ("1234", Integer(1234), vec![])),
        ("max_inflight_bytes", ("5000000", Integer(5000000), vec![])),
        ("max_reload_impact", ("250", Integer(250), vec![])),
        (
            "console_listen",
            ("127.0.0.1:8191", s("127.0.0.1:8191"), vec![]),
        ),
        ("max_revision_wait_ms", ("99", Integer(99), vec![])),
        ("max_connections", ("17", Integer(17), vec![])),
        ("max_streams_per_connection", ("9", Integer(9), vec![])),
        ("keepalive_secs", ("5", Integer(5), vec![])),
        ("keepalive_timeout_secs", ("3", Integer(3), vec![])),
        ("handshake_timeout_ms", ("750", Integer(750), vec![])),
        ("slice_depth", ("2", Integer(2), vec![])),
        ("worker_threads", ("3", Integer(3), vec![])),
        ("watch", ("false", Boolean(false), vec![])),
        ("analysis", ("required", s("required"), vec![])),
    ])
}

#[test]
fn every_documented_setting_is_taken_from_its_flag_and_its_environment_variable() {
    let rows = settings_table();
    let samples = samples();
    let keys: BTreeSet<&str> = rows.iter().filter_map(|r| r.key.as_deref()).collect();
    assert_eq!(
        keys,
        samples.keys().copied().collect(),
        "the README's settings and this test's samples differ"
    );

    let defaults = print_config(bin().args(["serve", "--print-config"]));
    let printed: BTreeSet<&str> = defaults.keys().map(String::as_str).collect();
    assert!(
        printed.is_subset(&keys),
        "--print-config shows undocumented settings: {:?}",
        printed.difference(&keys).collect::<Vec<_>>()
    );
    for row in &rows {
        let Some(key) = &row.key else { continue };
        // The documented default is what the binary uses.
        let shown = match defaults.get(key) {
            None => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(toml::Value::Array(a)) if a.is_empty() => String::new(),
            Some(v) => v.to_string(),
        };
        let documented = if row.default == "''" {
            ""
        } else {
            &row.default
        };
        assert_eq!(shown, documented, "default of `{key}`");

        let (value, expected, extra) = &samples[key.as_str()];
        let by_flag = print_config(
            bin()
                .args(["serve", "--print-config"])
                .args(extra)
                .args([row.flag.as_str(), value]),
        );
        assert_eq!(by_flag.get(key), Some(expected), "{} {value}", row.flag);
        let by_env = print_config(
            bin()
                .args(["serve", "--print-config"])
                .args(extra)
                .env(&row.env, value),
        );
        assert_eq!(by_env.get(key), Some(expected), "{}={value}", row.env);
        // A flag wins over the environment.
        if key != "overlays" {
            let both = print_config(
                bin()
                    .args(["serve", "--print-config"])
                    .args(extra)
                    .args([row.flag.as_str(), value])
                    .env(&row.env, "not-this"),
            );
            assert_eq!(
                both.get(key),
                Some(expected),
                "{} over {}",
                row.flag,
                row.env
            );
        }
    }

    // The config file row: by flag and by environment, and the file loses to both.
    let config = rows
        .iter()
        .find(|r| r.key.is_none())
        .expect("the config row");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authz.toml");
    std::fs::write(
        &file,
        "max_batch = 7\nlisten = \"\"\nlisten_unix = \"/run/a.sock\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for c in [
        bin().args(["serve", "--print-config", config.flag.as_str(), path]),
        bin()
            .args(["serve", "--print-config"])
            .env(&config.env, path),
    ] {
        let t = print_config(c);
        assert_eq!(t["max_batch"].as_integer(), Some(7));
        assert_eq!(t["listen"].as_str(), Some(""));
    }
    let t = print_config(
        bin()
            .args(["serve", "--print-config", "--max-batch", "9"])
            .env("BLUE_AUTHZ_MAX_BATCH", "8")
            .env(&config.env, path),
    );
    assert_eq!(t["max_batch"].as_integer(), Some(9));
    let t = print_config(
        bin()
            .args(["serve", "--print-config"])
            .env("BLUE_AUTHZ_MAX_BATCH", "8")
            .env(&config.env, path),
    );
    assert_eq!(t["max_batch"].as_integer(), Some(8));
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    for (args, needle) in [
        (vec!["--listen", "nowhere"], "nowhere"),
        (vec!["--unix-mode", "9z"], "--unix-mode"),
        (
            vec!["--decision-log-sample", "1.5"],
            "--decision-log-sample",
        ),
        (vec!["--log", "=&="], "--log"),
        (vec!["--tls-cert", "/c.pem"], "--tls-key"),
        (vec!["--log-format", "xml"], "xml"),
    ] {
        let out = bin()
            .args(["serve", "--print-config"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// A `blue-authz serve` child process: its addresses (from its start-up line), its standard
/// output.
struct Served {
    server: Server,
    addrs: BTreeMap<&'static str, SocketAddr>,
    /// The runtime's worker count, from its start-up log line.
    workers: Option<usize>,
    /// Standard output, drained on a thread so that the child never blocks on the pipe.
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// Starts the binary and waits until it serves; `expect` names the listeners it must have.
fn serve(c: Command, expect: &[&'static str]) -> Served {
    let mut server = Binary::from_command(c).stdout_piped().spawn();
    let mut pipe = server.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut out = String::new();
        pipe.read_to_string(&mut out).unwrap();
        out
    });
    let started = server.wait_serving().clone();
    let addrs: BTreeMap<&'static str, SocketAddr> = [
        ("decisions", started.decisions),
        ("data", started.data),
        ("metrics", started.metrics),
        ("health", started.health),
    ]
    .into_iter()
    .filter_map(|(name, a)| Some((name, a?)))
    .collect();
    for name in expect {
        assert!(addrs.contains_key(name), "no {name} listener: {started:?}");
    }
    let workers = server
        .wait_log("runtime started", Duration::from_secs(1))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("workers="))
                .and_then(|n| n.parse().ok())
        });
    Served {
        server,
        addrs,
        workers,
        stdout: Some(stdout),
    }
}

impl Served {
    /// SIGTERM, then everything the process wrote on standard output.
    fn stop(&mut self) -> String {
        self.server.signal("-TERM");
        let status = self.server.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{status:?}:\n{}", self.server.log.text());
        self.stdout.take().unwrap().join().unwrap()
    }
}

fn base_args(dir: &Path) -> Vec<(String, String)> {
    let p = |path: &Path| path.to_str().unwrap().to_string();
    vec![
        ("POLICIES".into(), p(&pack())),
        ("DB".into(), p(&dir.join("authz.redb"))),
        ("SEED".into(), p(&pack().join("tests/fixture.json"))),
        ("WATCH".into(), "false".into()),
        ("HTTP_LISTEN".into(), "127.0.0.1:0".into()),
    ]
}

/// Sets each (NAME, value) as `BLUE_AUTHZ_NAME` or as `--name` (`serve`'s flags follow
/// `serve`; `--policies` is global).
fn apply(c: &mut Command, settings: &[(String, String)], by_env: bool) {
    c.arg("serve");
    for (name, value) in settings {
        if by_env {
            c.env(format!("BLUE_AUTHZ_{name}"), value);
        } else {
            c.arg(format!("--{}", name.to_lowercase().replace('_', "-")))
                .arg(value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_configured_by_environment_or_by_flags_listens_checks_its_token_and_logs() {
    for by_env in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("authz.sock");
        let mut settings = base_args(dir.path());
        settings.extend([
            ("LISTEN".into(), "127.0.0.1:0".into()),
            ("DATA_LISTEN".into(), "127.0.0.1:0".into()),
            ("DATA_TOKEN".into(), TOKEN.into()),
            ("LISTEN_UNIX".into(), sock.to_str().unwrap().into()),
            ("METRICS_LISTEN".into(), "127.0.0.1:0".into()),
            ("HEALTH_LISTEN".into(), "127.0.0.1:0".into()),
            ("DECISION_LOG".into(), "true".into()),
            ("LOG".into(), "info".into()),
            ("WORKER_THREADS".into(), "3".into()),
        ]);
        let mut c = bin();
        apply(&mut c, &settings, by_env);
        let mut served = serve(c, &["decisions", "data", "metrics", "health"]);
        let how = if by_env { "environment" } else { "flags" };
        // The runtime reports the workers it has.
        assert_eq!(served.workers, Some(3), "{how}");

        // Decisions on TCP and on the Unix socket.
        let addr = served.addrs["decisions"];
        let mut tcp = AuthorizerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let d = tcp
            .is_authorized(ask("ada", "viewProject", "Blue::Project", "apollo"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.decision, pb::Decision::Allow as i32, "{how}");
        let mut unix = AuthorizerClient::new(unix_channel(&sock).await);
        let d = unix
            .is_authorized(ask("zed", "viewProject", "Blue::Project", "apollo"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.decision, pb::Decision::Deny as i32, "{how}");

        // The data service on its own address, with the token and only with it.
        let mut client = data_client(&served).await;
        let found = client
            .read_entities(read_ada(TOKEN))
            .await
            .unwrap()
            .into_inner();
        assert!(found.missing.is_empty(), "{how}");
        let refused = client.read_entities(read_ada("wrong")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{how}");

        // The health service alone on its own address: SERVING, and no decisions there.
        let health = Channel::from_shared(format!("http://{}", served.addrs["health"]))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let status = tonic_health::pb::health_client::HealthClient::new(health.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: "blue.authz.v1.Authorizer".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let none = AuthorizerClient::new(health)
            .is_authorized(ask("ada", "viewProject", "Blue::Project", "apollo"))
            .await
            .unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unimplemented, "{how}");

        // Metrics on their own address.
        let text = common::get_metrics(served.addrs["metrics"]);
        assert!(text.starts_with("HTTP/1.1 200"), "{how}: {text}");
        assert!(
            text.contains(
                "blue_authz_decisions_total{action=\"viewProject\",decision=\"allow\"} 1"
            ),
            "{how}: {text}"
        );

        // The decision log switch: two decisions, two lines.
        let out = served.stop();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON decision log line"))
            .collect();
        assert_eq!(lines.len(), 2, "{how}: {out}");
        assert_eq!(lines[0]["principal"], "Blue::User::\"ada\"");
        assert_eq!(lines[1]["principal"], "Blue::User::\"zed\"");
    }
}

const LOG_FIELDS: [&str; 10] = [
    "request_id",
    "principal",
    "action",
    "resource",
    "decision",
    "determining_policies",
    "policy_version",
    "revision",
    "latency_us",
    "timestamp",
];

/// Runs a few calls against a server started with `extra` flags and returns its decision log
/// lines (standard output), parsed.
async fn decision_log(extra: &[&str]) -> (Vec<serde_json::Value>, pb::ListAllowedActionsResponse) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = base_args(dir.path());
    settings.push(("LISTEN".into(), "127.0.0.1:0".into()));
    let mut c = bin();
    apply(&mut c, &settings, false);
    c.args(extra);
    let mut served = serve(c, &["decisions"]);
    let mut client = AuthorizerClient::connect(format!("http://{}", served.addrs["decisions"]))
        .await
        .unwrap();
    let mut one = tonic::Request::new(pb::IsAuthorizedRequest {
        context_json: r#"{"role": "comment"}"#.into(),
        entities_json: "[]".into(),
        ..ask("ada", "inviteMember", "Blue::Project", "apollo")
    });
    one.metadata_mut()
        .insert("x-request-id", "req-7".parse().unwrap());
    let d = client.is_authorized(one).await.unwrap().into_inner();
    let batch = pb::BatchIsAuthorizedRequest {
        requests: vec![
            ask("vic", "viewProject", "Blue::Project", "apollo"),
            ask("vic", "editWiki", "Blue::Project", "apollo"),
        ],
        ..Default::default()
    };
    client.batch_is_authorized(batch).await.unwrap();
    let list = client
        .list_allowed_actions(pb::ListAllowedActionsRequest {
            principal: uid("Blue::User", "cleo"),
            resource: uid("Blue::Project", "apollo"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Not a decision: no line.
    client
        .is_authorized(ask("ada", "noSuchAction", "Blue::Project", "apollo"))
        .await
        .unwrap_err();
    let out = served.stop();
    assert_eq!(d.decision, pb::Decision::Allow as i32);
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (lines, list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_writes_one_json_line_per_decision_and_nothing_when_off() {
    let (lines, list) = decision_log(&["--decision-log", "true"]).await;
    for line in &lines {
        for field in LOG_FIELDS {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        assert!(
            line.get("context").is_none(),
            "context logged unasked: {line}"
        );
        assert!(
            line.get("entities").is_none(),
            "entities logged unasked: {line}"
        );
        assert_eq!(line["policy_version"].as_str().unwrap().len(), 16);
        assert!(line["revision"].as_u64().unwrap() >= 1);
    }
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-7");
    assert_eq!(first["method"], "IsAuthorized");
    assert_eq!(first["principal"], "Blue::User::\"ada\"");
    assert_eq!(first["action"], "inviteMember");
    assert_eq!(first["resource"], "Blue::Project::\"apollo\"");
    assert_eq!(first["decision"], "ALLOW");
    assert!(!first["determining_policies"].as_str().unwrap().is_empty());
    // A batch's decisions share one generated request id.
    assert_eq!(lines[1]["method"], "BatchIsAuthorized");
    assert_eq!(lines[1]["request_id"], lines[2]["request_id"]);
    assert_ne!(lines[1]["request_id"], "req-7");
    assert_eq!(lines[1]["decision"], "ALLOW");
    assert_eq!(lines[2]["decision"], "DENY");
    assert_eq!(lines[2]["determining_policies"], "");
    // ListAllowedActions: one line per action it decided; the allowed ones are the answer's.
    let listed = &lines[3..];
    assert!(listed
        .iter()
        .all(|l| l["method"] == "ListAllowedActions" && l["principal"] == "Blue::User::\"cleo\""));
    let actions: Vec<&str> = listed
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    let distinct: BTreeSet<&str> = actions.iter().copied().collect();
    assert_eq!(distinct.len(), actions.len(), "an action logged twice");
    let allowed_logged: BTreeSet<&str> = listed
        .iter()
        .filter(|l| l["decision"] == "ALLOW")
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    let allowed: BTreeSet<&str> = list.allowed.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(allowed_logged, allowed);
    assert!(!allowed.is_empty() && allowed_logged.len() < listed.len());
    for skipped in &list.not_evaluated {
        assert!(
            !distinct.contains(skipped.action.as_str()),
            "{} logged",
            skipped.action
        );
    }

    // Asked for: context and request-scoped entities too.
    let (lines, _) =
        decision_log(&["--decision-log", "true", "--decision-log-context", "true"]).await;
    assert_eq!(lines[0]["context"], r#"{"role": "comment"}"#);
    assert_eq!(lines[0]["entities"], "[]");

    // Off (the default), and sampled at 0: nothing at all on standard output.
    for extra in [
        &[][..],
        &["--decision-log", "true", "--decision-log-sample", "0"][..],
    ] {
        let (lines, _) = decision_log(extra).await;
        assert!(lines.is_empty(), "{extra:?}: {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_samples_the_given_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = base_args(dir.path());
    settings.push(("LISTEN".into(), "127.0.0.1:0".into()));
    settings.push(("DECISION_LOG".into(), "true".into()));
    settings.push(("DECISION_LOG_SAMPLE".into(), "0.5".into()));
    let mut c = bin();
    apply(&mut c, &settings, false);
    let mut served = serve(c, &["decisions"]);
    let mut client = AuthorizerClient::connect(format!("http://{}", served.addrs["decisions"]))
        .await
        .unwrap();
    let batch = pb::BatchIsAuthorizedRequest {
        requests: vec![ask("vic", "viewProject", "Blue::Project", "apollo"); 1000],
        ..Default::default()
    };
    client.batch_is_authorized(batch).await.unwrap();
    let out = served.stop();
    let n = out.lines().count();
    // Binomial(1000, 0.5): 6 standard deviations either side.
    assert!((405..=595).contains(&n), "{n} of 1000 logged at 0.5");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_wrong_value_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needles) in [
        (
            "max_batchh = 7\n",
            vec!["unknown setting `max_batchh`", "authz.toml"],
        ),
        (
            "max_batch = \"seven\"\n",
            vec!["setting `max_batch`", "authz.toml"],
        ),
        (
            "listen = \"nowhere\"\n",
            vec!["setting `listen`", "nowhere"],
        ),
        ("overlays = 3\n", vec!["setting `overlays`"]),
        ("max_batch = \n", vec!["authz.toml"]),
    ] {
        let file = dir.path().join("authz.toml");
        std::fs::write(&file, text).unwrap();
        let out = bin()
            .args(["serve", "--print-config", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        for n in needles {
            assert!(err.contains(n), "{text}: `{n}` not in {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-a-file-42\n").unwrap();
    let mut settings = base_args(dir.path());
    settings.extend([
        ("LISTEN".into(), "127.0.0.1:0".into()),
        ("DATA_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "DATA_TOKEN_FILE".into(),
            token_file.to_str().unwrap().into(),
        ),
    ]);
    let mut c = bin();
    apply(&mut c, &settings, false);
    let served = serve(c, &["data"]);
    let mut client = data_client(&served).await;
    let found = client
        .read_entities(read_ada("from-a-file-42"))
        .await
        .unwrap()
        .into_inner();
    assert!(found.missing.is_empty());
    let refused = client.read_entities(read_ada(TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    drop(served);

    // A missing or empty file, or both a token and a file, are refused by name.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for args in [
        vec!["--data-token-file".to_string(), "/nonexistent/token".into()],
        vec![
            "--data-token-file".to_string(),
            empty.to_str().unwrap().into(),
        ],
        vec![
            "--data-token-file".to_string(),
            token_file.to_str().unwrap().into(),
            "--data-token".into(),
            "x".into(),
        ],
    ] {
        let out = bin()
            .arg("serve")
            .args([
                "--watch",
                "false",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "",
            ])
            .args(["--db", dir.path().join("x.redb").to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("data-token"), "{args:?}: {err}");
    }
}

/// A data-service read of `ada`, carrying `token`.
fn read_ada(token: &str) -> tonic::Request<pb::ReadEntitiesRequest> {
    let mut req = tonic::Request::new(pb::ReadEntitiesRequest {
        uids: vec![uid("Blue::User", "ada").unwrap()],
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// A client of the served data service.
async fn data_client(served: &Served) -> EntityStoreClient<Channel> {
    let data = Channel::from_shared(format!("http://{}", served.addrs["data"]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EntityStoreClient::new(data)
}

#[test]
fn print_config_hides_the_source_password() {
    for (given, shown) in [
        (
            "postgres://blue:s3cret@db:5432/blue",
            "postgres://blue:<redacted>@db:5432/blue",
        ),
        (
            "host=db user=blue password=s3cret dbname=blue",
            "host=db user=blue password=<redacted> dbname=blue",
        ),
    ] {
        let printed = print_config(bin().args(["serve", "--print-config", "--source", given]));
        assert_eq!(printed["source"].as_str(), Some(shown));
    }
}

/// `serve --help` says what `--max-revision-wait-ms` does: it caps the wait whatever the
/// call's deadline, and what a missed revision answers (issue 31).
#[test]
fn serve_help_says_the_revision_wait_is_a_cap() {
    let out = crate::common::server::Binary::new()
        .args(["serve", "--help"])
        .stdout_piped()
        .output();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let at = help
        .find("--max-revision-wait-ms")
        .expect("the flag is listed");
    let text: String = help[at..]
        .split("\n\n")
        .next()
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        text.contains("whatever the call's own deadline") && text.contains("412"),
        "{text}"
    );
}

/// A watched configuration file, changed while serving (issue 31): the decision log and the
/// log filter apply at once; a key that needs a restart is logged by name; an unknown key is
/// refused as at start-up, and nothing of that file applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_applies_what_it_can_and_names_what_needs_a_restart() {
    use blue_authz::service::grpc::pb::policies_client::PoliciesClient;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("blue-authz.toml");
    std::fs::write(&cfg, "decision_log = false\nlog = \"warn\"\n").unwrap();
    let mut server = Binary::serve(&pack(), &dir.path().join("a.redb"))
        .args(["--watch", "true", "--config"])
        .arg(&cfg)
        .env_remove("BLUE_AUTHZ_LOG")
        .stdout_piped()
        .spawn();
    let mut pipe = server.stdout.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut pipe)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    let addr = server.wait_serving().decisions.unwrap();
    let mut client = AuthorizerClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    // Whether the decision log has written the call with this request id.
    let logged = |id: &'static str| {
        let lines = lines.clone();
        move || lines.lock().unwrap().iter().any(|l| l.contains(id))
    };
    let decide = |id: &'static str| {
        let mut req = tonic::Request::new(ask("ada", "viewProject", "Blue::Project", "apollo"));
        req.metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        req
    };
    client
        .is_authorized(decide("before-the-change"))
        .await
        .unwrap();
    assert!(
        !server.log.lines().iter().any(|l| l.contains(" INFO ")),
        "the filter is warn at first"
    );

    std::fs::write(
        &cfg,
        "decision_log = true\nlog = \"info\"\nworker_threads = 3\n",
    )
    .unwrap();
    server
        .wait_log(
            "configuration key `worker_threads` changed: it needs a restart",
            Duration::from_secs(30),
        )
        .expect("the restart-only key is named");
    // The filter is info now: the reload's own info line shows.
    server
        .wait_log("policy files changed nothing", Duration::from_secs(30))
        .expect("info lines after the change");
    client
        .is_authorized(decide("after-the-change"))
        .await
        .unwrap();
    crate::common::until(
        "the decision log to write the call",
        Duration::from_secs(10),
        logged("after-the-change"),
    )
    .await;
    assert!(
        !logged("before-the-change")(),
        "the decision log was off before"
    );

    // A misspelt key: refused whole, as at start-up; the decision log stays on.
    std::fs::write(&cfg, "decison_log = false\nlog = \"info\"\n").unwrap();
    let mut status = PoliciesClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut rejection = None;
    crate::common::until_async(
        "the file to be refused",
        Duration::from_secs(30),
        async || {
            rejection = status
                .get_policy_status(pb::GetPolicyStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .last_rejection;
            rejection.is_some()
        },
    )
    .await;
    let rejection = rejection.unwrap();
    assert!(
        rejection
            .reasons
            .iter()
            .any(|r| r.contains("unknown setting `decison_log`")),
        "{rejection:?}"
    );
    client
        .is_authorized(decide("after-the-refusal"))
        .await
        .unwrap();
    crate::common::until(
        "the decision log to stay on",
        Duration::from_secs(10),
        logged("after-the-refusal"),
    )
    .await;
}
