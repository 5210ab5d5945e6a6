//! Finding and starting the cvc5 solver: the `CVC5` environment variable names it, else `cvc5`
//! on the PATH.

use std::path::PathBuf;

use cedar_policy_symcc::solver::LocalSolver;

use super::AnalysisError;

/// The environment variable that names the solver executable.
pub const SOLVER_ENV: &str = "CVC5";

/// The solver executable, if there is one.
pub fn solver_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(SOLVER_ENV) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("cvc5"))
        .find(|p| p.is_file())
}

/// A fresh solver process (each query bounded to one minute of wall time).
pub(super) fn start() -> Result<LocalSolver, AnalysisError> {
    let Some(path) = solver_path() else {
        return Err(AnalysisError::NoSolver(
            match std::env::var_os(SOLVER_ENV) {
                Some(p) => format!("{SOLVER_ENV}={} is not a file", PathBuf::from(p).display()),
                None => "no `cvc5` on the PATH".into(),
            },
        ));
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(["--lang", "smt", "--tlimit-per=60000"])
        .kill_on_drop(true);
    LocalSolver::from_command(&mut cmd)
        .map_err(|e| AnalysisError::NoSolver(format!("cannot start {}: {e}", path.display())))
}
