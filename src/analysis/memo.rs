//! Proofs remembered: queries known to hold, by the digest of everything they depend on (the
//! query's kind, the schema, the request environment and the text of every policy on both
//! sides). In memory for the process, so a reload re-proves only what it changed; and in a
//! file shared by the processes of one user (`BLUE_AUTHZ_PROOF_CACHE`: a path, or `off`;
//! default `$XDG_CACHE_HOME/blue-authz/proofs`, else `~/.cache/blue-authz/proofs`), so a
//! restart on the same pack proves nothing again. Only what held is kept: a failure is asked
//! again for its counterexample. Where the file cannot be read or written (a read-only home in
//! a container), every process proves for itself.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The environment variable that places (or turns off) the shared file.
pub const PROOF_CACHE_ENV: &str = "BLUE_AUTHZ_PROOF_CACHE";

/// What a remembered proof depends on beyond its inputs: the symbolic compiler's encoding.
pub(super) const SALT: &str = concat!(
    "cedar-policy-symcc 0.8 / blue-authz ",
    env!("CARGO_PKG_VERSION")
);

/// A file larger than this is started afresh rather than read (about 15,000 proofs).
const MAX_FILE: u64 = 1 << 20;

static HOLDS: Mutex<Option<HashSet<[u8; 32]>>> = Mutex::new(None);

fn file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| {
        match std::env::var_os(PROOF_CACHE_ENV) {
            Some(v) if v == "off" => return None,
            Some(v) if !v.is_empty() => return Some(PathBuf::from(v)),
            _ => {}
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("blue-authz").join("proofs"))
    })
    .as_ref()
}

fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The set, read from the file on first use.
fn with_set<T>(f: impl FnOnce(&mut HashSet<[u8; 32]>) -> T) -> T {
    let mut guard = HOLDS.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(|| {
        let mut set = HashSet::new();
        let Some(path) = file() else {
            return set;
        };
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= MAX_FILE);
        if let (true, Ok(text)) = (small, std::fs::read_to_string(path)) {
            for line in text.lines() {
                let mut key = [0u8; 32];
                let ok = line.len() == 64
                    && (0..32).all(|i| {
                        u8::from_str_radix(&line[2 * i..2 * i + 2], 16)
                            .map(|b| key[i] = b)
                            .is_ok()
                    });
                if ok {
                    set.insert(key);
                }
            }
        } else if !small && path.exists() {
            let _ = std::fs::remove_file(path);
        }
        set
    });
    f(set)
}

pub(super) fn known_to_hold(key: &[u8; 32]) -> bool {
    with_set(|s| s.contains(key))
}

pub(super) fn remember(key: [u8; 32]) {
    let new = with_set(|s| s.insert(key));
    let Some(path) = file().filter(|_| new) else {
        return;
    };
    // One short line in one append: processes sharing the file do not interleave within it.
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .and_then(|mut f| f.write_all(format!("{}\n", hex(&key)).as_bytes()));
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = written {
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(path = %path.display(), "proofs are not remembered across processes: {e}");
        }
    }
}
