//! Emission and loss recovery: framing own messages, status rows and control messages, and
//! deciding what to send next.
//!
//! A receiver reports the contiguous prefix it holds of each sender in its row (a cumulative
//! acknowledgement). A sender that sees a peer's row lag behind what it sent for longer than
//! the retransmission timeout resends the gap to that peer; the timeout doubles (up to
//! `rto_max`) only towards a peer not heard from since the last one (a silent peer: slow,
//! overloaded or gone), as a peer that is heard from lost the frame at random. A receiver that
//! holds messages beyond a gap tells the sender once the gap has lasted a quarter of the round
//! trip to it (a frame overtaken on the way is not lost: TCP RACK's reordering window), and
//! again at every status period while it lasts (a status frame flagged `GAP`, a negative
//! acknowledgement), and the sender resends from the gap without waiting, once per
//! acknowledgement value and round trip (before a round trip is measured, after a delay that
//! doubles with every resend from the same acknowledgement). The timeout adapts to each
//! peer's measured round trip (RFC 6298: `srtt + 4 rttvar`, one timed message per round trip,
//! none timed across a retransmission), never below the configured `rto`. A receiver that gets
//! a duplicate answers with its row at once, which repairs lost acknowledgements. Status rows
//! are repeated every `status_interval` while anything is in flight, and every `heartbeat` when
//! idle.
//!
//! Batching: whatever was submitted since the previous `poll_transmit` leaves in as few frames
//! as `max_frame` allows, with no timer: low load sees no added delay, high load gets batches.

use super::event::{Dest, Stats, Transmit};
use super::fragment;
use super::membership::Ctl;
use super::order::{Order, Slot};
use crate::types::{GroupId, Instant, MemberId, Seq, View, ViewId};
use crate::wire::{self, FrameWriter, Header, Key, Kind, Row};
use core::time::Duration;
use std::collections::VecDeque;

/// Retransmission state towards one peer.
#[derive(Debug, Clone, Copy)]
struct Retx {
    /// When to resend if the peer's acknowledgement of our messages has not moved.
    deadline: Option<Instant>,
    /// Current timeout (doubled on each retransmission, back to `base_rto()` on progress).
    rto: Duration,
    /// Smoothed round trip and its variation to this peer, microseconds (RFC 6298), once
    /// measured.
    srtt_us: Option<u64>,
    rttvar_us: u64,
    /// The round trip being timed: acknowledged once the peer holds `seq` messages of ours,
    /// first sent at the instant given. Cleared by a retransmission (Karn's rule).
    sample: Option<(u64, Instant)>,
    /// The peer was heard from since the last retransmission timeout: it is alive, and what
    /// went missing was lost at random, so the timeout is not backed off (back-off is for a
    /// peer that went silent: slow, overloaded or gone).
    heard: bool,
}

impl Retx {
    fn new(rto: Duration) -> Retx {
        Retx {
            deadline: None,
            rto,
            srtt_us: None,
            rttvar_us: 0,
            sample: None,
            heard: false,
        }
    }

    /// The timeout after progress: `srtt + 4 rttvar` once measured, never below `floor`.
    fn base_rto(&self, floor: Duration, ceiling: Duration) -> Duration {
        match self.srtt_us {
            Some(srtt) => Duration::from_micros(srtt + 4 * self.rttvar_us).clamp(floor, ceiling),
            None => floor,
        }
    }

    fn on_rtt_sample(&mut self, rtt_us: u64) {
        match self.srtt_us {
            None => {
                self.srtt_us = Some(rtt_us);
                self.rttvar_us = rtt_us / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt_us);
                self.rttvar_us = (3 * self.rttvar_us + err) / 4;
                self.srtt_us = Some((7 * srtt + rtt_us) / 8);
            }
        }
    }
}

/// The retransmission timeout's bounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RtoBounds {
    pub(crate) floor: Duration,
    pub(crate) ceiling: Duration,
}

/// What every frame of this member carries: the group's key and id, the sender, the size
/// limit.
#[derive(Debug)]
pub(crate) struct Framing {
    pub(crate) key: Key,
    pub(crate) group: GroupId,
    pub(crate) me: MemberId,
    pub(crate) max_frame: usize,
    /// This process (see `wire`'s docs).
    pub(crate) incarnation: u64,
}

