//! Durable queues in the replica: what the host writes to its log, and what waits for a
//! majority of the members' disks.
//!
//! With [`Replica::set_durable`] on, every step of the order the replica applies (an
//! operation, a view) is handed to the host to append to its log ([`Replica::poll_persist`]),
//! at its position ([`QueueState::applied`] before it); when the queue is replaced by a state
//! (a joiner's), or when logging starts, the host is asked for a snapshot instead. The host
//! says how far its log is on disk ([`Replica::persisted`]); members tell each other in their
//! status rows ([`crate::wire::Row::persisted`]).
//!
//! What a step that pushes into a durable queue, or ends a request of one, tells outside the
//! group waits until a majority of the group file's members has that step on disk (not of the
//! view: a restarted group decides with a majority of the group file's members, see
//! `replica/recovery.rs`): the pusher's [`Effect::Accepted`], and the end of a run (its
//! result, failure or refusal; see `queue::ended`), and between shards an outbox entry
//! ([`Effect::Outbox`]) and an inbox's watermark ([`Effect::Inbox`]). A whole-group crash then cannot take back
//! what anyone was told: a majority holds it, and any majority that restarts includes one of
//! them. Everything else
//! (assignments, views) is told at once: a function may run before its request is on disk,
//! and runs again after a crash that lost it (the docs already say a function may run again).

use super::{Applied, Replica};
use crate::durable::log::RecordKind;
use crate::durable::ViewRecord;
use crate::proto::Status;
use crate::queue::{ended, Effect, Op, RejectReason};
use crate::shard::{Marks, Shards};
use crate::types::{Instant, MemberId};
use std::collections::VecDeque;

/// What the host writes to its log next (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    /// A step of the order at `position`: an operation (its encoding) or a view
    /// ([`ViewRecord`]).
    Record {
        position: u64,
        kind: RecordKind,
        bytes: Vec<u8>,
    },
    /// The state as of `position` (the log goes on from there): written as a snapshot before
    /// the records after it.
    Snapshot { position: u64, state: Vec<u8> },
}

/// How long the oldest effect held for the disks may wait, the disks taking nothing, before
/// the disks count as full: pushes into durable queues whose policy is `reject` are then
/// refused (see [`Replica::submit_encoded`]). A healthy disk syncs in well under a second.
pub const DISKS_STALLED: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct Durable {
    /// The group file's members: a majority of them must have a step on disk.
    configured: Vec<MemberId>,
    to_persist: VecDeque<Persist>,
    /// Effects waiting for a majority's disks, with the position the log must reach.
    held: VecDeque<(u64, Effect)>,
    /// The host says its disk is full (see [`Replica::set_disk_full`]).
    disk_full: bool,
    /// The oldest held effect's position, since when it has been the oldest, and the time
    /// last seen (see [`Replica::disks_refuse`]).
    oldest: Option<(u64, Instant)>,
    now: Instant,
    /// The cross-shard marks noted at each position they changed at (see
    /// [`Replica::shards_to_forward`]), until a majority's disks reach it.
    marks: VecDeque<(u64, Marks)>,
    /// The position and the shards' fingerprint when the marks were last noted.
    marks_at: u64,
    marks_seen: u64,
    /// The newest marks a majority's disks hold.
    stable: Marks,
}

impl Durable {
    /// The position the oldest held effect waits for.
    pub(super) fn first_held(&self) -> Option<u64> {
        self.held.front().map(|(p, _)| *p)
    }
}

