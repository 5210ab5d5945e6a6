//! An explanation (`engine::explain`) as JSON, the one form the HTTP edges share: AuthZEN's
//! `context.reason_admin` and the console's explorer.

use serde_json::{json, Value};

use crate::engine::explain::{Explanation, Why};

/// `{"why", "policies", "unmet_permits": [{"policy", "failed", "words", "read", "error"?}]}`.
pub(crate) fn explanation(e: &Explanation) -> Value {
    json!({
        "why": match e.why {
            Why::Permitted => "permitted",
            Why::Forbidden => "forbidden",
            Why::NothingPermits => "nothing_permits",
        },
        "policies": e.decision.determining,
        "unmet_permits": e.permits.iter().map(|u| {
            let mut m = json!({
                "policy": u.policy,
                "failed": u.failed,
                "words": u.words,
                "read": u.read.iter().map(|r| json!({
                    "expr": r.expr, "value": r.value, "ancestors": r.ancestors
                })).collect::<Vec<_>>(),
            });
            if let Some(err) = &u.error {
                m["error"] = json!(err);
            }
            m
        }).collect::<Vec<_>>(),
    })
}
