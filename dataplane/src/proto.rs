//! Sans-IO total-order multicast (Derecho's protocol over unreliable datagrams).
//!
//! This module has no sockets, no clock, no threads and no randomness. A host drives one
//! [`Member`] in this order, repeatedly:
//!
//! 1. [`Member::handle_frame`] for every frame received, [`Member::submit`] for every message
//!    the application wants ordered (an `Err(WindowFull)` is backpressure: retry later);
//! 2. [`Member::handle_timeout`] when the instant given by [`Member::poll_timeout`] has passed;
//! 3. [`Member::poll_delivery`] until `None`: messages in the agreed total order;
//! 4. [`Member::poll_transmit`] until `None`: frames to send, then [`Member::recycle`] the
//!    buffers.
//!
//! # Protocol
//!
//! Every member of the view may send. Message `k` of the member of rank `r` (null or not)
//! occupies global slot `k * N + r`; slots are delivered in order. A member with nothing to send
//! fills its slots with nulls up to the highest sequence it has seen from anyone, so that the
//! round-robin order never waits for an idle sender; null runs cost five bytes on the wire.
//!
//! Every frame carries its sender's *status row* (Derecho's SST row): for every rank, how many
//! messages of that rank it holds contiguously, and how many slots it has delivered. A slot
//! `(k, r)` is *stable* once every member's row says it holds message `k` of `r`; a slot that
//! carries a message is delivered only once stable (stability before delivery, so a delivery
//! survives any failure of a minority, which the view-change protocol relies on). A null slot
//! is passed over as soon as it is held locally: it is identical everywhere, carries nothing,
//! and waiting for its stability would cost one more network hop per message. Rows are merged
//! monotonically, so a stale or reordered row is harmless.
//!
//! Reliability: a receiver keeps out-of-order messages inside its receive window and reports the
//! contiguous prefix in its row (a cumulative acknowledgement). A sender that sees a peer's row
//! lag behind what it sent for longer than the retransmission timeout resends the gap to that
//! peer, with exponential back-off; a receiver that holds messages beyond a gap tells the
//! sender at once (a status frame flagged `GAP`), which resends from the gap without waiting
//! (once per acknowledgement value). The timeout adapts to each peer's measured round trip
//! (RFC 6298: `srtt + 4 rttvar`, one timed message per round trip, none timed across a
//! retransmission), never below the configured `rto`. A receiver that gets a duplicate answers with its row at
//! once, which repairs lost acknowledgements. Status rows are repeated every
//! `status_interval` while anything is in flight, and every `heartbeat` when idle.
//!
//! Flow control: a member has at most `window` of its own messages undelivered; `submit` beyond
//! that returns [`SubmitError::WindowFull`]. Receivers accept a sender's slots only within
//! `4 * window` of what they delivered, so memory per sender is bounded.
//!
//! Batching: whatever was submitted since the previous `poll_transmit` leaves in as few frames
//! as `max_frame` allows, with no timer: low load sees no added delay, high load gets batches.

use crate::types::{GroupId, Instant, MemberId, Seq, View};
use crate::wire::{self, Entry, Frame, FrameWriter, Header, Key, Kind, Row, WireError};
use core::time::Duration;
use std::collections::VecDeque;
use thiserror::Error;

/// Tunables of the protocol core. See the sample configuration for what each means in practice.
#[derive(Clone, Debug)]
pub struct ProtoConfig {
    /// Own messages (data or null) that may be undelivered at once.
    pub window: u64,
    /// Largest frame emitted, MAC included.
    pub max_frame: usize,
    /// Largest message payload accepted by `submit` (at most what fits in one frame).
    pub max_payload: usize,
    /// Period of status rows while messages are in flight (loss recovery of acknowledgements).
    pub status_interval: Duration,
    /// Period of status rows when idle (heartbeat).
    pub heartbeat: Duration,
    /// Retransmission timeout before any round trip is measured, and its lower bound after.
    pub rto: Duration,
    /// Upper bound of the retransmission timeout after back-off.
    pub rto_max: Duration,
    /// Deliberate protocol bugs, for proving that the simulator's checkers catch them. Always
    /// [`Sabotage::None`] outside those tests.
    #[doc(hidden)]
    pub sabotage: Sabotage,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        ProtoConfig {
            window: 256,
            max_frame: 8192,
            max_payload: 4096,
            status_interval: Duration::from_millis(2),
            heartbeat: Duration::from_millis(100),
            rto: Duration::from_millis(2),
            rto_max: Duration::from_millis(200),
            sabotage: Sabotage::None,
        }
    }
}

