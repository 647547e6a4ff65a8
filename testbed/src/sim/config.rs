//! What one run is: the group, the network, the faults and the workload, all drawn from the
//! seed.

use conveyor_core::proto::ProtoConfig;
use conveyor_core::types::MemberId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// The network, faults and workload of one run, all drawn from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub members: usize,
    pub loss: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    pub delay_us: (u64, u64),
    /// Requests pushed per member.
    pub requests: usize,
    /// Gap between a member's pushes, microseconds (min, max).
    pub push_gap_us: (u64, u64),
    /// Simulated execution time of a step, microseconds (min, max).
    pub exec_us: (u64, u64),
    /// (start, end, side): links between `side` and the others are cut in [start, end).
    pub partitions: Vec<(u64, u64, Vec<usize>)>,
    /// (time, member): the member's process stops for good (a minority in total).
    pub crashes: Vec<(u64, usize)>,
    /// (time, member): a crashed member starts again, with no state: as a new joiner, or (see
    /// `restarts_configured`) as `conveyor node` starts every original member.
    pub restarts: Vec<(u64, usize)>,
    /// Per restart: the process starts with the group file's view (the first view, itself a
    /// member), as `conveyor node` does, and must find out that the group went on without it
    /// (restart detection, or the news of how its view ended) before it rejoins.
    pub restarts_configured: Vec<bool>,
    /// Members excluded by a view change (partitioned, suspected) rejoin this long after.
    pub rejoin_after_us: Option<u64>,
    /// Frames from outside the group (wrong key, or right key and wrong group) per member.
    pub foreign_frames: usize,
    pub proto: ProtoConfig,
    /// Virtual time allowed after the last fault and the last push for everything to finish.
    pub settle_us: u64,
    /// An excluded process's executions go on and their completions are submitted by its next
    /// incarnation, late (as the engine's executors do across a rejoin).
    pub zombies: bool,
    /// The share of finished executions whose completion is submitted twice.
    pub duplicate_completions: f64,
    /// A crash at the worst moment of a view change, once a run (twice in groups of five or
    /// more), and only if a majority stays.
    pub crash_mid_change: Option<MidChange>,
    /// (time, member, microseconds): the member's process is descheduled, nothing of it runs
    /// (frames wait for it, its timers fire late).
    pub pauses: Vec<(u64, usize, u64)>,
    /// (start, end, from, to): frames from `from` to `to` are lost in [start, end) (a one-way
    /// link; the other direction works).
    pub one_way: Vec<(u64, u64, usize, usize)>,
    /// The share of frames delayed far longer than the others, and that delay's range
    /// (microseconds, up to several failure timeouts: frames arrive after view changes).
    pub slow_frames: (f64, (u64, u64)),
    /// Timers fire up to this late (microseconds): a loaded host.
    pub timer_jitter_us: u64,
    /// (time, member): the member leaves the group gracefully (it stops submitting, waits
    /// for what it sent, and asks to leave); it comes back as a joiner like an excluded one.
    pub leaves: Vec<(u64, usize)>,
    /// The share of frames (ten times more for control frames: joins, ballots, commits)
    /// replayed much later, 10 ms to 2 s after they were sent: valid frames of this run, of
    /// views and processes that may be gone by then.
    pub replay: f64,
    /// Frames of an earlier run of the group (same key, same group file, other processes:
    /// views restart at 1, so its frames are valid again) replayed into this run: half during
    /// the first view's start-up, half at any time. 0: none.
    pub earlier_run: usize,
    /// A member id left off the admission list (`Admission::Listed` of the others): once its
    /// first process is gone (crashed, excluded, left), no later process with that id is
    /// admitted, and the group goes on without it.
    pub not_admitted: Option<usize>,
    /// Leaders cut off mid-change, in this order (empty: never): the next leader whose decision
    /// just went out ([`CutAt::Decided`]), or that just committed ([`CutAt::Committed`]), each
    /// of those frames reaching its destination only at random, is cut off from the others
    /// together with the members they reached (when that is a minority of the view it led in)
    /// for 2 to 12 failure timeouts. Another leader may then decide otherwise without them,
    /// and a third meet both accepted decisions when the partition heals: it must adopt the one
    /// of the highest ballot, which some member may have installed (Paxos value adoption).
    pub cut_leaders: Vec<CutAt>,
    /// Members start the requests their replica speculates assigned to them, and submit the
    /// completions only once the assignment is confirmed (see `conveyor_core::replica`).
    pub speculate: bool,
    /// Durable queues: every queue is `durability: log`, every member writes its log to a
    /// modelled disk that syncs at random moments (a crash loses what was not synced), and
    /// nothing of a durable queue is told outside the group before a majority of the group
    /// file's members has its step on disk.
    pub durable: bool,
    /// Durable runs: moments the whole group goes down at once (every process killed, what
    /// its disk had not synced lost) and every member restarts from its data directory a few
    /// milliseconds later, each at its own moment.
    pub group_restarts: Vec<u64>,
}

