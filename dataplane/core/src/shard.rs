//! Shards: a deployment of several total-order groups, each queue owned by one of them, and
//! the replicated state that carries a continuation from one shard's group to another's
//! exactly once.
//!
//! **The map.** A [`ShardMap`] says which shard owns a queue: an explicit override if it has
//! one, else jump consistent hashing (Lamping and Veach) of the queue's name over the shards,
//! which moves only about `1/n` of the queues when an `n`-th shard is added. The map is
//! versioned and applied to every shard's group as one ordered operation
//! ([`crate::queue::Op::ShardMap`]): each group switches at a known position in its own order,
//! and a newer version never gives way to an older one.
//!
//! **Exactly once across shards.** Shard A's replicas hold an outbox per destination shard: a
//! completion in A whose continuation goes into a queue that B owns does not push it, it
//! appends it to A's outbox for B under the next sequence number (one per destination, the
//! same at every replica of A, since they apply the same order). A forwarder (a process with a
//! member in A and a way to submit to B; which one is the host's choice, any number may act at
//! once) submits each entry to B as [`crate::queue::Op::Forwarded`] `{from: A, seq, req}`. B's
//! replicas keep, per source shard, the highest sequence number taken so far (the inbox's
//! watermark): an entry is taken only if it is the next one (`seq == watermark + 1`), so that
//! duplicates (two forwarders, a retransmission, a forwarder that failed and a successor that
//! starts again) are ignored and a gap (an earlier entry lost on its way) is refused until the
//! missing entry comes. Either way B tells the watermark ([`crate::queue::Effect::Inbox`]), and
//! the forwarder submits it to A ([`crate::queue::Op::ForwardAck`]), whose replicas drop the
//! entries up to it; anything above it is forwarded again. The key that B deduplicates on is
//! `(A, seq)`: each sequence number is one output of one completion of one request instance in
//! A (completions are deduplicated by instance there), so it names `(request, step instance)`
//! with a bounded memory (one number per source shard, not a set of keys).
//!
//! Nothing is lost when a member of A or B, or the forwarder, fails: the outbox and the inbox
//! are replicated state (state transfer, snapshots and the durable log carry them), and a new
//! forwarder starts from A's outbox.
//!
//! **Moving a queue.** When a new map gives one of A's queues to B, A's replicas take its
//! waiting requests (queued and blocked pushes) out of the queue at the map's position, in
//! order, and put them in the outbox for B: they move with the queue, neither lost nor
//! doubled. Requests of that queue in flight at A's consumers finish in A; their continuations
//! go wherever the map then says. A shard that is forwarded an entry for a queue it no longer
//! owns (its map moved on) takes it (the watermark moves) and forwards it on through its own
//! outbox.

use crate::queue::{Effect, Request};
use crate::types::{Instant, MemberId};
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A shard: one total-order group of the deployment (`0..shards`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// Which shard owns each queue, at one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Increases with every change; a group applies a map only if it is newer than its own.
    pub version: u64,
    /// The number of shards (at least 1).
    pub shards: u16,
    /// Queues placed by hand, whatever their hash says.
    pub overrides: BTreeMap<String, ShardId>,
}

/// A map that cannot be applied, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    #[error("shards: a deployment has at least one shard")]
    NoShards,
    #[error("overrides.{queue}: {shard} does not exist (shards = {shards})")]
    NoSuchShard {
        queue: String,
        shard: ShardId,
        shards: u16,
    },
}

impl Default for ShardMap {
    /// One shard owning every queue (version 0: a group that was never given a map).
    fn default() -> Self {
        ShardMap {
            version: 0,
            shards: 1,
            overrides: BTreeMap::new(),
        }
    }
}

impl ShardMap {
    /// `shards` shards, every queue placed by its hash.
    pub fn hashed(version: u64, shards: u16) -> Self {
        ShardMap {
            version,
            shards,
            overrides: BTreeMap::new(),
        }
    }

