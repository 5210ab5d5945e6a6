//! `blue-authz impact --to DIR`: which pairs of the stored data would gain or lose each action
//! if the candidate pack replaced the one given by `--policies` (or `--from`), with counts per
//! action and per resource type, a sample, and every pair as JSON lines with `--pairs`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use super::diff::materialize;
use super::{load_or_report, AnyError, Exit};
use crate::authoring::impact::{self, ImpactInput, Pair};
use crate::authoring::matrix;
use crate::engine::index::EntityStore;
use crate::engine::pack::{PackSpec, PolicyPack};
use crate::engine::request::ContextMap;
use crate::service::offline;

#[derive(clap::Args)]
pub struct ImpactCommand {
    /// The candidate policy directory (or `git:<rev>:<path>`).
    #[arg(long)]
    to: String,
    /// The policy directory it would replace (or `git:<rev>:<path>`); default: --policies.
    #[arg(long)]
    from: Option<String>,
    /// Overlays the candidate enables (comma-separated); default: the same as --overlay.
    #[arg(long, value_delimiter = ',')]
    to_overlay: Option<Vec<String>>,
    /// The embedded database whose data to compare on (not one a server holds open).
    #[arg(long, conflicts_with = "entities")]
    db: Option<PathBuf>,
    /// A Cedar JSON entities file to compare on instead.
    #[arg(long)]
    entities: Option<PathBuf>,
    /// A context to ask an action that reads one, as `action=<JSON object>` (repeatable;
    /// beside the contexts of the packs' matrix rows).
    #[arg(long = "context")]
    contexts: Vec<String>,
    /// Pairs shown per action and direction.
    #[arg(long, default_value_t = 5)]
    sample: usize,
    /// Write every changed pair to this file, one JSON object per line.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Print the summary as one JSON document.
    #[arg(long)]
    json: bool,
    /// Threads to list on.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn run(spec: &PackSpec, args: ImpactCommand) -> Result<Exit, AnyError> {
    let scratch = tempfile::tempdir()?;
    let from = match &args.from {
        Some(arg) => materialize(arg, &scratch.path().join("from"))?,
        None => spec.dir.clone(),
    };
    let to = materialize(&args.to, &scratch.path().join("to"))?;
    let to_overlays = args.to_overlay.as_deref().unwrap_or(&spec.overlays);
    let (Some(old), Some(new)) = (
        load_or_report(&PackSpec::new(from, &spec.overlays))?,
        load_or_report(&PackSpec::new(to, to_overlays))?,
    ) else {
        return Ok(Exit::Problems);
    };
    let contexts = context_flags(&args.contexts)?;
    let load = |pack: &PolicyPack| -> Result<EntityStore, AnyError> {
        match (&args.db, &args.entities) {
            (Some(db), _) => Ok(offline::read_embedded(db, pack)?),
            (None, Some(file)) => Ok(EntityStore::load_file(file, &pack.entities)?),
            (None, None) => Err("give the data to compare on: --db or --entities".into()),
        }
    };
    let old_store = load(&old)?;
    // The same data validated under the candidate's schema, if it changed.
    let new_store = if old.schema_version == new.schema_version {
        None
    } else {
        Some(load(&new)?)
    };
    let matrix_contexts = matrix::merged_row_contexts(&[&old, &new])?;
    let report = impact::impact(
        &ImpactInput {
            old: (&old, &old_store),
            new: (&new, new_store.as_ref().unwrap_or(&old_store)),
            contexts: &contexts,
            threads: args.threads,
            limit: None,
        },
        &matrix_contexts,
    )?;
    if let Some(path) = &args.pairs {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for line in report.lines() {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(args.sample))?
        );
        return Ok(Exit::Success);
    }
    println!(
        "impact on {} entities at revision {}: {} pair(s) gain an action, {} lose one ({:.2} s)",
        report.entities,
        report.revision,
        report.gained(),
        report.lost(),
        report.elapsed.as_secs_f64()
    );
    println!(
        "actions whose policies differ: {}",
        super::list(&report.changed)
    );
    for a in &report.actions {
        let context = a
            .context
            .as_ref()
            .map(|c| format!(" with context {}", serde_json::Value::Object(c.clone())))
            .unwrap_or_default();
        println!(
            "{} ({} on {}{context}): +{} -{} ({} decided, by {})",
            a.action,
            a.principal_type,
            a.resource_type,
            a.gained.len(),
            a.lost.len(),
            a.decided,
            a.enumerated
        );
        for (sign, pairs) in [("+", &a.gained), ("-", &a.lost)] {
            for p in pairs.iter().take(args.sample) {
                println!("  {sign} {}", pair_words(p));
            }
            if pairs.len() > args.sample {
                println!("  {sign} ... {} more", pairs.len() - args.sample);
            }
        }
    }
    for (ty, (gained, lost)) in report.by_resource_type() {
        println!("on {ty}: +{gained} -{lost}");
    }
    for (action, why) in &report.skipped {
        println!("not compared: {action}: {why}");
    }
    Ok(Exit::Success)
}

fn pair_words(p: &Pair) -> String {
    format!(
        "{} on {} (before: {}; after: {})",
        p.principal,
        p.resource,
        super::list(&p.before),
        super::list(&p.after)
    )
}

/// `--context action=<JSON object>` flags, by action id.
fn context_flags(flags: &[String]) -> Result<BTreeMap<String, Vec<ContextMap>>, String> {
    let mut out: BTreeMap<String, Vec<ContextMap>> = BTreeMap::new();
    for flag in flags {
        let (action, json) = flag
            .split_once('=')
            .ok_or_else(|| format!("--context: `{flag}` is not action=<JSON object>"))?;
        let Some(context) = super::check::context_flag(json)? else {
            continue;
        };
        out.entry(action.trim().to_string())
            .or_default()
            .push(context);
    }
    Ok(out)
}