#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Deliver a slot as soon as it is held locally, without waiting for stability.
    DeliverBeforeStable,
    /// Never retransmit.
    NoRetransmit,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("window must be at least 1")]
    Window,
    #[error("max_payload {max_payload} does not fit a frame of {max_frame} bytes for {members} members (at most {fits})")]
    Payload {
        max_payload: usize,
        max_frame: usize,
        members: usize,
        fits: usize,
    },
    #[error("the view has no members, or more than {}", wire::MAX_MEMBERS)]
    ViewSize,
    #[error("member {0} is not in the view")]
    NotInView(MemberId),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("send window full: wait for deliveries")]
    WindowFull,
}

/// Why the protocol dropped an authenticated, well-formed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoDrop {
    WrongGroup,
    WrongView,
    UnknownSender,
    OwnFrame,
    RowSize,
}

impl ProtoDrop {
    pub const ALL: [ProtoDrop; 5] = [
        ProtoDrop::WrongGroup,
        ProtoDrop::WrongView,
        ProtoDrop::UnknownSender,
        ProtoDrop::OwnFrame,
        ProtoDrop::RowSize,
    ];
    pub fn label(self) -> &'static str {
        match self {
            ProtoDrop::WrongGroup => "wrong_group",
            ProtoDrop::WrongView => "wrong_view",
            ProtoDrop::UnknownSender => "unknown_sender",
            ProtoDrop::OwnFrame => "own_frame",
            ProtoDrop::RowSize => "row_size",
        }
    }
}

/// Counters of one member. All monotonic.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub submitted: u64,
    pub delivered: u64,
    pub nulls_sent: u64,
    pub retransmitted_frames: u64,
    pub retransmitted_slots: u64,
    /// Resends triggered by a peer reporting a gap (before any timeout).
    pub fast_retransmits: u64,
    pub duplicate_slots: u64,
    pub beyond_window_slots: u64,
    pub window_full: u64,
    pub status_frames: u64,
    /// Most entries seen in one emitted frame.
    pub max_batch: u64,
    pub dropped_wire: [u64; WireError::ALL.len()],
    pub dropped_proto: [u64; ProtoDrop::ALL.len()],
}

impl Stats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_wire.iter().sum::<u64>() + self.dropped_proto.iter().sum::<u64>()
    }
    pub fn dropped(&self, e: WireError) -> u64 {
        self.dropped_wire[e.index()]
    }
    pub fn dropped_by(&self, d: ProtoDrop) -> u64 {
        self.dropped_proto[ProtoDrop::ALL.iter().position(|&x| x == d).unwrap_or(0)]
    }
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every other member of the view.
    All,
    One(MemberId),
}

#[derive(Debug)]
pub struct Transmit {
    pub dest: Dest,
    pub frame: Vec<u8>,
}

/// A message in the agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub sender: MemberId,
    pub seq: Seq,
    /// Global slot: `seq * N + rank(sender)`; strictly increasing along deliveries.
    pub slot: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
enum Slot {
    Data(Vec<u8>),
    Null,
}

/// The messages of one sender that this member holds: from `base` (the first not yet
/// forgotten) on, with gaps (`None`) where a message was not received yet.
#[derive(Debug, Default)]
struct SenderLog {
    base: u64,
    /// Messages of this sender delivered locally (`>= base`).
    delivered: u64,
    slots: VecDeque<Option<Slot>>,
    /// Messages held contiguously from 0 (`base + index of the first gap`).
    contiguous: u64,
    /// One past the highest sequence known to exist (received, or announced in a row).
    highest: u64,
    /// One past the highest sequence actually held (so `held_end > contiguous` means a gap).
    held_end: u64,
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
}

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
}

