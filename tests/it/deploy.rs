//! `deploy/`: the Kubernetes example parses and agrees with the binary and the README; the
//! Dockerfile builds with the README's own commands. (No image can be built on these machines:
//! there is no Docker engine.)

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use crate::common::{root, settings_table};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `BLUE_AUTHZ_*` variable of the README's settings table.
fn documented_env() -> Vec<String> {
    settings_table().into_iter().map(|row| row.env).collect()
}

/// A container's environment, each variable a documented setting (a value from a secret
/// stands in as `from-a-secret`).
fn documented_container_env(container: &Value) -> BTreeMap<String, String> {
    let documented = documented_env();
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        assert!(
            documented.contains(&name),
            "{name} is not a documented setting"
        );
        env.insert(
            name,
            var["value"].as_str().unwrap_or("from-a-secret").to_string(),
        );
    }
    env
}

/// `serve --print-config` with exactly these environment variables: they must all parse.
fn print_config(env: &BTreeMap<String, String>) -> toml::Table {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blue-authz"));
    c.env_clear().current_dir(root());
    common::print_config(c.envs(env).args(["serve", "--print-config"]))
}

fn docs(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_kubernetes_sidecar_example_parses_and_agrees_with_the_binary() {
    let path = "deploy/kubernetes/sidecar.yaml";
    let docs = docs(path);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Secret", "Deployment"]);
    let (resolved, sidecar) = check_pod(path, &docs[1]);
    assert_eq!(resolved["source"].as_str(), Some(""));
    // It starts with data: an init container writes the seed file, on a volume the sidecar
    // mounts, before the sidecar starts.
    let seed = resolved["seed"].as_str().unwrap();
    assert!(!seed.is_empty(), "the sidecar has no seed");
    let pod = &docs[1]["spec"]["template"]["spec"];
    let mount_of = |container: &Value, file: &str| -> Option<String> {
        container["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .map(|m| m["name"].as_str().unwrap().to_string())
    };
    let volume = mount_of(&sidecar, seed).expect("the seed is on a mounted volume");
    let init = pod["initContainers"]
        .as_sequence()
        .expect("an init container");
    let writer = init
        .iter()
        .find(|c| {
            mount_of(c, seed).as_deref() == Some(volume.as_str())
                && c["args"]
                    .as_sequence()
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(seed)))
        })
        .expect("an init container that writes the seed file");
    // And fails (so the pod does not start) when there is no snapshot.
    assert!(
        writer["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("--fail")),
        "{writer:?}"
    );
}

/// The build context leaves out build output and databases.
#[test]
fn dockerignore_keeps_target_and_databases_out_of_the_build_context() {
    let text = read(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(patterns.contains(&"target/"), "{patterns:?}");
    assert!(
        patterns.iter().any(|p| p.ends_with("*.redb")),
        "{patterns:?}"
    );
    // Nothing the Dockerfile's build needs is excluded.
    for needed in [
        "src",
        "policies",
        "proto",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
    ] {
        assert!(
            !patterns.iter().any(|p| p.trim_end_matches('/') == needed),
            "{needed} is ignored"
        );
    }
}

#[test]
fn the_kubernetes_fleet_example_parses_and_agrees_with_the_binary() {
    let path = "deploy/kubernetes/fleet.yaml";
    let docs = docs(path);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Secret", "Secret", "Deployment"]);
    let (resolved, sidecar) = check_pod(path, &docs[2]);
    // Every sidecar a replica of the source, whose connection string comes from the Secret
    // and is one the binary accepts; no seed of its own (the source is the truth).
    let source = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "BLUE_AUTHZ_SOURCE")
        .expect("BLUE_AUTHZ_SOURCE");
    let secret = &source["valueFrom"]["secretKeyRef"];
    let named = docs
        .iter()
        .find(|d| d["metadata"]["name"] == secret["name"])
        .expect("the source's Secret");
    let url = named["stringData"][secret["key"].as_str().unwrap()]
        .as_str()
        .unwrap();
    assert!(url.starts_with("postgres://") && url.contains("search_path"));
    assert!(blue_authz::storage::PgSource::new(url).is_ok(), "{url}");
    assert_eq!(resolved["seed"].as_str(), Some(""));
    assert!(!resolved["source"].as_str().unwrap().is_empty());
    // The startup probe waits long enough for a full-scale snapshot.
    let startup = &sidecar["startupProbe"];
    let budget =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(budget >= 120, "{budget} s");
    // Its comment gives the bootstrap figure the README gives (issue 31), within the budget.
    let yaml = read(path);
    let said = yaml
        .split("reads its snapshot first (")
        .nth(1)
        .and_then(|r| r.split(" s at").next())
        .expect("fleet.yaml says how long a bootstrap takes");
    let readme = read("README.md");
    assert!(
        readme.contains("bootstraps 1.19 million entities in\nabout")
            && readme.contains(&format!("({said} s, peak")),
        "fleet.yaml's {said} s is not the README's bootstrap figure"
    );
    let slowest: u64 = said.rsplit('–').next().unwrap().parse().unwrap();
    assert!(
        slowest * 2 <= budget,
        "{slowest} s against a budget of {budget} s"
    );
    assert!(docs[2]["spec"]["replicas"].as_u64().unwrap() > 2);
}

/// The checks both pod examples pass; returns the sidecar's resolved settings and the sidecar.
fn check_pod(path: &str, deployment: &Value) -> (toml::Table, Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 2, "the app and its sidecar");
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "blue-authz")
        .expect("the blue-authz container");

    // Its environment: documented settings only, and the binary accepts every value.
    let resolved = print_config(&documented_container_env(sidecar));
    assert_eq!(resolved["listen"].as_str(), Some("127.0.0.1:50051"));
    assert_eq!(resolved["data_token"].as_str(), Some("<redacted>"));
    // Every pod proves the pack's invariants (the image carries cvc5) or does not serve.
    assert_eq!(resolved["analysis"].as_str(), Some("required"), "{path}");
    // The AuthZEN listener is named, on loopback beside the gRPC one, and the app is told it.
    assert_eq!(resolved["http_listen"].as_str(), Some("127.0.0.1:8180"));
    assert!(
        sidecar["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "BLUE_AUTHZ_HTTP_LISTEN"),
        "{path} names the AuthZEN listener"
    );
    let app = containers
        .iter()
        .find(|c| c["name"] != "blue-authz")
        .unwrap();
    assert!(
        app["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["value"].as_str() == Some("http://127.0.0.1:8180")),
        "{path}: the app is told where AuthZEN is"
    );

    // Probes: gRPC health, on the health-only listener, which the container exposes.
    let health_port = port_of(resolved["health_listen"].as_str().unwrap());
    let exposed: Vec<u64> = sidecar["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert!(exposed.contains(&health_port));
    assert!(exposed.contains(&port_of(resolved["metrics_listen"].as_str().unwrap())));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let grpc = &sidecar[probe]["grpc"];
        assert_eq!(grpc["port"].as_u64(), Some(health_port), "{probe}");
    }
    assert_eq!(
        sidecar["readinessProbe"]["grpc"]["service"].as_str(),
        Some(blue_authz::service::server::AUTHORIZER_SERVICE)
    );

    // Policies from ConfigMaps mounted where BLUE_AUTHZ_POLICIES points, one per directory
    // of the pack; the data volume holds the database.
    let policies = resolved["policies"].as_str().unwrap();
    let mounts: BTreeMap<&str, &str> = sidecar["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    // One ConfigMap holds the whole pack (a kubelet update never shows a policy without its
    // tests), mounted where BLUE_AUTHZ_POLICIES points, its items putting every file of
    // policies/ back at its path.
    let yaml = read(path);
    let config_maps: Vec<(&str, &Value)> = volumes
        .iter()
        .filter(|(_, v)| !v["configMap"].is_null())
        .map(|(name, v)| (*name, *v))
        .collect();
    assert_eq!(config_maps.len(), 1, "one ConfigMap for the pack");
    let (volume, cm) = config_maps[0];
    assert_eq!(mounts[volume], policies);
    let name = cm["configMap"]["name"].as_str().unwrap();
    let command = format!(
        "kubectl create configmap {name} --from-file=policies/ --from-file=policies/optional/ --from-file=policies/tests/"
    );
    assert!(
        yaml.contains(&command),
        "the example does not say `{command}`"
    );
    let items: BTreeMap<String, String> = cm["configMap"]["items"]
        .as_sequence()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut files = BTreeMap::new();
    for dir in ["", "optional/", "tests/"] {
        for entry in std::fs::read_dir(root().join("policies").join(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                let file = entry.file_name().into_string().unwrap();
                // --from-file names each key after its file: no two may share a name.
                assert!(
                    files.values().all(|k| k != &file),
                    "two files of the pack are named {file}"
                );
                files.insert(format!("{dir}{file}"), file);
            }
        }
    }
    assert_eq!(
        items, files,
        "the ConfigMap's items are every file of policies/"
    );
    assert!(
        files.keys().any(|f| f.starts_with("tests/")),
        "the tests are in it"
    );
    let db = resolved["db"].as_str().unwrap();
    let data = mounts["data"];
    assert!(
        db.starts_with(&format!("{data}/")),
        "{db} is not on the data volume"
    );
    (resolved.clone(), sidecar.clone())
}

/// The RUN commands of the Dockerfile's build stage.
fn dockerfile_build_steps() -> Vec<String> {
    let text = read("deploy/Dockerfile");
    let build = text
        .split("\nFROM ")
        .find(|stage| stage.contains("AS build"))
        .expect("a build stage");
    build
        .lines()
        .filter_map(|l| l.strip_prefix("RUN "))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn the_dockerfile_builds_with_the_readme_commands() {
    let readme = read("README.md");
    let section = readme
        .split("### Building a release")
        .nth(1)
        .expect("the README has a `Building a release` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let readme_steps: Vec<String> = block
        .lines()
        .map(|l| l.split(" #").next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(dockerfile_build_steps(), readme_steps);
    assert!(readme.contains("no Docker engine"));

    // The runtime image's environment is documented and accepted.
    let text = read("deploy/Dockerfile");
    let env_block = text.split("\nENV ").nth(1).unwrap();
    let mut env = BTreeMap::new();
    for part in env_block.split('\n').take_while(|l| !l.starts_with("USER")) {
        let part = part.trim().trim_end_matches('\\').trim();
        if let Some((k, v)) = part.split_once('=') {
            assert!(documented_env().contains(&k.to_string()), "{k}");
            env.insert(k.to_string(), v.to_string());
        }
    }
    assert_eq!(env.len(), 9);
    let resolved = print_config(&env);
    assert_eq!(resolved["seed"].as_str(), Some(""));
    assert_eq!(resolved["analysis"].as_str(), Some("required"));

    // Every EXPOSEd port is a listener the image's settings bind on the container's own
    // address, and every listener bound so is EXPOSEd (the binary's loopback defaults reach
    // nothing outside the container).
    let exposed: std::collections::BTreeSet<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u64>().unwrap()))
        .collect();
    let mut open = std::collections::BTreeSet::new();
    for key in [
        "listen",
        "data_listen",
        "http_listen",
        "health_listen",
        "metrics_listen",
    ] {
        let addr = resolved[key].as_str().unwrap_or("");
        if addr.starts_with("0.0.0.0:") || addr.starts_with("[::]:") {
            open.insert(port_of(addr));
        } else {
            assert!(
                addr.is_empty() || addr.starts_with("127.0.0.1:"),
                "{key} = {addr}"
            );
        }
    }
    assert_eq!(exposed, open, "EXPOSE and the listeners the image opens");
    assert!(open.contains(&8180), "the AuthZEN listener is open");
}

/// The runtime image carries the solver: a `solver` stage installs cvc5 from the same Debian
/// release the runtime image is built on and runs `deploy/solver.sh`, which the runtime stage
/// copies whole. The script is run here, on this machine's Debian and cvc5: what it copies is
/// cvc5 and every library cvc5 needs beyond what distroless `cc` has, and that copy runs.
#[test]
fn the_runtime_image_carries_the_solver() {
    let text = read("deploy/Dockerfile");
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    let solver = stages
        .iter()
        .find(|s| s.lines().next().unwrap().ends_with(" AS solver"))
        .expect("a solver stage");
    let runtime = stages.last().unwrap();
    assert!(solver.starts_with("debian:bookworm"), "{solver}");
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-debian12"),
        "{runtime}"
    );
    assert!(
        solver.contains("apt-get install -y --no-install-recommends cvc5"),
        "{solver}"
    );
    assert!(solver.contains("sh /solver.sh /solver"), "{solver}");
    assert!(
        runtime.contains("COPY --from=solver /solver/ /"),
        "{runtime}"
    );

    if Command::new("cvc5").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "cvc5 is required in CI"
        );
        eprintln!("\n*** SKIPPED running deploy/solver.sh: no cvc5 on this machine ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg(root().join("deploy/solver.sh"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cvc5 = dir.path().join("usr/local/bin/cvc5");
    assert!(cvc5.is_file());
    // What cvc5 loads, beyond the distroless cc base, is in the copy at its real path.
    let ldd = Command::new("ldd").arg(&cvc5).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let base = [
        "libc.so",
        "libm.so",
        "libstdc++.so",
        "libgcc_s.so",
        "ld-linux",
        "linux-vdso",
    ];
    let mut needed = 0;
    for line in ldd.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.is_empty() || base.iter().any(|b| name.contains(b)) {
            continue;
        }
        let path = line
            .split("=> ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap();
        let real_dir = std::fs::canonicalize(std::path::Path::new(path).parent().unwrap()).unwrap();
        let copied = dir
            .path()
            .join(real_dir.strip_prefix("/").unwrap())
            .join(name);
        assert!(
            copied.is_file(),
            "{name} is not in the image's copy: {copied:?}"
        );
        needed += 1;
    }
    assert!(needed >= 2, "cvc5's own libraries: {ldd}");
    // The copy runs on its own libraries, and stays small.
    let libs = dir.path().join("usr/lib/x86_64-linux-gnu");
    let run = Command::new(&cvc5)
        .arg("--version")
        .env("LD_LIBRARY_PATH", &libs)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&run.stdout).contains("cvc5 version"));
    let bytes: u64 = walk(dir.path())
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    eprintln!("the solver adds {:.1} MB to the image", bytes as f64 / 1e6);
    assert!(bytes < 64_000_000, "{bytes} bytes");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The Envoy variant: Envoy, the app and blue-authz in one pod, ext_authz over the Unix socket
/// that `deploy/envoy/envoy.yaml` names and blue-authz listens on, in a volume both mount; the
/// Envoy configuration is that file, from a ConfigMap; the pack's ConfigMap has every file.
#[test]
fn the_kubernetes_envoy_sidecar_example_agrees_with_envoy_yaml_and_the_binary() {
    let path = "deploy/kubernetes/sidecar-envoy.yaml";
    let docs = docs(path);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Secret", "Deployment"]);
    let pod = &docs[1]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    let named = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no {n} container"))
    };
    let (envoy, sidecar) = (named("envoy"), named("blue-authz"));
    let resolved = print_config(&documented_container_env(sidecar));
    // The socket Envoy's cluster names is the one blue-authz listens on.
    let envoy_yaml: Value = serde_yaml_ng::from_str(&read("deploy/envoy/envoy.yaml")).unwrap();
    let cluster = envoy_yaml["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "blue_authz")
        .expect("the blue_authz cluster");
    let socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["pipe"]["path"]
        .as_str()
        .expect("a Unix socket")
        .to_string();
    assert_eq!(resolved["listen_unix"].as_str(), Some(socket.as_str()));
    assert_eq!(
        resolved["listen"].as_str(),
        Some(""),
        "no TCP decision port"
    );
    // Both mount the socket's directory from the same volume.
    let mount = |c: &Value, dir: &str| -> Option<String> {
        c["volumeMounts"]
            .as_sequence()?
            .iter()
            .find(|m| m["mountPath"] == dir)
            .map(|m| m["name"].as_str().unwrap().to_string())
    };
    let dir = std::path::Path::new(&socket)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let shared = mount(sidecar, &dir).expect("blue-authz mounts the socket's directory");
    assert_eq!(mount(envoy, &dir).as_deref(), Some(shared.as_str()));
    // Envoy runs envoy.yaml from the ConfigMap the comment says how to make.
    let args: Vec<&str> = envoy["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["-c", "/etc/envoy/envoy.yaml"]),
        "{args:?}"
    );
    let config_volume = mount(envoy, "/etc/envoy").expect("envoy.yaml is mounted");
    let volumes = pod["volumes"].as_sequence().unwrap();
    let cm = volumes
        .iter()
        .find(|v| v["name"] == config_volume.as_str())
        .unwrap();
    let cm_name = cm["configMap"]["name"].as_str().unwrap();
    assert!(read(path).contains(&format!(
        "kubectl create configmap {cm_name} --from-file=deploy/envoy/envoy.yaml"
    )));
    // The pack's ConfigMap lists every file of policies/, routes.toml included.
    let items: Vec<&str> = volumes.iter().find(|v| v["name"] == "policies").unwrap()["configMap"]
        ["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    let sidecar_yaml = docs_items("deploy/kubernetes/sidecar.yaml");
    assert_eq!(
        items,
        sidecar_yaml.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(items.contains(&"routes.toml"));
}

/// The pack ConfigMap's item paths of a manifest, in order.
fn docs_items(path: &str) -> Vec<String> {
    let docs = docs(path);
    docs[1]["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "policies")
        .unwrap()["configMap"]["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect()
}
