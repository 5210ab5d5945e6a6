//! `blue-authz test`: run the policy test suites in `<policies>/tests/` and check each row of
//! the permission table (`matrix.toml`) against what the policies answer on its fixture, as the
//! gate does; print each failure.

use super::{load_or_report, AnyError, Exit};
use crate::authoring::{matrix, suite};
use crate::engine::pack::PackSpec;
use crate::service::gate;

pub fn run(spec: &PackSpec) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let report = suite::run_with(pack.clone())?;
    for failure in report.failed() {
        println!("{}", failure.describe());
    }
    // The table describes the pack without overlays, as at the gate.
    let base = gate::table_pack(&pack)?;
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