impl Retx {
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

/// One member of a view running the total-order multicast. See the module docs.
#[derive(Debug)]
pub struct Member {
    cfg: ProtoConfig,
    key: Key,
    group: GroupId,
    view: View,
    me: MemberId,
    rank: usize,
    logs: Vec<SenderLog>,
    /// Latest known row of every rank (merged monotonically). Our own is built on demand.
    rows: Vec<Row>,
    next_slot: u64,
    /// Own sequence from which messages were never transmitted.
    unsent: u64,
    deliveries: VecDeque<Delivery>,
    transmits: VecDeque<Transmit>,
    /// Retransmissions to make: (peer rank, first seq).
    retx_queue: VecDeque<(usize, u64)>,
    retx: Vec<Retx>,
    status_all: bool,
    status_to: Vec<bool>,
    next_status_at: Instant,
    heartbeat: u64,
    last_heard: Vec<Option<Instant>>,
    pool: Vec<Vec<u8>>,
    now: Instant,
    stats: Stats,
    restarted_by: Option<MemberId>,
    /// Per sender: the contiguous count at which we last reported a gap to it.
    gap_reported: Vec<Option<u64>>,
    /// Per peer: the acknowledgement from which we last resent because it reported a gap.
    fast_from: Vec<Option<u64>>,
    /// Scratch buffers reused on every frame: per-sender stable counts, and our own row.
    stable: Vec<u64>,
    row: Row,
}

impl Member {
    pub fn new(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        view: View,
        me: MemberId,
        now: Instant,
    ) -> Result<Member, ConfigError> {
        let n = view.len();
        if n == 0 || n > wire::MAX_MEMBERS {
            return Err(ConfigError::ViewSize);
        }
        let rank = view.rank_of(me).ok_or(ConfigError::NotInView(me))?;
        if cfg.window == 0 {
            return Err(ConfigError::Window);
        }
        let fits = wire::max_payload_for(cfg.max_frame, n);
        if cfg.max_payload > fits {
            return Err(ConfigError::Payload {
                max_payload: cfg.max_payload,
                max_frame: cfg.max_frame,
                members: n,
                fits,
            });
        }
        let rto = cfg.rto;
        Ok(Member {
            logs: (0..n).map(|_| SenderLog::default()).collect(),
            rows: (0..n)
                .map(|_| Row {
                    heartbeat: 0,
                    delivered: 0,
                    received: vec![0; n],
                })
                .collect(),
            next_slot: 0,
            unsent: 0,
            deliveries: VecDeque::new(),
            transmits: VecDeque::new(),
            retx_queue: VecDeque::new(),
            retx: vec![
                Retx {
                    deadline: None,
                    rto,
                    srtt_us: None,
                    rttvar_us: 0,
                    sample: None,
                };
                n
            ],
            status_all: true,
            status_to: vec![false; n],
            next_status_at: now,
            heartbeat: 0,
            last_heard: vec![None; n],
            pool: Vec::new(),
            now,
            stats: Stats::default(),
            restarted_by: None,
            gap_reported: vec![None; n],
            fast_from: vec![None; n],
            stable: Vec::with_capacity(n),
            row: Row {
                heartbeat: 0,
                delivered: 0,
                received: Vec::with_capacity(n),
            },
            cfg,
            key,
            group,
            view,
            me,
            rank,
        })
    }

