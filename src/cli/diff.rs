//! `blue-authz diff OLD NEW`: what changes between two policy directories, for all data: each
//! action that decides differently, with a request newly allowed and one newly denied, in
//! words and (with --json) as JSON for CI. `git:<rev>:<path>` names a directory as committed.

use std::path::{Path, PathBuf};

use super::{load_or_report, AnyError, Exit};
use crate::analysis;
use crate::engine::pack::PackSpec;

#[derive(clap::Args)]
pub struct DiffCommand {
    /// The policy directory before the change (or `git:<rev>:<path>`, e.g. git:HEAD:policies).
    old: String,
    /// The policy directory after the change (or `git:<rev>:<path>`).
    new: String,
    /// Print the difference as one JSON document.
    #[arg(long)]
    json: bool,
    /// Compare for every store the schema allows, not only the data the new pack's
    /// `assumptions.toml` lets the store hold (for example role groups that are not chained).
    #[arg(long)]
    unassumed: bool,
}

pub fn run(overlays: &[String], args: DiffCommand) -> Result<Exit, AnyError> {
    let scratch = tempfile::tempdir()?;
    let old = materialize(&args.old, &scratch.path().join("old"))?;
    let new = materialize(&args.new, &scratch.path().join("new"))?;
    let (Some(old), Some(new)) = (
        load_or_report(&PackSpec::new(old, overlays))?,
        load_or_report(&PackSpec::new(new, overlays))?,
    ) else {
        return Ok(Exit::Problems);
    };
    let data = if args.unassumed {
        analysis::Data::Unassumed
    } else {
        analysis::Data::Assumed
    };
    let report = analysis::diff(&old, &new, data)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        for line in report.lines() {
            println!("{line}");
        }
        for c in &report.changed {
            for d in [&c.newly_allowed, &c.newly_denied].into_iter().flatten() {
                println!(
                    "  {}: {}",
                    c.action,
                    serde_json::to_string(&d.counterexample.to_json())?
                );
            }
        }
        let assumed = if report.assumed.is_empty() {
            "for every store the schema allows".to_string()
        } else {
            format!("assuming {}", report.assumed.join(", "))
        };
        println!(
            "{} action(s) changed, {} unchanged, {assumed} ({:.1} s)",
            report.changed_actions().len(),
            report.unchanged.len(),
            report.elapsed.as_secs_f64()
        );
    }
    Ok(Exit::Success)
}

/// A directory argument as a path: itself, or `git:<rev>:<path>` checked out into `into`.
pub(super) fn materialize(arg: &str, into: &Path) -> Result<PathBuf, AnyError> {
    let Some(rest) = arg.strip_prefix("git:") else {
        return Ok(PathBuf::from(arg));
    };
    let (rev, path) = rest
        .split_once(':')
        .ok_or_else(|| format!("`{arg}` is not git:<rev>:<path>"))?;
    std::fs::create_dir_all(into)?;
    let listing = std::process::Command::new("git")
        .args(["ls-tree", "-r", "--name-only", rev, "--", path])
        .output()?;
    if !listing.status.success() {
        return Err(format!(
            "`{arg}`: git ls-tree failed: {}",
            String::from_utf8_lossy(&listing.stderr).trim()
        )
        .into());
    }
    let prefix = format!("{}/", path.trim_end_matches('/'));
    let mut any = false;
    for file in String::from_utf8_lossy(&listing.stdout).lines() {
        let blob = std::process::Command::new("git")
            .args(["show", &format!("{rev}:{file}")])
            .output()?;
        if !blob.status.success() {
            return Err(format!("`{arg}`: cannot read {file} at {rev}").into());
        }
        let rel = file.strip_prefix(&prefix).unwrap_or(file);
        let dest = into.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(dest, blob.stdout)?;
        any = true;
    }
    if !any {
        return Err(format!("`{arg}`: no files under {path} at {rev}").into());
    }
    Ok(into.to_path_buf())
}
