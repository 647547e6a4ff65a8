//! Recovery after a whole-group restart: the members agree on the state a majority's disks
//! hold, and every member goes on from it.
//!
//! A member restarted from its data directory ([`Replica::recover_from`]) starts in the group
//! file's view with the state its log replays to, where its log reached, and submits its claim
//! ([`Replica::claim`], an [`Op::Recovered`]: who it is, the state's epoch and position; the host
//! submits it first) before anything else; it takes no other operation from its host until
//! the group has decided. A joiner admitted before then (a member the view had left out, its
//! host restarting it from its data directory as a joiner) is sent the claims so far instead
//! of a state, and claims from its own log ([`Replica::set_log_state`]).
//!
//! Why a majority of the group file's members suffices: what a durable queue told anyone
//! (an acceptance, the end of a run) was told only once a majority of the group file's members
//! had the step on disk ([`Replica::majority_persisted`] counts those members only), and all
//! logs of one epoch (the restarts a state went through, [`QueueState::epoch`]) are prefixes of
//! that epoch's order, which holds everything told before it. So among the claims of any such
//! majority, the longest log of the latest epoch holds every step anyone was told of: claims
//! compare by epoch, then position (a longer log of an earlier epoch holds steps of a history
//! that a restart left behind).
//!
//! The decision is taken where the order puts it, so every replica takes the same one: at the
//! delivery of the claim that makes the claimants in the view a majority of the group file's
//! members. `P` is the largest (epoch, position) they claim; the members whose own log is at
//! `P` (the holders; all at `P` hold the same state) apply one more step, the restart
//! ([`QueueState::restart`]): the state enters the next epoch, and every consumer's requests
//! go back to their queues (none of the processes that took them lives). Every other member
//! (behind, or ahead with steps no majority held, which no one was told of) applies nothing
//! from then on and takes the state from a holder: the lowest-ranked holder in the view sends
//! its state as of the decision to those whose claim came before it, and as of their claim's
//! delivery to those whose claim comes later. A view change while a member waits for its
//! state, or its sender suspected, stops it ([`Stage::Abandoned`]: its host starts it again as
//! a joiner carrying its log's state).
//!
//! Until it holds the group's state, a member's log is not the group's: its rows say nothing
//! is on disk (0) until its host has taken the state's snapshot (the log starts again from it);
//! views before the decision are not applied to the queue nor logged.

use super::Replica;
use crate::durable::log::RecordKind;
use crate::durable::RestartRecord;
use crate::queue::{Op, QueueState};
use crate::types::{MemberId, View, ViewId};

/// Where a recovering member stands (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Claims are being ordered; nothing is decided.
    Claiming,
    /// Decided, and this member's log is not at the decided position: deliveries are dropped
    /// until its own claim is delivered.
    Behind,
    /// Waiting for the state from a holder.
    Awaiting,
    /// This member holds the group's state and serves.
    Recovered,
    /// Its state could not come (a view change while waiting, or the holder sending it is
    /// suspected): this process stopped, and its host starts it again as a joiner carrying
    /// its log's state ([`Replica::set_log_state`]): the group, if it serves, sends it the
    /// state. (Not as a member of the group file's view: a holder may still run in that view,
    /// and a new process there could be taken for the old one.) If every holder died before
    /// handing the state over, the group waits until they come back (a holder restarted
    /// from its data directory claims again) or until an operator restarts the group.
    Abandoned,
}

/// Where a log stands: claims compare by epoch, then position.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Claim {
    pub epoch: u64,
    pub position: u64,
}

/// What the group decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The latest log among the claims that decided (the restart step comes at its
    /// position, and starts epoch `at.epoch + 1`).
    pub at: Claim,
    /// Members known to hold the decided state (their claim was `at`).
    pub holders: Vec<MemberId>,
}

