//! What a [`Member`](super::Member) gives its host: frames to send, deliveries in the agreed
//! order, errors of `submit`, and its counters.

use super::membership::ViewChange;
use crate::types::{MemberId, Seq, ViewId};
use crate::wire::WireError;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("send window full: wait for deliveries")]
    WindowFull,
    #[error("this member is not serving ({0})")]
    NotServing(&'static str),
    /// A push into a durable queue whose policy is `reject`, refused while the disks do not
    /// take the log; `effect` is what to tell its pusher (an [`crate::queue::Effect::Rejected`]).
    #[error("the disks do not take the log of queue {queue:?}: the push is refused (the queue's policy is reject)")]
    DisksFull {
        queue: String,
        effect: Box<crate::queue::Effect>,
    },
}

/// Why the protocol dropped an authenticated, well-formed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoDrop {
    WrongGroup,
    WrongView,
    UnknownSender,
    OwnFrame,
    RowSize,
    /// From another process than the one this member heard first with that id in this view
    /// (a restart from the group file into a view its previous self ran in).
    OtherIncarnation,
    /// From a process not yet taken for its id in this view, whose frame does not show that
    /// it heard this process: possibly a replay of an earlier run of the group (see
    /// `proto::order`). Counted while the members of a first view find each other.
    Unconfirmed,
}

impl ProtoDrop {
    pub const ALL: [ProtoDrop; 7] = [
        ProtoDrop::WrongGroup,
        ProtoDrop::WrongView,
        ProtoDrop::UnknownSender,
        ProtoDrop::OwnFrame,
        ProtoDrop::RowSize,
        ProtoDrop::OtherIncarnation,
        ProtoDrop::Unconfirmed,
    ];
    pub fn label(self) -> &'static str {
        match self {
            ProtoDrop::WrongGroup => "wrong_group",
            ProtoDrop::WrongView => "wrong_view",
            ProtoDrop::UnknownSender => "unknown_sender",
            ProtoDrop::OwnFrame => "own_frame",
            ProtoDrop::RowSize => "row_size",
            ProtoDrop::OtherIncarnation => "other_incarnation",
            ProtoDrop::Unconfirmed => "unconfirmed",
        }
    }
    pub fn index(self) -> usize {
        ProtoDrop::ALL.iter().position(|&x| x == self).unwrap_or(0)
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
    /// Ballots whose promises reported two different accepted decisions (earlier leaders cut
    /// off mid-change): the one of the highest ballot was adopted.
    pub conflicting_accepts: u64,
    /// Ballots that found no member with the state for the next view (only joiners still
    /// waiting for theirs) and decided nothing.
    pub undecided_without_state: u64,
    /// Decisions that kept leaving members in the next view: no other member had the state.
    pub leaves_postponed: u64,
    /// Control messages sent in fragments (larger than a frame).
    pub fragmented_control: u64,
    /// Control messages not sent: even in fragments too large (a configuration error; see
    /// `proto::fragment::MAX_MESSAGE`).
    pub oversized_control: u64,
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
        self.dropped_proto[d.index()]
    }
    pub(crate) fn drop_frame(&mut self, d: ProtoDrop) {
        self.dropped_proto[d.index()] += 1;
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

/// What [`Member::poll_delivery`](super::Member::poll_delivery) yields, in the agreed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    Message(Delivery),
    /// A new view, after every message of the old one.
    View(ViewChange),
    /// A joiner's initial application state (sent by an old member), before any message of its
    /// first view.
    State(Vec<u8>),
}