/// What leaves this member, and when. See the module docs.
#[derive(Debug)]
pub(crate) struct Transmitter {
    key: Key,
    group: GroupId,
    me: MemberId,
    incarnation: u64,
    rank: usize,
    view: ViewId,
    members: Vec<MemberId>,
    max_frame: usize,
    bounds: RtoBounds,
    /// Own sequence from which messages were never transmitted.
    unsent: u64,
    retx: Vec<Retx>,
    /// Retransmissions to make: (peer rank, first seq).
    retx_queue: VecDeque<(usize, u64)>,
    status_all: bool,
    status_to: Vec<bool>,
    /// Per peer: our row is due to it flagged `GAP` (we dropped its frame as unconfirmed,
    /// and it is to send it again as soon as our row proves its process to it).
    gap_to: Vec<bool>,
    next_status_at: Instant,
    heartbeat: u64,
    /// Per peer: the acknowledgement from which we last resent because it reported a gap,
    /// when, and how many times in a row from that acknowledgement.
    fast_from: Vec<Option<(u64, Instant, u32)>>,
    transmits: VecDeque<Transmit>,
    pool: Vec<Vec<u8>>,
    /// Our row, rebuilt in this buffer for every frame.
    row: Row,
    /// The last control message sent in fragments (numbers them).
    next_msg: u32,
}

impl Transmitter {
    pub(crate) fn new(
        framing: Framing,
        view: &View,
        rank: usize,
        bounds: RtoBounds,
        now: Instant,
    ) -> Transmitter {
        let n = view.len();
        let Framing {
            key,
            group,
            me,
            max_frame,
            incarnation,
        } = framing;
        Transmitter {
            key,
            group,
            me,
            incarnation,
            rank,
            view: view.id,
            members: view.members.clone(),
            max_frame,
            bounds,
            unsent: 0,
            retx: vec![Retx::new(bounds.floor); n],
            retx_queue: VecDeque::new(),
            status_all: true,
            status_to: vec![false; n],
            gap_to: vec![false; n],
            next_status_at: now,
            heartbeat: 0,
            fast_from: vec![None; n],
            transmits: VecDeque::new(),
            pool: Vec::new(),
            row: Row {
                heartbeat: 0,
                delivered: 0,
                persisted: 0,
                received: Vec::with_capacity(n),
                incarnations: Vec::with_capacity(n),
            },
            next_msg: 0,
        }
    }

    /// Per-view state for a newly installed view. Frames already queued (a commit for the
    /// others), the buffer pool and the heartbeat are kept.
    pub(crate) fn reset(&mut self, view: &View, rank: usize, now: Instant) {
        let n = view.len();
        self.rank = rank;
        self.view = view.id;
        self.members.clone_from(&view.members);
        self.unsent = 0;
        self.retx_queue.clear();
        self.retx = vec![Retx::new(self.bounds.floor); n];
        self.status_all = true;
        self.status_to = vec![false; n];
        self.gap_to = vec![false; n];
        self.next_status_at = now;
        self.fast_from = vec![None; n];
    }

    /// Own messages transmitted at least once.
    pub(crate) fn unsent(&self) -> u64 {
        self.unsent
    }

    /// Our row has news for everyone (new receipts, a wedge): send it at the next chance.
    pub(crate) fn status_to_all(&mut self) {
        self.status_all = true;
    }

    /// Peer `p` should hear our row at the next chance.
    pub(crate) fn status_to(&mut self, p: usize) {
        self.status_to[p] = true;
    }

    /// Peer `p` should hear our row at the next chance, flagged `GAP`: we dropped what it
    /// sent us (see `proto::order`'s `Admit::Unconfirmed`), and our row counts none of it.
    pub(crate) fn resend_request_to(&mut self, p: usize) {
        self.gap_to[p] = true;
    }

    /// A peer's row moved from `before` to `after` own messages held: time the round trip,
    /// and re-arm or clear its retransmission timer.
    pub(crate) fn on_ack(&mut self, p: usize, before: u64, after: u64, now: Instant) {
        if after <= before {
            return;
        }
        let RtoBounds { floor, ceiling } = self.bounds;
        let rt = &mut self.retx[p];
        if let Some((seq, sent)) = rt.sample {
            if after >= seq {
                rt.on_rtt_sample(now.saturating_since(sent).as_micros() as u64);
                rt.sample = None;
            }
        }
        // Until a round trip is measured, keep a backed-off timeout (Karn): resetting it to
        // the floor would time out again before any sample could complete.
        if rt.srtt_us.is_some() {
            rt.rto = rt.base_rto(floor, ceiling);
        }
        rt.deadline = if after < self.unsent {
            Some(now + rt.rto)
        } else {
            None
        };
    }