#[derive(Debug)]
pub(super) struct Recovery {
    /// The group file's members.
    configured: Vec<MemberId>,
    /// The members of the view the deliveries applied so far were in (the member's own view
    /// may be newer: deliveries of the view before can still be waiting to be applied).
    view: Vec<MemberId>,
    /// Where this member's own log reached when it restarted.
    mine: Claim,
    /// Claims delivered, the first of each member, in order.
    claims: Vec<(MemberId, Claim)>,
    stage: Stage,
    decided: Option<Decision>,
    /// The state's snapshot is queued for the host's log: what the host says is on disk
    /// is its old log's until it takes it.
    reset_pending: bool,
    /// The host submitted this member's claim.
    claimed: bool,
    /// The view of the claim's delivery it waits for the state as of: a state transfer does
    /// not outlive a view change (see [`Replica::check_recovery`]).
    awaiting_in: Option<ViewId>,
}

impl Replica {
    /// This replica, just made with [`Replica::new`] in the group file's view, is a member
    /// restarted from its data directory after the whole group went down, whose log replays
    /// to `state` (see the module docs). The host then switches durable logging on
    /// ([`Replica::set_durable`], after this: its first snapshot is of `state`), and submits
    /// [`Replica::claim`] first.
    pub fn recover_from(&mut self, state: QueueState) {
        debug_assert!(
            self.durable.is_none(),
            "recover_from comes before set_durable (the log would start from the empty state)"
        );
        let members = self.member.view().members.clone();
        let mine = claim_of(&state);
        self.queue = state;
        self.recovery = Some(Box::new(Recovery {
            configured: members.clone(),
            view: members,
            mine,
            claims: Vec::new(),
            stage: Stage::Claiming,
            decided: None,
            reset_pending: false,
            claimed: false,
            awaiting_in: None,
        }));
    }

    /// The claim a recovering replica's host is to submit before anything else (the only
    /// operation taken before the decision): who this member is and where its log reached.
    /// `None` once submitted, or when there is none to make: at the start of a recovering
    /// replica, and after the state step of a joiner admitted before the decision.
    pub fn claim(&self) -> Option<Op> {
        let r = self.recovery.as_ref()?;
        (!r.claimed && r.stage != Stage::Recovered).then_some(Op::Recovered {
            member: self.member.id(),
            epoch: r.mine.epoch,
            position: r.mine.position,
        })
    }

    /// Whether `op` (encoded) may be submitted now: anything once recovered, only this
    /// member's claim before (noted as made).
    pub(super) fn may_submit(&mut self, op: &[u8]) -> bool {
        if self.log_state.is_some() {
            // A joiner from its data directory before its state: it may have to claim, and
            // what it submitted before would be dropped by a group still claiming.
            return false;
        }
        if self.recovered() {
            return true;
        }
        let me = self.member.id();
        let claim = matches!(Op::decode(op), Ok(Op::Recovered { member, .. }) if member == me);
        if let (true, Some(r)) = (claim, self.recovery.as_mut()) {
            r.claimed = true;
        }
        claim
    }

    /// Where the recovery stands (`None`: this replica did not restart from a log).
    pub fn recovery(&self) -> Option<(Stage, Option<&Decision>)> {
        self.recovery
            .as_ref()
            .map(|r| (r.stage, r.decided.as_ref()))
    }

    /// Whether this replica takes operations and applies deliveries (not before it holds
    /// the group's state after a restart).
    pub(super) fn recovered(&self) -> bool {
        self.recovery
            .as_ref()
            .is_none_or(|r| r.stage == Stage::Recovered)
    }

    /// Whether what the host says is on disk is the group's log (see the module docs).
    pub(super) fn own_log_counts(&self) -> bool {
        // (A joiner carrying its log's state: that log is not the group's either.)
        self.log_state.is_none()
            && self
                .recovery
                .as_ref()
                .is_none_or(|r| r.stage == Stage::Recovered && !r.reset_pending)
    }

