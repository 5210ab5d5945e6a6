//! `blue-authz analyze`: prove the pack's invariants and the rows of its permission table
//! (`matrix.toml`) for all data its schema and its data assumptions allow, print each result
//! with its time and, for a failure, a counterexample `check` takes.

use std::path::PathBuf;

use super::{load_or_report, AnyError, Exit};
use crate::analysis;
use crate::engine::pack::PackSpec;

#[derive(clap::Args)]
pub struct AnalyzeCommand {
    /// Write each counterexample's entities to <DIR>/<invariant id>.json (the file `check
    /// --entities` reads) beside the request.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the results as one JSON document.
    #[arg(long)]
    json: bool,
}

pub fn run(spec: &PackSpec, args: AnalyzeCommand) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let table = crate::authoring::matrix::claims(&pack)?;
    for a in &pack.entities.assumptions {
        println!(
            "assuming {} ({})",
            a.id,
            a.condition.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    let report = analysis::analyze(&pack, &table)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = Vec::new();
    for f in &report.findings {
        let file = match (&args.out, &f.counterexample) {
            (Some(dir), Some(c)) => {
                let name: String =
                    f.id.chars()
                        .map(|c| {
                            if c.is_alphanumeric() || c == '.' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect();
                let path = dir.join(format!("{name}.json"));
                std::fs::write(&path, serde_json::to_string_pretty(&c.entities)?)?;
                Some(path.display().to_string())
            }
            _ => None,
        };
        if args.json {
            out.push(serde_json::json!({
                "id": f.id,
                "holds": f.holds,
                "queries": f.queries,
                "elapsed_ms": f.elapsed.as_millis() as u64,
                "failed_at": f.failed_at,
                "counterexample": f.counterexample.as_ref().map(|c| c.to_json()),
            }));
            continue;
        }
        println!("{}", f.line());
        if let Some(c) = &f.counterexample {
            if let Some(why) = &f.why {
                println!("     should hold: {why}");
            }
            println!(
                "     counterexample: {}",
                serde_json::to_string(&c.to_json())?
            );
            let file = file.unwrap_or_else(|| "<entities.json>".into());
            println!("     confirm: {}", c.check_command(&file));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "holds": report.holds(),
                "findings": out,
                "never_errors_policies": report.never_errors_policies,
                "table_rows": report.table_rows,
                "assumed": pack.entities.assumptions.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
                "elapsed_ms": report.elapsed.as_millis() as u64,
            }))?
        );
    } else {
        println!("{}", report.summary());
    }
    Ok(if report.holds() {
        Exit::Success
    } else {
        Exit::Problems
    })
}