    /// The same map with `queue` placed on `shard`.
    pub fn with_override(mut self, queue: &str, shard: ShardId) -> Self {
        self.overrides.insert(queue.to_string(), shard);
        self
    }

    pub fn validate(&self) -> Result<(), ShardMapError> {
        if self.shards == 0 {
            return Err(ShardMapError::NoShards);
        }
        for (queue, &shard) in &self.overrides {
            if shard.0 >= self.shards {
                return Err(ShardMapError::NoSuchShard {
                    queue: queue.clone(),
                    shard,
                    shards: self.shards,
                });
            }
        }
        Ok(())
    }

    /// The shard that owns `queue`.
    pub fn owner(&self, queue: &str) -> ShardId {
        if let Some(&s) = self.overrides.get(queue) {
            return s;
        }
        ShardId(jump_hash(fnv1a(queue.as_bytes()), self.shards.max(1) as u32) as u16)
    }
}

/// Which member forwards from shard `from` to shard `to` in a deployment of `shards` shards:
/// one of `shared`, the members both shards' views hold (member `i` of every shard runs on
/// host `i`), chosen so that the pairs spread over them (the `(from * shards + to)`-th in id
/// order, modulo their number) instead of every pair falling to one host. Every process that
/// sees the same views picks the same one. `None` if the views share no member.
pub fn forwarder_for(
    from: ShardId,
    to: ShardId,
    shards: u16,
    shared: &[MemberId],
) -> Option<MemberId> {
    if shared.is_empty() {
        return None;
    }
    let mut ids = shared.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let k = usize::from(from.0) * usize::from(shards.max(1)) + usize::from(to.0);
    Some(ids[k % ids.len()])
}

/// FNV-1a, 64 bits: a stable hash of a queue's name (the same on every host and build, unlike
/// the standard library's).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets` for `key`; going
/// from `n` to `n + 1` buckets moves a key only into the new bucket, about `1/(n+1)` of them.
fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// What an outbox entry carries to another shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forward {
    /// A request for a queue the destination owns.
    Push(Request),
    /// The end of a run that began in the destination (its origin shard): a terminal
    /// completion, a failure, a refusal or an overwrite, told to the run's origin there.
    Outcome(Box<Effect>),
}

/// Entries for one destination shard not yet known taken there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Outbox {
    /// The last sequence number given (the first entry is 1).
    last: u64,
    entries: BTreeMap<u64, Forward>,
}

/// One shard's cross-shard state, part of its group's replicated state
/// ([`crate::queue::QueueState`]). See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shards {
    /// This group's shard (`None`: never given a map: one group owns every queue).
    me: Option<ShardId>,
    map: ShardMap,
    outbox: BTreeMap<ShardId, Outbox>,
    /// Per source shard, the highest sequence number taken.
    inbox: BTreeMap<ShardId, u64>,
    /// Runs of this shard's origins that went to another shard, with how many of their
    /// branches are away: held by the deployment though not by this group (a returning origin
    /// does not push them again; see `QueueState::rejoined`).
    away: BTreeMap<crate::types::RequestId, u32>,
}

/// What [`Shards::take`] decided about a forwarded entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// The next entry from its source: to be pushed (or forwarded on).
    Next,
    /// Taken before, or after a gap: ignored.
    Ignore,
}

impl Shards {
    /// This group's shard, if it was given a map.
    pub fn me(&self) -> Option<ShardId> {
        self.me
    }

    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The shard other than this one that owns `queue`, if another does.
    pub fn elsewhere(&self, queue: &str) -> Option<ShardId> {
        let me = self.me?;
        let owner = self.map.owner(queue);
        (owner != me).then_some(owner)
    }

    /// Applies a map, if newer than the current one and meant for this shard (a group is one
    /// shard for its lifetime). Whether it was applied.
    pub fn set_map(&mut self, me: ShardId, map: ShardMap) -> bool {
        if map.version <= self.map.version
            || self.me.is_some_and(|m| m != me)
            || map.validate().is_err()
        {
            return false;
        }
        self.me = Some(me);
        self.map = map;
        true
    }