    /// The host took the state's snapshot: its log is the group's from now on.
    pub(super) fn reset_taken(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            r.reset_pending = false;
        }
    }

    /// The state arrived (it was applied by `on_state`).
    pub(super) fn recovery_state_arrived(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            if r.stage == Stage::Awaiting {
                r.stage = Stage::Recovered;
                r.reset_pending = true;
            }
        }
    }

    /// A view installed before this member holds the group's state: claims of members that
    /// left it no longer count; one waiting for its state stops. Returns whether the view is
    /// to be applied to the queue (only once recovered).
    pub(super) fn recovery_view(&mut self, view: &View) -> bool {
        let Some(r) = self.recovery.as_mut() else {
            return true;
        };
        r.view = view.members.clone();
        match r.stage {
            Stage::Recovered => true,
            Stage::Claiming => {
                r.claims.retain(|(m, _)| view.members.contains(m));
                false
            }
            Stage::Behind | Stage::Abandoned => false,
            Stage::Awaiting => {
                self.abandon();
                false
            }
        }
    }

    /// Waiting for the state while the holder that sends it is suspected (no view can form
    /// without it if every other member waits too: a view needs a member with the state), or
    /// once the member's view changed (a state transfer ends with its view; the view change
    /// itself may be among the deliveries that wait for the state): this process gives up
    /// (see [`Stage::Abandoned`]).
    pub(super) fn check_recovery(&mut self) {
        let Some(r) = self.recovery.as_ref() else {
            return;
        };
        if r.stage != Stage::Awaiting {
            return;
        }
        let from = r.decided.as_ref().and_then(|d| sender(d, &r.view));
        let moved = r.awaiting_in != Some(self.member.view().id);
        if moved || from.is_none_or(|s| self.member.suspects().contains(&s)) {
            self.abandon();
        }
    }

    fn abandon(&mut self) {
        if let Some(r) = self.recovery.as_mut() {
            r.stage = Stage::Abandoned;
        }
        self.stats.recoveries_abandoned += 1;
        self.member.refuse_state();
    }

    /// A claim delivered (see the module docs).
    pub(super) fn on_claim(&mut self, member: MemberId, claim: Claim, in_view: ViewId) {
        let me = self.member.id();
        let Some(r) = self.recovery.as_mut() else {
            // A replica that joined after the decision: holders serve late claims.
            return;
        };
        let view = r.view.clone();
        if r.claims.iter().any(|(m, _)| *m == member) {
            return;
        }
        r.claims.push((member, claim));
        match r.stage {
            Stage::Claiming => {
                let counted = r
                    .claims
                    .iter()
                    .filter(|(m, _)| r.configured.contains(m) && view.contains(m))
                    .count();
                if counted > r.configured.len() / 2 {
                    self.decide(in_view);
                }
            }
            Stage::Behind if member == me => self.await_state(in_view),
            Stage::Recovered => {
                let Some(d) = r.decided.as_mut() else { return };
                if claim == d.at {
                    d.holders.push(member);
                } else if sender(d, &view) == Some(me) {
                    self.send_recovery_state(&[member], in_view);
                }
            }
            Stage::Behind | Stage::Awaiting | Stage::Abandoned => {}
        }
    }

    fn decide(&mut self, in_view: ViewId) {
        let me = self.member.id();
        let Some(r) = self.recovery.as_mut() else {
            return;
        };
        let view = r.view.clone();
        let Some(at) = r.claims.iter().map(|(_, c)| *c).max() else {
            return;
        };
        let decision = Decision {
            at,
            holders: r
                .claims
                .iter()
                .filter(|(_, c)| *c == at)
                .map(|(m, _)| *m)
                .collect(),
        };
        let behind: Vec<MemberId> = r
            .claims
            .iter()
            .filter(|(m, c)| *c != at && view.contains(m))
            .map(|(m, _)| *m)
            .collect();
        let claimed = r.claims.iter().any(|(m, _)| *m == me);
        let sends = sender(&decision, &view) == Some(me);
        r.decided = Some(decision);
        if r.mine != at {
            r.stage = Stage::Behind;
            if claimed {
                self.await_state(in_view);
            }
            return;
        }
        r.stage = Stage::Recovered;
        // The restart: a new epoch, and no process that took a request lives.
        let position = self.queue.applied();
        let removed = self.queue.consumers();
        let epoch = at.epoch + 1;
        self.queue.restart(epoch, &removed, &mut self.scratch);
        self.persist_step(
            position,
            RecordKind::Restart,
            RestartRecord { epoch, removed }.encode(),
            false,
            false,
        );
        self.stats.requeued += self
            .scratch
            .iter()
            .filter(|e| matches!(e, crate::queue::Effect::Requeued { .. }))
            .count() as u64;
        self.tell_rejoining();
        let view_id = self.member.view().id;
        self.rebuild_ahead(view_id, 0, true);
        // The group's pipelines are those of the state it goes on from.
        if let Some((version, docs)) = self.queue.pipeline_docs() {
            self.scratch.push(crate::queue::Effect::Pipelines {
                version,
                docs: docs.to_vec(),
            });
        }
        if sends {
            self.send_recovery_state(&behind, in_view);
        }
    }

    /// Waits for the state as of the claim delivered in `view`.
    fn await_state(&mut self, view: ViewId) {
        if let Some(r) = self.recovery.as_mut() {
            r.stage = Stage::Awaiting;
            r.awaiting_in = Some(view);
        }
        self.member.reset_persisted(0);
        self.member.expect_state();
    }

    /// Sends the state as of the claim delivered in `view` (a member already in a later view
    /// sends nothing: the transfer would not outlive the change, and the receiver gives up).
    fn send_recovery_state(&mut self, to: &[MemberId], view: ViewId) {
        if to.is_empty() || self.member.view().id != view {
            return;
        }
        let snap = self.queue.snapshot();
        for m in to {
            self.member.send_state(*m, snap.clone());
            self.stats.states_sent += 1;
        }
    }
}