    /// A frame of peer `p` arrived: it is alive (see `Retx::heard`).
    pub(crate) fn on_heard(&mut self, p: usize) {
        if let Some(rt) = self.retx.get_mut(p) {
            rt.heard = true;
        }
    }

    /// How long a gap in peer `p`'s messages may be a frame overtaken on the way rather than
    /// lost, before we report it: a quarter of the round trip to it once measured (TCP RACK's
    /// reordering window), else nothing.
    pub(crate) fn reorder_window(&self, p: usize) -> Duration {
        self.retx
            .get(p)
            .and_then(|rt| rt.srtt_us)
            .map_or(Duration::ZERO, |s| Duration::from_micros(s / 4))
    }

    /// Peer `p` reported a gap in our messages after `acked`: resend from there now. Once per
    /// acknowledgement value and round trip: a receiver repeats its report while the gap stays
    /// (every status interval), so a lost resend is made good at the next report, not at the
    /// retransmission timeout; reports that cross a resend in flight are not answered twice.
    /// Returns whether a resend was queued.
    pub(crate) fn on_gap_report(&mut self, p: usize, acked: u64, now: Instant) -> bool {
        if acked >= self.unsent {
            return false;
        }
        let rt = &self.retx[p];
        let repeats = match self.fast_from[p] {
            Some((from, _, k)) if from == acked => k,
            _ => 0,
        };
        // A round trip: srtt + 4 rttvar once measured. Before, a quarter of the floor (at most
        // 500 us: the reports it gates come once per status period anyway), doubled with every
        // resend from the same acknowledgement (Karn: the round trip may be much longer; on a
        // 10 ms link the start-up reports of unconfirmed frames had every slot sent ten times).
        let gate = match rt.srtt_us {
            Some(srtt) => Duration::from_micros(srtt + 4 * rt.rttvar_us),
            None => (self.bounds.floor.min(Duration::from_millis(2)) / 4)
                .saturating_mul(1 << repeats.min(16))
                .min(self.bounds.ceiling),
        };
        let again = match self.fast_from[p] {
            Some((from, at, _)) => from != acked || now >= at + gate,
            None => true,
        };
        if again {
            self.fast_from[p] = Some((acked, now, repeats.saturating_add(1)));
            self.retx_queue.push_back((p, acked));
            self.retx[p].sample = None;
        }
        again
    }

