//! Ordering and stability: what a member holds of every sender, the status rows it knows (the
//! shared state table), and delivery in round-robin slot order.
//!
//! Message `k` of the member of rank `r` (null or not) occupies global slot `k * N + r`; slots
//! are delivered in order. A slot that carries a message is delivered once *stable* (every
//! member's row says it holds it); a null is passed once a majority holds it (see
//! [`Order::deliver`]). Rows are merged monotonically, so a stale or reordered row is harmless.
//! Receivers keep out-of-order messages inside a receive window of `4 * window` beyond what
//! they delivered of each sender, which bounds memory per sender.

use super::event::{Delivered, Delivery, Stats};
use crate::types::{Instant, Seq, View};
use crate::wire::{Entry, Frame, Row, RowRef};
use core::time::Duration;
use std::collections::VecDeque;

#[derive(Debug)]
pub(crate) enum Slot {
    Data(Vec<u8>),
    Null,
}

/// The messages of one sender that this member holds: from `base` (the first not yet
/// forgotten) on, with gaps (`None`) where a message was not received yet.
#[derive(Debug, Default)]
pub(crate) struct SenderLog {
    pub(crate) base: u64,
    /// Messages of this sender delivered locally (`>= base`).
    pub(crate) delivered: u64,
    pub(crate) slots: VecDeque<Option<Slot>>,
    /// Messages held contiguously from 0 (`base + index of the first gap`).
    pub(crate) contiguous: u64,
    /// One past the highest sequence known to exist (received, or announced in a row).
    pub(crate) highest: u64,
    /// One past the highest sequence actually held (so `held_end > contiguous` means a gap).
    pub(crate) held_end: u64,
}

impl SenderLog {
    fn has(&self, seq: u64) -> bool {
        seq < self.base
            || seq
                .checked_sub(self.base)
                .and_then(|i| self.slots.get(i as usize))
                .is_some_and(|s| s.is_some())
    }

    /// Stores a slot; returns false if it was already held.
    fn insert(&mut self, seq: u64, slot: Slot) -> bool {
        if seq < self.contiguous {
            return false;
        }
        let i = (seq - self.base) as usize;
        while self.slots.len() <= i {
            self.slots.push_back(None);
        }
        if self.slots[i].is_some() {
            return false;
        }
        self.slots[i] = Some(slot);
        self.highest = self.highest.max(seq + 1);
        self.held_end = self.held_end.max(seq + 1);
        while let Some(Some(_)) = self.slots.get((self.contiguous - self.base) as usize) {
            self.contiguous += 1;
        }
        true
    }

    /// The slot of `seq`, if held and not forgotten.
    fn get(&self, seq: u64) -> Option<&Slot> {
        seq.checked_sub(self.base)
            .and_then(|i| self.slots.get(i as usize))
            .and_then(Option::as_ref)
    }
}

/// What a peer's row said about our own messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowMerge {
    /// Our messages the peer held before and after the merge.
    pub(crate) acked_before: u64,
    pub(crate) acked_after: u64,
    /// The peer takes another process for our id in this view: this process restarted (from
    /// the group file) into a view its previous self ran in.
    pub(crate) other_process: bool,
    /// The peer holds more of our messages than we ever sent: this process restarted inside
    /// a view that outlived it.
    pub(crate) beyond_sent: bool,
}

/// What receiving a data frame's entries changed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Receipt {
    /// The contiguous prefix of the sender grew: our row has news for everyone.
    pub(crate) advanced: bool,
    /// The sender should hear our row now: it sent duplicates (our acknowledgement was
    /// probably lost).
    pub(crate) answer: bool,
}

/// Messages of one sender held beyond a gap: since when, and whether reported.
#[derive(Clone, Copy, Debug)]
struct Gap {
    /// The sender's contiguous count when the gap was first seen.
    at: u64,
    since: Instant,
    reported: bool,
}

