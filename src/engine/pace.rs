//! Long work that gives way: a write batch is prepared on a thread of its own, beside the
//! threads that answer decisions. On a busy core the scheduler lets a running thread finish
//! its slice (a timer tick, milliseconds) before a decision that just woke gets the core, so
//! a batch that runs for hundreds of milliseconds delays the decisions behind it by that
//! much. A [`Pacer`] yields the thread about every [`Pacer::EVERY`] of work: a decision
//! waiting for the core gets it then, and a thread alone on its core loses nothing (the
//! yield returns at once).

use std::time::{Duration, Instant};

/// Yields the thread about every [`Pacer::EVERY`] of the work it is ticked through.
pub struct Pacer {
    last: Instant,
    ticks: u32,
}

impl Pacer {
    /// How much work runs between yields.
    pub const EVERY: Duration = Duration::from_micros(100);
    /// How many ticks pass between looks at the clock (a tick is an entity or more).
    const LOOK: u32 = 8;

    pub fn new() -> Self {
        Pacer {
            last: Instant::now(),
            ticks: 0,
        }
    }

    /// One unit of work done.
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(Self::LOOK) && self.last.elapsed() >= Self::EVERY {
            std::thread::yield_now();
            self.last = Instant::now();
        }
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}
