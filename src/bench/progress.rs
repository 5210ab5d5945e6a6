//! Progress for long tooling commands (`gen`, `bench`): one line on stderr, rewritten at most
//! four times a second, and only when stderr is a terminal, so logs, pipes and CI get nothing.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// A progress line: `label: done [of total] (elapsed)`.
pub struct Progress {
    label: String,
    total: Option<u64>,
    on: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    /// A line for `label`, with the expected count when known.
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        Self {
            label: label.into(),
            total,
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    /// `done` units so far; redraws the line if a quarter second has passed.
    pub fn set(&mut self, done: u64) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let of = match self.total {
            Some(t) if t > 0 => format!(" of {t} ({:.0}%)", done as f64 * 100.0 / t as f64),
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {done}{of} ({:.0?})\x1b[K",
            self.label,
            self.started.elapsed()
        );
        let _ = err.flush();
    }

    /// Clears the line (the command's own output follows).
    pub fn finish(&mut self) {
        if self.last.is_some() {
            clear_line();
        }
    }
}

/// Clears a progress line on a terminal (for one drawn by a task that was stopped).
pub fn clear_line() {
    if std::io::stderr().is_terminal() {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}
