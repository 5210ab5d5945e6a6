//! The symbolic compiler is async (it talks to the solver process over pipes); analysis is
//! called from plain threads and from inside the server's runtime alike, so each run gets a
//! runtime of its own on a thread of its own.

use std::future::Future;

use super::AnalysisError;

/// Runs `fut` to completion on a fresh single-threaded runtime on a new thread.
pub(super) fn block_on<T: Send>(
    fut: impl Future<Output = Result<T, AnalysisError>> + Send,
) -> Result<T, AnalysisError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| AnalysisError::NoSolver(format!("cannot start a runtime: {e}")))?
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
