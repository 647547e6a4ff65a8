//! Membership: failure detection, the view change (agreement on the next view and its cut, the
//! ragged-edge cleanup), joins, leaves and state transfer. The messages and outcomes are here;
//! the logic is in [`change`] (the view change) and [`state_transfer`] (a joiner's state).
//!
//! # Protocol
//!
//! *Failure detection.* Every member hears from every other at least every `heartbeat` (status
//! rows are repeated while idle). A member not heard from for `failure_timeout` is suspected.
//! Suspicions are monotonic inside a view and spread to the others (`Suspect` messages); a
//! member ignores what a member it suspects tells it, so a healed minority cannot make the
//! majority suspect itself.
//!
//! *Wedging.* A member that suspects anyone, or is asked by a leader, *wedges*: it stops
//! delivering, stops sending new messages (it still accepts submissions, held for the next
//! view) and freezes the counts it reports: from then on its status rows and its reports carry
//! the `received` counts and the delivered slot count it had when it wedged. A frozen row is
//! what makes the cut safe: nobody can see a message as stable beyond what the wedged members
//! reported.
//!
//! *Agreement* is single-decree Paxos on the next view and its cut, one instance per view,
//! led by the lowest-ranked member not suspected (leader failure is a suspicion like any
//! other: the next one takes over with a higher ballot):
//! 1. `Propose(ballot, members)`: the leader asks every member it does not suspect;
//! 2. `Promise(ballot, received, delivered, accepted)`: each wedges and answers with its frozen
//!    counts and the highest-ballot decision it accepted, if any; it refuses lower ballots
//!    from then on;
//! 3. with promises from every proposed member (a majority of the view, or the leader declares
//!    the minority and stops), the leader adopts the decision of the highest ballot among the
//!    promises, if any, or makes a new one: next view = proposed members (+ admitted joiners),
//!    cut = `max(C_min, C_del)`, where `C_min` is the longest round-robin prefix every proposed
//!    member holds and `C_del` the most slots any of them delivered;
//! 4. `Accept(ballot, decision)` / `Accepted(ballot)`; once a majority of the view accepted,
//!    the decision is chosen: `Commit(decision)` to everyone, joiners included.
//!
//! *Ragged-edge cleanup.* On `Commit`, a member delivers the old view's slots up to the cut and
//! installs the new view. Slots below `C_min` are held by every survivor. A slot in
//! `[C_min, C_del)` that a survivor lacks is a null: a member delivered it, so if it had carried
//! a message that message was stable, hence in the survivor's frozen row. So survivors deliver
//! exactly the same messages of the old view; a crashed member delivered a prefix of them.
//! Own messages submitted but not delivered by the cut are submitted again in the new view, in
//! order, so nothing a surviving member submitted is lost.
//!
//! *Stale and excluded members.* Frames of an older view are dropped and counted; their sender
//! is sent the decision that ended its view, so a member excluded while partitioned learns it
//! on heal and stops ([`Status::Excluded`]); it may come back only as a new joiner.
//!
//! *Joins.* A joiner sends `Join(nonce)` to the members it knows, with a nonce of its own
//! process; the leader includes admitted joiners in the next view, and the decision names each
//! with its nonce, so that only that process installs it (a later process with the same id, a
//! restart, is a new joiner, and its arrival removes the one that joined before it; a late
//! `Join` of a process already in the view changes nothing). The first member of the new view that was in the old one sends the joiner
//! the application's state at the cut (`State` chunks, acknowledged); the joiner delivers that
//! snapshot before any message of its first view.

mod ballot;
pub(crate) mod change;
mod install;
pub(crate) mod state_transfer;

use crate::types::{Instant, MemberId, View, ViewId};
use core::time::Duration;
use serde::{Deserialize, Serialize};

/// A Paxos ballot; higher wins. Unique: two leaders never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u32,
    pub leader: MemberId,
}

