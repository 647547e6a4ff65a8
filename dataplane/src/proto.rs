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

use crate::membership::{Ballot, Ctl, Decision, Status, ViewChange};
use crate::types::{GroupId, Instant, MemberId, Seq, View, ViewId};
use crate::wire::{self, Entry, Frame, FrameWriter, Header, Key, Kind, Row, WireError};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
    /// A member not heard from for this long is suspected, which starts a view change
    /// (see [`crate::membership`]). Several heartbeats, plus scheduling noise.
    pub failure_timeout: Duration,
    /// Who may join the group.
    pub admission: Admission,
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
            heartbeat: Duration::from_millis(5),
            failure_timeout: Duration::from_millis(30),
            admission: Admission::Any,
            rto: Duration::from_millis(2),
            rto_max: Duration::from_millis(200),
            sabotage: Sabotage::None,
        }
    }
}

/// Which processes may join (they must hold the group key in any case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Any holder of the group key.
    Any,
    /// Only these member ids; other join requests are refused and counted.
    Listed(BTreeSet<MemberId>),
}

#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Deliver a slot as soon as it is held locally, without waiting for stability.
    DeliverBeforeStable,
    /// Never retransmit.
    NoRetransmit,
    /// Ragged-edge cleanup that delivers only what this member holds, ignoring the agreed cut.
    IgnoreCut,
    /// Install a proposal without waiting for a majority to accept it.
    CommitWithoutMajority,
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
    #[error("this member is not serving ({0})")]
    NotServing(&'static str),
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
    /// Views installed after the first.
    pub view_changes: u64,
    /// Members this one suspected (timeouts only, not learned suspicions).
    pub suspicions: u64,
    pub join_requests: u64,
    pub joins_refused: u64,
    /// The last process whose join was refused.
    pub last_join_refused: Option<MemberId>,
    /// Control frames that could not be decoded (authenticated, so a version mismatch).
    pub bad_control: u64,
    /// Own messages submitted again after a view change.
    pub resubmitted: u64,
    /// Ballots this member started as leader.
    pub ballots: u64,
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
    /// Global slot in its view: `seq * N + rank(sender)`; strictly increasing along deliveries
    /// of one view.
    pub slot: u64,
    /// The view it was sent and delivered in.
    pub view: ViewId,
    /// Delivered by a view change's ragged-edge cleanup (not through stability).
    pub in_cut: bool,
    pub payload: Vec<u8>,
}

/// What [`Member::poll_delivery`] yields, in the agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    Message(Delivery),
    /// A new view, after every message of the old one.
    View(ViewChange),
    /// A joiner's initial application state (sent by an old member), before any message of its
    /// first view.
    State(Vec<u8>),
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

/// What a member promised a leader: its frozen counts and the decision it accepted, if any.
#[derive(Debug)]
struct Promised {
    received: Vec<u64>,
    delivered: u64,
    accepted: Option<(Ballot, Decision)>,
    /// Per sender: runs `[start, end)` of nulls held and not delivered, within `received`.
    nulls: Vec<Vec<(u64, u64)>>,
}

/// The leader's side of a ballot.
#[derive(Debug)]
struct Leading {
    ballot: Ballot,
    members: Vec<MemberId>,
    leaving: Vec<MemberId>,
    joiners: Vec<MemberId>,
    promises: BTreeMap<MemberId, Promised>,
    decision: Option<Decision>,
    accepted_by: BTreeSet<MemberId>,
}

#[derive(Debug)]
struct StateOut {
    to: MemberId,
    view: ViewId,
    bytes: Vec<u8>,
    acked: usize,
    sent_to: usize,
}

/// Membership state of one member (see [`crate::membership`]).
#[derive(Debug)]
struct Mship {
    status: Status,
    suspected: Vec<bool>,
    /// When this member itself first suspected each rank.
    suspected_at: Vec<Option<Instant>>,
    /// Frozen `received` counts and delivered slots, once wedged.
    frozen: Option<(Vec<u64>, u64)>,
    wedged_at: Option<Instant>,
    promised: Option<Ballot>,
    accepted: Option<(Ballot, Decision)>,
    round_seen: u32,
    leading: Option<Leading>,
    /// The decision that ended the previous view (sent to stale members).
    last_commit: Option<Decision>,
    catchup_at: BTreeMap<MemberId, Instant>,
    next_ctl_at: Instant,
    view_started: Instant,
    /// The configured first view: members never heard from are not suspected (they may not
    /// have started; the host's start-up timeout covers them). In later views every member
    /// was alive when the view was agreed.
    initial: bool,
    /// Admitted join requests not yet in a view.
    /// Admitted join requests not yet in a view, with when each was last repeated (a joiner
    /// repeats its request until it is in; a request not repeated for `failure_timeout` is
    /// dropped).
    joins: BTreeMap<MemberId, Instant>,
    /// Members that joined in this view (a repeated `Join` from them gets the commit again).
    joined_now: BTreeSet<MemberId>,
    leaving: bool,
    leaving_ranks: Vec<bool>,
    /// A joiner's contacts.
    contacts: Vec<MemberId>,
    /// A joiner awaiting its state: (view, bytes so far, total once known).
    state_in: Option<(ViewId, Vec<u8>, Option<u32>)>,
    state_out: Vec<StateOut>,
}