impl Replica {
    /// The cross-shard state ([`crate::shard::Shards`]) as a forwarder may act on it: with
    /// durable logging, only the outbox entries and the inbox watermarks a majority of the
    /// group file's members has on disk (see [`Marks`]: a restart of the whole group keeps
    /// them); without, the state as applied. Call it (or [`Replica::shards_fingerprint`]) after
    /// each batch of steps: what changed is noted at the position applied then.
    pub fn shards_to_forward(&mut self) -> std::borrow::Cow<'_, Shards> {
        if !self.holds_group_state() {
            // Its queue is its own log's history, not the group's: nothing to act on.
            return std::borrow::Cow::Owned(Shards::default());
        }
        match self.stable_marks() {
            Some(stable) => {
                let stable = stable.clone();
                std::borrow::Cow::Owned(self.queue.shards().as_of(&stable))
            }
            None => std::borrow::Cow::Borrowed(self.queue.shards()),
        }
    }

    /// A number that changes whenever [`Replica::shards_to_forward`] would (a host republishes
    /// the state for its forwarders only then).
    pub fn shards_fingerprint(&mut self) -> u64 {
        if !self.holds_group_state() {
            return 0;
        }
        let fp = self.queue.shards().fingerprint();
        match self.stable_marks() {
            Some(stable) => fp ^ stable.fingerprint().rotate_left(17),
            None => fp,
        }
    }

    /// Whether the queue is the group's state: not while a member restarted from its disk has
    /// not recovered, nor while a joiner carries its own log's state (either may hold steps
    /// no majority ever had, which a forwarder must not act on). What was noted before goes.
    fn holds_group_state(&mut self) -> bool {
        if self.recovered() && self.log_state.is_none() {
            return true;
        }
        if let Some(d) = self.durable.as_mut() {
            d.marks.clear();
            d.stable = Marks::default();
            d.marks_seen = 0;
            d.marks_at = 0;
        }
        false
    }

    /// Notes the marks if they changed, and releases those a majority's disks now hold: the
    /// stable marks (None without durable logging).
    fn stable_marks(&mut self) -> Option<&Marks> {
        // (Called by the engine's polling loop after every batch: nothing allocated unless
        // marks wait for the disks.)
        let applied = self.queue.applied();
        let fp = self.queue.shards().fingerprint();
        let d = self.durable.as_mut()?;
        if applied < d.marks_at {
            // The state was replaced by an older one (a joiner's log state by the group's):
            // nothing noted of it counts; its own marks are stable once on the disks.
            d.marks.clear();
            d.stable = Marks::default();
            d.marks_seen = 0;
        }
        d.marks_at = applied;
        if fp != d.marks_seen {
            d.marks_seen = fp;
            let now = self.queue.shards().marks();
            let last = d.marks.back().map_or(&d.stable, |(_, m)| m);
            if *last != now {
                d.marks.push_back((applied, now));
            }
        }
        if !d.marks.is_empty() {
            let majority = self.majority_persisted();
            let d = self.durable.as_mut()?;
            while d.marks.front().is_some_and(|(p, _)| *p <= majority) {
                if let Some((_, m)) = d.marks.pop_front() {
                    d.stable = m;
                }
            }
        }
        self.durable.as_ref().map(|d| &d.stable)
    }

    /// Switches durable logging on or off (off by default; see `replica/durable.rs`). On, the
    /// first thing to persist is a snapshot of the state as of now. `configured`: the group
    /// file's members; what is held waits for a majority of them (not of the view: a
    /// whole-group restart counts on any majority of them, see `replica/recovery.rs`).
    pub fn set_durable(&mut self, on: bool, configured: &[MemberId]) {
        match (on, self.durable.is_some()) {
            (true, false) => {
                let mut d = Durable {
                    configured: configured.to_vec(),
                    ..Durable::default()
                };
                d.to_persist.push_back(Persist::Snapshot {
                    position: self.queue.applied(),
                    state: self.queue.snapshot(),
                });
                self.durable = Some(Box::new(d));
            }
            (false, true) => {
                // What was held is told now (to a host of `poll_effect`; one of
                // `poll_applied` saw it in its step already).
                if let Some(d) = self.durable.take() {
                    self.effects.extend(d.held.into_iter().map(|(_, e)| e));
                }
            }
            _ => {}
        }
    }

    /// The next thing to write to the log, in order. A snapshot means the log goes on from
    /// its position: what the log held at or after it is not the group's (a joiner's or a
    /// restarted member's old log) and goes.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        if self.log_state.is_some() {
            // A joiner carrying its log's state, before the group's state (or claims) came:
            // what it applies meanwhile is not the group's history, and its log stays as it is
            // (writing its empty queue's snapshot would wipe the log it may have to claim
            // from, or hand over after another whole-group restart). Dropped when the state
            // comes (see `Replica::discard_unpersisted`).
            return None;
        }
        let p = self.durable.as_mut()?.to_persist.pop_front();
        if matches!(p, Some(Persist::Snapshot { .. })) {
            self.reset_taken();
        }
        p
    }

    /// Asks the host for a snapshot of the state as of now, at the end of the log it was
    /// handed (so its log may drop what lies before; the disk stays bounded). Only while the
    /// replica logs and holds the group's state; whether it was asked.
    pub fn snapshot_now(&mut self) -> bool {
        let serving = matches!(self.member.status(), Status::Serving | Status::Changing);
        if !serving || !self.recovered() || self.log_state.is_some() {
            return false;
        }
        let (position, state) = (self.queue.applied(), self.queue.snapshot());
        let Some(d) = self.durable.as_mut() else {
            return false;
        };
        d.to_persist
            .push_back(Persist::Snapshot { position, state });
        true
    }

    /// Every step before `position` is on this member's disk (it never goes back); told to the
    /// other members in this member's rows. (Ignored while a restarted member's log is not
    /// the group's yet: see `replica/recovery.rs`.)
    pub fn persisted(&mut self, position: u64) {
        if self.own_log_counts() {
            self.member.set_persisted(position);
        }
    }

    /// The position a majority of the group file's members has on disk, by the rows last
    /// heard (a member not in the view counts as nothing on disk). Without the group file's
    /// members, a majority of the view's.
    pub fn majority_persisted(&self) -> u64 {
        let by_rank = self.member.persisted();
        let view = self.member.view();
        let mut p: Vec<u64> = match self.durable.as_ref().map(|d| &d.configured) {
            Some(c) if !c.is_empty() => c
                .iter()
                .map(|m| view.rank_of(*m).map_or(0, |r| by_rank[r]))
                .collect(),
            _ => by_rank,
        };
        if p.is_empty() {
            return 0;
        }
        p.sort_unstable_by(|a, b| b.cmp(a));
        p[p.len() / 2]
    }

    /// The group file's members, as [`Replica::set_durable`] was told.
    pub(super) fn durable_configured(&self) -> Vec<MemberId> {
        self.durable
            .as_ref()
            .map(|d| d.configured.clone())
            .unwrap_or_default()
    }

    /// The host's disk is full (`true`) or takes the log again (see [`Replica::disks_refuse`]).
    pub fn set_disk_full(&mut self, full: bool) {
        if let Some(d) = self.durable.as_mut() {
            d.disk_full = full;
        }
    }

    /// Follows how long the oldest held effect has waited (called with each frame and timeout).
    pub(super) fn watch_disks(&mut self, now: Instant) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        d.now = now;
        d.oldest = match (d.held.front(), d.oldest) {
            (None, _) => None,
            (Some((p, _)), Some((q, since))) if *p == q => Some((q, since)),
            (Some((p, _)), _) => Some((*p, now)),
        };
    }

    /// Whether the disks do not take the log now: this member's is full, or the oldest effect
    /// held for a majority's disks has waited [`DISKS_STALLED`] without them taking it (their
    /// rows say nothing new: other members' disks are full, or they are gone).
    pub fn disks_refuse(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| {
            d.disk_full
                || d.oldest
                    .is_some_and(|(_, since)| d.now.saturating_since(since) >= DISKS_STALLED)
        })
    }

    /// A push refused while the disks do not take the log, if `op` is one into a durable queue
    /// whose policy is `reject`: what to tell its pusher.
    pub(super) fn refused_for_disks(&self, op: &[u8]) -> Option<crate::proto::SubmitError> {
        if !self.disks_refuse() {
            return None;
        }
        let (Op::Push { pusher, req } | Op::TryPush { pusher, req }) = Op::decode(op).ok()? else {
            return None;
        };
        if !self.queue.rejects_without_disks(&req.queue) {
            return None;
        }
        Some(crate::proto::SubmitError::DisksFull {
            queue: req.queue.clone(),
            effect: Box::new(Effect::Rejected {
                pusher,
                id: req.id,
                step: req.step,
                queue: req.queue,
                reason: RejectReason::DisksFull,
                origin_shard: req.meta.origin_shard,
            }),
        })
    }

    /// Effects held for a majority's disks.
    pub fn held_for_disks(&self) -> usize {
        self.durable.as_ref().map_or(0, |d| d.held.len())
    }

    /// Before `op` is applied: whether what it tells outside the group waits for the disks.
    pub(super) fn durable_step(&self, op: &crate::queue::Op) -> bool {
        self.durable.is_some() && self.queue.touches_durable(op)
    }

    /// After a step at `position` was applied (its effects in `scratch`): it is to be
    /// persisted, and with `gated`, what it tells outside the group is held (with `keep`, a
    /// copy: the effects stay in `scratch` as well).
    pub(super) fn persist_step(
        &mut self,
        position: u64,
        kind: RecordKind,
        bytes: Vec<u8>,
        gated: bool,
        keep: bool,
    ) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        d.to_persist.push_back(Persist::Record {
            position,
            kind,
            bytes,
        });
        if gated {
            let told = |e: &Effect| {
                // An outbox entry is not forwarded, nor an inbox's watermark told, before a
                // majority has it on disk: a whole-group restart could give the number to
                // another entry, or forget an entry its source dropped.
                matches!(
                    e,
                    Effect::Accepted { .. }
                        | Effect::Redis { .. }
                        | Effect::Outbox { .. }
                        | Effect::Inbox { .. }
                ) || ended(e).is_some()
            };
            hold(d, &mut self.scratch, position + 1, told, keep);
        }
    }

    /// Ends of runs among the effects in `scratch` wait until the disks reach `position`, and
    /// if there are any, the [`Effect::Rejoined`] that follows them waits behind them (it
    /// says which of the origin's requests are unknown: not before their ends are told).
    pub(super) fn hold_ends(&mut self, position: u64) {
        let any = self.scratch.iter().any(|e| ended(e).is_some());
        if let Some(d) = self.durable.as_mut() {
            hold(
                d,
                &mut self.scratch,
                position,
                |e| ended(e).is_some() || (any && matches!(e, Effect::Rejoined { .. })),
                false,
            );
        }
    }

    /// A view installed at `position`. What it tells outside (the replies of blocked Redis
    /// reads it served with entries given back by a removed member) waits for the disks.
    pub(super) fn persist_view(&mut self, position: u64, view: ViewRecord) {
        self.persist_step(position, RecordKind::View, view.encode(), true, false);
    }

    /// What a joiner carrying its log's state applied before its state came, not written
    /// (see [`Replica::poll_persist`]): dropped.
    pub(super) fn discard_unpersisted(&mut self) {
        if let Some(d) = self.durable.as_mut() {
            d.to_persist.clear();
        }
    }

    /// The queue was replaced by a state: the log goes on from a snapshot of it.
    pub(super) fn persist_state(&mut self) {
        let (position, state) = (self.queue.applied(), self.queue.snapshot());
        if let Some(d) = self.durable.as_mut() {
            d.to_persist
                .push_back(Persist::Snapshot { position, state });
        }
    }

    /// Effects whose step a majority now has on disk, in order, with the position.
    pub(super) fn release_held(&mut self) -> Vec<(u64, Effect)> {
        let m = self.majority_persisted();
        let Some(d) = self.durable.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while d.held.front().is_some_and(|(p, _)| *p <= m) {
            out.extend(d.held.pop_front());
        }
        out
    }

    /// For [`Replica::poll_applied`]: the effects released by the disks, if any.
    pub(super) fn released(&mut self) -> Option<Applied> {
        let effects = self.release_held();
        (!effects.is_empty()).then_some(Applied::Persisted { effects })
    }
}

/// Moves (or with `keep`, copies) the effects `which` picks from `scratch` to the held ones,
/// to be released once the disks reach `position`.
fn hold(
    d: &mut Durable,
    scratch: &mut Vec<Effect>,
    position: u64,
    which: impl Fn(&Effect) -> bool,
    keep: bool,
) {
    let mut i = 0;
    while i < scratch.len() {
        if !which(&scratch[i]) {
            i += 1;
        } else if keep {
            d.held.push_back((position, scratch[i].clone()));
            i += 1;
        } else {
            d.held.push_back((position, scratch.remove(i)));
        }
    }
}