    /// Appends `entry` to the outbox for `to`: its sequence number. A push of a run of this
    /// shard's counts as away until it comes back, as a push or as its end.
    pub fn append(&mut self, to: ShardId, entry: Forward) -> u64 {
        if let Forward::Push(req) = &entry {
            if req.meta.origin_shard == self.me {
                *self.away.entry(req.id).or_default() += 1;
            }
        }
        let out = self.outbox.entry(to).or_default();
        out.last += 1;
        out.entries.insert(out.last, entry);
        out.last
    }

    /// A branch of run `id` of this shard's origins came back (its push, or its end).
    pub fn returned(&mut self, id: crate::types::RequestId) {
        if let Some(n) = self.away.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.away.remove(&id);
            }
        }
    }

    /// Runs of this shard's origins away in other shards.
    pub fn away(&self) -> impl Iterator<Item = crate::types::RequestId> + '_ {
        self.away.keys().copied()
    }

    /// `to` took every entry up to `upto`: they go.
    pub fn acknowledged(&mut self, to: ShardId, upto: u64) {
        if let Some(out) = self.outbox.get_mut(&to) {
            out.entries = out.entries.split_off(&(upto + 1));
        }
    }

    /// Whether entry `seq` from `from` is the next one; the watermark moves if so.
    pub fn take(&mut self, from: ShardId, seq: u64) -> Take {
        let mark = self.inbox.entry(from).or_insert(0);
        if seq == *mark + 1 {
            *mark = seq;
            Take::Next
        } else {
            Take::Ignore
        }
    }

    /// The highest sequence number taken from `from`.
    pub fn watermark(&self, from: ShardId) -> u64 {
        self.inbox.get(&from).copied().unwrap_or(0)
    }

    /// The entries for `to` not yet acknowledged, in order: what a forwarder sends (again).
    pub fn outbox(&self, to: ShardId) -> impl Iterator<Item = (u64, &Forward)> {
        self.outbox
            .get(&to)
            .into_iter()
            .flat_map(|o| o.entries.iter().map(|(s, r)| (*s, r)))
    }

    /// The entries for `to` after sequence number `after`, in order.
    pub fn outbox_after(&self, to: ShardId, after: u64) -> impl Iterator<Item = (u64, &Forward)> {
        self.outbox
            .get(&to)
            .into_iter()
            .flat_map(move |o| o.entries.range(after + 1..).map(|(s, r)| (*s, r)))
    }

    /// The highest sequence number for `to` acknowledged (dropped from the outbox).
    pub fn acknowledged_upto(&self, to: ShardId) -> u64 {
        self.outbox.get(&to).map_or(0, |o| {
            o.entries.keys().next().map_or(o.last, |first| first - 1)
        })
    }

    /// The destinations with entries waiting.
    pub fn destinations(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.outbox
            .iter()
            .filter(|(_, o)| !o.entries.is_empty())
            .map(|(s, _)| *s)
    }

    /// A number that changes whenever what a forwarder reads changes (the map's version, an
    /// outbox's last and first entries, a watermark): a host republishes the state for its
    /// forwarders only then.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |x: u64| {
            h ^= x;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        mix(self.map.version);
        for (to, o) in &self.outbox {
            mix(u64::from(to.0));
            mix(o.last);
            mix(o.entries.keys().next().copied().unwrap_or(0));
        }
        for (from, mark) in &self.inbox {
            mix(u64::from(from.0) | 1 << 32);
            mix(*mark);
        }
        h
    }

    /// Entries waiting in every outbox.
    pub fn waiting(&self) -> usize {
        self.outbox.values().map(|o| o.entries.len()).sum()
    }

    /// What a forwarder acts on: each outbox's last sequence number and each inbox's watermark.
    pub fn marks(&self) -> Marks {
        Marks {
            outbox: self.outbox.iter().map(|(s, o)| (*s, o.last)).collect(),
            inbox: self.inbox.clone(),
        }
    }

    /// This state as a forwarder may act on it when only `stable` is known to survive a
    /// restart of the whole group (see [`Marks`]): the outbox entries numbered after the
    /// stable last ones left out, the watermarks lowered to the stable ones.
    pub fn as_of(&self, stable: &Marks) -> Shards {
        let mut s = Shards {
            me: self.me,
            map: self.map.clone(),
            outbox: BTreeMap::new(),
            inbox: BTreeMap::new(),
            away: BTreeMap::new(),
        };
        for (to, o) in &self.outbox {
            let last = o.last.min(stable.outbox.get(to).copied().unwrap_or(0));
            s.outbox.insert(
                *to,
                Outbox {
                    last,
                    entries: o
                        .entries
                        .range(..=last)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect(),
                },
            );
        }
        for (from, mark) in &self.inbox {
            let m = (*mark).min(stable.inbox.get(from).copied().unwrap_or(0));
            s.inbox.insert(*from, m);
        }
        s
    }
}