/// Ordering state of one member in one view. See the module docs.
#[derive(Debug)]
pub(crate) struct Order {
    rank: usize,
    recv_window: u64,
    logs: Vec<SenderLog>,
    /// Latest known row of every rank (merged monotonically). Our own is built on demand.
    rows: Vec<Row>,
    /// Where our durable log reaches (see [`Row::persisted`]), for our rows.
    persisted: u64,
    next_slot: u64,
    /// Per sender: messages held beyond a gap (see [`Order::gap_due`]).
    gaps: Vec<Option<Gap>>,
    /// Scratch reused on every delivery: per-sender stable and majority counts.
    stable: Vec<u64>,
    majority: Vec<u64>,
    held: Vec<u64>,
    /// Per rank: whether its row counts (it names our process for every rank, see `procs`).
    counts: Vec<bool>,
    /// Per rank: the process (incarnation) this member takes for it in this view (0: none
    /// yet): its own; after a view change, the ones the decision names; in the group file's
    /// first view, the first process heard whose row shows it heard this process (see
    /// [`Order::admit`]). Only the messages and the row columns of these processes count:
    /// another process with the same id sends its own messages under the same sequence
    /// numbers.
    pinned: Vec<u64>,
    /// Per rank: the processes its latest row names for every rank. Its counts take part in
    /// stability and in the null majority only while they are exactly ours: a member that
    /// takes another process for some rank (one restarted from the group file into this view,
    /// which we do not know of, or do not know yet) may stand in a view change for what that
    /// process held, and could not then tell what we delivered (see [`Order::deliver`]).
    procs: Vec<Vec<u64>>,
    /// Per rank not pinned yet: the process last heard from (echoed, marked [`TENTATIVE`], in
    /// our row's column for it, which is how it proves to us that it is of this run).
    seen: Vec<u64>,
}

/// A frame's process, as [`Order::admit`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The process this member takes for the rank: the frame counts.
    Pinned,
    /// Not pinned yet, and the frame does not show that its sender heard this process: it may
    /// be a replay of an earlier run of the group. It does not count; our rows echo its
    /// process so that, if it is live, its next frames do.
    Unconfirmed,
    /// Another process than the one pinned.
    Other,
}

/// In a row's column, marks a process heard but not pinned (an echo, not a count). Processes
/// are numbered below it (see [`crate::proto::Member::new`]).
pub(crate) const TENTATIVE: u64 = 1 << 63;

impl Order {
    pub(crate) fn new(n: usize, rank: usize, recv_window: u64, incarnation: u64) -> Order {
        let mut pinned = vec![0; n];
        if let Some(p) = pinned.get_mut(rank) {
            *p = incarnation;
        }
        Order {
            rank,
            recv_window,
            seen: vec![0; n],
            procs: vec![Vec::new(); n],
            pinned,
            logs: (0..n).map(|_| SenderLog::default()).collect(),
            rows: (0..n)
                .map(|_| Row {
                    heartbeat: 0,
                    delivered: 0,
                    persisted: 0,
                    received: vec![0; n],
                    incarnations: Vec::new(),
                })
                .collect(),
            persisted: 0,
            next_slot: 0,
            gaps: vec![None; n],
            stable: Vec::with_capacity(n),
            majority: Vec::with_capacity(n),
            held: Vec::with_capacity(n),
            counts: Vec::with_capacity(n),
        }
    }

    fn n(&self) -> u64 {
        self.logs.len() as u64
    }

    /// Global slots delivered so far.
    pub(crate) fn delivered_slots(&self) -> u64 {
        self.next_slot
    }

    /// Whether message `seq` of rank `r` is held (delivered or not).
    pub(crate) fn has(&self, r: usize, seq: u64) -> bool {
        self.logs.get(r).is_some_and(|l| l.has(seq))
    }

    /// Slots held but not yet forgotten, over all senders.
    pub(crate) fn buffered_slots(&self) -> usize {
        self.logs.iter().map(|l| l.slots.len()).sum()
    }

    /// Own messages (data or null) issued so far.
    pub(crate) fn own_highest(&self) -> u64 {
        self.logs[self.rank].highest
    }

    /// The first own message not yet forgotten (earlier ones are stable and delivered).
    pub(crate) fn own_base(&self) -> u64 {
        self.logs[self.rank].base
    }

    /// Own messages issued and not yet forgotten (what the send window counts).
    pub(crate) fn window_used(&self) -> u64 {
        let own = &self.logs[self.rank];
        own.highest - own.base
    }

