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
    /// Resends answering a peer's gap report (the rest: retransmission timeouts).
    pub fast_retransmits: u64,
    pub retransmitted_frames: u64,
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
    /// The corners a run reached (see `Corners`).
    pub corners: Corners,
    /// Steps the run took (frame arrivals, timers, workload actions).
    pub steps: u64,
    /// The run ended stalled because the latest view lost its majority (no liveness owed).
    pub majority_lost: bool,
}

/// The dangerous corners a run reached, counted: the CI run fails if one is reached too seldom
/// over its seeds (a fault class that silently stopped being generated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Corners {
    /// A member crashed while a view change was under way (some live member wedged).
    pub crash_during_change: u64,
    /// The leader of a view change crashed after sending its decision, before committing.
    pub leader_crash_mid_change: u64,
    /// A member crashed right after delivering while another member of its view was wedged.
    pub crash_after_delivering: u64,
    /// The member sending a joiner its state crashed as it started.
    pub state_sender_crash: u64,
    /// A partition healed while a view change was under way.
    pub heal_during_change: u64,
    /// A joiner asked to join while a view change was under way.
    pub join_during_change: u64,
    /// A joiner lost its place because the view changed again before its state arrived.
    pub change_before_state: u64,
    /// A completion of an excluded process's execution, reported late by its next
    /// incarnation after the request was put back: refused.
    pub zombie_completion: u64,
    /// A completion reported twice: the second refused.
    pub duplicate_completion: u64,
    /// A crashed member restarted with the configured view.
    pub configured_restart: u64,
    /// Such a member found out from a peer's row that it restarted inside a view.
    pub restart_detected: u64,
    /// A valid frame of this run replayed long after it was sent.
    pub replay: u64,
    /// A frame of an earlier run of the group replayed into this one.
    pub earlier_run: u64,
    /// A join request refused: its id is not on the admission list (counted by the members
    /// alive at the end).
    pub join_refused: u64,
    /// A member left gracefully.
    pub leave: u64,
    /// A member paused (descheduled) while others went on.
    pub pause: u64,
    /// A leader cut off mid-change (see `SimConfig::cut_leaders`).
    pub leader_cut: u64,
    /// A leader's promises reported two different accepted decisions.
    pub conflicting_accepts: u64,
    /// A speculated assignment confirmed by the delivered order after its execution finished
    /// (its held completion submitted then).
    pub speculation_confirmed: u64,
    /// A speculated assignment discarded (its execution's completion dropped).
    pub speculation_discarded: u64,
    /// A speculated assignment confirmed as another instance than speculated (the order before
    /// it changed).
    pub speculation_reinstanced: u64,
    /// A member removed while pushes of its own were unanswered came back in the same process
    /// (it is told the outcomes it missed).
    pub origin_came_back: u64,
    /// Such a member pushed again requests that never reached the order.
    pub pushed_again: u64,
    /// Durable runs: an acceptance or a run's end told once a majority had its step on disk.
    pub told_after_disks: u64,
    /// Durable runs: a serving member's log replayed, at the end, to its queue's state.
    pub logs_replayed: u64,
    /// Durable runs: a crashed member restarted from its data directory (recovering).
    pub restart_from_log: u64,
    /// Durable runs: a recovering member behind (or ahead of) the decided log took the
    /// group's state from a holder.
    pub recovery_state: u64,
    /// Durable runs: a joiner admitted before the group decided was sent the claims and
    /// claimed from its own log.
    pub joiner_claims: u64,
    /// Durable runs: the whole group went down and restarted from its data directories.
    pub group_restart: u64,
    /// Durable runs: a recovering member's state could not come (the holder died, or a view
    /// change): restarted from its data directory.
    pub recovery_abandoned: u64,
    /// Durable runs: a member restarted long after the rest of a group that went down.
    pub late_restart: u64,
    /// A stream entry acknowledged (Redis commands in the order; never twice in a run).
    pub stream_acks: u64,
    /// A blocked stream read served by an entry that came after it.
    pub stream_blocked_served: u64,
}

