//! [`Replica`]: one member of the group as production runs it, the one node every host drives.
//!
//! A replica is the protocol [`Member`] plus the replicated queue ([`QueueState`]) it applies
//! the agreed order to: operations are applied in delivery order; at a view change the removed
//! members' requests go back to their queues (after the view is reported); a member named to
//! send a joiner its state sends the queue's snapshot as of the install; a joiner replaces its
//! queue with the state it receives and reports the pipelines that state carries. The engine
//! and the simulator both drive this type, so the simulator checks exactly what runs.
//!
//! Sans-IO, like the member: the host calls, repeatedly,
//! 1. [`Replica::handle_frame`] for every frame received, [`Replica::submit`] (or
//!    [`Replica::submit_encoded`]) for every operation to order;
//! 2. [`Replica::handle_timeout`] once the instant given by [`Replica::poll_timeout`] passed;
//! 3. [`Replica::poll_effect`] until `None`: the effects of the applied operations, in order
//!    (each replica computes every member's effects; [`Effect::concerns`] says which are for
//!    this member's application). A host that also wants to see what was delivered (the
//!    simulator's checkers) calls [`Replica::poll_applied`] instead: one delivery at a time,
//!    with its effects. Use one or the other.
//! 4. [`Replica::poll_transmit`] until `None`: frames to send; then [`Replica::recycle`].
//!
//! Speculation (this member's own assignments run ahead of the delivered order, from
//! [`Replica::set_speculation`]) is described and built in `replica/ahead.rs`.

use crate::durable::log::RecordKind;
use crate::durable::ViewRecord;
use crate::proto::{
    Admission, ConfigError, Delivered, Delivery, Member, ProtoConfig, Status, SubmitError,
    Transmit, ViewChange,
};
use crate::queue::{Effect, Op, QueueState};
use crate::types::{GroupId, Instant, MemberId, RequestId, Seq, View};
use crate::wire::Key;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod ahead;
mod durable;
mod recovery;
#[cfg(test)]
mod tests;

use ahead::Ahead;
use durable::Durable;
pub use durable::Persist;
use recovery::Recovery;
pub use recovery::{Claim, Decision, Stage as RecoveryStage};

/// Counters of the replica's own work (the member keeps the protocol's).
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    /// Deliveries applied (messages, views and states).
    pub applied: u64,
    /// Delivered messages that are not an operation (counted, skipped).
    pub malformed_ops: u64,
    /// Requests put back in their queue because their consumer was removed.
    pub requeued: u64,
    /// States received on joining that did not decode (the process then stops as excluded:
    /// see [`Member::refuse_state`]).
    pub bad_states: u64,
    /// Snapshots sent to joiners.
    pub states_sent: u64,
    /// Own assignments speculated, then confirmed or discarded by the delivered order (see
    /// `replica/ahead.rs`).
    pub speculated: u64,
    pub confirmed: u64,
    pub discarded: u64,
    /// Deliveries that did not match what the copy ahead had applied (the copy was rebuilt).
    pub speculation_resets: u64,
    /// Operations delivered before this replica held the group's state after a whole-group
    /// restart (dropped: the state it takes covers them; see `replica/recovery.rs`).
    pub dropped_recovering: u64,
    /// Recoveries given up while waiting for the group's state after a restart (a view
    /// change, or the holder sending it suspected): the process stopped, and its host starts
    /// it again as a joiner carrying its log's state.
    pub recoveries_abandoned: u64,
}

/// One delivery applied, with its effects (see [`Replica::poll_applied`]).
#[derive(Clone, Debug)]
pub enum Applied {
    /// An ordered message; `malformed`: it did not decode as an operation (no effect).
    Message {
        delivery: Delivery,
        malformed: bool,
        effects: Vec<Effect>,
    },
    /// A view installed: [`Effect::ViewInstalled`], then the requests put back.
    View {
        change: ViewChange,
        effects: Vec<Effect>,
    },
    /// A joiner's state arrived (`ok`: it decoded and replaced the queue).
    State { ok: bool, effects: Vec<Effect> },
    /// Not a delivery: speculation ran ahead of the delivered order (`replica/ahead.rs`) and
    /// assigned these requests to this member ([`Effect::Speculated`]).
    Speculated { effects: Vec<Effect> },
    /// Not a delivery: a majority of the members now has on disk the steps these effects
    /// waited for (durable queues, `replica/durable.rs`), each with the position the disks
    /// had to reach. They were also among the effects of their step, where the host that
    /// sees every step ([`Replica::poll_applied`]) saw them first.
    Persisted { effects: Vec<(u64, Effect)> },
}