    /// Own messages that peer `p` holds, as its row says.
    pub(crate) fn acked_by(&self, p: usize) -> u64 {
        self.rows[p].received[self.rank]
    }

    /// Whether anything is in flight: slots held and not forgotten, or own messages sent that
    /// some peer does not hold yet.
    pub(crate) fn busy(&self, unsent: u64) -> bool {
        self.logs.iter().any(|l| l.highest > l.base)
            || (0..self.logs.len()).any(|p| p != self.rank && self.acked_by(p) < unsent)
    }

    /// Whether we miss messages of rank `r` and it is time to say so: we hold some beyond a
    /// gap, and have for `reorder` (a frame overtaken by a later one on the way is not lost:
    /// reporting at once had every frame a jittery link reordered resent, with all those in
    /// flight after it). A row counting more than we hold is no proof of loss either: on a slow
    /// link those frames are still on their way, and reporting them made every one of them
    /// resent; a lost last frame is left to the sender's timeout.
    pub(crate) fn gap_due(&self, r: usize, now: Instant, reorder: Duration) -> bool {
        self.gaps
            .get(r)
            .copied()
            .flatten()
            .is_some_and(|g| now >= g.since + reorder)
    }

    /// The earliest instant at which a gap not reported yet is due (see [`Order::gap_due`];
    /// `reorder` per rank).
    pub(crate) fn next_gap_report(&self, reorder: impl Fn(usize) -> Duration) -> Option<Instant> {
        self.gaps
            .iter()
            .enumerate()
            .filter_map(|(r, g)| g.filter(|g| !g.reported).map(|g| g.since + reorder(r)))
            .min()
    }

    /// Whether rank `r`'s gap is due and not reported yet; it counts as reported from now on
    /// (the report is then repeated with every status row: see `Transmitter::produce`).
    pub(crate) fn take_due_gap(&mut self, r: usize, now: Instant, reorder: Duration) -> bool {
        match self.gaps.get_mut(r) {
            Some(Some(g)) if !g.reported && now >= g.since + reorder => {
                g.reported = true;
                true
            }
            _ => false,
        }
    }

    /// Own message `seq`, if still held.
    pub(crate) fn own_slot(&self, seq: u64) -> Option<&Slot> {
        self.logs[self.rank].get(seq)
    }

    /// Slot `g` of this view if held and not delivered: `Some(Some(payload))` a message,
    /// `Some(None)` a null (see [`Member::held_slot`](super::Member::held_slot)).
    pub(crate) fn held_slot(&self, g: u64) -> Option<Option<&[u8]>> {
        if g < self.next_slot {
            return None;
        }
        let n = self.n();
        match self.logs[(g % n) as usize].get(g / n)? {
            Slot::Data(p) => Some(Some(p)),
            Slot::Null => Some(None),
        }
    }

