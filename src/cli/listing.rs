//! `blue-authz list-resources` and `list-subjects`: a whole listing against an entities file,
//! for policy authors (every page, in id order, with the policies that allowed each).

use std::path::PathBuf;

use super::check::split_uid;
use super::{load_or_report, AnyError, Exit};
use crate::engine::error::{Field, RequestError};
use crate::engine::index::EntityStore;
use crate::engine::list::{ListRequest, Side, MAX_PAGE_SIZE};
use crate::engine::pack::PackSpec;
use crate::engine::request::{self, UidRef};
use crate::engine::View;

#[derive(clap::Args)]
pub struct ListResourcesCommand {
    /// Cedar JSON entities file.
    #[arg(long)]
    entities: PathBuf,
    /// Principal, e.g. 'Blue::User::"ada"'.
    #[arg(long)]
    principal: String,
    /// Action id, e.g. viewRecord.
    #[arg(long)]
    action: String,
    /// The entity type to list, e.g. Blue::Record.
    #[arg(long = "type")]
    ty: String,
    /// Context as a Cedar JSON record.
    #[arg(long, default_value = "{}")]
    context: String,
}

#[derive(clap::Args)]
pub struct ListSubjectsCommand {
    /// Cedar JSON entities file.
    #[arg(long)]
    entities: PathBuf,
    /// Resource, e.g. 'Blue::Project::"apollo"'.
    #[arg(long)]
    resource: String,
    /// Action id, e.g. editWiki.
    #[arg(long)]
    action: String,
    /// The principal type to list, e.g. Blue::User.
    #[arg(long = "type")]
    ty: String,
    /// Context as a Cedar JSON record.
    #[arg(long, default_value = "{}")]
    context: String,
}

pub fn resources(spec: &PackSpec, args: ListResourcesCommand) -> Result<Exit, AnyError> {
    let (t, id) = split_uid(&args.principal, "--principal")?;
    run(
        spec,
        Side::Resources,
        (&args.entities, UidRef { ty: &t, id: &id }),
        (&args.action, &args.ty, &args.context),
    )
}

pub fn subjects(spec: &PackSpec, args: ListSubjectsCommand) -> Result<Exit, AnyError> {
    let (t, id) = split_uid(&args.resource, "--resource")?;
    run(
        spec,
        Side::Principals,
        (&args.entities, UidRef { ty: &t, id: &id }),
        (&args.action, &args.ty, &args.context),
    )
}

fn run(
    spec: &PackSpec,
    listed: Side,
    (entities, other): (&PathBuf, UidRef<'_>),
    (action, ty, context): (&str, &str, &str),
) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let store = EntityStore::load_file(entities, &pack.entities)?;
    let context = super::check::context_flag(context)?;
    let view = View::new(&pack, &store);
    let mut token = String::new();
    let (mut count, mut narrowed) = (0, true);
    loop {
        let page = view
            .list(&ListRequest {
                listed,
                other,
                action: request::action_id(action),
                listed_type: ty,
                context: context.as_ref(),
                entities: &[],
                page_size: MAX_PAGE_SIZE,
                page_token: &token,
            })
            .map_err(|e| flag_error(e, listed))?;
        narrowed &= page.narrowed;
        for item in &page.items {
            println!("{}  ({})", item.id, item.determining.join(", "));
        }
        count += page.items.len();
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let what = match listed {
        Side::Resources => "resources",
        Side::Principals => "principals",
    };
    eprintln!(
        "{count} {what} of type {ty} allowed to {action}; candidates {}",
        if narrowed {
            "found through the hierarchy and the reverse attribute index"
        } else {
            "were every entity of the type (a permit gives no way to narrow them)"
        }
    );
    Ok(Exit::Success)
}

/// A request error in the words of this command's flags.
fn flag_error(e: RequestError, listed: Side) -> String {
    let flag = match (&e.field, listed) {
        (Field::Principal(_), Side::Resources) => "--principal".to_string(),
        (Field::Resource(_), Side::Principals) => "--resource".to_string(),
        (Field::ListedType(_), _) => "--type".to_string(),
        (Field::Context(None), _) => "--context".to_string(),
        (Field::Context(Some(attr)), _) => format!("--context: {attr}"),
        (Field::Action(_), _) => "--action".to_string(),
        _ => return e.to_string(),
    };
    format!("{flag}: {}", e.message)
}

/// `blue-authz list-bench`.
pub fn bench(spec: &PackSpec, scale: f64, rounds: usize) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    crate::bench::listing::run(&pack, scale, rounds.max(1));
    Ok(Exit::Success)
}