/// What one delivery was, once applied.
enum Step {
    Message(Delivery, bool),
    View(ViewChange),
    State(bool),
}

/// The protocol member and the queue replica it feeds. See the module docs.
#[derive(Debug)]
pub struct Replica {
    member: Member,
    queue: QueueState,
    effects: VecDeque<Effect>,
    scratch: Vec<Effect>,
    stats: ReplicaStats,
    ahead: Option<Box<Ahead>>,
    /// A joiner that is a removed member coming back: the operations its previous incarnation
    /// applied, and the pushes it left unanswered (see [`Replica::set_rejoining`]).
    rejoining: Option<(u64, BTreeMap<RequestId, Vec<u8>>)>,
    /// Each push this replica (or, after a rejoin, the incarnation before it) submitted,
    /// encoded, until the first outcome of its run is applied here.
    unanswered: BTreeMap<RequestId, Vec<u8>>,
    /// Pushes of the incarnation before that never reached the order, to submit again as the
    /// window allows.
    resubmit: VecDeque<Vec<u8>>,
    /// Durable logging, when on (see `replica/durable.rs`).
    durable: Option<Box<Durable>>,
    /// A whole-group restart's recovery, for a replica restarted from its log (see
    /// `replica/recovery.rs`).
    recovery: Option<Box<Recovery>>,
    /// A joiner's own log's state (see [`Replica::set_log_state`]).
    log_state: Option<QueueState>,
}

impl Replica {
    /// A member of `view` (the configured first view), with an empty queue. `incarnation`
    /// stands for this process (see [`Member::new`]).
    pub fn new(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        view: View,
        me: MemberId,
        incarnation: u64,
        now: Instant,
    ) -> Result<Replica, ConfigError> {
        Ok(Replica::from_member(Member::new(
            cfg,
            key,
            group,
            view,
            me,
            incarnation,
            now,
        )?))
    }

    /// A process asking to join through `contacts`; its queue comes by state transfer. `nonce`
    /// stands for this process (see [`Member::joining`]).
    pub fn joining(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        me: MemberId,
        contacts: Vec<MemberId>,
        nonce: u64,
        now: Instant,
    ) -> Result<Replica, ConfigError> {
        Ok(Replica::from_member(Member::joining(
            cfg, key, group, me, contacts, nonce, now,
        )?))
    }

    fn from_member(member: Member) -> Replica {
        Replica {
            member,
            queue: QueueState::new(),
            effects: VecDeque::new(),
            scratch: Vec::new(),
            stats: ReplicaStats::default(),
            ahead: None,
            rejoining: None,
            unanswered: BTreeMap::new(),
            resubmit: VecDeque::new(),
            durable: None,
            recovery: None,
            log_state: None,
        }
    }

    /// For a joiner that is a member removed by a view change coming back in the same host
    /// process: its previous incarnation's replica had applied `applied` operations
    /// ([`QueueState::applied`]) and left `unanswered` pushes ([`Replica::take_unanswered`]).
    /// When its state arrives, it is told the outcomes of its requests applied after those,
    /// submits again the unanswered pushes the group does not hold (they never reached the
    /// order), and tells [`Effect::Rejoined`] (see `queue::outcomes`).
    pub fn set_rejoining(&mut self, applied: u64, unanswered: BTreeMap<RequestId, Vec<u8>>) {
        self.rejoining = Some((applied, unanswered));
    }

    /// A host that restarted (its process killed, the group perhaps restarted too) and kept
    /// a record of what it heard: it had been told every end of its runs up to position
    /// `since` ([`Replica::told_through`]) and still waits for `unanswered` (its pushes,
    /// encoded). It is told the ends after `since`, its pushes the group does not hold go
    /// again, and [`Effect::Rejoined`] follows, as for [`Replica::set_rejoining`]: now if this
    /// replica holds the group's state, else once it does.
    pub fn resume(&mut self, since: u64, unanswered: BTreeMap<RequestId, Vec<u8>>) {
        let (since, mut before) = match self.rejoining.take() {
            Some((s, b)) => (s.min(since), b),
            None => (since, BTreeMap::new()),
        };
        before.extend(unanswered);
        let now = self.told_through().is_some();
        self.rejoining = Some((since, before));
        if now {
            self.tell_rejoining();
            self.effects.extend(self.scratch.drain(..));
        }
    }