/// The numbers a forwarder acts on ([`Shards::marks`]): per destination the last outbox entry's
/// sequence number, per source the inbox's watermark.
///
/// With durable queues, a forwarder must act only on marks a majority of the group's disks
/// hold (`Replica::shards_to_forward`): an entry forwarded before that could be lost by a
/// restart of the whole source group, which would then give its number to another entry (that
/// the destination ignores as taken); a watermark acknowledged before that could be lost by a
/// restart of the whole destination group, which would then wait for entries its source has
/// dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub outbox: BTreeMap<ShardId, u64>,
    pub inbox: BTreeMap<ShardId, u64>,
}

impl Marks {
    /// A number that changes when the marks do.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0x8422_2325_cbf2_9ce4;
        let mut mix = |x: u64| {
            h ^= x;
            h = h.wrapping_mul(0x0100_0000_01b3);
        };
        for (to, last) in &self.outbox {
            mix(u64::from(to.0));
            mix(*last);
        }
        for (from, mark) in &self.inbox {
            mix(u64::from(from.0) | 1 << 32);
            mix(*mark);
        }
        h
    }
}

/// How a [`Forwarder`] paces itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Entries sent beyond the destination's watermark, at most.
    pub window: u64,
    /// Entries sent and the destination's watermark still for this long: send again from
    /// the watermark (go-back-N: the destination takes only the next entry, so whatever
    /// followed a lost one must go again). Also how long an acknowledgement is left to be
    /// ordered before it is submitted again.
    pub resend_after: Duration,
    /// Acknowledge (at the source) once this many entries were taken since the last
    /// acknowledgement ...
    pub ack_every: u64,
    /// ... or once the oldest entry taken and not acknowledged was taken this long ago.
    pub ack_after: Duration,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            window: 256,
            resend_after: Duration::from_millis(5),
            ack_every: 32,
            ack_after: Duration::from_millis(1),
        }
    }
}

/// An operation a [`Forwarder`] asks its host to submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// To the destination shard's group: an [`crate::queue::Op::Forwarded`].
    ToDestination(crate::queue::Op),
    /// To the source shard's group: an [`crate::queue::Op::ForwardAck`].
    ToSource(crate::queue::Op),
}

/// Counters of a forwarder's work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    pub sent: u64,
    /// Times it went back to the destination's watermark (a timeout, or a refused submit).
    pub went_back: u64,
    pub acks: u64,
}

