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
    let documented = documented_env();
    let mut env = BTreeMap::new();
    for var in sidecar["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        assert!(
            documented.contains(&name),
            "{name} is not a documented setting"
        );
        let value = match var["value"].as_str() {
            Some(v) => v.to_string(),
            None => "from-a-secret".to_string(),
        };
        env.insert(name, value);
    }
    let resolved = print_config(&env);
    assert_eq!(resolved["listen"].as_str(), Some("127.0.0.1:50051"));
    assert_eq!(resolved["data_token"].as_str(), Some("<redacted>"));

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
    assert_eq!(env.len(), 4);
    let resolved = print_config(&env);
    assert_eq!(resolved["seed"].as_str(), Some(""));
}
