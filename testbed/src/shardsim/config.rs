//! What one seed of the sharded-deployment simulator draws.

use conveyor_core::proto::ProtoConfig;
use conveyor_core::shard::ForwarderConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// What one seed draws.
#[derive(Clone, Debug)]
pub struct ShardSimConfig {
    pub shards: usize,
    /// Members per shard, and hosts (host `h` runs member `h` of every shard).
    pub members: usize,
    /// Requests each host's trigger pushes.
    pub requests: u64,
    pub push_gap_us: (u64, u64),
    pub exec_us: (u64, u64),
    pub loss: f64,
    pub duplicate: f64,
    pub delay_us: (u64, u64),
    /// Share of frames delayed by 1 to 5 ms (reordered far).
    pub slow: f64,
    /// A host crashes (every member it runs) at a time, and comes back (new processes that
    /// join) at a later one, or not.
    pub host_crash: Option<(u64, usize, Option<u64>)>,
    /// One member of one shard crashes (its process alone), and may come back.
    pub member_crash: Option<(u64, usize, usize, Option<u64>)>,
    /// A host cut off from every other (every shard) from one time to another.
    pub cut: Option<(u64, u64, usize)>,
    /// Times at which one host's forwarders are restarted.
    pub forwarder_resets: Vec<u64>,
    /// Share of completions reported twice.
    pub twice: f64,
    /// A forwarder lives on while its role is interrupted (its member excluded and back, a
    /// view without it): it resumes with what it had sent, unaware of what was lost meanwhile
    /// (as a process that looks at its role now and then may), and only its timeout brings it
    /// back to the watermark.
    pub keep_forwarders: bool,
    /// Each queue's capacity: small ones block pushes (a trigger's, and forwarded ones) until
    /// there is room.
    pub capacity: u32,
    /// The map's second version (queue `q1` moves to another shard) is submitted to each
    /// shard around this time.
    pub move_at: Option<u64>,
    pub proto: ProtoConfig,
    pub forwarder: ForwarderConfig,
    /// How long after the last fault everything must be done.
    pub settle_us: u64,
    /// Durable queues: every member logs its shard's order to its host's disk (synced at
    /// random moments; a crash loses what was not synced), and what is told outside a shard,
    /// or forwarded out of it, waits for a majority's disks.
    pub durable: bool,
    /// With durable queues: every process of the deployment is killed at this time (every
    /// member of every shard), and each host starts its members again from their disks within
    /// `RESTART_SPREAD_US`; each shard's members agree again on a state (see
    /// `conveyor_core::replica::recovery`).
    pub deployment_down: Option<u64>,
    /// Durable runs: the chance that a member's disk syncs what was written, at each step
    /// (a slow disk leaves more for a crash to lose).
    pub sync_chance: f64,
    /// Each host's trigger keeps a journal (as `conveyor bench`'s does): what it pushed, the
    /// ends it was told, how far its member of shard 0 had told it. A new trigger process
    /// (after a crash, or the whole deployment's restart) resumes from it
    /// (`Replica::resume`): told the ends it missed, its pushes that never reached the order
    /// pushed again, so that every run it pushed ends and it is told so.
    pub journal: bool,
}

/// After the whole deployment went down, each host restarts within this long.
pub const RESTART_SPREAD_US: u64 = 10_000;