    /// One past the last slot of this view held (of any sender).
    pub(crate) fn held_slots_end(&self) -> u64 {
        let n = self.n();
        self.logs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.held_end > 0)
            .map(|(r, l)| (l.held_end - 1) * n + r as u64 + 1)
            .max()
            .unwrap_or(0)
    }

    /// Per sender, the messages held contiguously (the `received` column of our row).
    pub(crate) fn contiguous(&self) -> Vec<u64> {
        self.logs.iter().map(|l| l.contiguous).collect()
    }

    /// Per rank: the process taken for it in this view (0: none heard yet).
    pub(crate) fn pinned(&self) -> &[u64] {
        &self.pinned
    }

    /// Takes the processes a decision names for the members of the view it installs (a
    /// process other than these, or than our own, never counts in this view).
    pub(crate) fn pin(&mut self, r: usize, incarnation: u64) {
        if r != self.rank && incarnation != 0 && incarnation & TENTATIVE == 0 {
            if let Some(p) = self.pinned.get_mut(r) {
                *p = incarnation;
            }
        }
    }

    /// Whether a frame of rank `r` from process `incarnation` counts. `echo` is what the
    /// frame's row says of our rank (`None`: a control frame, which has no row). A rank not
    /// pinned yet is pinned to the frame's process only if the echo is our own process: a
    /// frame of an earlier run of the group (same key, same view numbers) cannot show a
    /// process drawn at random after it was sent.
    pub(crate) fn admit(&mut self, r: usize, incarnation: u64, echo: Option<u64>) -> Admit {
        let me = self.pinned[self.rank];
        match self.pinned.get(r).copied() {
            None => Admit::Other,
            Some(0) if echo.is_some_and(|e| e & !TENTATIVE == me) => {
                self.pinned[r] = incarnation;
                self.seen[r] = 0;
                Admit::Pinned
            }
            Some(0) => {
                self.seen[r] = incarnation;
                Admit::Unconfirmed
            }
            Some(p) if p == incarnation => Admit::Pinned,
            Some(_) => Admit::Other,
        }
    }

    pub(crate) fn set_persisted(&mut self, p: u64) {
        self.persisted = p;
    }

    pub(crate) fn own_persisted(&self) -> u64 {
        self.persisted
    }

    /// Where rank `r`'s durable log reaches: ours as set, a peer's as its rows last said.
    pub(crate) fn persisted(&self, r: usize) -> u64 {
        if r == self.rank {
            self.persisted
        } else {
            self.rows.get(r).map_or(0, |row| row.persisted)
        }
    }

    /// Fills `row` with our current counts (the heartbeat is the transmitter's; the processes
    /// counted are [`Order::pinned`]).
    pub(crate) fn row_into(&self, row: &mut Row) {
        row.delivered = self.next_slot;
        row.received.extend(self.logs.iter().map(|l| l.contiguous));
    }

    /// Fills `row`'s processes: per rank, the pinned one (whose messages the row counts) or,
    /// not pinned yet, the one last heard, marked [`TENTATIVE`].
    pub(crate) fn incarnations_into(&self, row: &mut Row) {
        row.incarnations.clear();
        row.incarnations.extend(
            self.pinned
                .iter()
                .zip(&self.seen)
                .map(|(&p, &s)| match (p, s) {
                    (0, 0) => 0,
                    (0, s) => s | TENTATIVE,
                    (p, _) => p,
                }),
        );
    }

    /// Appends an own message; returns its sequence.
    pub(crate) fn push_own(&mut self, payload: Vec<u8>) -> u64 {
        let own = &mut self.logs[self.rank];
        let seq = own.highest;
        own.insert(seq, Slot::Data(payload));
        seq
    }

    /// Merges peer `r`'s row into what we know.
    pub(crate) fn merge_row(&mut self, r: usize, row: &RowRef<'_>) -> RowMerge {
        let me = self.rank;
        let theirs = row.incarnation(me);
        let other_process = theirs != 0 && theirs & TENTATIVE == 0 && theirs != self.pinned[me];
        let beyond_sent = row.received(me) > self.logs[me].highest;
        let acked_before = self.rows[r].received[me];
        let procs = &mut self.procs[r];
        procs.clear();
        procs.extend((0..self.logs.len()).map(|i| row.incarnation(i)));
        let known = &mut self.rows[r];
        known.heartbeat = known.heartbeat.max(row.heartbeat);
        known.delivered = known.delivered.max(row.delivered);
        known.persisted = known.persisted.max(row.persisted);
        // A column counts only if the peer counts the messages of the process we take for
        // that rank (a count of another process's messages says nothing of the ones we hold).
        for (i, v) in known.received.iter_mut().enumerate() {
            if row.incarnation(i) == self.pinned[i] {
                *v = (*v).max(row.received(i));
            }
        }
        let acked_after = self.rows[r].received[me];
        // A peer's row also tells how far every sender got: that bounds the null fill.
        for s in 0..self.logs.len() {
            if s != me {
                let seen = self.rows[r].received[s];
                let log = &mut self.logs[s];
                log.highest = log.highest.max(seen);
            }
        }
        RowMerge {
            acked_before,
            other_process,
            acked_after,
            beyond_sent,
        }
    }

    /// Stores the entries of a data frame of rank `r` whose first entry has sequence `first`.
    pub(crate) fn receive(
        &mut self,
        r: usize,
        first: u64,
        frame: &Frame<'_>,
        now: Instant,
        stats: &mut Stats,
    ) -> Receipt {
        let limit = self.logs[r].base.saturating_add(self.recv_window);
        let before = self.logs[r].contiguous;
        let mut seq = first;
        let mut dup = false;
        for e in frame.entries() {
            let run = e.slots();
            for j in 0..run {
                let s = seq + j;
                if s >= limit {
                    stats.beyond_window_slots += run - j;
                    break;
                }
                let slot = match e {
                    Entry::Data(p) => Slot::Data(p.to_vec()),
                    Entry::Nulls(_) => Slot::Null,
                };
                if !self.logs[r].insert(s, slot) {
                    stats.duplicate_slots += 1;
                    dup = true;
                }
            }
            seq += run;
        }
        // Even slots beyond the window prove they exist: the fill target may move.
        let log = &mut self.logs[r];
        log.highest = log.highest.max(seq.min(limit));
        let receipt = Receipt {
            advanced: log.contiguous > before,
            answer: dup,
        };
        let log = &self.logs[r];
        self.gaps[r] = if log.held_end <= log.contiguous {
            None
        } else {
            match self.gaps[r] {
                Some(g) if g.at == log.contiguous => Some(g),
                // A new gap (or the old one partly filled): its own wait before a report.
                _ => Some(Gap {
                    at: log.contiguous,
                    since: now,
                    reported: false,
                }),
            }
        };
        receipt
    }

    /// Issues null messages up to the highest sequence any sender is known to have reached, so
    /// that the round-robin order does not wait on this member. Returns how many.
    pub(crate) fn fill_nulls(&mut self) -> u64 {
        let me = self.rank;
        let target = self
            .logs
            .iter()
            .map(|l| l.highest)
            .max()
            .unwrap_or(0)
            .min(self.logs[me].base + self.recv_window);
        let own = &mut self.logs[me];
        if target <= own.highest {
            return 0;
        }
        let from = own.highest;
        for s in from..target {
            own.insert(s, Slot::Null);
        }
        target - from
    }

    /// Messages of sender `s` held by every member (`stable`), or by a majority (`majority`),
    /// as far as the rows tell.
    fn compute_thresholds(&mut self) {
        let me = self.rank;
        self.stable.clear();
        self.majority.clear();
        self.counts.clear();
        self.counts
            .extend(self.procs.iter().map(|p| *p == self.pinned));
        for s in 0..self.logs.len() {
            self.held.clear();
            self.held
                .extend(self.rows.iter().enumerate().map(|(m, row)| {
                    if m == me {
                        self.logs[s].contiguous
                    } else if self.counts[m] {
                        row.received[s]
                    } else {
                        0
                    }
                }));
            self.stable
                .push(self.held.iter().copied().min().unwrap_or(0));
            self.held.sort_unstable_by(|a, b| b.cmp(a));
            self.majority
                .push(self.held.get(self.held.len() / 2).copied().unwrap_or(0));
        }
    }

    /// Delivers, in slot order, what may be delivered; returns how many messages.
    ///
    /// A message waits until every member holds it (stability), counting only the rows of
    /// members that take the same process as we do for every rank (see `procs`: otherwise a
    /// process restarted from the group file, unknown to us, could stand in a view change
    /// for the holdings of the one we counted). A null carries nothing and is
    /// the same wherever it is held: it passes once a majority holds it. Not sooner: a view
    /// change must be able to tell, from the survivors (a majority), that it was a null, or it
    /// could not deliver what a member that passed it went on to deliver (see the cut in
    /// [`super::membership::change`]). With three members the null's sender and its receiver
    /// are that majority, so this costs no extra hop. `check_stable` false delivers whatever is
    /// held (a sabotage for the simulator's negative tests).
    pub(crate) fn deliver(
        &mut self,
        view: &View,
        check_stable: bool,
        out: &mut VecDeque<Delivered>,
    ) -> u64 {
        let n = self.n();
        let me = self.rank;
        self.compute_thresholds();
        let mut delivered = 0;
        loop {
            let g = self.next_slot;
            let r = (g % n) as usize;
            let k = g / n;
            let log = &mut self.logs[r];
            if k >= log.contiguous {
                break;
            }
            let Some(Some(slot)) = log.slots.get_mut((k - log.base) as usize) else {
                break;
            };
            if check_stable
                && match slot {
                    Slot::Data(_) => k >= self.stable[r],
                    Slot::Null => k >= self.majority[r],
                }
            {
                break;
            }
            let slot = std::mem::replace(slot, Slot::Null);
            log.delivered = k + 1;
            self.next_slot += 1;
            if let Slot::Data(payload) = slot {
                delivered += 1;
                out.push_back(Delivered::Message(Delivery {
                    sender: view.members[r],
                    seq: Seq(k),
                    slot: g,
                    view: view.id,
                    in_cut: false,
                    payload,
                }));
            }
        }
        // Forget what is delivered; own slots only once stable too, as peers may still need
        // them retransmitted (own nulls are delivered before they are stable).
        for (s, log) in self.logs.iter_mut().enumerate() {
            let keep_from = if s == me {
                log.delivered.min(self.stable[me])
            } else {
                log.delivered
            };
            while log.base < keep_from {
                log.slots.pop_front();
                log.base += 1;
            }
        }
        delivered
    }

    /// The longest round-robin prefix this member holds (at least what it delivered).
    pub(crate) fn held_prefix(&self) -> u64 {
        let n = self.n();
        self.next_slot.max(
            (0..n)
                .map(|r| self.logs[r as usize].contiguous * n + r)
                .min()
                .unwrap_or(0),
        )
    }

    /// The ragged-edge cleanup: delivers every slot up to `cut`, stable or not. A held slot
    /// carries its message (or null); a slot not held is a null this member infers (see the
    /// view change's docs). Returns (messages delivered, nulls inferred).
    pub(crate) fn deliver_to_cut(
        &mut self,
        cut: u64,
        view: &View,
        out: &mut VecDeque<Delivered>,
    ) -> (u64, u64) {
        let n = self.n();
        let (mut delivered, mut inferred) = (0, 0);
        while self.next_slot < cut {
            let g = self.next_slot;
            let r = (g % n) as usize;
            let k = g / n;
            let log = &mut self.logs[r];
            let slot = k
                .checked_sub(log.base)
                .and_then(|i| log.slots.get_mut(i as usize))
                .and_then(Option::take);
            log.delivered = log.delivered.max(k + 1);
            self.next_slot += 1;
            match slot {
                Some(Slot::Data(payload)) => {
                    delivered += 1;
                    out.push_back(Delivered::Message(Delivery {
                        sender: view.members[r],
                        seq: Seq(k),
                        slot: g,
                        view: view.id,
                        in_cut: true,
                        payload,
                    }));
                }
                Some(Slot::Null) => {}
                None => inferred += 1,
            }
        }
        (delivered, inferred)
    }

    /// Own messages not delivered, in order (taken: to be submitted again in the next view).
    pub(crate) fn take_undelivered_own(&mut self) -> Vec<Vec<u8>> {
        let own = &mut self.logs[self.rank];
        let mut again = Vec::new();
        for seq in own.delivered.max(own.base)..own.highest {
            if let Some(Some(Slot::Data(p))) = own.slots.get_mut((seq - own.base) as usize) {
                again.push(std::mem::take(p));
            }
        }
        again
    }

    /// Per sender: the runs `[start, end)` of nulls this member holds, not delivered, below
    /// `received`.
    pub(crate) fn null_runs(&self, received: &[u64]) -> Vec<Vec<(u64, u64)>> {
        self.logs
            .iter()
            .enumerate()
            .map(|(r, log)| {
                let mut runs: Vec<(u64, u64)> = Vec::new();
                let end = received.get(r).copied().unwrap_or(0);
                for k in log.delivered.max(log.base)..end {
                    let is_null = matches!(
                        log.slots.get((k - log.base) as usize),
                        Some(Some(Slot::Null))
                    );
                    if is_null {
                        match runs.last_mut() {
                            Some(last) if last.1 == k => last.1 = k + 1,
                            _ => runs.push((k, k + 1)),
                        }
                    }
                }
                runs
            })
            .collect()
    }
}