    /// The pushes submitted here whose run has not told an outcome here yet (encoded), for
    /// the next incarnation ([`Replica::set_rejoining`]).
    pub fn take_unanswered(&mut self) -> BTreeMap<RequestId, Vec<u8>> {
        let mut all = std::mem::take(&mut self.unanswered);
        if let Some((_, before)) = self.rejoining.take() {
            all.extend(before);
        }
        all
    }

    /// How far this process was told the ends of its runs, for [`Replica::set_rejoining`]: the
    /// operations its queue applied, less those whose ends still wait for the disks (durable
    /// queues: a process removed before they were released is told them again by its next
    /// incarnation, not never), or, while it is a joiner coming back whose state has not
    /// arrived, the incarnation before's.
    pub fn applied(&self) -> u64 {
        match &self.rejoining {
            Some((since, _)) => *since,
            None => {
                let applied = self.queue.applied();
                match self.durable.as_ref().and_then(|d| d.first_held()) {
                    Some(held) => applied.min(held.saturating_sub(1)),
                    None => applied,
                }
            }
        }
    }

    /// How far this replica has told its host the ends of its runs: every one applied at a
    /// position up to this (see `queue::outcomes`) was among the effects [`Replica::poll_effect`]
    /// returned, once it returned `None`; `None` while the replica does not hold the group's
    /// state, or has not told what a process coming back missed. A host that records it with
    /// what it heard can, restarted, be told the rest ([`Replica::set_rejoining`]).
    pub fn told_through(&self) -> Option<u64> {
        if self.rejoining.is_some() || !self.recovered() || self.log_state.is_some() {
            return None;
        }
        if !matches!(self.member.status(), Status::Serving | Status::Changing) {
            return None;
        }
        let applied = self.queue.applied();
        Some(match self.durable.as_ref().and_then(|d| d.first_held()) {
            Some(p) => applied.min(p.saturating_sub(1)),
            None => applied,
        })
    }

