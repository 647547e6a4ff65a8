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
//! ## Speculation
//!
//! A message is delivered once stable (every member holds it), but what applying it will do is
//! fixed as soon as this member holds every slot before it: every replica applies the same
//! operations in the same order. With speculation on ([`Replica::set_speculation`]), the
//! replica keeps a second copy of the queue that runs ahead of the delivered order over the
//! slots it holds, and reports the requests that copy assigns to this member as
//! [`Effect::Speculated`]: the host may start them a network round trip or more earlier.
//!
//! In the round-robin order a message of rank `r` comes after the same round's slots of the
//! lower ranks, which an idle member fills with a null only on seeing that message: waiting
//! for them would leave nothing to gain for any sender but the first. So the copy assumes a
//! slot it does not hold yet is a null (at most one round of such slots at a time); when one
//! turns out to carry a message, the copy is rebuilt from the delivered queue and runs ahead
//! again.
//!
//! When a delivery assigns this member a request it speculated (the same request: the same
//! run, step, payload and details; its instance may differ if the order before it did), the
//! replica gives [`Effect::Confirmed`] instead of [`Effect::Assigned`], naming the speculation:
//! the host submits the completion it held back, for the delivered instance. A speculated request that the delivered order gives to another member, or drops,
//! and everything speculated when a view is installed or a joiner's state replaces the queue,
//! is [`Effect::Discarded`]: its completion is never submitted, and the request runs wherever
//! the delivered order puts it. Only this member's own assignments are speculated; everything
//! else (results, views, refusals) is reported only once delivered.

use crate::proto::{
    Admission, ConfigError, Delivered, Delivery, Member, ProtoConfig, Status, SubmitError,
    Transmit, ViewChange,
};
use crate::queue::{Effect, Op, QueueState, Request};
use crate::types::{GroupId, Instant, MemberId, RequestId, Seq, View, ViewId};
use crate::wire::Key;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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
    /// the module docs).
    pub speculated: u64,
    pub confirmed: u64,
    pub discarded: u64,
    /// Deliveries that did not match what the copy ahead had applied (the copy was rebuilt).
    pub speculation_resets: u64,
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
    /// Not a delivery: speculation ran ahead of the delivered order (see the module docs) and
    /// assigned these requests to this member ([`Effect::Speculated`]).
    Speculated { effects: Vec<Effect> },
}

/// What one delivery was, once applied.
enum Step {
    Message(Delivery, bool),
    View(ViewChange),
    State(bool),
}

/// The copy of the queue that runs ahead of the delivered order (see the module docs).
#[derive(Debug)]
struct Ahead {
    queue: QueueState,
    /// The view whose slots it applies, and the next slot it looks at: every slot before it
    /// (and after the delivered ones) is applied (`applied`), held as a null, or assumed a
    /// null (`assumed`).
    view: ViewId,
    next: u64,
    /// Slots not delivered yet whose message the copy applied, in order.
    applied: VecDeque<u64>,
    /// Slots not delivered yet that the copy took for nulls without holding them, in order.
    assumed: VecDeque<u64>,
    /// Own assignments speculated and not yet confirmed or discarded, in order.
    pending: VecDeque<Pending>,
    /// Times the copy was rebuilt.
    generation: u64,
    /// No copy runs ahead (`queue` is empty): the delivered queue holds more than
    /// [`MAX_BACKLOG`] requests. Invokers have work waiting then, so starting more early gains
    /// nothing, and rebuilding a copy of a large queue would cost more than it saves.
    dormant: bool,
    /// The last speculation's number.
    speculations: u64,
    scratch: Vec<Effect>,
}

/// An own assignment speculated (see [`Ahead::pending`]).
#[derive(Debug)]
struct Pending {
    /// Its number ([`Effect::Speculated::speculation`]).
    told: u64,
    /// The request as last speculated, at `slot`, by the copy of `generation`.
    req: Request,
    slot: u64,
    generation: u64,
}

impl Pending {
    fn discarded(self, consumer: MemberId) -> Effect {
        Effect::Discarded {
            consumer,
            id: self.req.id,
            step: self.req.step,
            speculation: self.told,
        }
    }
}