/// Carries one source shard's outbox for one destination into the destination's order, and
/// the destination's watermark back (see the module docs). Sans-IO and deterministic: a host
/// with a member in the source and one in the destination calls [`Forwarder::poll`] with the
/// replicated state of both as its members hold them (after applying their effects), submits
/// what it returns to the group it names, and calls it again at [`Forwarder::poll_timeout`].
///
/// The forwarder keeps no state that matters for correctness: everything it sends is in the
/// source's outbox, and what was taken is the destination's watermark, both replicated. A
/// forwarder that starts (a new process, another member chosen) begins at the watermark; two
/// at once only cost duplicates, which the destination ignores. What it keeps is pacing: how
/// far it sent (at most `window` entries beyond the watermark), when the watermark last moved
/// (still for `resend_after` with entries out: it goes back to the watermark), and the
/// acknowledgements it submitted (batched: `ack_every` entries, or `ack_after`).
#[derive(Clone, Debug)]
pub struct Forwarder {
    from: ShardId,
    to: ShardId,
    cfg: ForwarderConfig,
    /// Entries up to this one were sent (or are known taken).
    sent: u64,
    /// The destination's watermark when last looked, and since when it has not moved.
    taken: u64,
    still_since: Instant,
    /// The last acknowledgement submitted, and when.
    ack_sent: u64,
    ack_sent_at: Instant,
    /// The last acknowledgement submitted is not yet seen dropping the source's entries.
    ack_open: bool,
    /// Since when entries were taken and not acknowledged (nor an acknowledgement submitted).
    unacked_since: Option<Instant>,
    /// When to look whether the acknowledgement last submitted was ordered.
    recheck: Option<Instant>,
    /// The last poll could not do what was due for want of room or of the destination's map.
    blocked: bool,
    stats: ForwarderStats,
}

impl Forwarder {
    pub fn new(from: ShardId, to: ShardId, cfg: ForwarderConfig, now: Instant) -> Forwarder {
        Forwarder {
            from,
            to,
            cfg,
            sent: 0,
            taken: 0,
            still_since: now,
            ack_sent: 0,
            ack_sent_at: now,
            ack_open: false,
            unacked_since: None,
            recheck: None,
            blocked: false,
            stats: ForwarderStats::default(),
        }
    }

    pub fn from(&self) -> ShardId {
        self.from
    }

    pub fn to(&self) -> ShardId {
        self.to
    }

    pub fn stats(&self) -> &ForwarderStats {
        &self.stats
    }

    /// What to submit now, appended to `out`: entries of `source`'s outbox for the destination
    /// (at most `dest_room`: what the destination member's window takes), and an
    /// acknowledgement of the destination's watermark for the source (if `source_room > 0`).
    /// `source` and `dest` are the shards' replicated states as this host's members hold them.
    pub fn poll(
        &mut self,
        now: Instant,
        source: &Shards,
        dest: &Shards,
        dest_room: usize,
        source_room: usize,
        out: &mut Vec<Forwarding>,
    ) {
        // A destination not yet given its map is not yet a shard of the deployment (its queues
        // may not exist yet: what it took would be refused): wait for it.
        self.blocked = false;
        if dest.me() != Some(self.to) {
            self.blocked = true;
            return;
        }
        let taken = dest.watermark(self.from);
        if taken > self.taken {
            self.taken = taken;
            self.still_since = now;
        }
        // Taken by the destination as its member holds it: whoever sent them.
        self.sent = self.sent.max(self.taken);
        if self.sent > self.taken && now.saturating_since(self.still_since) >= self.cfg.resend_after
        {
            self.sent = self.taken;
            self.still_since = now;
            self.stats.went_back += 1;
        }
        let limit = self.taken + self.cfg.window;
        for (seq, entry) in source
            .outbox_after(self.to, self.sent)
            .take_while(|(seq, _)| *seq <= limit)
            .take(dest_room.max(1))
        {
            if dest_room == 0 {
                self.blocked = true;
                break;
            }
            if self.sent == self.taken {
                // Nothing was out: the wait for the watermark starts now.
                self.still_since = now;
            }
            out.push(Forwarding::ToDestination(crate::queue::Op::Forwarded {
                from: self.from,
                seq,
                entry: entry.clone(),
            }));
            self.sent = seq;
            self.stats.sent += 1;
        }
        // Acknowledgements: what the source has dropped, or what was submitted lately.
        let acked = source.acknowledged_upto(self.to);
        if acked >= self.ack_sent {
            self.ack_open = false;
        }
        let recent = now.saturating_since(self.ack_sent_at) < self.cfg.resend_after;
        // While an acknowledgement submitted lately may still be ordered, look again when that
        // time is up.
        self.recheck = (recent && self.ack_open).then(|| self.ack_sent_at + self.cfg.resend_after);
        let base = if recent {
            acked.max(self.ack_sent)
        } else {
            acked
        };
        if self.taken <= base {
            self.unacked_since = None;
            return;
        }
        let since = *self.unacked_since.get_or_insert(now);
        let due = self.taken - base >= self.cfg.ack_every
            || now.saturating_since(since) >= self.cfg.ack_after;
        if due && source_room == 0 {
            self.blocked = true;
        }
        if due && source_room > 0 {
            out.push(Forwarding::ToSource(crate::queue::Op::ForwardAck {
                to: self.to,
                upto: self.taken,
            }));
            self.ack_sent = self.taken;
            self.ack_sent_at = now;
            self.ack_open = true;
            self.unacked_since = None;
            self.recheck = Some(now + self.cfg.resend_after);
            self.stats.acks += 1;
        }
    }

