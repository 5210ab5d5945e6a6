//! `blue-authz check`: one decision against an entities file, with its explanation.

use std::path::PathBuf;

use super::{list, load_or_report, AnyError, Exit};
use crate::engine::decide::{self, DEFAULT_SLICE_DEPTH};
use crate::engine::index::EntityStore;
use crate::engine::pack::PackSpec;
use crate::engine::request::{self, RawRequest, UidRef};

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
}

pub fn run(spec: &PackSpec, args: CheckCommand) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let store = EntityStore::load_file(&args.entities, &pack.entities)?;
    let (pt, pid) = split_uid(&args.principal, "--principal")?;
    let (rt, rid) = split_uid(&args.resource, "--resource")?;
    let raw = RawRequest {
        principal: UidRef { ty: &pt, id: &pid },
        action: request::action_id(&args.action),
        resource: UidRef { ty: &rt, id: &rid },
        context_json: &args.context,
        entities_json: "",
    };
    let req = request::check(&pack, &store, &raw).map_err(flag_error)?;
    let d = decide::decide(&pack, &store, &req, DEFAULT_SLICE_DEPTH);
    println!("decision: {}", if d.allow { "ALLOW" } else { "DENY" });
    println!("determining policies: {}", list(&d.determining));
    println!("errors: {}", list(&d.errors));
    println!("policy version: {}", pack.version);
    Ok(Exit::Success)
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
fn flag_error(e: crate::engine::error::RequestError) -> String {
    let field = e.field.as_str();
    let flag = if field.starts_with("principal") {
        "--principal".to_string()
    } else if field.starts_with("resource") {
        "--resource".to_string()
    } else if field.starts_with("action") {
        "--action".to_string()
    } else if field == "context_json" || field == "context" {
        "--context".to_string()
    } else if let Some(attr) = field.strip_prefix("context.") {
        format!("--context: {attr}")
    } else {
        return e.to_string();
    };
    format!("{flag}: {}", e.message)
}
