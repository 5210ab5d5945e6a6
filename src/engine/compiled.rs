//! Policies compiled for evaluation: each policy's whole condition as one cedar-policy-core
//! expression without source locations, built once at load (the input of plans and of
//! Cedar's evaluator alike).

use cedar_policy::{Policy, PolicySet};

use crate::engine::error::CompileError;

/// One policy ready for Cedar's evaluator: its whole condition (scope and `when`/`unless`
/// clauses) as one expression, built once at load instead of per request, and without source
/// locations (evaluation would otherwise copy them into every intermediate value).
#[derive(Debug)]
pub struct Compiled {
    pub id: cedar_policy_core::ast::PolicyID,
    /// The id as decisions name it.
    pub name: String,
    pub forbid: bool,
    pub condition: cedar_policy_core::ast::Expr,
}

/// Compiles a policy set for evaluation: each policy goes through Cedar's JSON form (which
/// carries no source locations) and its condition is built once.
pub fn compile(set: &PolicySet) -> Result<Vec<Compiled>, CompileError> {
    let failed = |p: &Policy, message: String| CompileError {
        policy: p.id().to_string(),
        message,
    };
    let mut plain = PolicySet::new();
    for p in set.policies() {
        let json = p
            .to_json()
            .map_err(|e| failed(p, format!("has no JSON form: {e}")))?;
        let again = Policy::from_json(Some(p.id().clone()), json)
            .map_err(|e| failed(p, format!("does not round-trip through JSON: {e}")))?;
        plain
            .add(again)
            .map_err(|e| failed(p, format!("cannot be added: {e}")))?;
    }
    let ast: &cedar_policy_core::ast::PolicySet = plain.as_ref();
    Ok(ast
        .policies()
        .map(|p| Compiled {
            id: p.id().clone(),
            name: p.id().to_string(),
            forbid: p.effect() == cedar_policy_core::ast::Effect::Forbid,
            condition: p.condition(),
        })
        .collect())
}
