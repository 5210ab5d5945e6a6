//! The `blue-authz` binary: the commands live in `blue_authz::cli`; this only picks the
//! allocator and hands over.

use std::process::ExitCode;

/// The decision path allocates many small, short-lived objects (Cedar's entity forms and
/// maps); mimalloc serves them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    blue_authz::cli::main()
}
