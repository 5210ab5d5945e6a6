//! `blue-authz validate`: parse and strictly validate the pack, and say which actions compiled
//! plans decide and which go through Cedar's evaluator.

use super::{load_or_report, AnyError, Exit};
use crate::engine::pack::PackSpec;

pub fn run(spec: &PackSpec) -> Result<Exit, AnyError> {
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let overlays = if spec.overlays.is_empty() {
        "none".to_string()
    } else {
        spec.overlays.join(", ")
    };
    println!(
        "ok: {} policies in {} validated strictly against the schema (version {}, overlays: {})",
        pack.policies.policies().count(),
        spec.dir.display(),
        pack.version,
        overlays
    );
    let unplanned = pack.unplanned_actions();
    println!(
        "compiled plans: {} of {} actions decided straight over the entity index{}",
        pack.actions().len() - unplanned.len(),
        pack.actions().len(),
        if unplanned.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = unplanned
                .iter()
                .map(|a| a.id().unescaped().to_string())
                .collect();
            format!(
                "; through Cedar's evaluator (a policy outside the plans' subset): {}",
                names.join(", ")
            )
        }
    );
    let unnarrowed = crate::engine::list::unnarrowed(&pack);
    if unnarrowed.is_empty() {
        println!("listing: every action finds its candidates through the hierarchy and the reverse attribute index");
    } else {
        let names: Vec<String> = unnarrowed
            .iter()
            .map(|(a, what, ty)| format!("{a} ({what} of {ty})"))
            .collect();
        println!(
            "listing checks every entity of the type (a permit gives no way to narrow the candidates): {}",
            names.join(", ")
        );
    }
    Ok(Exit::Success)
}