    pub fn id(&self) -> MemberId {
        self.me
    }
    pub fn view(&self) -> &View {
        &self.view
    }
    pub fn config(&self) -> &ProtoConfig {
        &self.cfg
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Global slots delivered so far.
    pub fn delivered_slots(&self) -> u64 {
        self.next_slot
    }
    /// Own messages (data or null) issued so far.
    pub fn sent(&self) -> u64 {
        self.logs[self.rank].highest
    }
    /// Whether this member holds message `seq` of `sender` (delivered or not).
    pub fn has_received(&self, sender: MemberId, seq: Seq) -> bool {
        self.view
            .rank_of(sender)
            .is_some_and(|r| self.logs[r].has(seq.0))
    }
    /// Slots held but not yet delivered, over all senders (bounded by flow control).
    pub fn buffered_slots(&self) -> usize {
        self.logs.iter().map(|l| l.slots.len()).sum()
    }
    /// Upper bound of [`Member::buffered_slots`].
    pub fn buffer_bound(&self) -> usize {
        self.view.len() * self.recv_window() as usize
    }
    /// Own messages that can still be submitted before the window is full.
    pub fn window_room(&self) -> u64 {
        let own = &self.logs[self.rank];
        let used = own.highest - own.base;
        self.cfg.window.saturating_sub(used)
    }
    /// Members this one has not received any frame from yet.
    pub fn not_heard_from(&self) -> Vec<MemberId> {
        (0..self.view.len())
            .filter(|&r| r != self.rank && self.last_heard[r].is_none())
            .map(|r| self.view.members[r])
            .collect()
    }
    /// Set when a peer's row shows that it holds more of this member's messages than this member
    /// ever sent: this process restarted inside a view that outlived it, with none of its
    /// state. It cannot take part again without a view change (it must rejoin as a new member
    /// with state transfer); the host should stop it. Returns the peer that revealed it.
    pub fn restarted_in_view(&self) -> Option<MemberId> {
        self.restarted_by
    }

    /// When each member was last heard from (own entry: `None`).
    pub fn last_heard(&self, m: MemberId) -> Option<Instant> {
        self.view.rank_of(m).and_then(|r| self.last_heard[r])
    }

    fn recv_window(&self) -> u64 {
        self.cfg.window.saturating_mul(4)
    }

    fn n(&self) -> usize {
        self.view.len()
    }

    /// Offers a message for ordering.
    pub fn submit(&mut self, payload: Vec<u8>) -> Result<Seq, SubmitError> {
        if payload.len() > self.cfg.max_payload {
            return Err(SubmitError::TooLarge {
                size: payload.len(),
                max: self.cfg.max_payload,
            });
        }
        if self.window_room() == 0 {
            self.stats.window_full += 1;
            return Err(SubmitError::WindowFull);
        }
        let rank = self.rank;
        let seq = self.logs[rank].highest;
        self.logs[rank].insert(seq, Slot::Data(payload));
        self.stats.submitted += 1;
        if self.n() == 1 {
            self.deliver();
        }
        Ok(Seq(seq))
    }

    /// Processes one received frame. Anything malformed, unauthenticated or foreign is counted
    /// by reason and dropped.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        self.now = self.now.max(now);
        self.stats.frames_in += 1;
        let frame = match Frame::parse(&self.key, bytes) {
            Ok(f) => f,
            Err(e) => {
                self.stats.dropped_wire[e.index()] += 1;
                return;
            }
        };
        let h = frame.header;
        let drop = if h.group != self.group {
            Some(ProtoDrop::WrongGroup)
        } else if h.view != self.view.id {
            Some(ProtoDrop::WrongView)
        } else if h.sender == self.me {
            Some(ProtoDrop::OwnFrame)
        } else if self.view.rank_of(h.sender).is_none() {
            Some(ProtoDrop::UnknownSender)
        } else if frame.row.len() != self.n() {
            Some(ProtoDrop::RowSize)
        } else {
            None
        };
        if let Some(d) = drop {
            let i = ProtoDrop::ALL.iter().position(|&x| x == d).unwrap_or(0);
            self.stats.dropped_proto[i] += 1;
            return;
        }
        let r = self.view.rank_of(h.sender).unwrap_or(0);
        if self.last_heard[r].is_none() {
            // First contact: answer at once so start-up barriers complete quickly.
            self.status_to[r] = true;
        }
        self.last_heard[r] = Some(now);
        self.merge_row(r, &frame);
        if h.flags & wire::FLAG_GAP != 0 && self.cfg.sabotage != Sabotage::NoRetransmit {
            let acked = self.rows[r].received[self.rank];
            if acked < self.unsent && self.fast_from[r] != Some(acked) {
                self.fast_from[r] = Some(acked);
                self.retx_queue.push_back((r, acked));
                self.retx[r].sample = None;
                self.stats.fast_retransmits += 1;
            }
        }
        if h.kind == Kind::Data {
            self.receive_entries(r, h.seq.0, &frame);
        }
        self.fill_nulls();
        self.deliver();
    }