/// Requests the delivered queue may hold for a copy to run ahead (see [`Ahead::dormant`]).
const MAX_BACKLOG: usize = 64;

/// Pending speculations kept at most (the oldest are discarded beyond: a speculated request
/// that the delivered order drops without assigning it is otherwise only discarded at the
/// next view).
const MAX_PENDING: usize = 4096;

/// The same request, whatever its instance (which depends on the order of every push before
/// it).
fn same_request(a: &Request, b: &Request) -> bool {
    a.id == b.id
        && a.step == b.step
        && a.queue == b.queue
        && a.payload == b.payload
        && a.meta == b.meta
        && a.http == b.http
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

    /// The pushes submitted here whose run has not told an outcome here yet (encoded), for
    /// the next incarnation ([`Replica::set_rejoining`]).
    pub fn take_unanswered(&mut self) -> BTreeMap<RequestId, Vec<u8>> {
        let mut all = std::mem::take(&mut self.unanswered);
        if let Some((_, before)) = self.rejoining.take() {
            all.extend(before);
        }
        all
    }

    /// Operations this process has applied, for [`Replica::set_rejoining`]: its queue's, or,
    /// while it is a joiner coming back whose state has not arrived, the incarnation before's.
    pub fn applied(&self) -> u64 {
        match &self.rejoining {
            Some((since, _)) => *since,
            None => self.queue.applied(),
        }
    }

    /// Pushes submitted and not answered yet (see [`Replica::take_unanswered`]), with those
    /// of the incarnation before while its state has not arrived.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len() + self.rejoining.as_ref().map_or(0, |r| r.1.len())
    }

    /// Switches speculation on or off (off by default; see the module docs). Switching it off
    /// discards what was speculated and not yet delivered. Only for a host that handles
    /// [`Effect::Speculated`], [`Effect::Confirmed`] and [`Effect::Discarded`].
    pub fn set_speculation(&mut self, on: bool) {
        match (on, self.ahead.is_some()) {
            (true, false) => {
                self.ahead = Some(Box::new(Ahead {
                    queue: QueueState::new(),
                    dormant: true,
                    view: self.member.view().id,
                    next: self.member.delivered_slots(),
                    applied: VecDeque::new(),
                    assumed: VecDeque::new(),
                    pending: VecDeque::new(),
                    generation: 0,
                    speculations: 0,
                    scratch: Vec::new(),
                }));
            }
            (false, true) => {
                let (view, next) = (self.member.view().id, self.member.delivered_slots());
                self.rebuild_ahead(view, next, true);
                self.effects.extend(self.scratch.drain(..));
                self.ahead = None;
            }
            _ => {}
        }
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
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.member.handle_timeout(now);
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
    pub fn submit_encoded(&mut self, op: Vec<u8>) -> Result<Seq, SubmitError> {
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
        loop {
            if let Some(e) = self.effects.pop_front() {
                return Some(e);
            }
            if self.advance().is_none() {
                self.speculate();
                return self.effects.pop_front();
            }
        }
    }

    /// Applies the next delivery, if any, and says what it was with its effects; once none is
    /// left, with speculation on, what was speculated beyond them.
    pub fn poll_applied(&mut self) -> Option<Applied> {
        let Some(step) = self.advance() else {
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

    /// Runs the copy ahead over the slots this member holds beyond the delivered order, and
    /// queues the assignments to this member it makes (see the module docs). Called only with
    /// every delivery applied.
    fn speculate(&mut self) {
        let me = self.member.id();
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        if self.member.status() != Status::Serving {
            // A view change under way (or a joiner's state not in yet): its outcome decides.
            return;
        }
        let (view, delivered) = (self.member.view().id, self.member.delivered_slots());
        if ahead.dormant {
            if self.queue.size() > MAX_BACKLOG {
                // Speculated before it fell dormant, and passed since: not to be confirmed.
                let other_view = ahead.view != view;
                self.discard_pending(|p| other_view || p.slot < delivered);
                return;
            }
            ahead.queue = self.queue.clone();
            ahead.dormant = false;
            ahead.view = view;
            ahead.next = delivered;
            ahead.applied.clear();
            ahead.assumed.clear();
            ahead.generation += 1;
        }
        if ahead.applied.is_empty() && ahead.assumed.is_empty() && ahead.view != view {
            // Level with the delivered queue: start from where the member is.
            ahead.view = view;
            ahead.next = delivered;
        }
        if ahead.view != view {
            return;
        }
        while ahead.assumed.front().is_some_and(|g| *g < delivered) {
            ahead.assumed.pop_front();
        }
        // A slot taken for a null that turns out to carry a message: start again.
        let wrong = ahead
            .assumed
            .iter()
            .any(|g| matches!(self.member.held_slot(*g), Some(Some(_))));
        if wrong {
            self.stats.speculation_resets += 1;
            self.rebuild_ahead(view, delivered, false);
            self.effects.extend(self.scratch.drain(..));
        }
        let Some(ahead) = self.ahead.as_deref_mut().filter(|a| !a.dormant) else {
            return;
        };
        let n = self.member.view().len() as u64;
        ahead.next = ahead.next.max(delivered);
        let end = self.member.held_slots_end();
        while ahead.next < end {
            let g = ahead.next;
            let op = match self.member.held_slot(g) {
                Some(Some(bytes)) => Op::decode(bytes).ok(),
                Some(None) => None,
                None if (ahead.assumed.len() as u64) < n => {
                    ahead.assumed.push_back(g);
                    None
                }
                None => break,
            };
            ahead.next += 1;
            let Some(op) = op else {
                continue;
            };
            ahead.queue.apply(op, &mut ahead.scratch);
            ahead.applied.push_back(g);
            for e in ahead.scratch.drain(..) {
                let Effect::Assigned { consumer, req } = e else {
                    continue;
                };
                if consumer != me {
                    continue;
                }
                // Speculated again by a rebuilt copy: the host already runs it.
                let generation = ahead.generation;
                if let Some(p) = ahead
                    .pending
                    .iter_mut()
                    .find(|p| p.generation < generation && same_request(&p.req, &req))
                {
                    (p.req, p.slot, p.generation) = (req, g, generation);
                    continue;
                }
                if ahead.pending.len() >= MAX_PENDING {
                    if let Some(old) = ahead.pending.pop_front() {
                        self.stats.discarded += 1;
                        self.effects.push_back(old.discarded(me));
                    }
                }
                ahead.speculations += 1;
                ahead.pending.push_back(Pending {
                    told: ahead.speculations,
                    req: req.clone(),
                    slot: g,
                    generation,
                });
                self.stats.speculated += 1;
                self.effects.push_back(Effect::Speculated {
                    consumer,
                    req,
                    speculation: ahead.speculations,
                });
            }
        }
        // Speculated by an earlier copy at a slot the rebuilt one passed without assigning it
        // here again: the order changed what it does.
        let (generation, next) = (ahead.generation, ahead.next);
        self.discard_pending(|p| p.generation < generation && p.slot < next);
    }

    /// Discards the pending speculations `gone` picks ([`Effect::Discarded`], queued now).
    fn discard_pending(&mut self, gone: impl Fn(&Pending) -> bool) {
        let me = self.member.id();
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let mut i = 0;
        while i < ahead.pending.len() {
            if !gone(&ahead.pending[i]) {
                i += 1;
            } else if let Some(p) = ahead.pending.remove(i) {
                self.stats.discarded += 1;
                self.effects.push_back(p.discarded(me));
            }
        }
    }

    /// A message delivered at slot `g` of `view` and applied to the queue, its effects in
    /// `scratch`: the delivered assignments to this member that were speculated become
    /// [`Effect::Confirmed`], speculated requests given to another member (or dropped) are
    /// discarded, and the copy ahead follows (it applied this slot already, or applies it now
    /// if level, or is rebuilt if it took the slot for something else).
    fn follow_delivery(&mut self, view: ViewId, g: u64, payload: &[u8]) {
        let me = self.member.id();
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let mut discarded = Vec::new();
        for e in self.scratch.iter_mut() {
            let (mine, req) = match e {
                Effect::Assigned { consumer, req } => (*consumer == me, &*req),
                Effect::Overwritten { id, step, .. } | Effect::Rejected { id, step, .. } => {
                    if let Some(i) = ahead
                        .pending
                        .iter()
                        .position(|p| p.req.id == *id && p.req.step == *step)
                    {
                        discarded.extend(ahead.pending.remove(i));
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(i) = ahead.pending.iter().position(|p| same_request(&p.req, req)) else {
                continue;
            };
            let Some(p) = ahead.pending.remove(i) else {
                continue;
            };
            if !mine {
                discarded.push(p);
                continue;
            }
            self.stats.confirmed += 1;
            if let Effect::Assigned { consumer, req } =
                std::mem::replace(e, Effect::Empty { consumer: me })
            {
                *e = Effect::Confirmed {
                    consumer,
                    req,
                    speculation: p.told,
                };
            }
        }
        for p in discarded {
            self.stats.discarded += 1;
            self.scratch.push(p.discarded(me));
        }
        if ahead.dormant {
            return;
        }
        // The copy: slots it applied before this one were not delivered as messages, and one
        // it took for a null is one.
        while ahead.assumed.front().is_some_and(|a| *a < g) {
            ahead.assumed.pop_front();
        }
        let stale = ahead.view != view
            || ahead.applied.front().is_some_and(|a| *a < g)
            || ahead.assumed.front() == Some(&g)
            // Passed as a null it held: the order changed under it.
            || (ahead.applied.front() != Some(&g) && g < ahead.next);
        if stale {
            self.stats.speculation_resets += 1;
            self.rebuild_ahead(view, g + 1, false);
            return;
        }
        if ahead.applied.front() == Some(&g) {
            ahead.applied.pop_front();
            // What the copy assigned here is what was delivered: a speculation of this
            // copy's at this slot that the delivery did not confirm cannot be.
            let generation = ahead.generation;
            if ahead
                .pending
                .iter()
                .any(|p| p.generation == generation && p.slot <= g)
            {
                self.stats.speculation_resets += 1;
                self.rebuild_ahead(view, g + 1, false);
            }
            return;
        }
        // Level and behind: apply it too.
        if let Ok(op) = Op::decode(payload) {
            ahead.queue.apply(op, &mut ahead.scratch);
            ahead.scratch.clear();
        }
        ahead.next = g + 1;
    }

    /// Makes the copy ahead level with the delivered queue, at slot `next` of `view`; with
    /// `discard`, every pending speculation is discarded ([`Effect::Discarded`], queued in
    /// `scratch` before the current delivery's effects). Without, they stay: the rebuilt copy
    /// assigns most of them again as it runs ahead, and deliveries confirm or discard them.
    fn rebuild_ahead(&mut self, view: ViewId, next: u64, discard: bool) {
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let me = self.member.id();
        if discard {
            let discarded = ahead.pending.drain(..).map(|p| p.discarded(me));
            let before = self.scratch.len();
            // Before the delivery's own effects (after a view's report): the host drops the
            // speculation, then takes what the delivered order assigns (possibly the same
            // request again).
            let at = usize::from(matches!(
                self.scratch.first(),
                Some(Effect::ViewInstalled { .. })
            ));
            self.scratch.splice(at..at, discarded);
            self.stats.discarded += (self.scratch.len() - before) as u64;
        }
        ahead.dormant = self.queue.size() > MAX_BACKLOG;
        ahead.queue = if ahead.dormant {
            QueueState::new()
        } else {
            self.queue.clone()
        };
        ahead.view = view;
        ahead.next = next;
        ahead.applied.clear();
        ahead.assumed.clear();
        ahead.generation += 1;
    }

    /// Takes one delivery from the member and applies it; its effects are queued.
    fn advance(&mut self) -> Option<Step> {
        let step = match self.member.poll_delivery()? {
            Delivered::Message(d) => {
                let malformed = match Op::decode(&d.payload) {
                    Ok(op) => {
                        self.queue.apply(op, &mut self.scratch);
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
            Delivered::State(bytes) => Step::State(self.on_state(&bytes)),
        };
        if !self.unanswered.is_empty() {
            let me = self.member.id();
            for e in &self.scratch {
                answered(&mut self.unanswered, me, e);
            }
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
        let survivors: Vec<MemberId> = vc
            .view
            .members
            .iter()
            .filter(|m| !vc.joined.contains(m))
            .copied()
            .collect();
        self.queue.view_installed(&survivors);
        let before = self.scratch.len();
        self.queue.remove_members(&vc.removed, &mut self.scratch);
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
        match QueueState::from_snapshot(bytes) {
            Ok(q) => {
                self.queue = q;
                if let Some((since, before)) = self.rejoining.take() {
                    let back = self.queue.rejoined(self.member.id(), since);
                    self.rejoined(back, before);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Dest;
    use crate::queue::{Meta, OnFull, Order, QueueSpec, Request};
    use crate::types::{RequestId, ViewId};

    /// Replicas by member id, some down, every frame between live ones delivered each step;
    /// every effect each one applies is recorded.
    struct Net {
        rs: Vec<Replica>,
        down: Vec<bool>,
        now: u64,
        fx: Vec<Vec<Effect>>,
    }

    fn key() -> Key {
        Key::from_bytes([5; 32])
    }

    impl Net {
        fn new(n: u16) -> Net {
            let view = View::new(ViewId(1), (0..n).map(MemberId).collect());
            Net {
                rs: (0..n)
                    .map(|i| {
                        Replica::new(
                            ProtoConfig::default(),
                            key(),
                            GroupId(7),
                            view.clone(),
                            MemberId(i),
                            0x100 + u64::from(i),
                            Instant(0),
                        )
                        .unwrap()
                    })
                    .collect(),
                down: vec![false; n as usize],
                now: 0,
                fx: vec![Vec::new(); n as usize],
            }
        }
        fn run(&mut self, us: u64) {
            for _ in 0..us / 500 {
                self.now += 500;
                let now = Instant(self.now);
                let mut frames = Vec::new();
                for (i, r) in self.rs.iter_mut().enumerate() {
                    if self.down[i] {
                        continue;
                    }
                    if now >= r.poll_timeout() {
                        r.handle_timeout(now);
                    }
                    while let Some(t) = r.poll_transmit(now) {
                        frames.push((i, t));
                    }
                }
                for (from, t) in frames {
                    for j in 0..self.rs.len() {
                        let to = match t.dest {
                            Dest::All => j != from,
                            Dest::One(m) => usize::from(m.0) == j,
                        };
                        if to && !self.down[j] {
                            self.rs[j].handle_frame(now, &t.frame);
                        }
                    }
                }
                for (i, r) in self.rs.iter_mut().enumerate() {
                    while let Some(e) = r.poll_effect() {
                        self.fx[i].push(e);
                    }
                }
            }
        }
    }

    fn spec() -> QueueSpec {
        QueueSpec {
            name: "q".into(),
            capacity: 16,
            order: Order::Fifo,
            on_full: OnFull::Block,
        }
    }

    #[test]
    fn a_view_is_reported_before_the_removed_members_requests_go_back() {
        let mut net = Net::new(3);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        for c in [1, 2] {
            let consumer = MemberId(c);
            net.rs[c as usize]
                .submit(&Op::Subscribe {
                    consumer,
                    queue: "q".into(),
                })
                .unwrap();
        }
        net.run(5_000);
        // Only member 2 is ready: the push is assigned to it; then it crashes.
        net.rs[2]
            .submit(&Op::Ready {
                consumer: MemberId(2),
                credits: 1,
            })
            .unwrap();
        net.run(5_000);
        let req = Request {
            id: RequestId::new(MemberId(0), 1),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: b"x".to_vec(),
            meta: Meta::default(),
            http: None,
        };
        net.rs[0]
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
        net.run(5_000);
        assert!(net.fx[0]
            .iter()
            .any(|e| matches!(e, Effect::Assigned { consumer, .. } if *consumer == MemberId(2))));
        net.down[2] = true;
        net.run(200_000);
        for i in 0..2 {
            let at = net.fx[i]
                .iter()
                .position(|e| matches!(e, Effect::ViewInstalled { .. }))
                .expect("a view installed");
            assert!(
                matches!(&net.fx[i][at], Effect::ViewInstalled { removed, .. } if removed == &[MemberId(2)])
            );
            assert!(
                matches!(&net.fx[i][at + 1], Effect::Requeued { from, .. } if *from == MemberId(2)),
                "{:?}",
                &net.fx[i][at..]
            );
            assert_eq!(net.rs[i].stats().requeued, 1);
            assert_eq!(net.rs[i].queue().queue_depth("q"), Some(1));
        }
    }

    fn push(net: &mut Net, n: u64) {
        let req = Request {
            id: RequestId::new(MemberId(0), n),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: vec![n as u8],
            meta: Meta::default(),
            http: None,
        };
        net.rs[0]
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
    }

    /// Three members; member 2 speculates, takes from queue "q" and has 4 credits.
    fn speculating_net() -> Net {
        let mut net = Net::new(3);
        net.rs[2].set_speculation(true);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.run(5_000);
        net.rs[2]
            .submit(&Op::Subscribe {
                consumer: MemberId(2),
                queue: "q".into(),
            })
            .unwrap();
        net.rs[2]
            .submit(&Op::Ready {
                consumer: MemberId(2),
                credits: 4,
            })
            .unwrap();
        net.run(5_000);
        net
    }

    fn speculated(e: &Effect) -> Option<&Request> {
        match e {
            Effect::Speculated { req, .. } => Some(req),
            _ => None,
        }
    }
    fn confirmed(e: &Effect) -> Option<&Request> {
        match e {
            Effect::Confirmed { req, .. } => Some(req),
            _ => None,
        }
    }
    fn assigned(e: &Effect) -> Option<&Request> {
        match e {
            Effect::Assigned { req, .. } => Some(req),
            _ => None,
        }
    }

    /// With speculation on, an invoker is told of its assignment before it is delivered, then
    /// that the delivery confirmed it (in place of the assignment itself); the others see the
    /// plain assignment at the same place in the order.
    #[test]
    fn a_speculated_assignment_comes_first_and_is_then_confirmed() {
        let mut net = speculating_net();
        for n in 1..=3 {
            push(&mut net, n);
        }
        // One step: the pushes reach member 2, which cannot have seen them stable yet.
        net.run(500);
        let spec: Vec<&Request> = net.fx[2].iter().filter_map(speculated).collect();
        // The first is held after every slot before it; the next two after member 1's slots
        // of their rounds, which member 2 does not hold yet and takes for nulls.
        assert_eq!(spec.len(), 3, "{:?}", net.fx[2]);
        assert!(!net.fx[2]
            .iter()
            .any(|e| matches!(e, Effect::Confirmed { .. } | Effect::Assigned { .. })));
        net.run(10_000);
        let conf: Vec<&Request> = net.fx[2].iter().filter_map(confirmed).collect();
        let asgn: Vec<&Request> = net.fx[0].iter().filter_map(assigned).collect();
        let spec: Vec<&Request> = net.fx[2].iter().filter_map(speculated).collect();
        assert_eq!(conf, asgn);
        assert_eq!(spec, asgn);
        for r in spec {
            let at =
                |f: fn(&Effect) -> Option<&Request>| net.fx[2].iter().position(|e| f(e) == Some(r));
            let (s, c) = (at(speculated), at(confirmed));
            assert!(s < c, "{r:?} speculated at {s:?}, confirmed at {c:?}");
        }
        assert!(!net.fx[2]
            .iter()
            .any(|e| matches!(e, Effect::Assigned { .. } | Effect::Discarded { .. })));
        let st = net.rs[2].stats();
        assert_eq!((st.speculated, st.confirmed, st.discarded), (3, 3, 0));
        assert_eq!(st.speculation_resets, 0);
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    }

    /// Switching speculation off discards what was speculated and not delivered; what is
    /// delivered after is assigned as usual.
    #[test]
    fn switching_speculation_off_discards_what_was_not_delivered() {
        let mut net = speculating_net();
        push(&mut net, 1);
        net.run(500);
        assert!(matches!(net.fx[2].last(), Some(Effect::Speculated { .. })));
        net.rs[2].set_speculation(false);
        net.run(10_000);
        let tail: Vec<&Effect> = net.fx[2]
            .iter()
            .skip_while(|e| !matches!(e, Effect::Speculated { .. }))
            .filter(|e| e.concerns(MemberId(2)) && !matches!(e, Effect::Accepted { .. }))
            .collect();
        assert!(
            matches!(
                tail.as_slice(),
                [Effect::Speculated { req: a, speculation: x, .. }, Effect::Discarded { speculation: y, .. }, Effect::Assigned { req: b, .. }]
                    if a == b && x == y
            ),
            "{tail:?}"
        );
    }

    fn joiner(nonce: u64, now: u64) -> Replica {
        Replica::joining(
            ProtoConfig::default(),
            key(),
            GroupId(7),
            MemberId(2),
            vec![MemberId(0), MemberId(1)],
            nonce,
            Instant(now),
        )
        .unwrap()
    }

    fn first_view(fx: &[Effect]) -> Option<u32> {
        fx.iter().find_map(|e| match e {
            Effect::ViewInstalled { view, .. } => Some(*view),
            _ => None,
        })
    }

    /// A joiner that restarts (a new process, a new nonce) the moment it installed the view it
    /// joined with, before it said anything in it: the new process is a new joiner; it never
    /// installs the view meant for the old one, which a member that never heard from the old
    /// one in that view would otherwise send it as a missed commit (seed 106118: the new
    /// process then served in the old one's place, and found out from a row).
    #[test]
    fn a_restarted_joiner_does_not_take_the_view_of_the_process_before_it() {
        let mut net = Net::new(2);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.run(5_000);
        net.rs.push(joiner(1, net.now));
        net.down.push(false);
        net.fx.push(Vec::new());
        let mut steps = 0;
        while first_view(&net.fx[2]).is_none() {
            net.run(500);
            steps += 1;
            assert!(steps < 200, "the first joiner was never admitted");
        }
        let old = first_view(&net.fx[2]).unwrap_or(0);
        net.rs[2] = joiner(2, net.now);
        net.fx[2].clear();
        net.run(300_000);
        let new = first_view(&net.fx[2]).expect("the new process was admitted");
        assert!(
            new > old,
            "the new process installed view {new}, the old one's was {old}"
        );
        assert_eq!(net.rs[2].status(), Status::Serving);
        assert_eq!(net.rs[2].member().restarted_in_view(), None);
        assert_eq!(net.rs[2].view(), net.rs[0].view());
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    }

    #[test]
    fn a_joiner_whose_state_does_not_decode_stops_and_is_removed() {
        let mut net = Net::new(3);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.run(5_000);
        let mut j = joiner(0x5eed, net.now);
        // As if its state had arrived and did not decode: an empty queue would diverge.
        assert!(!j.on_state(b"not a snapshot"));
        assert_eq!(j.stats().bad_states, 1);
        assert_eq!(j.status(), Status::Excluded);
        assert_eq!(
            j.member().stop_reason(),
            Some(crate::proto::StopReason::StateRefused)
        );
        assert!(j.member().stop_reason().is_some_and(|r| r.kept_by_group()));
        net.rs.push(j);
        net.down.push(false);
        net.fx.push(Vec::new());
        net.run(300_000);
        // It sent nothing and joined nothing; the group went on without it.
        assert!(net.rs[3].member().poll_timeout() == Instant(u64::MAX));
        assert_eq!(net.rs[0].view().members.len(), 3);
        assert_eq!(net.rs[0].status(), Status::Serving);
    }

    /// A member removed by a view change (its links dark past the failure timeout) while
    /// requests it pushed are queued and running comes back as a joiner in the same process:
    /// it is told the outcomes it missed, then which of its requests the group still holds.
    #[test]
    fn a_removed_origin_that_comes_back_is_told_what_it_missed() {
        let mut net = Net::new(3);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.rs[1]
            .submit(&Op::Subscribe {
                consumer: MemberId(1),
                queue: "q".into(),
            })
            .unwrap();
        net.run(5_000);
        let origin = MemberId(2);
        let req = |n: u64| Request {
            id: RequestId::new(origin, n),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: vec![n as u8],
            meta: Meta::default(),
            http: None,
        };
        for n in 1..=3 {
            net.rs[2]
                .submit(&Op::Push {
                    pusher: origin,
                    req: req(n),
                })
                .unwrap();
        }
        net.run(5_000);
        // Member 2 goes dark with request 4 submitted but never ordered.
        net.down[2] = true;
        net.rs[2]
            .submit(&Op::Push {
                pusher: origin,
                req: req(4),
            })
            .unwrap();
        let since = net.rs[2].queue().applied();
        net.run(300_000);
        assert!(!net.rs[0].member().view().members.contains(&origin));
        // Without it, request 1 completes and request 2 fails; 3 stays queued.
        let assigned = |fx: &[Effect]| -> Vec<Request> {
            fx.iter()
                .filter_map(|e| match e {
                    Effect::Assigned { consumer, req } if *consumer == MemberId(1) => {
                        Some(req.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        net.rs[1]
            .submit(&Op::Ready {
                consumer: MemberId(1),
                credits: 1,
            })
            .unwrap();
        net.run(5_000);
        let a = assigned(&net.fx[1]).pop().unwrap();
        assert_eq!(a.id, req(1).id);
        net.rs[1]
            .submit(&Op::Complete {
                consumer: MemberId(1),
                id: a.id,
                instance: a.instance,
                step: a.step.clone(),
                outputs: Vec::new(),
                result: Some(b"one".to_vec()),
                reply: None,
                meta: Meta::default(),
                credits: 1,
            })
            .unwrap();
        net.run(5_000);
        let b = assigned(&net.fx[1]).pop().unwrap();
        assert_eq!(b.id, req(2).id);
        net.rs[1]
            .submit(&Op::Fail {
                consumer: MemberId(1),
                id: b.id,
                instance: b.instance,
                step: b.step.clone(),
                error: "two failed".into(),
                status: 500,
                credits: 0,
            })
            .unwrap();
        net.run(5_000);
        // Back, in the same process: a joiner that knows what its replica had applied.
        let mut j = joiner(0xbac, net.now);
        let unanswered = net.rs[2].take_unanswered();
        assert_eq!(
            unanswered.len(),
            4,
            "four pushes, none answered before it went dark"
        );
        j.set_rejoining(since, unanswered);
        net.rs[2] = j;
        net.down[2] = false;
        net.fx[2].clear();
        net.run(100_000);
        assert_eq!(net.rs[2].status(), Status::Serving);
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
        let told: Vec<&Effect> = net.fx[2]
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Completed { .. } | Effect::Failed { .. } | Effect::Rejoined { .. }
                )
            })
            .collect();
        assert!(
            matches!(
                told.as_slice(),
                [
                    Effect::Completed { id: i1, result: Some(r), terminal: true, .. },
                    Effect::Failed { id: i2, error, .. },
                    Effect::Rejoined { origin: o, pending, pushed_again: 1, outcomes_dropped: false },
                ] if *i1 == req(1).id && r == b"one" && *i2 == req(2).id
                    && error == "two failed" && *o == origin
                    && *pending == vec![req(3).id, req(4).id]
            ),
            "{told:?}"
        );
        // Request 4 never reached the order: pushed again, it is queued behind 3, once.
        assert_eq!(net.rs[2].unanswered(), 2);
        assert_eq!(net.rs[0].queue().queue_depth("q"), Some(2));
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    }

    #[test]
    fn a_joiner_gets_the_queue_and_is_told_its_pipelines() {
        let mut net = Net::new(2);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.rs[1]
            .submit(&Op::Pipelines {
                by: MemberId(1),
                version: 3,
                queues: vec![spec()],
                docs: vec!["{\"name\": \"p\"}".into()],
            })
            .unwrap();
        net.run(5_000);
        net.rs.push(joiner(0x5eed, net.now));
        net.down.push(false);
        net.fx.push(Vec::new());
        net.run(50_000);
        assert_eq!(net.rs[2].status(), Status::Serving);
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
        assert!(net.rs[0].stats().states_sent + net.rs[1].stats().states_sent >= 1);
        let told: Vec<&Effect> = net.fx[2]
            .iter()
            .filter(|e| matches!(e, Effect::Pipelines { .. }))
            .collect();
        assert!(
            matches!(told.as_slice(), [Effect::Pipelines { version: 3, docs }] if docs.len() == 1),
            "{:?}",
            net.fx[2]
        );
    }
}
