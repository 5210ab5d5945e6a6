//! `blue-authz check`: one decision against an entities file, with its explanation.

use std::path::PathBuf;

use super::{list, load_or_report, AnyError, Exit};
use crate::engine::error::{Field, RequestError};
use crate::engine::explain::{Explanation, Why};
use crate::engine::index::EntityStore;
use crate::engine::pack::PackSpec;
use crate::engine::request::{self, ContextMap, DecisionRequest, UidRef};
use crate::engine::View;

#[derive(clap::Args)]
pub struct CheckCommand {
    /// Cedar JSON entities file.
    #[arg(long)]
    entities: PathBuf,
    /// Principal, e.g. 'Blue::User::"ada"'.
    #[arg(long)]
    principal: String,
    /// Action id, e.g. viewProject.
    #[arg(long)]
    action: String,
    /// Resource, e.g. 'Blue::Project::"apollo"'.
    #[arg(long)]
    resource: String,
    /// Context as a Cedar JSON record.
    #[arg(long, default_value = "{}")]
    context: String,
    /// For a deny that nothing permitted, say which part of each permit failed, and the
    /// values it read.
    #[arg(long)]
    explain: bool,
}

pub fn run(spec: &PackSpec, args: CheckCommand) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let store = EntityStore::load_file(&args.entities, &pack.entities)?;
    let (pt, pid) = split_uid(&args.principal, "--principal")?;
    let (rt, rid) = split_uid(&args.resource, "--resource")?;
    let context = context_flag(&args.context)?;
    let view = View::new(&pack, &store);
    let req = view
        .check(&DecisionRequest {
            principal: UidRef { ty: &pt, id: &pid },
            action: request::action_id(&args.action),
            resource: UidRef { ty: &rt, id: &rid },
            context: context.as_ref(),
            entities: &[],
        })
        .map_err(flag_error)?;
    let explained = args.explain.then(|| view.explain(&req));
    let d = match &explained {
        Some(e) => e.decision.clone(),
        None => view.decide(&req),
    };
    println!("decision: {}", if d.allow { "ALLOW" } else { "DENY" });
    println!("determining policies: {}", list(&d.determining));
    println!("errors: {}", list(&d.errors));
    println!("policy version: {}", pack.version);
    if let Some(e) = explained {
        print_explanation(&e);
    }
    Ok(Exit::Success)
}

fn print_explanation(e: &Explanation) {
    match e.why {
        Why::Permitted => println!("why: permitted by {}", list(&e.decision.determining)),
        Why::Forbidden => println!("why: forbidden by {}", list(&e.decision.determining)),
        Why::NothingPermits if e.permits.is_empty() => {
            println!("why: no permit applies to this action")
        }
        Why::NothingPermits => {
            println!("why: no permit holds");
            for u in &e.permits {
                println!("  {}: {}", u.policy, u.words);
                println!("    failed: {}", u.failed);
                for r in &u.read {
                    if r.ancestors.is_empty() {
                        println!("    read: {} = {}", r.expr, r.value);
                    } else {
                        println!(
                            "    read: {} = {} (in {})",
                            r.expr,
                            r.value,
                            r.ancestors.join(", ")
                        );
                    }
                }
            }
        }
    }
}

/// The `--context` flag read as a JSON object (empty: none).
pub(super) fn context_flag(text: &str) -> Result<Option<ContextMap>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err("--context: must be a JSON object".into()),
        Err(e) => Err(format!("--context: invalid JSON: {e}")),
    }
}

/// Splits `Type::"id"` (or `Type::id`) into type and id.
pub(super) fn split_uid(s: &str, flag: &str) -> Result<(String, String), String> {
    let (ty, id) = s.rsplit_once("::").ok_or_else(|| {
        format!("{flag}: `{s}` is not an entity reference like Blue::User::\"ada\"")
    })?;
    let id = id
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .unwrap_or(id);
    Ok((ty.to_string(), id.to_string()))
}

/// A request error in the words of this command's flags (the engine names request fields).
fn flag_error(e: RequestError) -> String {
    let flag = match &e.field {
        Field::Principal(_) => "--principal".to_string(),
        Field::Resource(_) => "--resource".to_string(),
        Field::Action(_) => "--action".to_string(),
        Field::Context(None) => "--context".to_string(),
        Field::Context(Some(attr)) => format!("--context: {attr}"),
        _ => return e.to_string(),
    };
    format!("{flag}: {}", e.message)
}