    fn merge_row(&mut self, r: usize, frame: &Frame<'_>) {
        let me = self.rank;
        if frame.row.received(me) > self.logs[me].highest && self.restarted_by.is_none() {
            // A peer holds messages of ours that we never sent: this process is a new
            // incarnation of a member that already ran in this view.
            self.restarted_by = Some(self.view.members[r]);
        }
        let before = self.rows[r].received[me];
        let row = &mut self.rows[r];
        row.heartbeat = row.heartbeat.max(frame.row.heartbeat);
        row.delivered = row.delivered.max(frame.row.delivered);
        for (i, v) in row.received.iter_mut().enumerate() {
            *v = (*v).max(frame.row.received(i));
        }
        let after = self.rows[r].received[me];
        // A peer's row also tells how far every sender got: that bounds the null fill.
        for s in 0..self.logs.len() {
            if s != me {
                let seen = self.rows[r].received[s];
                let log = &mut self.logs[s];
                log.highest = log.highest.max(seen);
            }
        }
        if after > before {
            let (floor, ceiling) = (self.cfg.rto, self.cfg.rto_max);
            let now = self.now;
            let rt = &mut self.retx[r];
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
    }

    fn receive_entries(&mut self, r: usize, first: u64, frame: &Frame<'_>) {
        let limit = self.logs[r].base.saturating_add(self.recv_window());
        let before = self.logs[r].contiguous;
        let mut seq = first;
        let mut dup = false;
        for e in frame.entries() {
            let run = e.slots();
            for j in 0..run {
                let s = seq + j;
                if s >= limit {
                    self.stats.beyond_window_slots += run - j;
                    break;
                }
                let slot = match e {
                    Entry::Data(p) => Slot::Data(p.to_vec()),
                    Entry::Nulls(_) => Slot::Null,
                };
                if !self.logs[r].insert(s, slot) {
                    self.stats.duplicate_slots += 1;
                    dup = true;
                }
            }
            seq += run;
        }
        // Even slots beyond the window prove they exist: the fill target may move.
        let log = &mut self.logs[r];
        log.highest = log.highest.max(seq.min(limit));
        if log.contiguous > before {
            self.status_all = true;
        }
        if dup {
            // Our acknowledgement was probably lost: repeat it to the sender.
            self.status_to[r] = true;
        }
        let log = &self.logs[r];
        if log.held_end > log.contiguous && self.gap_reported[r] != Some(log.contiguous) {
            // A gap: report it to the sender now (FLAG_GAP), once per contiguous count.
            self.gap_reported[r] = Some(log.contiguous);
            self.status_to[r] = true;
        }
    }

    /// Issues null messages up to the highest sequence any sender is known to have reached, so
    /// that the round-robin order does not wait on this member.
    fn fill_nulls(&mut self) {
        let me = self.rank;
        let target = self
            .logs
            .iter()
            .map(|l| l.highest)
            .max()
            .unwrap_or(0)
            .min(self.logs[me].base + self.recv_window());
        let own = &mut self.logs[me];
        if target > own.highest {
            let from = own.highest;
            for s in from..target {
                own.insert(s, Slot::Null);
            }
            self.stats.nulls_sent += target - from;
        }
    }

    fn deliver(&mut self) {
        let n = self.n() as u64;
        let me = self.rank;
        let check_stable = self.cfg.sabotage != Sabotage::DeliverBeforeStable;
        // stable[s]: messages of s that every member holds.
        let mut stable = std::mem::take(&mut self.stable);
        stable.clear();
        stable.extend((0..self.logs.len()).map(|s| {
            self.rows
                .iter()
                .enumerate()
                .map(|(m, row)| {
                    if m == me {
                        self.logs[s].contiguous
                    } else {
                        row.received[s]
                    }
                })
                .min()
                .unwrap_or(0)
        }));
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
            // Only slots that carry a message wait for stability: a null is the same at every
            // member that holds it, carries nothing that a failure could lose, and every member
            // gets it (reliability). Waiting for nulls to be stable would add a network hop
            // whenever an idle member fills a slot before the message that triggered it.
            if check_stable && matches!(slot, Slot::Data(_)) && k >= stable[r] {
                break;
            }
            let slot = std::mem::replace(slot, Slot::Null);
            log.delivered = k + 1;
            self.next_slot += 1;
            if let Slot::Data(payload) = slot {
                self.stats.delivered += 1;
                self.deliveries.push_back(Delivery {
                    sender: self.view.members[r],
                    seq: Seq(k),
                    slot: g,
                    payload,
                });
            }
        }
        // Forget what is delivered; own slots only once stable too, as peers may still need
        // them retransmitted (own nulls are delivered before they are stable).
        for (s, log) in self.logs.iter_mut().enumerate() {
            let keep_from = if s == me {
                log.delivered.min(stable[me])
            } else {
                log.delivered
            };
            while log.base < keep_from {
                log.slots.pop_front();
                log.base += 1;
            }
        }
        self.stable = stable;
    }