/// The outcome of a view change: the next view and how much of the old one is delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The view this decision ends.
    pub from: ViewId,
    pub next: View,
    /// Members of `next` that join with it: new ones, and new incarnations of old ones (whose
    /// old incarnation is removed).
    pub joiners: Vec<MemberId>,
    /// Global slots of the old view delivered by every member of `next` that was in it.
    pub cut: u64,
    /// The join nonce of every member of `next` that came in by a join (its `joiners`, and
    /// earlier joiners still in the view), by member id: which process each id stands for. A
    /// joiner installs only a decision that names it with its own nonce.
    pub nonces: Vec<(MemberId, u64)>,
    /// The process (incarnation) each member of `next` stands for: for a member that stays,
    /// the one the promisers agreed on (a member they disagree on is left out of `next`); for
    /// a joiner, its join nonce. Another process with that id (restarted from the group file
    /// into the old view, or the old process of a joiner's id) does not install the decision
    /// as a survivor, with none of the state its previous self had.
    pub incarnations: Vec<(MemberId, u64)>,
}

impl Decision {
    /// The process the decision takes member `m` (staying from the old view) for, if known.
    pub fn incarnation_of(&self, m: MemberId) -> Option<u64> {
        self.incarnations
            .iter()
            .find(|(x, _)| *x == m)
            .map(|(_, n)| *n)
    }

    /// The join nonce the decision gives member `m`, if it came in by a join.
    pub fn nonce_of(&self, m: MemberId) -> Option<u64> {
        self.nonces.iter().find(|(x, _)| *x == m).map(|(_, n)| *n)
    }
}

/// A control message, the payload of a `Control` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Ctl {
    Suspect {
        suspects: Vec<MemberId>,
        /// The sender is in a minority (its suspicions are not to be taken up).
        minority: bool,
    },
    Propose {
        ballot: Ballot,
        /// The acceptors: every member the leader does not suspect.
        members: Vec<MemberId>,
        /// Acceptors that leave: not in the next view.
        leaving: Vec<MemberId>,
        joiners: Vec<MemberId>,
    },
    Promise {
        ballot: Ballot,
        received: Vec<u64>,
        delivered: u64,
        accepted: Option<(Ballot, Decision)>,
        /// Per sender: runs `[start, end)` of nulls held and not delivered.
        nulls: Vec<Vec<(u64, u64)>>,
        /// Per rank: the process the promiser takes for it (whose messages `received`
        /// counts; 0: none heard).
        pinned: Vec<u64>,
        /// The promiser is a joiner still waiting for its state: it cannot serve in the next
        /// view, and the leader leaves it out (it joins again, anew).
        awaiting_state: bool,
    },
    Accept {
        ballot: Ballot,
        decision: Decision,
    },
    Accepted {
        ballot: Ballot,
    },
    /// A ballot was refused: the acceptor had promised a higher one.
    Reject {
        promised: Ballot,
    },
    Commit {
        decision: Decision,
        /// The process this copy is for, as the sender knows it (0: unknown). A decision that
        /// does not keep its receiver (or ends a later view than the receiver's) is believed
        /// only with the receiver's own process here: a commit of an earlier run of the group
        /// (same key, same view numbers) cannot name a process drawn after it was sent.
        to: u64,
    },
    /// From a process outside the view that wants in. `nonce`: chosen by the process (at
    /// random, by its host) when it starts to join; tells its requests from those of an
    /// earlier or later process with the same id.
    Join {
        nonce: u64,
        /// The process of the member this copy is sent to, as the joiner heard it (0: not yet):
        /// a request of an earlier run of the group, replayed, cannot name it. A member asks
        /// for it with a [`Ctl::Challenge`].
        echo: u64,
    },
    /// To a process asking to join without naming this member's process: the frame's header
    /// names it (see [`Ctl::Join::echo`]).
    Challenge,
    /// A member asks to be removed (graceful leave).
    Leave,
    /// To a process whose frames are refused: another process holds its id's place in this
    /// view, and it is process `you` (which a replayed frame of an earlier run cannot name).
    /// It restarted into a view its previous self ran in.
    Replaced {
        you: u64,
    },
    /// A chunk of the application state for a joiner, as of the install of view `view`.
    State {
        view: ViewId,
        offset: u32,
        total: u32,
        chunk: Vec<u8>,
    },
    /// The joiner holds the first `have` bytes of the state of view `view`.
    StateAck {
        view: ViewId,
        have: u32,
    },
    /// Piece `index` of `count` of control message `msg` of the sender, which one frame could
    /// not carry (a promise listing many null runs, a decision for a large group); see
    /// `proto::fragment`.
    Fragment {
        msg: u32,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
    },
}

