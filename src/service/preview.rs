//! A candidate pack previewed against the live one, without going live: its validation
//! problems at file:line:col, what the reload gate would say (suites, table, invariants), the
//! semantic diff in words (with the solver), and its impact on the live store. The console's
//! draft view and the gRPC `PreviewPolicies` call both show this; the pack's files and the
//! gate remain the only way in.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::gate::{self, Analysis};
use super::state::State;
use crate::authoring::impact::Impact;
use crate::authoring::suite;
use crate::engine::error::LoadError;
use crate::engine::pack::{PackSpec, PolicyPack};

/// What to preview.
pub enum Draft<'a> {
    /// A whole candidate pack directory on the server's machine (an absolute path).
    Dir(&'a str),
    /// Files (a path inside the pack → its new text) replacing or adding to the live pack's.
    Files(&'a BTreeMap<String, String>),
}

/// A validation problem of the candidate, located in its file.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The file, relative to the pack (empty when the problem has no place).
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub help: Option<String>,
}

/// What the preview found.
pub enum Preview {
    /// The candidate does not load: nothing else was checked.
    Invalid(Vec<Problem>),
    Checked(Box<Checked>),
}

/// A candidate that loads, checked.
pub struct Checked {
    pub version: String,
    /// The suites' summary and each failed case.
    pub suites: (String, Vec<String>),
    /// Whether the gate would accept it, what its analysis said, and why not.
    pub accepted: bool,
    pub analysis: String,
    pub reasons: Vec<String>,
    /// The semantic diff's lines and changed actions, or why there is none.
    pub diff: Result<(Vec<String>, Vec<String>), String>,
    /// Its impact on the live store, or why there is none.
    pub impact: Result<Impact, String>,
}

/// Why a preview could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The request names something wrong: the field, and what.
    #[error("{field}: {message}")]
    Bad { field: String, message: String },
    #[error("no policy set is live yet")]
    NotReady,
    #[error("the candidate could not be written to a scratch directory: {0}")]
    Scratch(#[from] std::io::Error),
}

fn bad(field: &str, message: impl Into<String>) -> PreviewError {
    PreviewError::Bad {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Previews a draft against what is live.
pub fn preview(
    engine: &State,
    analysis: Analysis,
    draft: Draft<'_>,
) -> Result<Preview, PreviewError> {
    let live = engine.pack().ok_or(PreviewError::NotReady)?;
    match draft {
        Draft::Dir(dir) => {
            let path = Path::new(dir);
            if !(path.is_absolute() && path.is_dir()) {
                return Err(bad(
                    "dir",
                    "must be the absolute path of a directory on the server",
                ));
            }
            Ok(check(engine, analysis, &live, path))
        }
        Draft::Files(files) => {
            if files.is_empty() {
                return Err(bad("files", "give at least one file, or a dir"));
            }
            for file in files.keys() {
                let plain = Path::new(file)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
                let kind = [".cedar", ".cedarschema", ".toml", ".json"]
                    .iter()
                    .any(|s| file.ends_with(s));
                if file.is_empty() || !plain || !kind {
                    return Err(bad(
                        "file",
                        format!(
                            "`{file}` is not a .cedar, .cedarschema, .toml or .json file inside the pack"
                        ),
                    ));
                }
            }
            let scratch = tempfile::tempdir()?;
            let dir = scratch.path().join("pack");
            copy_dir(&live.spec.dir, &dir)?;
            for (file, text) in files {
                let to = dir.join(file);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(to, text)?;
            }
            Ok(check(engine, analysis, &live, &dir))
        }
    }
}

/// A candidate pack directory checked as the gate would, compared with the live set, and its
/// impact on the live store.
fn check(engine: &State, analysis: Analysis, live: &PolicyPack, dir: &Path) -> Preview {
    let prefix = format!("{}/", dir.display());
    let relative = |s: &str| s.replace(&prefix, "");
    let candidate = match PolicyPack::load(&PackSpec::new(dir, &live.spec.overlays)) {
        Ok(p) => p,
        Err(LoadError::Invalid(diags)) => {
            return Preview::Invalid(
                diags
                    .iter()
                    .map(|d| Problem {
                        file: d
                            .location
                            .file
                            .strip_prefix(dir)
                            .unwrap_or(&d.location.file)
                            .display()
                            .to_string(),
                        line: d.location.line,
                        col: d.location.col,
                        message: d.message.clone(),
                        help: d.help.clone(),
                    })
                    .collect(),
            )
        }
        Err(e) => {
            return Preview::Invalid(vec![Problem {
                file: String::new(),
                line: 0,
                col: 0,
                message: relative(&e.to_string()),
                help: None,
            }])
        }
    };
    let suites = match suite::run_with(candidate.clone()) {
        Ok(report) => (
            report.summary(),
            report
                .failed()
                .iter()
                .map(|r| relative(&r.describe()))
                .collect(),
        ),
        Err(e) => (relative(&e.to_string()), Vec::new()),
    };
    let (accepted, analysis_said, reasons) = match gate::check(candidate.clone(), analysis) {
        Ok(p) => (
            true,
            p.analysis.get().cloned().unwrap_or_default(),
            Vec::new(),
        ),
        Err(e) => (
            false,
            String::new(),
            e.reasons().iter().map(|r| relative(r)).collect(),
        ),
    };
    let diff = crate::analysis::diff(live, &candidate, crate::analysis::Data::Assumed)
        .map(|report| (report.lines(), report.changed_actions()))
        .map_err(|e| format!("no semantic diff: {e}"));
    let impact = engine
        .preview_impact(live, &candidate)
        .map_err(|reasons| reasons.join("; "));
    Preview::Checked(Box::new(Checked {
        version: candidate.version.clone(),
        suites,
        accepted,
        analysis: analysis_said,
        reasons,
        diff,
        impact,
    }))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let path = e.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(e.file_name()))?;
        } else {
            std::fs::copy(&path, to.join(e.file_name()))?;
        }
    }
    Ok(())
}
