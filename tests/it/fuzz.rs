//! Random and mutated requests thrown at the running server: every one is answered with a
//! decision or INVALID_ARGUMENT, never a panic, an internal error or a dropped connection, and
//! the server keeps serving correctly afterwards.

use crate::common;

use crate::common::case_request;

use blue_authz::authoring::suite;
use blue_authz::service::grpc::pb::{self, authorizer_client::AuthorizerClient};
use blue_authz::service::server::{self, Limits};
use tonic::Code;

/// The generator's deterministic RNG, with fuzzing helpers.
struct Rng(blue_authz::bench::gen::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn string(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", "9", "_", "-", ":", "::", "\"", "\\", "'", " ", "{", "}", "[", "]", ",",
            "Blue", "User", "Action", "Role", "Blue::", "é", "\u{0}", "\u{202e}", "🦀", "\n",
            "__entity", "null", "true", "1e999", "-0",
        ];
        let n = self.below(12);
        (0..n).map(|_| self.pick(PIECES)).collect()
    }
    fn json(&mut self, depth: usize) -> serde_json::Value {
        use serde_json::{json, Value};
        match if depth > 3 {
            self.below(4)
        } else {
            self.below(7)
        } {
            0 => Value::Null,
            1 => json!(self.next() as i64),
            2 => json!(self.string()),
            3 => json!(self.below(2) == 0),
            4 => Value::Array((0..self.below(4)).map(|_| self.json(depth + 1)).collect()),
            5 => {
                let keys = [
                    "role", "level", "with", "type", "id", "__entity", "uid", "attrs", "parents",
                ];
                Value::Object(
                    (0..self.below(4))
                        .map(|_| (self.pick(&keys).to_string(), self.json(depth + 1)))
                        .collect(),
                )
            }
            _ => {
                json!({"type": self.pick(&["Blue::User", "Blue::Role", "Blue::Nope", ""]), "id": self.string()})
            }
        }
    }
    /// Flips, deletes or duplicates a few characters.
    fn mutate(&mut self, s: &str) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        for _ in 0..=self.below(3) {
            if chars.is_empty() {
                chars.push('x');
            }
            let i = self.below(chars.len());
            match self.below(3) {
                0 => {
                    chars[i] = self
                        .pick(&["\"", "{", "x", ":", "]", "\\", "é"])
                        .chars()
                        .next()
                        .unwrap()
                }
                1 => {
                    chars.remove(i);
                }
                _ => {
                    let c = chars[i];
                    chars.insert(i, c);
                }
            }
        }
        chars.into_iter().collect()
    }
}

fn uid(ty: String, id: String) -> Option<pb::EntityUid> {
    Some(pb::EntityUid { r#type: ty, id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_and_mutated_requests() {
    let root = common::root();
    let dir = tempfile::tempdir().unwrap();
    let mut running = server::start(common::config(dir.path(), Limits::default()))
        .await
        .unwrap();
    running.load().await.unwrap();
    let addr = running.addr.unwrap();

    let suites = suite::load_suites(&root.join("policies/tests")).unwrap();
    let cases = suite::effective_cases(&suites, &[]);
    let entity_sample = std::fs::read_to_string(root.join("policies/tests/fixture.json")).unwrap();
    let entity_sample: serde_json::Value = serde_json::from_str(&entity_sample).unwrap();
    let entity_texts: Vec<String> = entity_sample
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::Value::Array(vec![e.clone()]).to_string())
        .collect();

    const TASKS: u64 = 4;
    const PER_TASK: usize = 2600;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let cases = cases.clone();
        let entity_texts = entity_texts.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(blue_authz::bench::gen::Rng::new(t + 1));
            let mut client = AuthorizerClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (mut decided, mut invalid) = (0usize, 0usize);
            for _ in 0..PER_TASK {
                let case = &cases[rng.below(cases.len())];
                let mut req = case_request(case);
                // Mutate up to 3 fields, or replace them with random ones.
                for _ in 0..rng.below(4) {
                    match rng.below(13) {
                        0 => {
                            req.principal = if rng.below(4) == 0 {
                                None
                            } else {
                                uid(rng.string(), rng.string())
                            }
                        }
                        1 => {
                            let p = req.principal.take().unwrap_or_default();
                            req.principal = uid(rng.mutate(&p.r#type), rng.mutate(&p.id));
                        }
                        2 => {
                            req.action = uid(
                                rng.pick(&["Blue::Action", "", "Blue::User"]).into(),
                                rng.string(),
                            )
                        }
                        3 => {
                            let a = req.action.take().unwrap_or_default();
                            req.action = uid(a.r#type, rng.mutate(&a.id));
                        }
                        4 => req.resource = uid(rng.string(), rng.string()),
                        5 => {
                            let r = req.resource.take().unwrap_or_default();
                            req.resource = uid(rng.mutate(&r.r#type), rng.mutate(&r.id));
                        }
                        6 => req.context_json = rng.json(0).to_string(),
                        7 => req.context_json = rng.mutate(&req.context_json),
                        8 => {
                            let i = rng.below(entity_texts.len());
                            req.entities_json = rng.mutate(&entity_texts[i]);
                        }
                        9 => {
                            req.entities_json =
                                serde_json::Value::Array(vec![rng.json(1)]).to_string()
                        }
                        // Ids alone: well-formed requests about entities that may not exist.
                        10 => {
                            if let Some(p) = req.principal.as_mut() {
                                p.id = rng.mutate(&p.id);
                            }
                        }
                        11 => {
                            if let Some(r) = req.resource.as_mut() {
                                r.id = rng.string();
                            }
                        }
                        _ => {
                            let i = rng.below(entity_texts.len());
                            req.entities_json = entity_texts[i].clone();
                        }
                    }
                }
                let list = rng.below(10) == 0;
                let result = if list {
                    client
                        .list_allowed_actions(pb::ListAllowedActionsRequest {
                            principal: req.principal.clone(),
                            resource: req.resource.clone(),
                            context_json: req.context_json.clone(),
                            entities_json: req.entities_json.clone(),
                            min_revision: 0,
                            each_declared_context: rng.below(2) == 0,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                } else {
                    client.is_authorized(req.clone()).await.map(|r| {
                        let d = r.into_inner().decision;
                        assert!(d == pb::Decision::Allow as i32 || d == pb::Decision::Deny as i32);
                    })
                };
                match result {
                    Ok(()) => decided += 1,
                    Err(s) if s.code() == Code::InvalidArgument => {
                        assert!(!s.message().is_empty());
                        invalid += 1;
                    }
                    Err(s) => panic!("{req:?} answered {s:?}"),
                }
            }
            (decided, invalid)
        }));
    }
    let (mut decided, mut invalid) = (0, 0);
    for h in handles {
        let (d, i) = h.await.expect("a fuzz task panicked");
        decided += d;
        invalid += i;
    }
    println!("{decided} decided, {invalid} invalid arguments");
    assert_eq!(decided + invalid, TASKS as usize * PER_TASK);
    assert!(decided + invalid >= 10_000);
    // Both kinds of answer occurred: the mutations reach the decision path and its checks.
    assert!(
        decided > 500 && invalid > 500,
        "{decided} decided, {invalid} invalid"
    );

    // Still serving, and still right.
    let mut client = AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for case in cases.iter().filter(|c| c.expect.invalid.is_none()).take(50) {
        let r = client
            .is_authorized(case_request(case))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.decision == pb::Decision::Allow as i32,
            case.expect.allow,
            "{}",
            case.name
        );
    }
    running.shutdown().await.unwrap();
}