impl Ctl {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    pub(crate) fn decode(b: &[u8]) -> Option<Ctl> {
        postcard::from_bytes(b).ok()
    }
}

/// Where a member stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// In a view, delivering.
    Serving,
    /// A view change is under way: wedged, not delivering.
    Changing,
    /// Waiting to be admitted into a view (a joiner), or for its state transfer.
    Joining,
    /// Fewer than a majority of the view is reachable: this member stopped serving and waits.
    /// It cannot serve again in this view; it learns of the majority's next view on heal and
    /// then becomes [`Status::Excluded`] (or, if the majority kept it, goes on).
    Minority,
    /// A view change removed this member (suspected, partitioned, or too slow). It may come
    /// back only as a new joiner, with a new process state.
    Excluded,
    /// Removed at its own request.
    Left,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Serving => "serving",
            Status::Changing => "changing",
            Status::Joining => "joining",
            Status::Minority => "minority",
            Status::Excluded => "excluded",
            Status::Left => "left",
        }
    }
    /// Whether this member will never serve again (the host should stop it or rejoin anew).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Excluded | Status::Left)
    }
}

/// Why a member stopped for good ([`Status::is_final`]): hosts log it, and the simulator tells
/// a member the group removed (or that left) from one that stopped itself while the group's
/// decision still kept it, which costs the group a member it counts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A view change removed this process (suspected, partitioned, too slow, or replaced by a
    /// new incarnation of its id).
    Removed,
    /// Removed at its own request.
    Left,
    /// Kept by a view change while its state transfer had not arrived: it cannot catch up.
    StateNotArrived,
    /// Kept by the group, which moved on by more than one view without it.
    MissedViews,
    /// Its host refused the state it was sent (it did not decode).
    StateRefused,
}

impl StopReason {
    pub fn label(self) -> &'static str {
        match self {
            StopReason::Removed => "removed by a view change",
            StopReason::Left => "left",
            StopReason::StateNotArrived => "kept by a view change before its state arrived",
            StopReason::MissedViews => "the group moved on by more than one view without it",
            StopReason::StateRefused => "the state it was sent did not decode",
        }
    }
    /// Whether the group's decision still counted on this member when it stopped (it stopped
    /// itself, not removed by the group nor at its own request).
    pub fn kept_by_group(self) -> bool {
        matches!(
            self,
            StopReason::StateNotArrived | StopReason::MissedViews | StopReason::StateRefused
        )
    }
}

/// A new view installed, as delivered in the total order: every message of the old view that
/// survivors deliver comes before it, every message of the new view after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewChange {
    pub previous: View,
    pub view: View,
    pub removed: Vec<MemberId>,
    /// Of `removed`, those that asked to leave (as far as this member heard; the others
    /// were suspected, or rejoined as new processes).
    pub left: Vec<MemberId>,
    pub joined: Vec<MemberId>,
    /// Old-view slots delivered in total (the cut).
    pub cut: u64,
    /// Slots below the cut this member did not hold and passed as nulls (see module docs).
    pub inferred_nulls: u64,
    /// Own messages submitted again in the new view.
    pub resubmitted: u64,
    /// From this member wedging (first suspicion or proposal) to the new view installed.
    pub wedged_for: Duration,
    /// When this member first suspected a member that the change removed (if it did).
    pub suspected_at: Option<Instant>,
    /// The member that sends joiners the state (the first member of `view` that was in
    /// `previous`); `None` without joiners.
    pub state_from: Option<MemberId>,
}
