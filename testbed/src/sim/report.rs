//! What a run found (a [`Violation`]) or did ([`Report`]), and totals over many runs.

use std::fmt;

/// A property that did not hold, with where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub at_us: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated at t={}us: {}",
            self.property, self.at_us, self.detail
        )
    }
}

/// What a run did, for tests that look at more than pass or fail.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub dropped_frames: u64,
    pub max_batch: u64,
    pub window_full: u64,
    pub requests_finished: usize,
    pub end_us: u64,
    pub view_changes: u64,
    pub joins: u64,
    pub requeued: u64,
    pub resubmitted: u64,
    pub crashes: usize,
    /// Joiners whose transferred state carried pipelines, and whose application was told.
    pub pipelines_after_state: u64,
    /// Frames larger than the transports accept (max_frame + 64), dropped by the network.
    pub oversized_frames: u64,
    /// The run ended stalled because the latest view lost its majority (no liveness owed).
    pub majority_lost: bool,
}

/// What many runs did in all (a soak, the CI's seeds).
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub runs: u64,
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub dropped_frames: u64,
    pub oversized_frames: u64,
    pub view_changes: u64,
    pub joins: u64,
    pub pipelines_after_state: u64,
    pub requeued: u64,
    pub resubmitted: u64,
    pub crashes: u64,
    pub requests_finished: u64,
    /// Runs that ended without a majority (no liveness owed).
    pub majority_lost: u64,
}

impl Totals {
    pub fn add(&mut self, r: &Report) {
        self.runs += 1;
        self.delivered += r.delivered;
        self.retransmitted_slots += r.retransmitted_slots;
        self.dropped_frames += r.dropped_frames;
        self.oversized_frames += r.oversized_frames;
        self.view_changes += r.view_changes;
        self.joins += r.joins;
        self.pipelines_after_state += r.pipelines_after_state;
        self.requeued += r.requeued;
        self.resubmitted += r.resubmitted;
        self.crashes += r.crashes as u64;
        self.requests_finished += r.requests_finished as u64;
        self.majority_lost += u64::from(r.majority_lost);
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs: {} messages delivered, {} runs finished, {} slots retransmitted, {} frames dropped ({} oversized), {} crashes, {} view installations, {} joins with state transfer ({} carrying pipelines), {} requests re-queued, {} messages resubmitted, {} runs ended without a majority",
            self.runs,
            self.delivered,
            self.requests_finished,
            self.retransmitted_slots,
            self.dropped_frames,
            self.oversized_frames,
            self.crashes,
            self.view_changes,
            self.joins,
            self.pipelines_after_state,
            self.requeued,
            self.resubmitted,
            self.majority_lost
        )
    }
}