    /// Advances timers: retransmissions and periodic status rows.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        if now >= self.next_status_at {
            self.status_all = true;
            let period = if self.busy() {
                self.cfg.status_interval
            } else {
                self.cfg.heartbeat
            };
            self.next_status_at = now + period;
        }
        let sabotaged = self.cfg.sabotage == Sabotage::NoRetransmit;
        for p in 0..self.n() {
            if p == self.rank {
                continue;
            }
            let acked = self.rows[p].received[self.rank];
            let rt = &mut self.retx[p];
            match rt.deadline {
                Some(d) if now >= d => {
                    if acked < self.unsent {
                        if !sabotaged {
                            self.retx_queue.push_back((p, acked));
                        }
                        rt.sample = None;
                        rt.rto = (rt.rto * 2).min(self.cfg.rto_max);
                        rt.deadline = Some(now + rt.rto);
                    } else {
                        rt.deadline = None;
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether anything is in flight (then status rows are repeated more often).
    fn busy(&self) -> bool {
        self.logs.iter().any(|l| l.highest > l.base)
            || (0..self.n())
                .any(|p| p != self.rank && self.rows[p].received[self.rank] < self.unsent)
    }

    /// The next instant at which [`Member::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_status_at;
        if self.busy() {
            t = t.min(self.now + self.cfg.status_interval);
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

    /// The next delivered message, in total order.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }

    /// Returns a transmitted frame's buffer for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < 64 {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Our current row, in the reused buffer (taken; give it back with `self.row = row`).
    fn own_row(&mut self) -> Row {
        let mut row = std::mem::take(&mut self.row);
        row.heartbeat = self.heartbeat;
        row.delivered = self.next_slot;
        row.received.clear();
        row.received.extend(self.logs.iter().map(|l| l.contiguous));
        row
    }

    fn header(&self, kind: Kind, seq: u64) -> Header {
        Header {
            kind,
            group: self.group,
            view: self.view.id,
            sender: self.me,
            count: 0,
            seq: Seq(seq),
            flags: 0,
        }
    }

    /// Writes own messages `[from, to)` into frames for `dest`; returns the first sequence not
    /// written (a frame may fill up before `to`).
    fn emit_data(&mut self, dest: Dest, from: u64, to: u64, row: &Row) -> u64 {
        let mut seq = from;
        let mut buf = self.pool.pop().unwrap_or_default();
        let header = self.header(Kind::Data, seq);
        let mut w = FrameWriter::new(&mut buf, self.cfg.max_frame, &header, row);
        let own = &self.logs[self.rank];
        while seq < to {
            let Some(Some(slot)) = seq
                .checked_sub(own.base)
                .and_then(|i| own.slots.get(i as usize))
            else {
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
        self.stats.max_batch = self.stats.max_batch.max(count);
        self.stats.frames_out += 1;
        self.stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
        seq
    }

    fn emit_status(&mut self, dest: Dest, row: &Row) {
        let mut buf = self.pool.pop().unwrap_or_default();
        let mut header = self.header(Kind::Status, 0);
        if let Dest::One(m) = dest {
            // Tell a sender when we hold messages of its beyond a gap: it resends at once.
            if let Some(r) = self.view.rank_of(m) {
                if self.logs[r].held_end > self.logs[r].contiguous {
                    header.flags = wire::FLAG_GAP;
                }
            }
        }
        FrameWriter::new(&mut buf, self.cfg.max_frame, &header, row).finish(&self.key);
        self.stats.status_frames += 1;
        self.stats.frames_out += 1;
        self.stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() && self.view.len() > 1 {
            let row = self.own_row();
            self.produce(row);
        }
        self.transmits.pop_front()
    }

    /// Queues the next frame(s) to send, in priority order; `row` is our current row, handed
    /// back to the reused buffer at the end.
    fn produce(&mut self, mut row: Row) {
        let own_highest = self.logs[self.rank].highest;
        if self.unsent < own_highest {
            // 1. New messages, multicast; they carry our row, so no separate status is needed.
            while self.unsent < own_highest {
                self.unsent = self.emit_data(Dest::All, self.unsent, own_highest, &row);
            }
            let (now, floor, ceiling, sent) =
                (self.now, self.cfg.rto, self.cfg.rto_max, self.unsent);
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
            let from = from.max(self.logs[self.rank].base);
            if from < to {
                let dest = Dest::One(self.view.members[p]);
                let next = self.emit_data(dest, from, to, &row);
                self.stats.retransmitted_frames += 1;
                self.stats.retransmitted_slots += next - from;
                self.status_to[p] = false;
            }
        } else if self.status_all {
            // 3. Status rows, to all (new receipts, timers) ...
            self.status_all = false;
            self.status_to.iter_mut().for_each(|s| *s = false);
            self.heartbeat += 1;
            row.heartbeat = self.heartbeat;
            self.emit_status(Dest::All, &row);
        } else if let Some(p) = self.status_to.iter().position(|&s| s) {
            // ... or to one peer (first contact, or it sent us duplicates).
            self.status_to[p] = false;
            self.emit_status(Dest::One(self.view.members[p]), &row);
        }
        self.row = row;
        // A retransmission that found nothing left to send: look further.
        if self.transmits.is_empty() && !self.retx_queue.is_empty() {
            let row = self.own_row();
            self.produce(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u16) -> View {
        View::new(crate::types::ViewId(1), (0..n).map(MemberId).collect())
    }

    fn member(n: u16, me: u16, cfg: ProtoConfig) -> Member {
        Member::new(
            cfg,
            Key::from_bytes([1; 32]),
            GroupId(3),
            view(n),
            MemberId(me),
            Instant(0),
        )
        .unwrap()
    }

    /// Moves every pending frame between members, `rounds` times.
    fn pump(ms: &mut [Member], now: u64, rounds: usize) {
        for _ in 0..rounds {
            let mut frames = Vec::new();
            for (i, m) in ms.iter_mut().enumerate() {
                while let Some(t) = m.poll_transmit() {
                    frames.push((i, t));
                }
            }
            for (from, t) in frames {
                for (j, m) in ms.iter_mut().enumerate() {
                    let to_j = match t.dest {
                        Dest::All => j != from,
                        Dest::One(x) => x.0 as usize == j,
                    };
                    if to_j {
                        m.handle_frame(Instant(now), &t.frame);
                    }
                }
            }
        }
    }

    #[test]
    fn config_errors() {
        let v = view(3);
        let k = Key::from_bytes([1; 32]);
        let bad = |cfg: ProtoConfig, me: u16| {
            Member::new(
                cfg,
                k.clone(),
                GroupId(1),
                v.clone(),
                MemberId(me),
                Instant(0),
            )
            .unwrap_err()
        };
        assert_eq!(
            bad(ProtoConfig::default(), 9),
            ConfigError::NotInView(MemberId(9))
        );
        assert_eq!(
            bad(
                ProtoConfig {
                    window: 0,
                    ..ProtoConfig::default()
                },
                0
            ),
            ConfigError::Window
        );
        assert!(matches!(
            bad(
                ProtoConfig {
                    max_payload: 9000,
                    ..ProtoConfig::default()
                },
                0
            ),
            ConfigError::Payload { .. }
        ));
    }

    #[test]
    fn oversized_payload_and_full_window_are_refused() {
        let cfg = ProtoConfig {
            window: 3,
            max_payload: 10,
            ..ProtoConfig::default()
        };
        let mut m = member(2, 0, cfg);
        assert_eq!(
            m.submit(vec![0; 11]),
            Err(SubmitError::TooLarge { size: 11, max: 10 })
        );
        for i in 0..3 {
            assert_eq!(m.submit(vec![i]), Ok(Seq(i as u64)));
        }
        assert_eq!(m.submit(vec![9]), Err(SubmitError::WindowFull));
        assert_eq!(m.stats().window_full, 1);
    }

    #[test]
    fn a_reported_gap_is_resent_without_waiting_for_a_timeout() {
        let mut m0 = member(2, 0, ProtoConfig::default());
        let mut m1 = member(2, 1, ProtoConfig::default());
        m0.submit(b"first".to_vec()).unwrap();
        let lost = m0.poll_transmit().unwrap();
        drop(lost);
        m0.submit(b"second".to_vec()).unwrap();
        let second = m0.poll_transmit().unwrap();
        m1.handle_frame(Instant(10), &second.frame);
        assert!(!m1.has_received(MemberId(0), Seq(0)));
        // Member 1 reports the gap at once; member 0 resends; no handle_timeout anywhere.
        let mut rounds = 0;
        while !m1.has_received(MemberId(0), Seq(0)) && rounds < 4 {
            while let Some(t) = m1.poll_transmit() {
                m0.handle_frame(Instant(20), &t.frame);
            }
            while let Some(t) = m0.poll_transmit() {
                m1.handle_frame(Instant(30), &t.frame);
            }
            rounds += 1;
        }
        assert!(
            m1.has_received(MemberId(0), Seq(0)),
            "the gap was not repaired"
        );
        assert_eq!(m0.stats().fast_retransmits, 1);
        assert!(m0.stats().retransmitted_slots >= 1);
    }

    #[test]
    fn a_restarted_member_notices_it() {
        let mut ms: Vec<Member> = (0..2)
            .map(|i| member(2, i, ProtoConfig::default()))
            .collect();
        for k in 0..3u8 {
            ms[1].submit(vec![k]).unwrap();
        }
        pump(&mut ms, 10, 4);
        assert_eq!(ms[1].restarted_in_view(), None);
        // Member 1 restarts with no state; member 0's next row reveals it.
        ms[1] = member(2, 1, ProtoConfig::default());
        ms[0].handle_timeout(Instant(1_000_000));
        pump(&mut ms, 1_000_000, 2);
        assert_eq!(ms[1].restarted_in_view(), Some(MemberId(0)));
        assert_eq!(ms[0].restarted_in_view(), None);
    }

    #[test]
    fn a_single_member_delivers_at_once() {
        let mut m = member(1, 0, ProtoConfig::default());
        m.submit(b"a".to_vec()).unwrap();
        m.submit(b"b".to_vec()).unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| m.poll_delivery())
            .map(|d| d.payload)
            .collect();
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(m.poll_transmit().is_none());
    }

    #[test]
    fn three_members_agree_and_batch() {
        let mut ms: Vec<Member> = (0..3)
            .map(|i| member(3, i, ProtoConfig::default()))
            .collect();
        for k in 0..20u8 {
            ms[(k % 3) as usize].submit(vec![k]).unwrap();
        }
        pump(&mut ms, 10, 6);
        let logs: Vec<Vec<(MemberId, u64)>> = ms
            .iter_mut()
            .map(|m| {
                std::iter::from_fn(|| m.poll_delivery())
                    .map(|d| (d.sender, d.seq.0))
                    .collect()
            })
            .collect();
        assert_eq!(logs[0].len(), 20);
        assert_eq!(logs[0], logs[1]);
        assert_eq!(logs[1], logs[2]);
        // Seven messages left member 0 in one frame.
        assert!(ms[0].stats().max_batch >= 7, "{:?}", ms[0].stats());
    }

    #[test]
    fn nothing_is_delivered_before_every_member_holds_it() {
        let mut ms: Vec<Member> = (0..3)
            .map(|i| member(3, i, ProtoConfig::default()))
            .collect();
        ms[0].submit(b"x".to_vec()).unwrap();
        let t = ms[0].poll_transmit().unwrap();
        // Only member 1 receives it: member 1 must not deliver (member 2 lacks it).
        ms[1].handle_frame(Instant(1), &t.frame);
        while let Some(t1) = ms[1].poll_transmit() {
            ms[0].handle_frame(Instant(1), &t1.frame);
        }
        assert!(ms[0].poll_delivery().is_none());
        assert!(ms[1].poll_delivery().is_none());
        // The lost copy is retransmitted to member 2 after the timeout; then all deliver.
        ms[0].handle_timeout(Instant(50_000));
        pump(&mut ms, 50_000, 6);
        for m in &mut ms {
            assert_eq!(m.poll_delivery().map(|d| d.payload), Some(b"x".to_vec()));
        }
        assert!(ms[0].stats().retransmitted_slots >= 1);
    }
}