/// What a joiner admitted before the decision is sent in place of a state: the claims so
/// far, after this marker. It recovers from its own log then, as a member restarted in the
/// view would (see [`Replica::set_log_state`]).
const CLAIMS: &[u8; 8] = b"CVYCLAIM";

/// The claims a joiner was sent, if `bytes` are claims and not a state.
pub(super) fn claims_in(bytes: &[u8]) -> Option<Vec<(MemberId, Claim)>> {
    postcard::from_bytes(bytes.strip_prefix(CLAIMS)?).ok()
}

impl Replica {
    /// For a joiner (its host restarted it from its data directory): the state its log
    /// replays to. Admitted while a restarted group has not decided yet, it claims with it
    /// (see the module docs); otherwise it takes the group's state as any joiner.
    pub fn set_log_state(&mut self, state: QueueState) {
        self.log_state = Some(state);
    }

    /// Sends joiners admitted before the decision the claims so far (once decided, a member
    /// without the group's state sends nothing: the joiner is left out and joins again).
    pub(super) fn send_claims(&mut self, joined: &[MemberId]) {
        let Some(r) = self
            .recovery
            .as_ref()
            .filter(|r| r.stage == Stage::Claiming)
        else {
            return;
        };
        let mut bytes = CLAIMS.to_vec();
        bytes.extend(postcard::to_allocvec(&r.claims).unwrap_or_default());
        for j in joined {
            self.member.send_state(*j, bytes.clone());
            self.stats.states_sent += 1;
        }
    }

    /// A joiner sent the claims: it recovers from its own log, with the claims so far, and
    /// claims in turn (its host submits [`Replica::claim`] on seeing the state step).
    pub(super) fn claim_as_joiner(&mut self, claims: Vec<(MemberId, Claim)>) -> bool {
        // The same process coming back while the group still claims: its incarnation
        // before was claiming too (once decided, joiners are sent states), so it applied
        // nothing of the group's and pushed nothing; what its host left unanswered before the
        // restart (`Replica::set_rejoining`) is settled once it holds the group's state.
        let state = match self.log_state.take() {
            Some(s) => {
                self.discard_unpersisted();
                s
            }
            None => QueueState::default(),
        };
        let configured = self.durable_configured();
        let mine = claim_of(&state);
        self.queue = state;
        // Its log goes on from its own state (the group's, if it holds the decided one).
        self.persist_state();
        let view = self.member.view().members.clone();
        self.recovery = Some(Box::new(Recovery {
            configured,
            view,
            mine,
            claims,
            stage: Stage::Claiming,
            decided: None,
            reset_pending: false,
            claimed: false,
            awaiting_in: None,
        }));
        true
    }
}

/// Where the log a state was replayed from stands.
fn claim_of(state: &QueueState) -> Claim {
    Claim {
        epoch: state.epoch(),
        position: state.applied(),
    }
}

/// The holder that sends the state: the lowest-ranked one in the view.
fn sender(d: &Decision, view: &[MemberId]) -> Option<MemberId> {
    view.iter().find(|m| d.holders.contains(m)).copied()
}