    /// Pushes submitted and not answered yet (see [`Replica::take_unanswered`]), with those
    /// of the incarnation before while its state has not arrived.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len() + self.rejoining.as_ref().map_or(0, |r| r.1.len())
    }

    /// The protocol member, for its state and counters.
    pub fn member(&self) -> &Member {
        &self.member
    }
    /// The queue replica.
    pub fn queue(&self) -> &QueueState {
        &self.queue
    }
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }
    pub fn id(&self) -> MemberId {
        self.member.id()
    }
    pub fn view(&self) -> &View {
        self.member.view()
    }
    pub fn status(&self) -> Status {
        self.member.status()
    }

    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        self.member.handle_frame(now, bytes);
        self.watch_disks(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.member.handle_timeout(now);
        self.check_recovery();
        self.watch_disks(now);
    }

    pub fn poll_timeout(&self) -> Instant {
        self.member.poll_timeout()
    }

    /// Offers an operation for ordering (`WindowFull` is backpressure: retry later).
    pub fn submit(&mut self, op: &Op) -> Result<Seq, SubmitError> {
        self.submit_encoded(op.encode())
    }

    /// Offers an operation encoded by [`Op::encode`] (hosts encode off the polling thread).
    /// A push is kept until its run's first outcome (see [`Replica::take_unanswered`]).
    ///
    /// A push into a durable queue whose policy when full is `reject` is refused while the
    /// disks do not take the log ([`Replica::disks_refuse`]): [`SubmitError::DisksFull`] says
    /// what to tell its pusher (nothing was ordered). Into any other queue a push waits for the
    /// disks (it is told accepted once a majority has it), as do completions.
    pub fn submit_encoded(&mut self, op: Vec<u8>) -> Result<Seq, SubmitError> {
        if !self.may_submit(&op) {
            return Err(SubmitError::NotServing("recovering"));
        }
        if let Some(refused) = self.refused_for_disks(&op) {
            return Err(refused);
        }
        let push = Op::pushed_id(&op).map(|id| (id, op.clone()));
        let seq = self.member.submit(op)?;
        if let Some((id, op)) = push {
            self.unanswered.insert(id, op);
        }
        Ok(seq)
    }

    /// Submits the pushes waiting to go again, as the window allows.
    fn resubmit(&mut self) {
        while !self.resubmit.is_empty() && self.member.window_room() > 0 {
            let Some(op) = self.resubmit.pop_front() else {
                break;
            };
            if let Err(e) = self.member.submit(op.clone()) {
                if !matches!(e, SubmitError::TooLarge { .. }) {
                    self.resubmit.push_front(op);
                }
                break;
            }
        }
    }

    /// Own operations that can still be submitted before the window is full.
    pub fn window_room(&self) -> u64 {
        self.member.window_room()
    }

    /// Who may join from now on.
    pub fn set_admission(&mut self, admission: Admission) {
        self.member.set_admission(admission);
    }

    /// Leaves the group gracefully (see [`Member::leave`]).
    pub fn leave(&mut self) {
        self.member.leave();
    }

    /// The next frame to send (see [`Member::poll_transmit`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if !self.resubmit.is_empty() {
            self.resubmit();
        }
        self.member.poll_transmit(now)
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.member.recycle(buf);
    }

    /// The next effect, in the agreed order, applying deliveries as needed; then, with
    /// speculation on, the assignments speculated beyond them.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        if self.durable.is_some() {
            let released = self.release_held();
            self.effects.extend(released.into_iter().map(|(_, e)| e));
        }
        loop {
            if let Some(e) = self.effects.pop_front() {
                return Some(e);
            }
            if self.advance(false).is_none() {
                self.speculate();
                return self.effects.pop_front();
            }
        }
    }

    /// Applies the next delivery, if any, and says what it was with its effects; once none is
    /// left, with speculation on, what was speculated beyond them.
    pub fn poll_applied(&mut self) -> Option<Applied> {
        if let Some(a) = self.released() {
            return Some(a);
        }
        let Some(step) = self.advance(true) else {
            self.speculate();
            if self.effects.is_empty() {
                return None;
            }
            let effects: Vec<Effect> = self.effects.drain(..).collect();
            return Some(Applied::Speculated { effects });
        };
        let effects: Vec<Effect> = self.effects.drain(..).collect();
        Some(match step {
            Step::Message(delivery, malformed) => Applied::Message {
                delivery,
                malformed,
                effects,
            },
            Step::View(change) => Applied::View { change, effects },
            Step::State(ok) => Applied::State { ok, effects },
        })
    }

    /// Takes one delivery from the member and applies it; its effects are queued.
    /// `keep`: effects held for the disks stay in the step's effects too (a host that sees
    /// what every step did, [`Replica::poll_applied`], is also told when they are released).
    fn advance(&mut self, keep: bool) -> Option<Step> {
        let mut persist = None;
        let step = match self.member.poll_delivery()? {
            Delivered::Message(d) => {
                let malformed = match Op::decode(&d.payload) {
                    Ok(Op::Recovered {
                        member,
                        epoch,
                        position,
                    }) => {
                        self.on_claim(member, recovery::Claim { epoch, position }, d.view);
                        false
                    }
                    Ok(_) if !self.recovered() => {
                        // Before this replica holds the group's state (see `recovery`).
                        self.stats.dropped_recovering += 1;
                        false
                    }
                    Ok(op) => {
                        let position = self.queue.applied();
                        let gated = self.durable_step(&op);
                        self.queue.apply(op, &mut self.scratch);
                        if self.durable.is_some() {
                            persist = Some((position, d.payload.to_vec(), gated));
                        }
                        false
                    }
                    Err(_) => {
                        self.stats.malformed_ops += 1;
                        true
                    }
                };
                self.follow_delivery(d.view, d.slot, &d.payload);
                Step::Message(d, malformed)
            }
            Delivered::View(vc) => {
                self.on_view(&vc);
                Step::View(vc)
            }
            Delivered::State(bytes) => {
                let ok = self.on_state(&bytes);
                if ok {
                    self.recovery_state_arrived();
                }
                Step::State(ok)
            }
        };
        if !self.unanswered.is_empty() {
            let me = self.member.id();
            for e in &self.scratch {
                answered(&mut self.unanswered, me, e);
            }
        }
        if let Some((position, bytes, gated)) = persist {
            self.persist_step(position, RecordKind::Op, bytes, gated, keep);
        }
        self.effects.extend(self.scratch.drain(..));
        self.stats.applied += 1;
        Some(step)
    }

    /// A view installed: it is reported, the requests of removed members go back to their
    /// queues, and joiners are sent the state as of now if this member is the one to send it.
    fn on_view(&mut self, vc: &ViewChange) {
        self.scratch.push(Effect::ViewInstalled {
            view: vc.view.id.0,
            members: vc.view.members.clone(),
            removed: vc.removed.clone(),
            left: vc.left.clone(),
            joined: vc.joined.clone(),
            wedged_us: vc.wedged_for.as_micros() as u64,
            suspected_at_us: vc.suspected_at.map(|t| t.as_micros()),
            cut: vc.cut,
            resubmitted: vc.resubmitted,
        });
        if !self.recovery_view(&vc.view) {
            // Not the group's state yet: nothing to apply or log; joiners are told to claim.
            if vc.state_from == Some(self.member.id()) {
                self.send_claims(&vc.joined);
            }
            return;
        }
        let survivors: Vec<MemberId> = vc
            .view
            .members
            .iter()
            .filter(|m| !vc.joined.contains(m))
            .copied()
            .collect();
        let before = self.scratch.len();
        let position = self.queue.applied();
        self.queue
            .install_view(&survivors, &vc.removed, &mut self.scratch);
        self.persist_view(
            position,
            ViewRecord {
                survivors,
                removed: vc.removed.clone(),
            },
        );
        self.stats.requeued += self.scratch[before..]
            .iter()
            .filter(|e| matches!(e, Effect::Requeued { .. }))
            .count() as u64;
        // What was speculated beyond the cut is not delivered in this view; the new view
        // orders everything again.
        self.rebuild_ahead(vc.view.id, 0, true);
        if vc.state_from == Some(self.member.id()) {
            let snap = self.queue.snapshot();
            for j in &vc.joined {
                self.member.send_state(*j, snap.clone());
                self.stats.states_sent += 1;
            }
        }
    }

    /// Holding the group's state (sent to this joiner, or the one a restarted group decided
    /// on): a process coming back ([`Replica::set_rejoining`]) is told what it missed.
    pub(super) fn tell_rejoining(&mut self) {
        if let Some((since, before)) = self.rejoining.take() {
            let back = self.queue.rejoined(self.member.id(), since);
            self.rejoined(back, before);
            // Ends it missed: told once the state's position is on a majority's disks (they
            // all lie before it).
            self.hold_ends(self.queue.applied());
        }
    }

    /// Back after a removal, with the state: the outcomes missed are told (and answer their
    /// pushes); the pushes still unanswered that the group does not hold never reached the
    /// order and go again, unless outcomes were dropped (see [`Effect::Rejoined`]).
    /// `before`: the pushes the incarnation before left unanswered (those this one submitted
    /// since are in the order, not lost).
    fn rejoined(&mut self, back: Vec<Effect>, mut before: BTreeMap<RequestId, Vec<u8>>) {
        for e in back {
            let Effect::Rejoined {
                origin,
                pending,
                outcomes_dropped,
                ..
            } = e
            else {
                answered(&mut before, self.member.id(), &e);
                answered(&mut self.unanswered, self.member.id(), &e);
                self.scratch.push(e);
                continue;
            };
            let mut pending: BTreeSet<RequestId> = pending.into_iter().collect();
            let mut pushed_again = 0;
            for (id, op) in std::mem::take(&mut before) {
                if pending.contains(&id) {
                    self.unanswered.insert(id, op);
                } else if !outcomes_dropped {
                    self.resubmit.push_back(op.clone());
                    self.unanswered.insert(id, op);
                    pending.insert(id);
                    pushed_again += 1;
                }
            }
            // Pushed by this incarnation since it installed its first view: in the order.
            pending.extend(self.unanswered.keys().copied());
            self.scratch.push(Effect::Rejoined {
                origin,
                pending: pending.into_iter().collect(),
                pushed_again,
                outcomes_dropped,
            });
        }
    }

    /// A joiner's state: the queue replica as of its first view, and the pipelines it holds.
    fn on_state(&mut self, bytes: &[u8]) -> bool {
        if let Some(claims) = recovery::claims_in(bytes) {
            return self.claim_as_joiner(claims);
        }
        match QueueState::from_snapshot(bytes) {
            Ok(q) => {
                self.queue = q;
                // The group's state: the joiner's own log no longer matters.
                if self.log_state.take().is_some() {
                    self.discard_unpersisted();
                }
                self.persist_state();
                self.tell_rejoining();
                let view = self.member.view().id;
                self.rebuild_ahead(view, 0, true);
                if let Some((version, docs)) = self.queue.pipeline_docs() {
                    self.scratch.push(Effect::Pipelines {
                        version,
                        docs: docs.to_vec(),
                    });
                }
                true
            }
            Err(_) => {
                // An empty queue would diverge from every other replica with the next
                // delivery: this process stops, and its host joins again with a new one.
                self.stats.bad_states += 1;
                self.member.refuse_state();
                false
            }
        }
    }
}

/// An outcome of one of `me`'s runs answers its push.
fn answered(unanswered: &mut BTreeMap<RequestId, Vec<u8>>, me: MemberId, e: &Effect) {
    if let Some(id) = crate::queue::ended(e).filter(|id| id.origin() == me) {
        unanswered.remove(&id);
    }
}