impl Mship {
    fn new(n: usize, now: Instant, status: Status) -> Mship {
        Mship {
            status,
            suspected: vec![false; n],
            suspected_at: vec![None; n],
            frozen: None,
            wedged_at: None,
            promised: None,
            accepted: None,
            round_seen: 0,
            leading: None,
            last_commit: None,
            catchup_at: BTreeMap::new(),
            next_ctl_at: now,
            view_started: now,
            initial: true,
            joins: BTreeMap::new(),
            joined_now: BTreeSet::new(),
            leaving: false,
            leaving_ranks: vec![false; n],
            contacts: Vec::new(),
            state_in: None,
            state_out: Vec::new(),
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
    deliveries: VecDeque<Delivered>,
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
    majority: Vec<u64>,
    row: Row,
    ms: Mship,
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
            majority: Vec::with_capacity(n),
            row: Row {
                heartbeat: 0,
                delivered: 0,
                received: Vec::with_capacity(n),
            },
            ms: Mship::new(n, now, Status::Serving),
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
        match self.ms.status {
            Status::Serving | Status::Changing => {}
            s => return Err(SubmitError::NotServing(s.label())),
        }
        if self.window_room() == 0 {
            self.stats.window_full += 1;
            return Err(SubmitError::WindowFull);
        }
        let rank = self.rank;
        let seq = self.logs[rank].highest;
        self.logs[rank].insert(seq, Slot::Data(payload));
        self.stats.submitted += 1;
        if self.n() == 1 && self.ms.frozen.is_none() {
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
        if h.group == self.group && h.kind == Kind::Control {
            self.handle_control(h.sender, h.view, frame.control_payload());
            return;
        }
        if h.group == self.group && h.view < self.view.id {
            // A stale member: tell it how its view ended (it learns it was excluded).
            self.catch_up(h.sender);
        } else if h.group == self.group && h.view > self.view.id {
            // A newer view: we may have missed its commit; its members will send it to us
            // when our frames reach them. Counts as a sign of life.
            if let Some(r) = self.view.rank_of(h.sender) {
                self.last_heard[r] = Some(now);
            }
        }
        let drop = if h.group != self.group {
            Some(ProtoDrop::WrongGroup)
        } else if h.view != self.view.id || matches!(self.ms.status, Status::Joining) {
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
        if self.ms.status.is_final() {
            return;
        }
        let r = self.view.rank_of(h.sender).unwrap_or(0);
        self.heard_in_minority(r);
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
        if self.ms.frozen.is_some() {
            return;
        }
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
        if self.ms.frozen.is_some() || self.ms.status.is_final() {
            return;
        }
        if let Some((_, bytes, Some(total))) = &self.ms.state_in {
            if bytes.len() == *total as usize {
                if let Some((_, bytes, _)) = self.ms.state_in.take() {
                    self.deliveries.push_back(Delivered::State(bytes));
                }
                self.ms.status = Status::Serving;
            }
        }
        if self.ms.state_in.is_some() {
            return;
        }
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
        // maj[s]: messages of s that a majority of members holds (a null passes once it is).
        let mut maj = std::mem::take(&mut self.majority);
        maj.clear();
        let mut held = Vec::with_capacity(self.rows.len());
        for s in 0..self.logs.len() {
            held.clear();
            held.extend(self.rows.iter().enumerate().map(|(m, row)| {
                if m == me {
                    self.logs[s].contiguous
                } else {
                    row.received[s]
                }
            }));
            held.sort_unstable_by(|a, b| b.cmp(a));
            maj.push(held.get(held.len() / 2).copied().unwrap_or(0));
        }
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
            // A message waits until every member holds it (stability). A null carries nothing
            // and is the same wherever it is held: it passes once a majority holds it. Not
            // sooner: a view change must be able to tell, from the survivors (a majority),
            // that it was a null, or it could not deliver what a member that passed it went on
            // to deliver (see the cut in `maybe_decide`). With three members the null's sender
            // and its receiver are that majority, so this costs no extra hop.
            if check_stable
                && match slot {
                    Slot::Data(_) => k >= stable[r],
                    Slot::Null => k >= maj[r],
                }
            {
                break;
            }
            let slot = std::mem::replace(slot, Slot::Null);
            log.delivered = k + 1;
            self.next_slot += 1;
            if let Slot::Data(payload) = slot {
                self.stats.delivered += 1;
                self.deliveries.push_back(Delivered::Message(Delivery {
                    sender: self.view.members[r],
                    seq: Seq(k),
                    slot: g,
                    view: self.view.id,
                    in_cut: false,
                    payload,
                }));
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
        self.majority = maj;
    }

    /// Advances timers: retransmissions and periodic status rows.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let now = self.now;
        self.membership_timers(now);
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
        let mut t = self.next_status_at.min(self.membership_deadline());
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

    /// The next delivered message, view change or joiner state, in total order.
    pub fn poll_delivery(&mut self) -> Option<Delivered> {
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
        row.received.clear();
        if let Some((received, delivered)) = &self.ms.frozen {
            // Wedged: report only what we reported to the view change (see membership docs).
            row.delivered = *delivered;
            row.received.extend_from_slice(received);
        } else {
            row.delivered = self.next_slot;
            row.received.extend(self.logs.iter().map(|l| l.contiguous));
        }
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
        if self.transmits.is_empty() && self.view.len() > 1 && !self.ms.status.is_final() {
            let row = self.own_row();
            self.produce(row);
        }
        self.transmits.pop_front()
    }

    /// Queues the next frame(s) to send, in priority order; `row` is our current row, handed
    /// back to the reused buffer at the end.
    fn produce(&mut self, mut row: Row) {
        let own_highest = if self.ms.frozen.is_some() {
            self.unsent
        } else {
            self.logs[self.rank].highest
        };
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

// Membership: failure detection, view-change agreement, ragged-edge cleanup, joins, leaves and
// state transfer. The protocol is described in `crate::membership`.
impl Member {
    /// A process asking to join the group through `contacts` (members it knows). It is in no
    /// view ([`Status::Joining`]) until a leader admits it and a view including it is committed;
    /// then it receives the application's state ([`Delivered::State`]) before any message.
    pub fn joining(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        me: MemberId,
        contacts: Vec<MemberId>,
        now: Instant,
    ) -> Result<Member, ConfigError> {
        let mut m = Member::new(cfg, key, group, View::new(ViewId(0), vec![me]), me, now)?;
        m.ms.status = Status::Joining;
        m.ms.contacts = contacts;
        Ok(m)
    }

    /// Where this member stands; hosts check it after every step (see [`Status`]).
    pub fn status(&self) -> Status {
        if self.ms.state_in.is_some() && !self.ms.status.is_final() {
            Status::Joining
        } else {
            self.ms.status
        }
    }

    /// Members of the current view this member suspects.
    pub fn suspects(&self) -> Vec<MemberId> {
        (0..self.n())
            .filter(|&r| self.ms.suspected[r])
            .map(|r| self.view.members[r])
            .collect()
    }

    /// Changes who may join from now on (the control plane's allowlist). Pending requests of
    /// processes no longer admitted are dropped; members already in the view stay.
    pub fn set_admission(&mut self, admission: Admission) {
        if let Admission::Listed(ok) = &admission {
            self.ms.joins.retain(|m, _| ok.contains(m));
        }
        self.cfg.admission = admission;
    }

    /// Asks the group to remove this member (graceful leave). Submit nothing more and wait until
    /// [`Member::window_room`] is back to the whole window before calling, or the messages not
    /// yet delivered are lost with the leave. The status becomes [`Status::Left`] once the view
    /// without this member is committed.
    pub fn leave(&mut self) {
        if matches!(self.ms.status, Status::Serving | Status::Changing) && self.n() > 1 {
            self.ms.leaving = true;
            self.ms.leaving_ranks[self.rank] = true;
            self.wedge();
            self.ms.next_ctl_at = self.now;
        }
    }

    /// Starts sending `state` (the application's snapshot as of the install of the current
    /// view) to joiner `to`. Called by the host on a [`ViewChange`] whose `state_from` is this
    /// member, for each of its `joined`, before handling any later delivery.
    pub fn send_state(&mut self, to: MemberId, state: Vec<u8>) {
        if self.view.rank_of(to).is_none() {
            return;
        }
        self.ms.state_out.retain(|o| o.to != to);
        self.ms.state_out.push(StateOut {
            to,
            view: self.view.id,
            bytes: state,
            acked: 0,
            sent_to: 0,
        });
        let i = self.ms.state_out.len() - 1;
        self.send_state_chunks(i);
    }

    /// Per sender: the runs of nulls this member holds, not delivered, below `received`.
    fn null_runs(&self, received: &[u64]) -> Vec<Vec<(u64, u64)>> {
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

    fn state_chunk(&self) -> usize {
        wire::max_payload_for(self.cfg.max_frame, 1)
            .saturating_sub(32)
            .max(16)
    }

    fn send_state_chunks(&mut self, i: usize) {
        const WINDOW: usize = 16;
        let cs = self.state_chunk();
        let mut msgs = Vec::new();
        {
            let o = &mut self.ms.state_out[i];
            let total = o.bytes.len();
            let end = total.min(o.acked + WINDOW * cs);
            if total == 0 && o.sent_to == 0 {
                msgs.push(Ctl::State {
                    view: o.view,
                    offset: 0,
                    total: 0,
                    chunk: Vec::new(),
                });
                o.sent_to = 1;
            }
            while o.sent_to < end {
                let to = (o.sent_to + cs).min(total);
                msgs.push(Ctl::State {
                    view: o.view,
                    offset: o.sent_to as u32,
                    total: total as u32,
                    chunk: o.bytes[o.sent_to..to].to_vec(),
                });
                o.sent_to = to;
            }
        }
        let to = self.ms.state_out[i].to;
        for m in msgs {
            self.emit_ctl(Dest::One(to), &m);
        }
    }

    fn emit_ctl(&mut self, dest: Dest, ctl: &Ctl) {
        let payload = ctl.encode();
        let mut buf = self.pool.pop().unwrap_or_default();
        let header = self.header(Kind::Control, 0);
        let row = Row {
            heartbeat: self.heartbeat,
            delivered: 0,
            received: vec![0],
        };
        // Control messages may exceed max_frame for large groups: they are rare and small
        // groups keep them well under it.
        let limit = self.cfg.max_frame.max(payload.len() + 256);
        let mut w = FrameWriter::new(&mut buf, limit, &header, &row);
        if !w.push_data(&payload) {
            self.pool.push(buf);
            return;
        }
        w.finish(&self.key);
        self.stats.frames_out += 1;
        self.stats.bytes_out += buf.len() as u64;
        self.transmits.push_back(Transmit { dest, frame: buf });
    }

    /// Stops delivering and sending, and freezes the counts this member reports.
    fn wedge(&mut self) {
        if self.ms.frozen.is_none() {
            let received = self.logs.iter().map(|l| l.contiguous).collect();
            self.ms.frozen = Some((received, self.next_slot));
            self.ms.wedged_at = Some(self.now);
            self.status_all = true;
        }
        if self.ms.status == Status::Serving {
            self.ms.status = Status::Changing;
        }
    }

    fn suspect_rank(&mut self, r: usize, own: bool) {
        if r >= self.n() || self.ms.suspected[r] {
            return;
        }
        self.ms.suspected[r] = true;
        if own {
            self.ms.suspected_at[r] = Some(self.now);
            self.stats.suspicions += 1;
        }
        self.wedge();
        self.ms.next_ctl_at = self.now;
    }

    fn membership_timers(&mut self, now: Instant) {
        let period = self.cfg.status_interval.max(Duration::from_micros(200));
        match self.ms.status {
            Status::Excluded | Status::Left => return,
            Status::Joining => {
                if now >= self.ms.next_ctl_at {
                    self.ms.next_ctl_at = now + period;
                    for c in self.ms.contacts.clone() {
                        self.emit_ctl(Dest::One(c), &Ctl::Join);
                    }
                }
                return;
            }
            _ => {}
        }
        let timeout = self.cfg.failure_timeout;
        self.ms
            .joins
            .retain(|_, t| now.saturating_since(*t) < timeout);
        for r in 0..self.n() {
            if r == self.rank || self.ms.suspected[r] {
                continue;
            }
            if self.ms.initial && self.last_heard[r].is_none() {
                continue;
            }
            let last = self.last_heard[r].unwrap_or(self.ms.view_started);
            if now.saturating_since(last) >= timeout {
                self.suspect_rank(r, true);
            }
        }
        if now >= self.ms.next_ctl_at {
            self.ms.next_ctl_at = now + period;
            self.resend_ctl();
        }
        self.drive_change();
    }

    fn membership_deadline(&self) -> Instant {
        match self.ms.status {
            Status::Excluded | Status::Left => return Instant(u64::MAX),
            Status::Joining => return self.ms.next_ctl_at,
            _ => {}
        }
        let mut t = Instant(u64::MAX);
        for r in 0..self.n() {
            if r != self.rank
                && !self.ms.suspected[r]
                && !(self.ms.initial && self.last_heard[r].is_none())
            {
                let last = self.last_heard[r].unwrap_or(self.ms.view_started);
                t = t.min(last + self.cfg.failure_timeout);
            }
        }
        if self.ms.frozen.is_some() || !self.ms.state_out.is_empty() {
            t = t.min(self.ms.next_ctl_at);
        }
        t
    }

    /// Periodic repetition of whatever the view change is waiting for (losses are repaired by
    /// repeating; every handler is idempotent).
    fn resend_ctl(&mut self) {
        if self.ms.frozen.is_some() {
            // Also with no suspect: a wedged member needs a view change to serve again (a
            // healed minority), and this asks the others for one.
            let suspects = self.suspects();
            let minority = self.ms.status == Status::Minority;
            self.emit_ctl(Dest::All, &Ctl::Suspect { suspects, minority });
            if self.ms.leaving {
                self.emit_ctl(Dest::All, &Ctl::Leave);
            }
        }
        let mut out = Vec::new();
        if let Some(l) = &self.ms.leading {
            for &m in &l.members {
                if m == self.me {
                    continue;
                }
                match &l.decision {
                    None if !l.promises.contains_key(&m) => out.push((
                        m,
                        Ctl::Propose {
                            ballot: l.ballot,
                            members: l.members.clone(),
                            leaving: l.leaving.clone(),
                            joiners: l.joiners.clone(),
                        },
                    )),
                    Some(d) if !l.accepted_by.contains(&m) => out.push((
                        m,
                        Ctl::Accept {
                            ballot: l.ballot,
                            decision: d.clone(),
                        },
                    )),
                    _ => {}
                }
            }
        }
        for (m, c) in out {
            self.emit_ctl(Dest::One(m), &c);
        }
        self.ms.state_out.retain(|o| o.acked < o.bytes.len().max(1));
        let view = self.view.clone();
        self.ms
            .state_out
            .retain(|o| o.view == view.id && view.rank_of(o.to).is_some());
        for i in 0..self.ms.state_out.len() {
            let o = &mut self.ms.state_out[i];
            o.sent_to = o.acked;
            self.send_state_chunks(i);
        }
    }

    /// A minority member hearing again from a member it suspected (a partition healed):
    /// suspicions are dropped so that, if no majority decided without us, the view change can
    /// complete with everyone (Paxos keeps one decision per view whoever proposes). A majority
    /// never drops a suspicion: it goes on without the suspected member.
    fn heard_in_minority(&mut self, r: usize) {
        if self.ms.status == Status::Minority && self.ms.suspected[r] {
            self.ms.suspected[r] = false;
            self.ms.suspected_at[r] = None;
            let n = self.n();
            let alive = self.ms.suspected.iter().filter(|s| !**s).count();
            if alive * 2 > n {
                self.ms.status = Status::Changing;
            }
        }
    }

    /// Starts or restarts a ballot when this member leads and a change is needed.
    fn drive_change(&mut self) {
        if !matches!(self.ms.status, Status::Serving | Status::Changing) {
            return;
        }
        // Once wedged, only a new view lets this member serve again (possibly with the same
        // members, after a healed partition).
        let n = self.n();
        let would_lead =
            (0..n).find(|&r| !self.ms.suspected[r] && !self.ms.leaving_ranks[r]) == Some(self.rank);
        // Join requests start a change only at the member that would lead it (every member
        // gets them; the others would only wedge the group for nothing).
        let needed = self.ms.frozen.is_some()
            || self.ms.suspected.iter().any(|&s| s)
            || self.ms.leaving_ranks.iter().any(|&s| s)
            || (would_lead && !self.ms.joins.is_empty());
        if !needed {
            return;
        }
        self.wedge();
        let acceptors: Vec<usize> = (0..n).filter(|&r| !self.ms.suspected[r]).collect();
        if acceptors.len() * 2 <= n {
            self.ms.status = Status::Minority;
            self.ms.leading = None;
            return;
        }
        let leader = acceptors
            .iter()
            .copied()
            .find(|&r| !self.ms.leaving_ranks[r]);
        if leader != Some(self.rank) {
            self.ms.leading = None;
            return;
        }
        let members: Vec<MemberId> = acceptors.iter().map(|&r| self.view.members[r]).collect();
        let leaving: Vec<MemberId> = acceptors
            .iter()
            .filter(|&&r| self.ms.leaving_ranks[r])
            .map(|&r| self.view.members[r])
            .collect();
        // Joiners: new ids, and new incarnations of members being removed (same id).
        let joiners: Vec<MemberId> = self
            .ms
            .joins
            .keys()
            .copied()
            .filter(|j| !members.contains(j) || leaving.contains(j))
            .take(wire::MAX_MEMBERS.saturating_sub(members.len()))
            .collect();
        if let Some(l) = &self.ms.leading {
            if l.members == members && l.leaving == leaving && l.joiners == joiners {
                return;
            }
        }
        let round = self
            .ms
            .round_seen
            .max(self.ms.promised.map_or(0, |b| b.round))
            + 1;
        let ballot = Ballot {
            round,
            leader: self.me,
        };
        self.ms.round_seen = round;
        self.ms.promised = Some(ballot);
        self.stats.ballots += 1;
        let (received, delivered) = self.ms.frozen.clone().unwrap_or_default();
        let nulls = self.null_runs(&received);
        let mut promises = BTreeMap::new();
        promises.insert(
            self.me,
            Promised {
                received,
                delivered,
                accepted: self.ms.accepted.clone(),
                nulls,
            },
        );
        let propose = Ctl::Propose {
            ballot,
            members: members.clone(),
            leaving: leaving.clone(),
            joiners: joiners.clone(),
        };
        self.ms.leading = Some(Leading {
            ballot,
            members: members.clone(),
            leaving,
            joiners,
            promises,
            decision: None,
            accepted_by: BTreeSet::new(),
        });
        for m in members {
            if m != self.me {
                self.emit_ctl(Dest::One(m), &propose);
            }
        }
        self.maybe_decide();
    }

    fn maybe_decide(&mut self) {
        let n = self.n() as u64;
        let Some(l) = &self.ms.leading else { return };
        if l.decision.is_some() || !l.members.iter().all(|m| l.promises.contains_key(m)) {
            return;
        }
        if self.ms.promised != Some(l.ballot) {
            // We promised a higher ballot since: ours cannot win.
            self.ms.leading = None;
            return;
        }
        let adopted = l
            .promises
            .values()
            .filter_map(|p| p.accepted.clone())
            .max_by_key(|(b, _)| *b)
            .map(|(_, d)| d);
        let decision = adopted.unwrap_or_else(|| {
            let c_del = l.promises.values().map(|p| p.delivered).max().unwrap_or(0);
            let c_min = (0..n)
                .map(|r| {
                    let held = l
                        .promises
                        .values()
                        .map(|p| p.received.get(r as usize).copied().unwrap_or(0))
                        .min()
                        .unwrap_or(0);
                    held * n + r
                })
                .min()
                .unwrap_or(0);
            // Extend the cut over slots that every promiser holds, or that one holds and
            // reports as a null: a member that passed a null (held by a majority, so by a
            // promiser) may have delivered messages after it.
            let mut cut = c_del.max(c_min);
            loop {
                let (r, k) = ((cut % n) as usize, cut / n);
                let all = l
                    .promises
                    .values()
                    .all(|p| p.received.get(r).is_some_and(|&c| c > k));
                let null = l.promises.values().any(|p| {
                    p.received.get(r).is_some_and(|&c| c > k)
                        && p.nulls
                            .get(r)
                            .is_some_and(|runs| runs.iter().any(|&(a, b)| a <= k && k < b))
                });
                if !(all || null) {
                    break;
                }
                cut += 1;
            }
            let mut next: Vec<MemberId> = self
                .view
                .members
                .iter()
                .copied()
                .filter(|m| l.members.contains(m) && !l.leaving.contains(m))
                .collect();
            next.extend(l.joiners.iter().copied());
            Decision {
                from: self.view.id,
                next: View::new(ViewId(self.view.id.0 + 1), next),
                joiners: l.joiners.clone(),
                cut,
            }
        });
        let ballot = l.ballot;
        let members = l.members.clone();
        if let Some(l) = &mut self.ms.leading {
            l.decision = Some(decision.clone());
            l.accepted_by.insert(self.me);
        }
        self.ms.accepted = Some((ballot, decision.clone()));
        let accept = Ctl::Accept { ballot, decision };
        for m in members {
            if m != self.me {
                self.emit_ctl(Dest::One(m), &accept);
            }
        }
        self.maybe_commit();
    }

    fn maybe_commit(&mut self) {
        let n = self.n();
        let Some(l) = &self.ms.leading else { return };
        let Some(d) = &l.decision else { return };
        let majority = l.accepted_by.len() * 2 > n;
        if !majority && self.cfg.sabotage != Sabotage::CommitWithoutMajority {
            return;
        }
        let d = d.clone();
        let commit = Ctl::Commit {
            decision: d.clone(),
        };
        let mut to: BTreeSet<MemberId> = self.view.members.iter().copied().collect();
        to.extend(d.next.members.iter().copied());
        to.remove(&self.me);
        for m in to {
            self.emit_ctl(Dest::One(m), &commit);
        }
        self.install(d);
    }

    fn catch_up(&mut self, to: MemberId) {
        let Some(d) = &self.ms.last_commit else {
            return;
        };
        let now = self.now;
        let due = self
            .ms
            .catchup_at
            .get(&to)
            .is_none_or(|&t| now >= t + self.cfg.status_interval);
        if due {
            self.ms.catchup_at.insert(to, now);
            let c = Ctl::Commit {
                decision: d.clone(),
            };
            self.emit_ctl(Dest::One(to), &c);
        }
    }

    fn handle_control(&mut self, sender: MemberId, view: ViewId, payload: &[u8]) {
        let Some(ctl) = Ctl::decode(payload) else {
            self.stats.bad_control += 1;
            return;
        };
        match ctl {
            Ctl::Commit { decision } => {
                self.on_commit(decision);
                return;
            }
            Ctl::Join => {
                self.on_join(sender);
                return;
            }
            _ => {}
        }
        if self.ms.status.is_final() || self.view.id == ViewId(0) {
            return;
        }
        let drop = if view < self.view.id {
            self.catch_up(sender);
            Some(ProtoDrop::WrongView)
        } else if view != self.view.id {
            Some(ProtoDrop::WrongView)
        } else if sender == self.me {
            Some(ProtoDrop::OwnFrame)
        } else if self.view.rank_of(sender).is_none() {
            Some(ProtoDrop::UnknownSender)
        } else {
            None
        };
        if let Some(d) = drop {
            let i = ProtoDrop::ALL.iter().position(|&x| x == d).unwrap_or(0);
            self.stats.dropped_proto[i] += 1;
            return;
        }
        let r = self.view.rank_of(sender).unwrap_or(0);
        self.last_heard[r] = Some(self.now);
        self.heard_in_minority(r);
        if self.ms.suspected[r] && matches!(ctl, Ctl::Suspect { .. } | Ctl::Leave) {
            // A suspected member's suspicions are not taken up (a healed minority's are
            // stale). Its ballots are still answered: Paxos is safe whoever leads, and with
            // one-way suspicions (a leader suspected by a member it does not suspect) ignoring
            // them could leave every would-be leader waiting for a member that ignores it.
            return;
        }
        match ctl {
            Ctl::Suspect { suspects, minority } => {
                // Others suspecting this member do not make it suspect itself: a leader that
                // excludes it says so (its proposal or its commit), and a minority that heals
                // must be able to resume. A minority's suspicions are not taken up (they are
                // stale once it hears again), nor does a minority take up others'.
                let take = !minority && self.ms.status != Status::Minority;
                for m in suspects.into_iter().filter(|_| take) {
                    if let Some(x) = self.view.rank_of(m) {
                        if x != self.rank {
                            self.suspect_rank(x, false);
                        }
                    }
                }
                self.wedge();
            }
            Ctl::Leave => {
                if !self.ms.leaving_ranks[r] {
                    self.ms.leaving_ranks[r] = true;
                    self.wedge();
                }
            }
            Ctl::Propose {
                ballot,
                members,
                leaving,
                joiners: _,
            } => self.on_propose(sender, ballot, &members, &leaving),
            Ctl::Promise {
                ballot,
                received,
                delivered,
                accepted,
                nulls,
            } => {
                let n = self.n();
                if let Some(l) = &mut self.ms.leading {
                    if l.ballot == ballot && l.members.contains(&sender) && received.len() == n {
                        l.promises.insert(
                            sender,
                            Promised {
                                received,
                                delivered,
                                accepted,
                                nulls,
                            },
                        );
                    }
                }
                self.maybe_decide();
            }
            Ctl::Accept { ballot, decision } => {
                if !self.plausible(&decision) {
                    self.stats.bad_control += 1;
                } else if self.ms.promised.is_none_or(|p| ballot >= p)
                    && decision.from == self.view.id
                {
                    self.ms.promised = Some(ballot);
                    self.ms.round_seen = self.ms.round_seen.max(ballot.round);
                    self.ms.accepted = Some((ballot, decision));
                    self.wedge();
                    self.emit_ctl(Dest::One(sender), &Ctl::Accepted { ballot });
                } else if let Some(p) = self.ms.promised {
                    self.emit_ctl(Dest::One(sender), &Ctl::Reject { promised: p });
                }
            }
            Ctl::Accepted { ballot } => {
                if let Some(l) = &mut self.ms.leading {
                    if l.ballot == ballot && l.decision.is_some() {
                        l.accepted_by.insert(sender);
                    }
                }
                self.maybe_commit();
            }
            Ctl::Reject { promised } => {
                self.ms.round_seen = self.ms.round_seen.max(promised.round);
                if self
                    .ms
                    .leading
                    .as_ref()
                    .is_some_and(|l| l.ballot < promised)
                {
                    self.ms.leading = None;
                }
            }
            Ctl::StateAck { view, have } => {
                if let Some(i) = self
                    .ms
                    .state_out
                    .iter()
                    .position(|o| o.to == sender && o.view == view)
                {
                    let o = &mut self.ms.state_out[i];
                    o.acked = o.acked.max(have as usize).min(o.bytes.len());
                    if o.acked >= o.bytes.len() {
                        self.ms.state_out.remove(i);
                    } else {
                        self.send_state_chunks(i);
                    }
                }
            }
            Ctl::State {
                view,
                offset,
                total,
                chunk,
            } => self.on_state_chunk(sender, view, offset, total, chunk),
            Ctl::Commit { .. } | Ctl::Join => {}
        }
        self.drive_change();
    }

    fn on_propose(
        &mut self,
        sender: MemberId,
        ballot: Ballot,
        members: &[MemberId],
        leaving: &[MemberId],
    ) {
        if let Some(p) = self.ms.promised {
            if ballot < p {
                self.emit_ctl(Dest::One(sender), &Ctl::Reject { promised: p });
                return;
            }
        }
        self.ms.promised = Some(ballot);
        self.ms.round_seen = self.ms.round_seen.max(ballot.round);
        if self.ms.leading.as_ref().is_some_and(|l| l.ballot < ballot) {
            self.ms.leading = None;
        }
        for r in 0..self.n() {
            let m = self.view.members[r];
            if !members.contains(&m) {
                self.suspect_rank(r, false);
            }
            if leaving.contains(&m) {
                self.ms.leaving_ranks[r] = true;
            }
        }
        if !members.contains(&self.me) {
            return;
        }
        self.wedge();
        let (received, delivered) = self.ms.frozen.clone().unwrap_or_default();
        let nulls = self.null_runs(&received);
        let promise = Ctl::Promise {
            ballot,
            received,
            delivered,
            accepted: self.ms.accepted.clone(),
            nulls,
        };
        self.emit_ctl(Dest::One(sender), &promise);
    }

    fn on_join(&mut self, sender: MemberId) {
        if !matches!(self.ms.status, Status::Serving | Status::Changing) {
            return;
        }
        let heard = self
            .view
            .rank_of(sender)
            .is_some_and(|r| self.last_heard[r].is_some());
        if self.ms.joined_now.contains(&sender) {
            if !heard {
                // It joined in this view but missed the commit.
                self.ms.catchup_at.remove(&sender);
                self.catch_up(sender);
            }
            // Once it has spoken in the view, a late `Join` is one it sent before installing
            // (ignored). A new process with this id (a restart) is not given the old one's
            // place: it keeps asking until the old one, silent, is removed by a timeout.
            return;
        }
        if let Some(t) = self.ms.joins.get_mut(&sender) {
            *t = self.now;
            return;
        }
        self.stats.join_requests += 1;
        if let Admission::Listed(ok) = &self.cfg.admission {
            if !ok.contains(&sender) {
                self.stats.joins_refused += 1;
                self.stats.last_join_refused = Some(sender);
                return;
            }
        }
        if let Some(r) = self.view.rank_of(sender) {
            // A new incarnation of a member of this view: the old one is gone.
            self.suspect_rank(r, true);
        }
        self.ms.joins.insert(sender, self.now);
        self.drive_change();
    }

    fn on_state_chunk(
        &mut self,
        sender: MemberId,
        view: ViewId,
        offset: u32,
        total: u32,
        chunk: Vec<u8>,
    ) {
        let Some((v, bytes, tot)) = &mut self.ms.state_in else {
            return;
        };
        if *v != view {
            return;
        }
        if offset as usize == bytes.len() && bytes.len() + chunk.len() <= total as usize {
            bytes.extend_from_slice(&chunk);
            *tot = Some(total);
        }
        let have = bytes.len() as u32;
        self.emit_ctl(Dest::One(sender), &Ctl::StateAck { view, have });
        self.deliver();
    }

    /// A decision that no correct member could have made is refused (counted as a bad control
    /// message): it holds the group key, but the state must stay bounded whatever it says.
    fn plausible(&self, d: &Decision) -> bool {
        let mut ids: Vec<MemberId> = d.next.members.clone();
        ids.sort_unstable();
        ids.dedup();
        let n = self.n() as u64;
        let bound = self
            .next_slot
            .saturating_add(n.saturating_mul(2 * self.recv_window() + 2));
        !d.next.members.is_empty()
            && d.next.members.len() <= wire::MAX_MEMBERS
            && ids.len() == d.next.members.len()
            && d.next.id.0 == d.from.0.wrapping_add(1)
            && d.joiners.iter().all(|j| d.next.rank_of(*j).is_some())
            && (d.from != self.view.id || d.cut <= bound)
    }

    fn on_commit(&mut self, d: Decision) {
        if !self.plausible(&d) {
            self.stats.bad_control += 1;
            return;
        }
        match self.ms.status {
            Status::Excluded | Status::Left => {}
            Status::Joining if self.view.id == ViewId(0) => {
                // Only a decision that admits this process as a joiner: the id may also be in
                // a view as an old incarnation of this member (a decision adopted from before
                // it restarted), which is not this process.
                if d.joiners.contains(&self.me) && d.next.members.contains(&self.me) {
                    self.install_joiner(d);
                }
            }
            _ => {
                if d.from == self.view.id {
                    self.install(d);
                } else if d.from > self.view.id {
                    // The group moved on by more than one view without us.
                    self.ms.status = Status::Excluded;
                    self.ms.last_commit = Some(d);
                }
            }
        }
    }

    fn install_joiner(&mut self, d: Decision) {
        let previous = self.view.clone();
        let next = d.next.clone();
        self.reset_view(next.clone());
        self.ms.status = Status::Serving;
        self.ms.state_in = Some((next.id, Vec::new(), None));
        self.ms.joined_now = d.joiners.iter().copied().collect();
        self.ms.last_commit = Some(d.clone());
        self.stats.view_changes += 1;
        self.deliveries.push_back(Delivered::View(ViewChange {
            previous,
            view: next.clone(),
            removed: Vec::new(),
            joined: vec![self.me],
            cut: 0,
            inferred_nulls: 0,
            resubmitted: 0,
            wedged_for: Duration::ZERO,
            suspected_at: None,
            state_from: None,
        }));
    }

    /// Ragged-edge cleanup up to the decision's cut, then the new view.
    fn install(&mut self, d: Decision) {
        let previous = self.view.clone();
        // Named as a joiner, this id stands for a new process: this one was removed (it made
        // no promise the cut relies on, so it must not install the view as a survivor).
        let me_next = d.next.rank_of(self.me).is_some() && !d.joiners.contains(&self.me);
        if !me_next {
            self.ms.status = if self.ms.leaving {
                Status::Left
            } else {
                Status::Excluded
            };
            self.ms.last_commit = Some(d);
            self.ms.leading = None;
            return;
        }
        if self.ms.state_in.is_some() {
            // Still waiting for our state when the view changed again: we cannot catch up.
            self.ms.status = Status::Excluded;
            self.ms.last_commit = Some(d);
            return;
        }
        let n = self.n() as u64;
        let cut = if self.cfg.sabotage == Sabotage::IgnoreCut {
            self.next_slot.max(
                (0..n)
                    .map(|r| self.logs[r as usize].contiguous * n + r)
                    .min()
                    .unwrap_or(0),
            )
        } else {
            d.cut
        };
        let mut inferred = 0;
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
                    self.stats.delivered += 1;
                    self.deliveries.push_back(Delivered::Message(Delivery {
                        sender: self.view.members[r],
                        seq: Seq(k),
                        slot: g,
                        view: self.view.id,
                        in_cut: true,
                        payload,
                    }));
                }
                Some(Slot::Null) => {}
                None => inferred += 1,
            }
        }
        // Own messages not delivered by the cut go again, in order, in the new view.
        let own = &mut self.logs[self.rank];
        let mut again = Vec::new();
        for seq in own.delivered.max(own.base)..own.highest {
            if let Some(Some(Slot::Data(p))) = own.slots.get_mut((seq - own.base) as usize) {
                again.push(std::mem::take(p));
            }
        }
        // A rejoining incarnation of an old member counts as removed (the old one) and joined.
        let removed: Vec<MemberId> = previous
            .members
            .iter()
            .copied()
            .filter(|m| d.next.rank_of(*m).is_none() || d.joiners.contains(m))
            .collect();
        let joined: Vec<MemberId> = d
            .next
            .members
            .iter()
            .copied()
            .filter(|m| previous.rank_of(*m).is_none() || d.joiners.contains(m))
            .collect();
        let suspected_at = (0..previous.len())
            .filter(|&r| removed.contains(&previous.members[r]))
            .filter_map(|r| self.ms.suspected_at[r])
            .min();
        let wedged_for = self
            .ms
            .wedged_at
            .map_or(Duration::ZERO, |t| self.now.saturating_since(t));
        let state_from = if joined.is_empty() {
            None
        } else {
            d.next
                .members
                .iter()
                .copied()
                .find(|m| previous.rank_of(*m).is_some() && !d.joiners.contains(m))
        };
        let next = d.next.clone();
        let resubmitted = again.len() as u64;
        self.reset_view(next.clone());
        self.ms.joined_now = joined.iter().copied().collect();
        self.ms.joins.retain(|j, _| next.rank_of(*j).is_none());
        self.ms.last_commit = Some(d);
        self.stats.view_changes += 1;
        self.stats.resubmitted += resubmitted;
        self.deliveries.push_back(Delivered::View(ViewChange {
            previous,
            view: next,
            removed,
            joined,
            cut,
            inferred_nulls: inferred,
            resubmitted,
            wedged_for,
            suspected_at,
            state_from,
        }));
        let me = self.rank;
        for p in again {
            let seq = self.logs[me].highest;
            self.logs[me].insert(seq, Slot::Data(p));
        }
        if self.n() == 1 {
            self.deliver();
        }
    }

    /// Per-view state for a newly installed view (counters, pool and clock are kept).
    fn reset_view(&mut self, view: View) {
        let n = view.len();
        let rto = self.cfg.rto;
        self.rank = view.rank_of(self.me).unwrap_or(0);
        self.logs = (0..n).map(|_| SenderLog::default()).collect();
        self.rows = (0..n)
            .map(|_| Row {
                heartbeat: 0,
                delivered: 0,
                received: vec![0; n],
            })
            .collect();
        self.next_slot = 0;
        self.unsent = 0;
        self.retx_queue.clear();
        self.retx = vec![
            Retx {
                deadline: None,
                rto,
                srtt_us: None,
                rttvar_us: 0,
                sample: None,
            };
            n
        ];
        self.status_all = true;
        self.status_to = vec![false; n];
        self.next_status_at = self.now;
        self.last_heard = vec![None; n];
        self.gap_reported = vec![None; n];
        self.fast_from = vec![None; n];
        self.view = view;
        let leaving = self.ms.leaving;
        let ms = &mut self.ms;
        ms.suspected = vec![false; n];
        ms.suspected_at = vec![None; n];
        ms.leaving_ranks = vec![false; n];
        if leaving {
            ms.leaving_ranks[self.rank] = true;
        }
        ms.frozen = None;
        ms.wedged_at = None;
        ms.promised = None;
        ms.accepted = None;
        ms.leading = None;
        ms.catchup_at.clear();
        ms.view_started = self.now;
        ms.initial = false;
        ms.next_ctl_at = self.now;
        ms.state_out.clear();
        if matches!(ms.status, Status::Changing | Status::Minority) {
            ms.status = Status::Serving;
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

    fn msgs(m: &mut Member) -> Vec<Delivery> {
        std::iter::from_fn(|| m.poll_delivery())
            .filter_map(|d| match d {
                Delivered::Message(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// A tiny network for membership tests: members by id, some of them down, time advanced
    /// by steps; every frame between two live members arrives at the next step.
    struct Net {
        ms: Vec<Member>,
        down: Vec<bool>,
        now: u64,
        out: Vec<Vec<Delivered>>,
    }

    impl Net {
        fn new(n: u16, cfg: ProtoConfig) -> Net {
            Net {
                ms: (0..n).map(|i| member(n, i, cfg.clone())).collect(),
                down: vec![false; n as usize],
                now: 0,
                out: vec![Vec::new(); n as usize],
            }
        }
        fn step(&mut self, us: u64) {
            self.now += us;
            let now = Instant(self.now);
            let mut frames = Vec::new();
            for (i, m) in self.ms.iter_mut().enumerate() {
                if self.down[i] {
                    continue;
                }
                if now >= m.poll_timeout() {
                    m.handle_timeout(now);
                }
                while let Some(t) = m.poll_transmit() {
                    frames.push((i, t));
                }
            }
            for (from, t) in frames {
                let dests: Vec<usize> = match t.dest {
                    Dest::All => self.ms[from]
                        .view()
                        .members
                        .iter()
                        .map(|m| m.0 as usize)
                        .filter(|&j| j != from)
                        .collect(),
                    Dest::One(x) => vec![x.0 as usize],
                };
                for j in dests {
                    if j < self.ms.len() && !self.down[j] {
                        self.ms[j].handle_frame(now, &t.frame);
                    }
                }
            }
            for (i, m) in self.ms.iter_mut().enumerate() {
                while let Some(d) = m.poll_delivery() {
                    self.out[i].push(d);
                }
            }
        }
        fn run(&mut self, total_us: u64) {
            for _ in 0..total_us / 500 {
                self.step(500);
            }
        }
        fn payloads(&self, i: usize) -> Vec<Vec<u8>> {
            self.out[i]
                .iter()
                .filter_map(|d| match d {
                    Delivered::Message(d) => Some(d.payload.clone()),
                    _ => None,
                })
                .collect()
        }
        fn views(&self, i: usize) -> Vec<ViewChange> {
            self.out[i]
                .iter()
                .filter_map(|d| match d {
                    Delivered::View(v) => Some(v.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn a_crashed_member_is_removed_and_survivors_agree() {
        let mut net = Net::new(3, ProtoConfig::default());
        for k in 0..10u8 {
            net.ms[(k % 3) as usize].submit(vec![k]).unwrap();
        }
        net.run(5_000);
        assert_eq!(net.payloads(0).len(), 10);
        // Member 2 crashes; member 0 submits more, which cannot be stable without member 2.
        net.down[2] = true;
        for k in 10..15u8 {
            net.ms[0].submit(vec![k]).unwrap();
        }
        net.run(100_000);
        for i in 0..2 {
            assert_eq!(net.ms[i].status(), Status::Serving);
            assert_eq!(net.ms[i].view().members, vec![MemberId(0), MemberId(1)]);
            let v = net.views(i);
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].removed, vec![MemberId(2)]);
        }
        // Nothing submitted by a survivor is lost: the 5 late messages are delivered (in the
        // cut or in the new view), in order, identically at both.
        let want: Vec<Vec<u8>> = (0..15u8).map(|k| vec![k]).collect();
        assert_eq!(net.payloads(0), want);
        assert_eq!(net.payloads(1), want);
        assert_eq!(net.ms[0].stats().view_changes, 1);
        // The new view works.
        net.ms[1].submit(b"after".to_vec()).unwrap();
        net.run(5_000);
        assert_eq!(net.payloads(0).last(), Some(&b"after".to_vec()));
    }

    #[test]
    fn the_leader_crashing_during_the_change_is_survived() {
        let mut net = Net::new(5, ProtoConfig::default());
        net.run(2_000);
        net.down[4] = true;
        // Run until the leader (member 0) has started its ballot, then crash it too.
        for _ in 0..200 {
            net.step(500);
            if net.ms[0].ms.leading.is_some() {
                break;
            }
        }
        assert!(net.ms[0].ms.leading.is_some());
        net.down[0] = true;
        net.run(200_000);
        for i in 1..4 {
            assert_eq!(net.ms[i].status(), Status::Serving, "m{i}");
            assert_eq!(
                net.ms[i].view().members,
                vec![MemberId(1), MemberId(2), MemberId(3)]
            );
        }
    }

    #[test]
    fn an_isolated_member_is_a_minority_and_learns_its_exclusion_on_heal() {
        let mut net = Net::new(3, ProtoConfig::default());
        net.run(2_000);
        // Member 0 cannot reach anyone: down for the others, but still running itself.
        let mut isolated = std::mem::replace(&mut net.ms[0], member(3, 0, ProtoConfig::default()));
        net.down[0] = true;
        let mut t = net.now;
        for _ in 0..200 {
            net.step(500);
            t += 500;
            isolated.handle_timeout(Instant(t));
            while isolated.poll_transmit().is_some() {}
        }
        assert_eq!(isolated.status(), Status::Minority);
        assert!(isolated.submit(vec![1]).is_err());
        assert_eq!(net.ms[1].view().members, vec![MemberId(1), MemberId(2)]);
        // Heal: its frames reach the others, which tell it how its view ended.
        net.ms[0] = isolated;
        net.down[0] = false;
        net.run(20_000);
        assert_eq!(net.ms[0].status(), Status::Excluded);
        assert_eq!(net.ms[1].view().members, vec![MemberId(1), MemberId(2)]);
        assert!(net.ms[1].stats().dropped_by(ProtoDrop::WrongView) > 0);
    }

    #[test]
    fn a_joiner_gets_the_state_then_the_messages() {
        let mut net = Net::new(2, ProtoConfig::default());
        net.ms[0].submit(b"before".to_vec()).unwrap();
        net.run(2_000);
        let j = Member::joining(
            ProtoConfig::default(),
            Key::from_bytes([1; 32]),
            GroupId(3),
            MemberId(2),
            vec![MemberId(0), MemberId(1)],
            Instant(net.now),
        )
        .unwrap();
        assert_eq!(j.status(), Status::Joining);
        net.ms.push(j);
        net.down.push(false);
        net.out.push(Vec::new());
        let mut sent = false;
        for _ in 0..100 {
            net.step(500);
            if !sent {
                if let Some(v) = net.views(0).first() {
                    assert_eq!(v.joined, vec![MemberId(2)]);
                    assert_eq!(v.state_from, Some(MemberId(0)));
                    net.ms[0].send_state(MemberId(2), vec![7; 5000]);
                    sent = true;
                }
            }
        }
        assert!(sent);
        net.ms[1].submit(b"after".to_vec()).unwrap();
        net.run(10_000);
        assert_eq!(net.ms[2].status(), Status::Serving);
        let got: Vec<&Delivered> = net.out[2].iter().collect();
        assert!(matches!(got[0], Delivered::View(_)));
        assert!(matches!(got[1], Delivered::State(s) if *s == vec![7; 5000]));
        assert_eq!(net.payloads(2), vec![b"after".to_vec()]);
        assert_eq!(net.payloads(0), vec![b"before".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn a_join_not_admitted_is_refused_and_the_group_unchanged() {
        let cfg = ProtoConfig {
            admission: Admission::Listed([MemberId(0), MemberId(1)].into_iter().collect()),
            ..ProtoConfig::default()
        };
        let mut net = Net::new(2, cfg.clone());
        let j = Member::joining(
            cfg,
            Key::from_bytes([1; 32]),
            GroupId(3),
            MemberId(9),
            vec![MemberId(0), MemberId(1)],
            Instant(0),
        )
        .unwrap();
        net.ms.push(j);
        net.down.push(false);
        net.out.push(Vec::new());
        // Member 9's id is beyond the vector: map it to index 2 by giving it a view of ids.
        net.run(20_000);
        assert_eq!(net.ms[0].view().id, ViewId(1));
        assert_eq!(net.ms[0].status(), Status::Serving);
        assert!(net.ms[0].stats().joins_refused >= 1);
        assert_eq!(net.ms[2].status(), Status::Joining);
    }

    #[test]
    fn an_implausible_decision_is_refused_and_counted() {
        let mut net = Net::new(2, ProtoConfig::default());
        net.run(2_000);
        for d in [
            Decision {
                from: ViewId(1),
                next: View::new(ViewId(2), vec![MemberId(0), MemberId(1)]),
                joiners: vec![],
                cut: u64::MAX,
            },
            Decision {
                from: ViewId(1),
                next: View::new(ViewId(2), vec![MemberId(0), MemberId(0)]),
                joiners: vec![],
                cut: 0,
            },
            Decision {
                from: ViewId(1),
                next: View::new(ViewId(7), vec![MemberId(0)]),
                joiners: vec![],
                cut: 0,
            },
        ] {
            net.ms[1].emit_ctl(Dest::One(MemberId(0)), &Ctl::Commit { decision: d });
        }
        net.run(1_000);
        assert_eq!(net.ms[0].view().id, ViewId(1));
        assert_eq!(net.ms[0].status(), Status::Serving);
        assert_eq!(net.ms[0].stats().bad_control, 3);
    }

    #[test]
    fn a_graceful_leave() {
        let mut net = Net::new(3, ProtoConfig::default());
        net.run(2_000);
        net.ms[2].leave();
        net.run(20_000);
        assert_eq!(net.ms[2].status(), Status::Left);
        assert_eq!(net.ms[0].view().members, vec![MemberId(0), MemberId(1)]);
        assert_eq!(net.ms[0].stats().suspicions, 0);
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
        let got: Vec<Vec<u8>> = msgs(&mut m).into_iter().map(|d| d.payload).collect();
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
            .map(|m| msgs(m).into_iter().map(|d| (d.sender, d.seq.0)).collect())
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
        assert!(msgs(&mut ms[0]).is_empty());
        assert!(msgs(&mut ms[1]).is_empty());
        // The lost copy is retransmitted to member 2 after the timeout; then all deliver.
        ms[0].handle_timeout(Instant(10_000));
        pump(&mut ms, 10_000, 6);
        for m in &mut ms {
            let got: Vec<Vec<u8>> = msgs(m).into_iter().map(|d| d.payload).collect();
            assert_eq!(got, vec![b"x".to_vec()]);
        }
        assert!(ms[0].stats().retransmitted_slots >= 1);
    }
}
#[cfg(test)]
mod hop_tests {
    use super::*;

    /// Without loss, a message from any rank is delivered everywhere within three exchanges
    /// and no timer: nulls pass once a majority holds them, which for three members the
    /// null's sender and its receiver already are.
    #[test]
    fn three_members_deliver_without_timers() {
        let key = Key::from_bytes([1; 32]);
        let view = View::new(ViewId(1), (0..3).map(MemberId).collect());
        let mut ms: Vec<Member> = (0..3)
            .map(|i| {
                Member::new(
                    ProtoConfig::default(),
                    key.clone(),
                    GroupId(3),
                    view.clone(),
                    MemberId(i),
                    Instant(0),
                )
                .unwrap()
            })
            .collect();
        let mut now = 100;
        for round in 0..30u8 {
            let from = (round % 3) as usize;
            ms[from].submit(vec![round]).unwrap();
            let mut got = [false; 3];
            let mut steps = 0;
            while !got.iter().all(|g| *g) {
                assert!(
                    steps < 3,
                    "round {round} from m{from}: more than 3 exchanges"
                );
                now += 10;
                let mut frames = Vec::new();
                for (i, m) in ms.iter_mut().enumerate() {
                    while let Some(t) = m.poll_transmit() {
                        frames.push((i, t));
                    }
                }
                for (src, t) in frames {
                    for (j, m) in ms.iter_mut().enumerate() {
                        let to = match t.dest {
                            Dest::All => j != src,
                            Dest::One(x) => x.0 as usize == j,
                        };
                        if to {
                            m.handle_frame(Instant(now), &t.frame);
                        }
                    }
                }
                for (i, m) in ms.iter_mut().enumerate() {
                    while let Some(d) = m.poll_delivery() {
                        if let Delivered::Message(d) = d {
                            assert_eq!(d.payload, vec![round]);
                            got[i] = true;
                        }
                    }
                }
                steps += 1;
            }
        }
    }
}
