//! `blue-authz matrix`: print the effective permission table computed from the policies, or
//! compare it with a committed copy (`--check FILE`, exit 1 on any difference).

use std::path::PathBuf;

use super::{load_or_report, AnyError, Exit};
use crate::authoring::matrix;
use crate::engine::pack::PackSpec;

#[derive(clap::Args)]
pub struct MatrixCommand {
    /// Compare with this file instead of printing; exit 1 on any difference.
    #[arg(long)]
    check: Option<PathBuf>,
}

pub fn run(spec: &PackSpec, args: MatrixCommand) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let table = matrix::render(&pack)?;
    let Some(path) = args.check else {
        print!("{table}");
        return Ok(Exit::Success);
    };
    let expected = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let diff = matrix::diff(&expected, &table);
    if diff.is_empty() {
        println!("ok: the policies give the table in {}", path.display());
        return Ok(Exit::Success);
    }
    println!(
        "the policies differ from {} in {} line(s):",
        path.display(),
        diff.len()
    );
    for d in diff {
        println!("{d}");
    }
    Ok(Exit::Problems)
}
