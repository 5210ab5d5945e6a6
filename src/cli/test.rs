//! `blue-authz test`: run the policy test suites in `<policies>/tests/` and print each failure.

use super::{load_or_report, AnyError, Exit};
use crate::authoring::suite;
use crate::engine::pack::PackSpec;

pub fn run(spec: &PackSpec) -> Result<Exit, AnyError> {
    if load_or_report(spec)?.is_none() {
        return Ok(Exit::Problems);
    }
    let report = suite::run(spec)?;
    for failure in report.failed() {
        println!("{}", failure.describe());
    }
    println!("{}", report.summary());
    Ok(if report.failed().is_empty() {
        Exit::Success
    } else {
        Exit::Problems
    })
}