/// When the mid-change crash strikes (the process dies as it sends: each of its last frames
/// reaches its destination only at random).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidChange {
    /// The leader of a change, right after its decision went out (some members may accept it).
    LeaderDecided,
    /// The leader of a change, as it commits (its commits reach only some members).
    LeaderCommitting,
    /// A member that just delivered messages while another member of its view is already
    /// wedged (what it delivered must be in the cut the survivors agree on).
    Delivering,
    /// The member that just started sending a joiner its state (the transfer is cut short).
    StateSender,
}

/// When a leader is cut off (see [`SimConfig::cut_leaders`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutAt {
    /// Right after its decision went out (some members may have accepted it).
    Decided,
    /// As it commits (it and the members its commits reached have installed the next view).
    Committed,
}

impl SimConfig {
    /// Draws a configuration from a seed.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
        let members = rng.gen_range(2..=5);
        let lossy = rng.gen_bool(0.7);
        let loss = if lossy { rng.gen_range(0.0..0.25) } else { 0.0 };
        let duplicate = if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.1)
        } else {
            0.0
        };
        let corrupt = if rng.gen_bool(0.3) {
            rng.gen_range(0.0..0.05)
        } else {
            0.0
        };
        let dmin = rng.gen_range(5..200);
        let delay_us = (dmin, dmin + rng.gen_range(0..2000));
        let requests = rng.gen_range(5..40);
        let gmin = rng.gen_range(0..300);
        let push_gap_us = (gmin, gmin + rng.gen_range(1..3000));
        let exec_us = (0, rng.gen_range(1..1000));
        let horizon = requests as u64 * push_gap_us.1;
        let mut partitions = Vec::new();
        for _ in 0..rng.gen_range(0..3) {
            let start = rng.gen_range(0..horizon.max(1));
            let end = start + rng.gen_range(1_000..200_000);
            let mut side: Vec<usize> = (0..members).filter(|_| rng.gen_bool(0.4)).collect();
            if side.is_empty() {
                side.push(rng.gen_range(0..members));
            }
            partitions.push((start, end, side));
        }
        let heartbeat = Duration::from_micros(rng.gen_range(2_000..20_000));
        // Timeouts from aggressive (false suspicions under loss: exclusions and rejoins) to
        // comfortable.
        let failure_timeout = heartbeat * rng.gen_range(3..10) + Duration::from_micros(delay_us.1);
        // A minority crashes; sometimes the first-ranked member (the leader of the change),
        // sometimes two members close together (a crash during the change).
        let mut crashes = Vec::new();
        let mut restarts = Vec::new();
        if members >= 3 && rng.gen_bool(0.4) {
            let max = (members - 1) / 2;
            let mut who: Vec<usize> = (0..members).collect();
            if rng.gen_bool(0.5) {
                who.swap(0, rng.gen_range(0..members));
            }
            let first = rng.gen_range(0..horizon.max(1) + 10_000);
            for (k, &m) in who.iter().take(rng.gen_range(1..=max)).enumerate() {
                let at =
                    first + k as u64 * rng.gen_range(0..failure_timeout.as_micros() as u64 * 2);
                crashes.push((at, m));
                if rng.gen_bool(0.6) {
                    restarts.push((at + rng.gen_range(1_000..300_000), m));
                }
            }
        }
        let rejoin_after_us = if rng.gen_bool(0.8) {
            Some(rng.gen_range(0..50_000))
        } else {
            None
        };
        let window = *[2u64, 4, 8, 32, 256].get(rng.gen_range(0..5)).unwrap_or(&8);
        let max_frame = *[360usize, 600, 1500, 8192]
            .get(rng.gen_range(0..4))
            .unwrap_or(&1500);
        let proto = ProtoConfig {
            window,
            max_frame,
            max_payload: conveyor_core::wire::max_payload_for(max_frame, members).min(200),
            status_interval: Duration::from_micros(rng.gen_range(500..3000)),
            heartbeat,
            failure_timeout,
            rto: Duration::from_micros(rng.gen_range(500..4000)),
            rto_max: Duration::from_millis(rng.gen_range(20..200)),
            ..ProtoConfig::default()
        };
        let mut cfg = SimConfig {
            members,
            loss,
            duplicate,
            corrupt,
            delay_us,
            requests,
            push_gap_us,
            exec_us,
            partitions,
            crashes,
            restarts,
            restarts_configured: Vec::new(),
            rejoin_after_us,
            foreign_frames: rng.gen_range(0..4),
            proto,
            settle_us: 60_000_000,
            zombies: false,
            duplicate_completions: 0.0,
            crash_mid_change: None,
            pauses: Vec::new(),
            one_way: Vec::new(),
            slow_frames: (0.0, (0, 0)),
            timer_jitter_us: 0,
            leaves: Vec::new(),
            replay: 0.0,
            earlier_run: 0,
            not_admitted: None,
            cut_leaders: Vec::new(),
            speculate: false,
            durable: false,
            group_restarts: Vec::new(),
        };
        // Drawn after everything else, so that older seeds keep their draws.
        cfg.proto.startup_grace = cfg.proto.failure_timeout * rng.gen_range(2..20);
        cfg.zombies = rng.gen_bool(0.5);
        if rng.gen_bool(0.3) {
            cfg.duplicate_completions = rng.gen_range(0.0..0.2);
        }
        if cfg.members >= 3 && rng.gen_bool(0.6) {
            cfg.crash_mid_change = Some(match rng.gen_range(0..5) {
                0 => MidChange::LeaderDecided,
                1 => MidChange::LeaderCommitting,
                2 => MidChange::StateSender,
                _ => MidChange::Delivering,
            });
        }
        if rng.gen_bool(0.5) {
            let horizon = cfg.requests as u64 * cfg.push_gap_us.1 + 10_000;
            for _ in 0..rng.gen_range(1..5) {
                let at = rng.gen_range(0..horizon);
                let who = rng.gen_range(0..cfg.members);
                cfg.pauses.push((at, who, rng.gen_range(1_000..50_000)));
            }
        }
        // Larger groups, up to 7 (the faults above stay among the first members), with frames
        // that hold the workload's operations for that many members.
        if rng.gen_bool(0.15) && cfg.proto.max_frame >= 600 {
            cfg.members = rng.gen_range(6..=7);
            cfg.proto.max_payload =
                conveyor_core::wire::max_payload_for(cfg.proto.max_frame, cfg.members).min(200);
        }
        let horizon = cfg.requests as u64 * cfg.push_gap_us.1 + 10_000;
        if rng.gen_bool(0.3) {
            for _ in 0..rng.gen_range(1..3) {
                let start = rng.gen_range(0..horizon);
                let from = rng.gen_range(0..cfg.members);
                let to = (from + rng.gen_range(1..cfg.members)) % cfg.members;
                cfg.one_way
                    .push((start, start + rng.gen_range(1_000..200_000), from, to));
            }
        }
        if rng.gen_bool(0.3) {
            let ft = cfg.proto.failure_timeout.as_micros() as u64;
            cfg.slow_frames = (rng.gen_range(0.0..0.02), (ft / 2, ft * rng.gen_range(2..6)));
        }
        if rng.gen_bool(0.3) {
            cfg.timer_jitter_us = rng.gen_range(0..2_000);
        }
        cfg.restarts_configured = cfg.restarts.iter().map(|_| rng.gen_bool(0.5)).collect();
        if rng.gen_bool(0.3) {
            cfg.replay = rng.gen_range(0.0..0.01);
        }
        if cfg.members >= 3 && rng.gen_bool(0.2) {
            cfg.leaves
                .push((rng.gen_range(0..horizon), rng.gen_range(0..cfg.members)));
        }
        // Drawn last: the draws above, and so the runs of earlier seeds, stay as they were.
        if rng.gen_bool(0.15) {
            cfg.earlier_run = rng.gen_range(50..1_000);
        }
        if cfg.members >= 3 && cfg.crashes.is_empty() && rng.gen_bool(0.1) {
            // A member crash-looping at start-up: it dies before every member heard it and
            // its next process starts from the group file. The member it could not reach
            // until then hears only the new process, the others the old one first.
            let m = rng.gen_range(0..cfg.members);
            let cut_off = (m + 1 + rng.gen_range(0..cfg.members - 1)) % cfg.members;
            let crash = rng.gen_range(500..3_000);
            let restart = crash + rng.gen_range(500..5_000);
            cfg.crashes.push((crash, m));
            cfg.restarts.push((restart, m));
            cfg.restarts_configured.push(true);
            cfg.one_way.push((0, restart + 1_000, m, cut_off));
        }
        if cfg.members >= 3 && rng.gen_bool(0.1) {
            // Preferably a member that will ask to join again (restarted as a joiner).
            let joiners: Vec<usize> = cfg
                .restarts
                .iter()
                .zip(&cfg.restarts_configured)
                .filter(|(_, configured)| !**configured)
                .map(|((_, m), _)| *m)
                .collect();
            let m = if joiners.is_empty() {
                rng.gen_range(0..cfg.members)
            } else {
                joiners[rng.gen_range(0..joiners.len())]
            };
            cfg.not_admitted = Some(m);
            cfg.proto.admission = conveyor_core::proto::Admission::Listed(
                (0..cfg.members)
                    .filter(|&i| i != m)
                    .map(|i| MemberId(i as u16))
                    .collect(),
            );
        }
        if cfg.members >= 3 && rng.gen_bool(0.4) {
            // A leader cut off as its decision went out, then the next one as it commits: the
            // third meets both decisions (once or twice a run).
            cfg.cut_leaders = [CutAt::Decided, CutAt::Committed].repeat(rng.gen_range(1..=2));
        }
        cfg.speculate = rng.gen_bool(0.7);
        // Drawn last: the seeds before it keep their draws.
        cfg.durable = rng.gen_bool(0.5);
        if cfg.durable && rng.gen_bool(0.4) {
            let horizon = cfg.requests as u64 * cfg.push_gap_us.1 + 10_000;
            let mut at: Vec<u64> = (0..rng.gen_range(1..=2))
                .map(|_| rng.gen_range(horizon / 8..horizon))
                .collect();
            at.sort_unstable();
            if at.len() == 2 && rng.gen_bool(0.5) {
                // The second soon after the first: while a member that came back late may
                // still be down, or still waiting for the state.
                at[1] = at[0] + rng.gen_range(5_000..100_000);
            }
            cfg.group_restarts = at;
        }
        cfg
    }
}