impl ShardSimConfig {
    pub fn from_seed(seed: u64) -> ShardSimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d_5348_4152_4453);
        let shards = rng.gen_range(2..=3);
        let members = 3;
        let loss = [0.0, 0.01, 0.05, 0.1, 0.2][rng.gen_range(0..5)];
        let failure_timeout = Duration::from_millis(rng.gen_range(20..60));
        let proto = ProtoConfig {
            window: [4u64, 16, 64][rng.gen_range(0..3)],
            max_frame: 1500,
            max_payload: conveyor_core::wire::max_payload_for(1500, members),
            status_interval: Duration::from_micros(rng.gen_range(500..2000)),
            heartbeat: failure_timeout / 6,
            failure_timeout,
            startup_grace: failure_timeout * 4,
            rto: Duration::from_micros(rng.gen_range(300..2000)),
            rto_max: Duration::from_millis(rng.gen_range(10..50)),
            ..ProtoConfig::default()
        };
        let crash_at = rng.gen_range(3_000..40_000);
        let back = rng
            .gen_bool(0.6)
            .then(|| crash_at + rng.gen_range(60_000..200_000));
        let (host_crash, member_crash) = match rng.gen_range(0..4) {
            0 => (Some((crash_at, rng.gen_range(0..members), back)), None),
            1 => (
                None,
                Some((
                    crash_at,
                    rng.gen_range(0..shards),
                    rng.gen_range(0..members),
                    back,
                )),
            ),
            _ => (None, None),
        };
        let cut =
            (host_crash.is_none() && member_crash.is_none() && rng.gen_bool(0.5)).then(|| {
                let start = rng.gen_range(3_000..40_000);
                // Longer than the failure timeout half the time: the host's members are excluded.
                let len = if rng.gen_bool(0.5) {
                    rng.gen_range(1_000..failure_timeout.as_micros() as u64 / 2)
                } else {
                    failure_timeout.as_micros() as u64 * rng.gen_range(2..5)
                };
                (start, start + len, rng.gen_range(0..members))
            });
        let forwarder_resets = (0..rng.gen_range(0..4))
            .map(|_| rng.gen_range(2_000..60_000))
            .collect();
        let forwarder = ForwarderConfig {
            window: [2u64, 8, 256][rng.gen_range(0..3)],
            resend_after: Duration::from_micros(rng.gen_range(1_000..8_000)),
            ack_every: [1u64, 4, 32][rng.gen_range(0..3)],
            ack_after: Duration::from_micros(rng.gen_range(200..2_000)),
        };
        let mut cfg = ShardSimConfig {
            shards,
            members,
            requests: rng.gen_range(10..40),
            push_gap_us: (50, rng.gen_range(100..2_000)),
            exec_us: (10, rng.gen_range(20..500)),
            loss,
            duplicate: if rng.gen_bool(0.5) { 0.02 } else { 0.0 },
            delay_us: (5, rng.gen_range(10..200)),
            slow: if rng.gen_bool(0.3) { 0.01 } else { 0.0 },
            host_crash,
            member_crash,
            cut,
            forwarder_resets,
            twice: if rng.gen_bool(0.3) { 0.05 } else { 0.0 },
            keep_forwarders: false,
            capacity: 1 << 16,
            move_at: rng.gen_bool(0.5).then(|| rng.gen_range(2_000..50_000)),
            proto,
            forwarder,
            settle_us: 20_000_000,
            durable: false,
            deployment_down: None,
            sync_chance: 0.5,
            journal: false,
        };
        // Drawn last, so that the draws above stay what they were.
        cfg.keep_forwarders = rng.gen_bool(0.5);
        if rng.gen_bool(0.5) {
            cfg.capacity = rng.gen_range(2..16);
        }
        cfg.durable = rng.gen_bool(0.5);
        if cfg.durable && rng.gen_bool(0.6) {
            // The whole deployment down once, instead of the other process faults.
            cfg.deployment_down = Some(rng.gen_range(4_000..40_000));
            cfg.host_crash = None;
            cfg.member_crash = None;
            cfg.cut = None;
        }
        cfg.sync_chance = [0.05, 0.2, 0.5][rng.gen_range(0..3)];
        cfg.journal = rng.gen_bool(0.5);
        cfg
    }

    pub(super) fn last_fault(&self) -> u64 {
        let mut t = self.move_at.map_or(0, |m| m + 10_000);
        if let Some((a, _, b)) = self.host_crash {
            t = t.max(b.unwrap_or(a));
        }
        if let Some((a, _, _, b)) = self.member_crash {
            t = t.max(b.unwrap_or(a));
        }
        if let Some((_, e, _)) = self.cut {
            t = t.max(e);
        }
        if let Some(d) = self.deployment_down {
            t = t.max(d + RESTART_SPREAD_US);
        }
        t.max(self.forwarder_resets.iter().copied().max().unwrap_or(0))
    }
}