impl Corners {
    pub fn add(&mut self, o: &Corners) {
        self.crash_during_change += o.crash_during_change;
        self.leader_crash_mid_change += o.leader_crash_mid_change;
        self.heal_during_change += o.heal_during_change;
        self.crash_after_delivering += o.crash_after_delivering;
        self.state_sender_crash += o.state_sender_crash;
        self.join_during_change += o.join_during_change;
        self.change_before_state += o.change_before_state;
        self.zombie_completion += o.zombie_completion;
        self.duplicate_completion += o.duplicate_completion;
        self.pause += o.pause;
        self.leave += o.leave;
        self.replay += o.replay;
        self.earlier_run += o.earlier_run;
        self.join_refused += o.join_refused;
        self.configured_restart += o.configured_restart;
        self.restart_detected += o.restart_detected;
        self.leader_cut += o.leader_cut;
        self.conflicting_accepts += o.conflicting_accepts;
        self.speculation_confirmed += o.speculation_confirmed;
        self.speculation_discarded += o.speculation_discarded;
        self.speculation_reinstanced += o.speculation_reinstanced;
        self.origin_came_back += o.origin_came_back;
        self.told_after_disks += o.told_after_disks;
        self.logs_replayed += o.logs_replayed;
        self.restart_from_log += o.restart_from_log;
        self.recovery_state += o.recovery_state;
        self.joiner_claims += o.joiner_claims;
        self.group_restart += o.group_restart;
        self.recovery_abandoned += o.recovery_abandoned;
        self.late_restart += o.late_restart;
        self.stream_acks += o.stream_acks;
        self.stream_blocked_served += o.stream_blocked_served;
        self.pushed_again += o.pushed_again;
    }

    /// Each corner with its count.
    pub fn named(&self) -> [(&'static str, u64); 32] {
        [
            ("crash during a view change", self.crash_during_change),
            ("leader crash mid-change", self.leader_crash_mid_change),
            (
                "crash right after delivering, others wedged",
                self.crash_after_delivering,
            ),
            ("state sender crashed mid-transfer", self.state_sender_crash),
            ("partition healed mid-change", self.heal_during_change),
            ("joiner during a change", self.join_during_change),
            (
                "second change before a joiner's state",
                self.change_before_state,
            ),
            ("zombie's late completion", self.zombie_completion),
            ("duplicate completion", self.duplicate_completion),
            ("paused member", self.pause),
            ("graceful leave", self.leave),
            ("replayed frame", self.replay),
            ("frame of an earlier run", self.earlier_run),
            ("join refused (admission list)", self.join_refused),
            ("restart with the configured view", self.configured_restart),
            ("restart detected", self.restart_detected),
            ("leader cut off mid-change", self.leader_cut),
            (
                "two decisions accepted in one change",
                self.conflicting_accepts,
            ),
            (
                "speculation confirmed after it ran",
                self.speculation_confirmed,
            ),
            ("speculation discarded", self.speculation_discarded),
            (
                "speculation confirmed as another instance",
                self.speculation_reinstanced,
            ),
            ("origin back with unanswered pushes", self.origin_came_back),
            (
                "pushes that never reached the order, again",
                self.pushed_again,
            ),
            (
                "told once a majority's disks held it",
                self.told_after_disks,
            ),
            ("logs replayed to their member's state", self.logs_replayed),
            ("restart from the data directory", self.restart_from_log),
            ("joiner claimed before the decision", self.joiner_claims),
            (
                "whole group down, restarted from its disks",
                self.group_restart,
            ),
            (
                "recovering member took the group's state",
                self.recovery_state,
            ),
            (
                "member restarted late after the group went down",
                self.late_restart,
            ),
            ("stream entries acknowledged", self.stream_acks),
            ("blocked stream reads served", self.stream_blocked_served),
        ]
    }
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
    pub corners: Corners,
    /// The most steps one run took.
    pub max_steps: u64,
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
        self.corners.add(&r.corners);
        self.max_steps = self.max_steps.max(r.steps);
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
        )?;
        write!(f, "; at most {} steps a run; corners:", self.max_steps)?;
        for (name, n) in self.corners.named() {
            write!(f, " {name} {n},")?;
        }
        Ok(())
    }
}
