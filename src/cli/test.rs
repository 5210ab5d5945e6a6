//! `blue-authz test`: run the policy test suites in `<policies>/tests/` and check each row of
//! the permission table (`matrix.toml`) against what the policies answer on its fixture, as the
//! gate does; print each failure.

use super::{load_or_report, AnyError, Exit};
use crate::authoring::{matrix, suite};
use crate::engine::pack::{PackSpec, PolicyPack};

pub fn run(spec: &PackSpec) -> Result<Exit, AnyError> {
    if load_or_report(spec)?.is_none() {
        return Ok(Exit::Problems);
    }
    let report = suite::run(spec)?;
    for failure in report.failed() {
        println!("{}", failure.describe());
    }
    // The table describes the pack without overlays.
    let base = PolicyPack::load(&PackSpec::new(&spec.dir, &[]))?;
    let rows = matrix::unexpected(&base)?;
    for row in &rows {
        println!("FAIL {row}");
    }
    println!("{}", report.summary());
    if !rows.is_empty() {
        println!(
            "{} row(s) of {} answer otherwise than the table says",
            rows.len(),
            matrix::MATRIX_FILE
        );
    }
    Ok(if report.failed().is_empty() && rows.is_empty() {
        Exit::Success
    } else {
        Exit::Problems
    })
}
