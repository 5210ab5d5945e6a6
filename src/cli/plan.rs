//! `blue-authz plan`: which resources of a type a principal may act on, as a condition over
//! the resources' own attributes, against an entities file (the residual policies, the
//! condition as JSON, and with `--sql` the PostgreSQL `WHERE` fragment and its parameters).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::check::split_uid;
use super::{load_or_report, AnyError, Exit};
use crate::engine::error::{Field, RequestError};
use crate::engine::index::EntityStore;
use crate::engine::pack::PackSpec;
use crate::engine::planner::{json, PlanRequest};
use crate::engine::request::{self, UidRef};
use crate::engine::View;

#[derive(clap::Args)]
pub struct PlanCommand {
    /// Cedar JSON entities file.
    #[arg(long)]
    entities: PathBuf,
    /// Principal, e.g. 'Blue::User::"ada"'.
    #[arg(long)]
    principal: String,
    /// Action id, e.g. viewRecord.
    #[arg(long)]
    action: String,
    /// The resource type, e.g. Blue::Record.
    #[arg(long = "type")]
    ty: String,
    /// Context as a Cedar JSON record.
    #[arg(long, default_value = "{}")]
    context: String,
    /// Print the PostgreSQL WHERE fragment and its parameters (columns from --column, else
    /// the pack's names.toml [columns.<type>]).
    #[arg(long)]
    sql: bool,
    /// An attribute's column, `attribute=column` (`id=id`, `project=project_id`); repeatable.
    #[arg(long = "column", value_name = "ATTR=COLUMN")]
    columns: Vec<String>,
}

pub fn run(spec: &PackSpec, args: PlanCommand) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let (t, id) = split_uid(&args.principal, "--principal")?;
    let mut columns = BTreeMap::new();
    for c in &args.columns {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--column: `{c}` is not attribute=column"))?;
        columns.insert(k.to_string(), v.to_string());
    }
    let store = EntityStore::load_file(&args.entities, &pack.entities)?;
    let context = super::check::context_flag(&args.context)?;
    let plan = View::new(&pack, &store)
        .plan(&PlanRequest {
            principal: UidRef { ty: &t, id: &id },
            action: request::action_id(&args.action),
            resource_type: &args.ty,
            context: context.as_ref(),
            entities: &[],
            columns: Some(&columns),
        })
        .map_err(flag_error)?;
    println!("{}", plan.residual);
    let cedar = |ty: &str| ty.to_string();
    println!(
        "{}",
        serde_json::to_string_pretty(&json::condition(&plan.condition, &cedar))?
    );
    if args.sql {
        match &plan.sql {
            Some(w) => println!("{}", serde_json::to_string_pretty(&json::sql(w))?),
            None => {
                return Err(format!(
                    "--sql: no columns for {}: give --column attribute=column, or map them in \
                     names.toml [columns.<type>]",
                    plan.resource_type
                )
                .into())
            }
        }
    }
    eprintln!("{:?}", plan.outcome);
    Ok(Exit::Success)
}

/// A request error in the words of this command's flags.
fn flag_error(e: RequestError) -> String {
    let flag = match &e.field {
        Field::Principal(_) => "--principal".to_string(),
        Field::ListedType(_) => "--type".to_string(),
        Field::Context(None) => "--context".to_string(),
        Field::Context(Some(attr)) => format!("--context: {attr}"),
        Field::Action(_) => "--action".to_string(),
        Field::Columns(Some(k)) => format!("--column {k}"),
        Field::Columns(None) => "--column".to_string(),
        _ => return e.to_string(),
    };
    format!("{flag}: {}", e.message)
}

/// `blue-authz plan-bench`.
pub fn bench(cfg: crate::bench::plans::PlanBenchConfig) -> Result<Exit, AnyError> {
    // One thread: a client that measures one call at a time adds no cross-thread wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(crate::bench::plans::run(&cfg))
        .map_err(|e| e.to_string())?;
    Ok(Exit::Success)
}