    /// Timers: status rows (every `status_interval` while `busy`, every `heartbeat` when idle)
    /// and retransmissions to peers whose acknowledgement (`acked(p)`) has not moved.
    /// `retransmit` false: the timers run but nothing is resent (a sabotage).
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        period: Duration,
        acked: impl Fn(usize) -> u64,
        retransmit: bool,
    ) {
        if now >= self.next_status_at {
            self.status_all = true;
            self.next_status_at = now + period;
        }
        for p in 0..self.retx.len() {
            if p == self.rank {
                continue;
            }
            let acked = acked(p);
            let rt = &mut self.retx[p];
            match rt.deadline {
                Some(d) if now >= d => {
                    if acked < self.unsent {
                        if retransmit {
                            self.retx_queue.push_back((p, acked));
                        }
                        rt.sample = None;
                        // Back off only from a peer that went silent; one that is heard from
                        // lost this at random, and waiting longer only delays the repair. Until
                        // a round trip is measured, back off anyway (Karn): the round trip may
                        // be longer than the timeout, and every resend would then clear the
                        // sample that could tell.
                        rt.rto = if rt.heard && rt.srtt_us.is_some() {
                            rt.base_rto(self.bounds.floor, self.bounds.ceiling)
                        } else {
                            (rt.rto * 2).min(self.bounds.ceiling)
                        };
                        rt.heard = false;
                        rt.deadline = Some(now + rt.rto);
                    } else {
                        rt.deadline = None;
                    }
                }
                _ => {}
            }
        }
    }

    /// The earliest of the status and retransmission timers (`soon`: when busy, the next
    /// status row is due within `status_interval`).
    pub(crate) fn deadline(&self, soon: Option<Instant>) -> Instant {
        let mut t = self.next_status_at;
        if let Some(s) = soon {
            t = t.min(s);
        }
        for (p, rt) in self.retx.iter().enumerate() {
            if p != self.rank {
                if let Some(d) = rt.deadline {
                    t = t.min(d);
                }
            }
        }
        t
    }

    /// Frames queued and retransmissions pending.
    pub(crate) fn queued(&self) -> usize {
        self.transmits.len() + self.retx_queue.len()
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.transmits.is_empty()
    }

    pub(crate) fn pop(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Takes back a transmitted frame's buffer for reuse.
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < 64 {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Our current row, in the reused buffer (taken; given back at the end of `produce`).
    /// `frozen`: once wedged, only the counts reported to the view change.
    fn own_row(&mut self, order: &Order, frozen: Option<&(Vec<u64>, u64)>) -> Row {
        let mut row = std::mem::take(&mut self.row);
        row.heartbeat = self.heartbeat;
        row.persisted = order.own_persisted();
        row.received.clear();
        order.incarnations_into(&mut row);
        if let Some((received, delivered)) = frozen {
            row.delivered = *delivered;
            row.received.extend_from_slice(received);
        } else {
            order.row_into(&mut row);
        }
        row
    }

    fn header(&self, kind: Kind, seq: u64) -> Header {
        Header {
            kind,
            group: self.group,
            view: self.view,
            sender: self.me,
            count: 0,
            seq: Seq(seq),
            flags: 0,
            incarnation: self.incarnation,
        }
    }

    /// Queues the next frame(s) to send, in priority order: new own messages (multicast), one
    /// retransmission (unicast), our row to all, our row to one peer. A retransmission that
    /// finds nothing left to send looks further. `frozen`: wedged, with the counts reported.
    pub(crate) fn produce(
        &mut self,
        order: &Order,
        frozen: Option<&(Vec<u64>, u64)>,
        now: Instant,
        stats: &mut Stats,
    ) {
        loop {
            let row = self.own_row(order, frozen);
            self.produce_one(order, frozen.is_some(), row, now, stats);
            if !self.transmits.is_empty() || self.retx_queue.is_empty() {
                break;
            }
        }
    }

    fn produce_one(
        &mut self,
        order: &Order,
        wedged: bool,
        mut row: Row,
        now: Instant,
        stats: &mut Stats,
    ) {
        // Wedged: nothing new leaves (only what was sent before may be resent).
        let own_highest = if wedged {
            self.unsent
        } else {
            order.own_highest()
        };
        if self.unsent < own_highest {
            // 1. New messages, multicast; they carry our row, so no separate status is needed.
            while self.unsent < own_highest {
                self.unsent =
                    self.emit_data(order, Dest::All, self.unsent, own_highest, &row, stats);
            }
            let RtoBounds { floor, ceiling } = self.bounds;
            let sent = self.unsent;
            for (p, rt) in self.retx.iter_mut().enumerate() {
                if p == self.rank {
                    continue;
                }
                if rt.deadline.is_none() {
                    let rto = if rt.srtt_us.is_some() {
                        rt.base_rto(floor, ceiling)
                    } else {
                        rt.rto
                    };
                    rt.deadline = Some(now + rto);
                }
                if rt.sample.is_none() {
                    rt.sample = Some((sent, now));
                }
            }
            self.status_all = false;
            self.heartbeat += 1;
        } else if let Some((p, from)) = self.retx_queue.pop_front() {
            // 2. Retransmissions, unicast to the peer that lags (one per call).
            let to = self.unsent;
            let from = from.max(order.own_base());
            if from < to {
                let dest = Dest::One(self.members[p]);
                let next = self.emit_data(order, dest, from, to, &row, stats);
                stats.retransmitted_frames += 1;
                stats.retransmitted_slots += next - from;
                self.status_to[p] = false;
            }
        } else if let Some(p) = self.gap_to.iter().position(|&g| g) {
            // 3. A row asking a peer to resend what we could not take from it yet ...
            self.gap_to[p] = false;
            self.status_to[p] = false;
            self.emit_status(Dest::One(self.members[p]), true, &row, stats);
        } else if self.status_all {
            // ... status rows, to all (new receipts, timers) ...
            self.status_all = false;
            self.status_to.iter_mut().for_each(|s| *s = false);
            self.heartbeat += 1;
            row.heartbeat = self.heartbeat;
            self.emit_status(Dest::All, false, &row, stats);
            // Messages known to be missing are reported again, to their sender, at every
            // status period (a negative acknowledgement repeated until the gap is filled: the
            // report or the resend it asks for may be lost too).
            for p in 0..self.status_to.len() {
                if p != self.rank && order.gap_due(p, now, self.reorder_window(p)) {
                    self.status_to[p] = true;
                }
            }
        } else if let Some(p) = self.status_to.iter().position(|&s| s) {
            // ... or to one peer (first contact, or it sent us duplicates or beyond a gap,
            // which the GAP flag tells it).
            self.status_to[p] = false;
            let gap = order.gap_due(p, now, self.reorder_window(p));
            self.emit_status(Dest::One(self.members[p]), gap, &row, stats);
        }
        self.row = row;
    }

    /// Writes own messages `[from, to)` into a frame for `dest`; returns the first sequence
    /// not written (the frame may fill up before `to`).
    fn emit_data(
        &mut self,
        order: &Order,
        dest: Dest,
        from: u64,
        to: u64,
        row: &Row,
        stats: &mut Stats,
    ) -> u64 {
        let mut seq = from;
        let mut buf = self.pool.pop().unwrap_or_default();
        let header = self.header(Kind::Data, seq);
        let mut w = FrameWriter::new(&mut buf, self.max_frame, &header, row);
        while seq < to {
            let Some(slot) = order.own_slot(seq) else {
                break;
            };
            let ok = match slot {
                Slot::Data(p) => w.push_data(p),
                Slot::Null => w.push_nulls(1),
            };
            if !ok {
                break;
            }
            seq += 1;
        }
        let count = u64::from(w.count());
        w.finish(&self.key);
        stats.max_batch = stats.max_batch.max(count);
        stats.frames_out += 1;
        stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
        seq
    }

    /// Our row, now, to member `to` (in our view or not: a member of a newer view that gets
    /// it tells us how our view ended).
    pub(crate) fn status_now(
        &mut self,
        to: MemberId,
        order: &Order,
        frozen: Option<&(Vec<u64>, u64)>,
        stats: &mut Stats,
    ) {
        let row = self.own_row(order, frozen);
        self.emit_status(Dest::One(to), false, &row, stats);
        self.row = row;
    }

    /// A status frame carrying `row`; `gap`: flagged so the peer resends at once.
    fn emit_status(&mut self, dest: Dest, gap: bool, row: &Row, stats: &mut Stats) {
        let mut buf = self.pool.pop().unwrap_or_default();
        let mut header = self.header(Kind::Status, 0);
        if gap {
            header.flags = wire::FLAG_GAP;
        }
        FrameWriter::new(&mut buf, self.max_frame, &header, row).finish(&self.key);
        stats.status_frames += 1;
        stats.frames_out += 1;
        stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
    }

    /// Queues a control message (membership, state transfer) for `dest`, in as many frames of
    /// at most `max_frame` as it needs (see `proto::fragment`).
    pub(crate) fn emit_ctl(&mut self, dest: Dest, ctl: &Ctl, stats: &mut Stats) {
        let payload = ctl.encode();
        let room = wire::max_payload_for(self.max_frame, 1);
        if payload.len() <= room {
            self.emit_ctl_frame(dest, &payload, stats);
            return;
        }
        let Some(pieces) = fragment::split(&payload, room) else {
            stats.oversized_control += 1;
            return;
        };
        self.next_msg = self.next_msg.wrapping_add(1);
        let count = pieces.len() as u16;
        stats.fragmented_control += 1;
        for (index, bytes) in pieces.into_iter().enumerate() {
            let f = Ctl::Fragment {
                msg: self.next_msg,
                index: index as u16,
                count,
                bytes,
            };
            self.emit_ctl_frame(dest, &f.encode(), stats);
        }
    }

    /// One control frame carrying `payload` (which fits it).
    fn emit_ctl_frame(&mut self, dest: Dest, payload: &[u8], stats: &mut Stats) {
        let mut buf = self.pool.pop().unwrap_or_default();
        let header = self.header(Kind::Control, 0);
        let row = Row {
            heartbeat: self.heartbeat,
            delivered: 0,
            persisted: 0,
            received: vec![0],
            incarnations: vec![self.incarnation],
        };
        let mut w = FrameWriter::new(&mut buf, self.max_frame, &header, &row);
        if !w.push_data(payload) {
            self.pool.push(buf);
            stats.oversized_control += 1;
            return;
        }
        w.finish(&self.key);
        stats.frames_out += 1;
        stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
    }
}
