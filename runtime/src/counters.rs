//! The counters each worker keeps for anyone to read (the test kit, and
//! later the metrics endpoint).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one worker, written only by that worker (a relaxed load and
/// store: as cheap as a plain cell) and read by anyone. Cache-line aligned so
/// that workers never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    connections: AtomicU64,
    requests: AtomicU64,
    outcomes: AtomicU64,
    failures: AtomicU64,
}

impl WorkerCounters {
    /// Adds one accepted client connection (called by the owning worker only).
    pub(crate) fn connection(&self) {
        bump(&self.connections);
    }

    /// Adds one request head received (called by the owning worker only).
    pub(crate) fn request(&self) {
        bump(&self.requests);
    }

    /// Adds one outcome record (called by the owning worker only).
    pub(crate) fn outcome(&self, success: bool) {
        bump(&self.outcomes);
        if !success {
            bump(&self.failures);
        }
    }

    /// Outcome records this worker wrote: one per request, once it ended.
    pub fn outcomes(&self) -> u64 {
        self.outcomes.load(Ordering::Relaxed)
    }

    /// Outcomes that were not a success (an error, a 5xx, or no response).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Client connections this worker accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests this worker received: heads parsed, refused or timed out.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Single-writer increment: no read-modify-write, so no locked instruction.
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
