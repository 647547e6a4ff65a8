//! Forwarding between shards, for a process that runs a member of several shards (each its own
//! engine): the core's [`Forwarder`] (sans-IO, see `conveyor_core::shard`) driven from a thread
//! of the process, reading each engine's published cross-shard state ([`Probe::shards`]) and
//! submitting through each engine's [`Submitter`].
//!
//! Which process forwards from shard `a` to shard `b`: the one whose members of both serve and
//! whose member id [`forwarder_for`] picks among the members both views share (as its own
//! members see the views; the pairs spread over the hosts, not all on the lowest id). Member
//! ids name hosts across shards: member `i` of every shard runs on host `i` (the layout a
//! sharded group file is to require). Once the views agree every
//! process picks the same one; during a change two may forward at once, which costs duplicates
//! the destination ignores, or none for a moment. A process that takes the role starts at the
//! destination's watermark: nothing the previous one did is needed.
//!
//! The driver sleeps when it has nothing to send, until an engine republishes its cross-shard
//! state (after a batch of deliveries that changed it: an outbox grew, a watermark moved) rings
//! its [`Bell`], or its next timer, or `idle` at most. Known cost: an engine republishes its
//! whole cross-shard state (outboxes included) each time.

use crate::engine::{Bell, Clock, EngineError, EngineHandle, Probe, Submitter};
use conveyor_core::shard::{
    forwarder_for, Forwarder, ForwarderConfig, ForwarderStats, Forwarding, ShardId, ShardMap,
};
use conveyor_core::types::{Instant, MemberId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The newest shard map every one of `probes` (this process's members of each shard) has
/// applied: what to route pushes by (a shard that has not applied it yet would pass a push
/// back). None until every shard has one.
pub fn applied_map(probes: impl IntoIterator<Item = Probe>) -> Option<ShardMap> {
    let mut oldest: Option<ShardMap> = None;
    for p in probes {
        let m = p.shards()?.map().clone();
        if oldest.as_ref().is_none_or(|o| m.version < o.version) {
            oldest = Some(m);
        }
    }
    oldest
}

/// Submits `map` in every shard, through this process's member of each (`handles[s]` is its
/// member of shard `s`). A shard that has applied this version or a newer one ignores it; the
/// shards apply it each at its own position, and routing follows it once all have
/// ([`applied_map`]).
pub fn submit_map<'a>(
    handles: impl IntoIterator<Item = &'a EngineHandle>,
    map: &ShardMap,
) -> Result<(), EngineError> {
    for (s, h) in handles.into_iter().enumerate() {
        h.submit(&conveyor_core::queue::Op::ShardMap {
            by: h.me(),
            me: ShardId(s as u16),
            map: map.clone(),
        })?;
    }
    Ok(())
}

/// This process's member of one shard.
#[derive(Clone, Debug)]
pub struct ShardMember {
    pub shard: ShardId,
    pub me: MemberId,
    pub probe: Probe,
    pub submitter: Submitter,
}

/// The forwarders of one process, between every ordered pair of its shards.
#[derive(Debug)]
pub struct Forwarders {
    members: Vec<ShardMember>,
    cfg: ForwarderConfig,
    forwarders: BTreeMap<(usize, usize), Forwarder>,
    /// The pairs this process forwards for, decided from the members' views.
    roles: Vec<(usize, usize)>,
    roles_at: u64,
    stats: ForwarderStats,
    out: Vec<Forwarding>,
    /// Rung by every member's engine when it republishes its cross-shard state.
    bell: std::sync::Arc<Bell>,
}

/// How often the roles are decided again from the members' views.
const ROLES_EVERY_US: u64 = 10_000;

/// Operations offered to an engine per pass, at most.
const PER_PASS: usize = 64;

impl Forwarders {
    pub fn new(members: Vec<ShardMember>, cfg: ForwarderConfig) -> Forwarders {
        let bell = std::sync::Arc::new(Bell::default());
        for m in &members {
            m.probe.ring_on_shards(bell.clone());
        }
        Forwarders {
            bell,
            members,
            cfg,
            forwarders: BTreeMap::new(),
            roles: Vec::new(),
            roles_at: 0,
            stats: ForwarderStats::default(),
            out: Vec::new(),
        }
    }

    /// What the forwarders did, those retired included.
    pub fn stats(&self) -> ForwarderStats {
        let mut s = self.stats.clone();
        for f in self.forwarders.values() {
            s.sent += f.stats().sent;
            s.went_back += f.stats().went_back;
            s.acks += f.stats().acks;
        }
        s
    }

    /// The pairs (source, destination) this process forwards for now.
    pub fn roles(&self) -> &[(usize, usize)] {
        &self.roles
    }

    fn decide_roles(&mut self) {
        let live: Vec<_> = self.members.iter().map(|m| m.probe.live()).collect();
        let mut roles = Vec::new();
        for a in 0..self.members.len() {
            for b in 0..self.members.len() {
                if a == b || live[a].status != "serving" || live[b].status != "serving" {
                    continue;
                }
                let shared: Vec<MemberId> = live[a]
                    .members
                    .iter()
                    .filter(|x| live[b].members.contains(x))
                    .copied()
                    .collect();
                let chosen = forwarder_for(
                    self.members[a].shard,
                    self.members[b].shard,
                    self.members.len() as u16,
                    &shared,
                );
                if chosen == Some(self.members[a].me) && self.members[a].me == self.members[b].me {
                    roles.push((a, b));
                }
            }
        }
        // A pair no longer ours: its forwarder goes (a later one starts at the watermark).
        let gone: Vec<(usize, usize)> = self
            .forwarders
            .keys()
            .filter(|k| !roles.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(f) = self.forwarders.remove(&k) {
                self.stats.sent += f.stats().sent;
                self.stats.went_back += f.stats().went_back;
                self.stats.acks += f.stats().acks;
            }
        }
        self.roles = roles;
    }

    /// One pass over every pair this process forwards for: returns whether it submitted
    /// anything, and when it has something to do next without new state.
    pub fn poll(&mut self, now_us: u64) -> (bool, Option<u64>) {
        if self.roles_at == 0 || now_us >= self.roles_at + ROLES_EVERY_US {
            self.roles_at = now_us.max(1);
            self.decide_roles();
        }
        let now = Instant::from_micros(now_us);
        let mut did = false;
        let mut next: Option<u64> = None;
        for &(a, b) in &self.roles {
            let (Some(src), Some(dst)) = (
                self.members[a].probe.shards(),
                self.members[b].probe.shards(),
            ) else {
                continue;
            };
            let f = self.forwarders.entry((a, b)).or_insert_with(|| {
                Forwarder::new(
                    self.members[a].shard,
                    self.members[b].shard,
                    self.cfg.clone(),
                    now,
                )
            });
            f.poll(now, &src, &dst, PER_PASS, PER_PASS, &mut self.out);
            // After one entry is refused, the ones behind it are not offered (they would come
            // after a gap, which the destination ignores): all go again from the first.
            let mut refused = [false; 2];
            for fw in self.out.drain(..) {
                let (to, side, op) = match &fw {
                    Forwarding::ToDestination(op) => (b, 0, op),
                    Forwarding::ToSource(op) => (a, 1, op),
                };
                if refused[side] {
                    continue;
                }
                match self.members[to].submitter.try_submit(op) {
                    Ok(true) => did = true,
                    // A full ring, or an engine that stopped: again later.
                    Ok(false) | Err(_) => {
                        f.refused(&fw);
                        refused[side] = true;
                    }
                }
            }
            if let Some(t) = f.poll_timeout() {
                let t = t.as_micros();
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        (did, next)
    }

    /// Polls until `stop`: after a pass that submitted nothing, waits until an engine
    /// republishes its state, the next timeout, or `idle` at most. Returns what it did.
    pub fn run(mut self, clock: &Clock, idle: Duration, stop: &AtomicBool) -> ForwarderStats {
        let idle_us = idle.as_micros() as u64;
        while !stop.load(Ordering::Acquire) {
            let now = clock.now_us();
            let (did, next) = self.poll(now);
            if !did {
                // A process with no pair to forward for only looks at the views again.
                let idle_us = if self.roles.is_empty() {
                    ROLES_EVERY_US
                } else {
                    idle_us
                };
                let until = next.map_or(now + idle_us, |t| t.min(now + idle_us));
                let wait = until.saturating_sub(clock.now_us());
                if wait > 0 && self.roles.is_empty() {
                    std::thread::sleep(Duration::from_micros(wait));
                } else if wait > 0 {
                    // Woken early when an engine republishes its state.
                    self.bell.wait(Duration::from_micros(wait));
                }
            }
        }
        self.stats()
    }
}