    /// The host could not submit `f` (a full window, a member not serving): it goes again.
    pub fn refused(&mut self, f: &Forwarding) {
        match f {
            Forwarding::ToDestination(crate::queue::Op::Forwarded { seq, .. }) => {
                if *seq <= self.sent {
                    self.sent = seq.saturating_sub(1).max(self.taken);
                    self.stats.went_back += 1;
                }
            }
            _ => {
                self.ack_sent = 0;
                self.ack_sent_at = Instant::ZERO;
                self.ack_open = false;
                self.recheck = None;
            }
        }
    }

    /// When [`Forwarder::poll`] has something to do without new state: a resend or an
    /// acknowledgement due. `None` while it waits for the state to change (the destination not
    /// yet given its map, a full window): the host polls again after its members apply
    /// something, as it does anyway.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.blocked {
            return None;
        }
        let resend = (self.sent > self.taken).then(|| self.still_since + self.cfg.resend_after);
        let ack = self.unacked_since.map(|t| t + self.cfg.ack_after);
        [resend, ack, self.recheck].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarder_roles_spread_over_the_hosts_and_every_process_picks_the_same() {
        let m = |ids: &[u16]| ids.iter().map(|&i| MemberId(i)).collect::<Vec<_>>();
        let all = m(&[0, 1, 2]);
        // Two shards, three hosts: the two directions on two different hosts.
        let a = forwarder_for(ShardId(0), ShardId(1), 2, &all);
        let b = forwarder_for(ShardId(1), ShardId(0), 2, &all);
        assert_ne!(a, b);
        // Three shards: six pairs, two on each host.
        let mut per_host = BTreeMap::new();
        for x in 0..3u16 {
            for y in (0..3u16).filter(|y| *y != x) {
                let h = forwarder_for(ShardId(x), ShardId(y), 3, &all).unwrap();
                *per_host.entry(h).or_insert(0) += 1;
            }
        }
        assert_eq!(
            per_host.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
        // The order the view lists its members in does not matter; a member not shared is
        // never picked; no shared member, no forwarder.
        assert_eq!(forwarder_for(ShardId(0), ShardId(1), 2, &m(&[2, 0, 1])), a);
        let two = m(&[0, 2]);
        for x in 0..2u16 {
            let h = forwarder_for(ShardId(x), ShardId(1 - x), 2, &two).unwrap();
            assert!(two.contains(&h));
        }
        assert_eq!(forwarder_for(ShardId(0), ShardId(1), 2, &[]), None);
    }

    #[test]
    fn jump_hash_spreads_and_moves_little_when_a_shard_is_added() {
        let names: Vec<String> = (0..4000).map(|i| format!("step-{i}")).collect();
        let four = ShardMap::hashed(1, 4);
        let five = ShardMap::hashed(2, 5);
        let mut per = [0usize; 4];
        let mut moved = 0;
        for n in &names {
            let a = four.owner(n);
            per[a.0 as usize] += 1;
            let b = five.owner(n);
            if a != b {
                assert_eq!(b, ShardId(4), "{n} moved between old shards");
                moved += 1;
            }
        }
        for p in per {
            assert!((800..1200).contains(&p), "{per:?}");
        }
        // About a fifth move, all to the new shard.
        assert!((600..1000).contains(&moved), "{moved}");
        // Stable across builds and hosts: pinned values.
        assert_eq!(ShardMap::hashed(1, 1).owner("anything"), ShardId(0));
        assert_eq!(
            (0..8)
                .map(|i| four.owner(&format!("q{i}")).0)
                .collect::<Vec<_>>(),
            PINNED
        );
    }
    const PINNED: [u16; 8] = [0, 0, 2, 2, 0, 2, 1, 3];

    #[test]
    fn jump_hash_answers_as_the_papers_algorithm() {
        // Published values of the reference implementation (as ClickHouse's
        // jumpConsistentHash tests list them).
        for (key, buckets, want) in [
            (1, 1, 0),
            (42, 57, 43),
            (256, 1024, 520),
            (3_735_883_980, 1, 0),
            (3_735_883_980, 666, 361),
            (16_045_690_984_833_335_023, 255, 237),
        ] {
            assert_eq!(jump_hash(key, buckets), want, "jump({key}, {buckets})");
        }
    }

    #[test]
    fn overrides_win_and_bad_maps_are_named() {
        let m = ShardMap::hashed(1, 2).with_override("a", ShardId(1));
        assert_eq!(m.owner("a"), ShardId(1));
        let m2 = ShardMap::hashed(1, 2).with_override("a", ShardId(0));
        assert_eq!(m2.owner("a"), ShardId(0));
        let bad = ShardMap::hashed(1, 2).with_override("resize", ShardId(2));
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "overrides.resize: shard 2 does not exist (shards = 2)"
        );
        assert_eq!(
            ShardMap::hashed(1, 0).validate().unwrap_err(),
            ShardMapError::NoShards
        );
    }

    #[test]
    fn maps_apply_newer_only_and_to_one_shard() {
        let mut s = Shards::default();
        assert_eq!(s.elsewhere("x"), None);
        assert!(s.set_map(ShardId(1), ShardMap::hashed(3, 2)));
        assert!(!s.set_map(ShardId(1), ShardMap::hashed(2, 2)), "older");
        assert!(!s.set_map(ShardId(1), ShardMap::hashed(3, 2)), "same");
        assert!(
            !s.set_map(ShardId(0), ShardMap::hashed(4, 2)),
            "other shard"
        );
        assert!(!s.set_map(ShardId(1), ShardMap::hashed(4, 0)), "invalid");
        assert!(s.set_map(
            ShardId(1),
            ShardMap::hashed(4, 2).with_override("x", ShardId(0))
        ));
        assert_eq!(s.elsewhere("x"), Some(ShardId(0)));
    }

    #[test]
    fn the_inbox_takes_each_entry_once_in_order() {
        let mut s = Shards::default();
        let a = ShardId(0);
        assert_eq!(s.take(a, 2), Take::Ignore, "a gap");
        assert_eq!(s.take(a, 1), Take::Next);
        assert_eq!(s.take(a, 1), Take::Ignore, "a duplicate");
        assert_eq!(s.take(a, 2), Take::Next);
        assert_eq!(s.watermark(a), 2);
        assert_eq!(s.watermark(ShardId(5)), 0);
    }

    fn push(n: u64) -> Forward {
        Forward::Push(Request {
            id: crate::types::RequestId::new(crate::types::MemberId(1), n),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: Vec::new(),
            meta: crate::queue::Meta::default(),
            http: None,
        })
    }

    #[test]
    fn the_fingerprint_follows_what_a_forwarder_reads() {
        let mut a = Shards::default();
        assert!(a.set_map(ShardId(0), ShardMap::hashed(1, 2)));
        let mut seen = vec![a.fingerprint()];
        a.append(ShardId(1), push(1));
        seen.push(a.fingerprint());
        a.append(ShardId(1), push(2));
        seen.push(a.fingerprint());
        assert_eq!(a.acknowledged_upto(ShardId(1)), 0);
        a.acknowledged(ShardId(1), 1);
        assert_eq!(a.acknowledged_upto(ShardId(1)), 1);
        seen.push(a.fingerprint());
        assert_eq!(a.take(ShardId(1), 1), Take::Next);
        seen.push(a.fingerprint());
        assert!(a.set_map(ShardId(0), ShardMap::hashed(2, 2)));
        seen.push(a.fingerprint());
        let distinct: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(distinct.len(), seen.len(), "{seen:?}");
        // Entries after a number, in order; everything acknowledged: the last number.
        assert_eq!(
            a.outbox_after(ShardId(1), 0)
                .map(|(s, _)| s)
                .collect::<Vec<_>>(),
            vec![2]
        );
        a.acknowledged(ShardId(1), 2);
        assert_eq!(a.acknowledged_upto(ShardId(1)), 2);
        assert_eq!(a.outbox_after(ShardId(1), 0).count(), 0);
    }

    proptest::proptest! {
        /// Whatever the states and rooms it is polled with, a forwarder's timer after a poll
        /// lies ahead of the poll (a host that sleeps until it never spins), and it never
        /// sends an entry at or below the destination's watermark nor beyond its window, nor
        /// acknowledges beyond the watermark (some of its acknowledgements lost).
        #[test]
        fn a_forwarders_timer_is_ahead_of_its_poll(
            steps in proptest::collection::vec((0u64..3, 0u64..4, 0usize..3, 0usize..2, 0u64..3000), 1..60),
        ) {
            let cfg = ForwarderConfig {
                window: 4,
                resend_after: Duration::from_micros(1000),
                ack_every: 2,
                ack_after: Duration::from_micros(300),
            };
            let mut src = Shards::default();
            let mut dst = Shards::default();
            src.set_map(ShardId(0), ShardMap::hashed(1, 2));
            dst.set_map(ShardId(1), ShardMap::hashed(1, 2));
            let mut now = Instant::from_micros(1);
            let mut f = Forwarder::new(ShardId(0), ShardId(1), cfg.clone(), now);
            let mut n = 0;
            let mut out = Vec::new();
            for (append, take, dst_room, src_room, wait) in steps {
                for _ in 0..append {
                    n += 1;
                    src.append(ShardId(1), push(n));
                }
                // The destination takes some of what is out, the source drops what was
                // acknowledged by the forwarder's last acknowledgement.
                for _ in 0..take {
                    let next = dst.watermark(ShardId(0)) + 1;
                    if next <= n {
                        dst.take(ShardId(0), next);
                    }
                }
                now = now + Duration::from_micros(wait);
                out.clear();
                f.poll(now, &src, &dst, dst_room, src_room, &mut out);
                let mark = dst.watermark(ShardId(0));
                for fw in &out {
                    match fw {
                        Forwarding::ToDestination(crate::queue::Op::Forwarded { seq, .. }) => {
                            proptest::prop_assert!(*seq > mark && *seq <= mark + cfg.window);
                        }
                        Forwarding::ToSource(crate::queue::Op::ForwardAck { upto, .. }) => {
                            proptest::prop_assert!(*upto <= mark);
                            // Some acknowledgements are lost on their way into the order.
                            if wait % 3 != 0 {
                                src.acknowledged(ShardId(1), *upto);
                            }
                        }
                        other => proptest::prop_assert!(false, "{other:?}"),
                    }
                }
                if let Some(t) = f.poll_timeout() {
                    proptest::prop_assert!(t > now, "timer {t:?} at {now:?}: {f:?}");
                }
            }
        }
    }
}
