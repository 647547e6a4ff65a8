//! [`Member`]: one member of a group, composing the protocol's parts: [`Order`] (what it holds
//! and delivers), [`Transmitter`] (what leaves it, loss recovery), [`Change`] (membership and
//! the view change) and [`StateTransfer`] (a joiner's state). The member routes each input to
//! the parts and, when the view change decides on a new view, resets them for it.

use super::config::{Admission, ConfigError, ProtoConfig, Sabotage};
use super::event::{Delivered, Dest, ProtoDrop, Stats, SubmitError, Transmit};
use super::fragment::Reassembly;
use super::membership::change::{Change, Ctx, Installed, Installing};
use super::membership::state_transfer::{Chunk, StateTransfer};
use super::membership::{Ballot, Ctl, Status, StopReason};
use super::order::{Admit, Order, TENTATIVE};
use super::transmit::{Framing, RtoBounds, Transmitter};
use crate::types::{GroupId, Instant, MemberId, Seq, View, ViewId};
use crate::wire::{self, Frame, Key, Kind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One member of a view running the total-order multicast. See the [module docs](super) for
/// the order in which a host calls it.
#[derive(Debug)]
pub struct Member {
    pub(super) cfg: ProtoConfig,
    key: Key,
    group: GroupId,
    view: View,
    me: MemberId,
    rank: usize,
    now: Instant,
    stats: Stats,
    restarted_by: Option<MemberId>,
    /// Where this member's durable log reaches (see [`Member::set_persisted`]).
    persisted: u64,
    /// Per rank: the other process last told it was replaced, and when.
    replaced_told: Vec<Option<(u64, Instant)>>,
    /// Per member of a newer view that we heard: when we last sent it our row (it answers
    /// with the commit we missed, see [`Member::ask_for_commit`]).
    asked_commit: BTreeMap<MemberId, Instant>,
    /// The host asked to leave and the leave has not started yet: it starts once this member
    /// serves no joiner its state (see [`Member::leave`]).
    leave_pending: bool,
    /// Joiners of this view this member is to send the state to and has not started on yet
    /// (the host sends it when it handles the view change).
    state_owed: BTreeSet<MemberId>,
    /// This process: drawn at random by the host when it started (a joiner's join nonce).
    /// Peers take one process per id and view for that member (the one a decision names, or
    /// in the first view the first whose row proves it heard them: [`Order::admit`]) and
    /// refuse the frames of any other: a process restarted from the group file into a view its
    /// previous self ran in would otherwise send its own messages under its previous self's
    /// sequence numbers, and peers would deliver different messages in one slot. It finds out
    /// from a peer's [`Ctl::Replaced`] naming it.
    incarnation: u64,
    deliveries: VecDeque<Delivered>,
    /// Deliveries that came before [`Member::expect_state`] and follow the state.
    after_state: VecDeque<Delivered>,
    pub(super) order: Order,
    pub(super) tx: Transmitter,
    pub(super) ms: Change,
    st: StateTransfer,
    /// Control messages arriving in fragments.
    frag: Reassembly,
}

impl Member {
    /// A member of `view` (the group file's, for a member that starts with the group).
    /// `incarnation` stands for this process: a random number drawn by the host when it
    /// starts, different for every process that runs with this id (see [`crate::wire`]).
    pub fn new(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        view: View,
        me: MemberId,
        incarnation: u64,
        now: Instant,
    ) -> Result<Member, ConfigError> {
        let n = view.len();
        if n == 0 || n > wire::MAX_MEMBERS {
            return Err(ConfigError::ViewSize);
        }
        if incarnation == 0 || incarnation & TENTATIVE != 0 {
            return Err(ConfigError::Incarnation(incarnation));
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
        let bounds = RtoBounds {
            floor: cfg.rto,
            ceiling: cfg.rto_max,
        };
        Ok(Member {
            persisted: 0,
            order: Order::new(n, rank, cfg.recv_window(), incarnation),
            tx: Transmitter::new(
                Framing {
                    key: key.clone(),
                    group,
                    me,
                    max_frame: cfg.max_frame,
                    incarnation,
                },
                &view,
                rank,
                bounds,
                now,
            ),
            ms: Change::new(n, now, Status::Serving),
            st: StateTransfer::new(cfg.max_frame),
            frag: Reassembly::default(),
            deliveries: VecDeque::new(),
            after_state: VecDeque::new(),
            now,
            stats: Stats::default(),
            restarted_by: None,
            replaced_told: vec![None; n],
            asked_commit: BTreeMap::new(),
            leave_pending: false,
            state_owed: BTreeSet::new(),
            incarnation,
            cfg,
            key,
            group,
            view,
            me,
            rank,
        })
    }

    /// A process asking to join the group through `contacts` (members it knows). It is in no
    /// view ([`Status::Joining`]) until a leader admits it and a view including it is committed;
    /// then it receives the application's state ([`Delivered::State`]) before any message.
    /// `nonce` stands for this process: a random number from the host, different for every
    /// process that joins with this id (a restart, a rejoin after an exclusion).
    pub fn joining(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        me: MemberId,
        contacts: Vec<MemberId>,
        nonce: u64,
        now: Instant,
    ) -> Result<Member, ConfigError> {
        let mut m = Member::new(
            cfg,
            key,
            group,
            View::new(ViewId(0), vec![me]),
            me,
            nonce,
            now,
        )?;
        m.ms = Change::joining(now, contacts, nonce);
        Ok(m)
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
        self.order.delivered_slots()
    }
    /// Where this member's durable log reaches (see [`crate::wire::Row::persisted`]; it never
    /// goes back), told to the others in its rows.
    pub fn set_persisted(&mut self, position: u64) {
        if position > self.persisted {
            // What waits for a majority's disks (a pusher's acceptance, a run's end) waits
            // for this row: it goes at the next chance, not at the next status period (an
            // idle group's heartbeat).
            self.tx.status_to_all();
        }
        self.persisted = self.persisted.max(position);
        self.order.set_persisted(self.persisted);
    }
    /// This member's log was replaced (it took a state and its log starts again from it):
    /// its rows say `position` from now on, even if that is less than they said before.
    pub fn reset_persisted(&mut self, position: u64) {
        self.persisted = position;
        self.order.set_persisted(position);
    }

    /// Per rank of the current view, where that member's durable log reaches: this member's
    /// as set, the others' as their rows last said (0 before any).
    pub fn persisted(&self) -> Vec<u64> {
        (0..self.view.len())
            .map(|r| self.order.persisted(r))
            .collect()
    }
    /// Slot `g` of the current view as this member holds it, before it is delivered (for
    /// speculation: see [`crate::replica`]): `Some(Some(payload))` a message, `Some(None)` a
    /// null; `None` when not held, already delivered, or when nothing may be speculated on
    /// (not serving: a view change under way, a joiner's state not in yet, stopped).
    pub fn held_slot(&self, g: u64) -> Option<Option<&[u8]>> {
        if self.ms.status() != Status::Serving || self.st.awaiting() {
            return None;
        }
        self.order.held_slot(g)
    }
    /// One past the last slot of the current view this member holds (for speculation).
    pub fn held_slots_end(&self) -> u64 {
        self.order.held_slots_end()
    }
    /// Own messages (data or null) issued so far.
    pub fn sent(&self) -> u64 {
        self.order.own_highest()
    }
    /// Whether this member holds message `seq` of `sender` (delivered or not).
    pub fn has_received(&self, sender: MemberId, seq: Seq) -> bool {
        self.view
            .rank_of(sender)
            .is_some_and(|r| self.order.has(r, seq.0))
    }
    /// Slots held but not yet delivered, over all senders (bounded by flow control).
    pub fn buffered_slots(&self) -> usize {
        self.order.buffered_slots()
    }
    /// Upper bound of [`Member::buffered_slots`].
    pub fn buffer_bound(&self) -> usize {
        self.view.len() * self.cfg.recv_window() as usize
    }
    /// What this member holds besides its ordering slots, for a memory checker: deliveries
    /// not yet taken, frames not yet sent, pending joins and catch-ups, and bytes of state
    /// transfer and of control messages arriving in fragments.
    pub fn buffered_other(&self) -> (usize, usize, usize, usize) {
        (
            self.deliveries.len(),
            self.tx.queued(),
            self.ms.buffered_entries(),
            self.st.buffered_bytes() + self.frag.bytes(),
        )
    }
    /// Own messages that can still be submitted before the window is full.
    /// Deliveries the host has not taken yet count against it too: in a view of one member a
    /// message is delivered as it is submitted, so the window alone would let a host that
    /// submits without taking its deliveries queue them without bound (simulator seed 15311:
    /// 82 at once), and a host that stops taking them (its disks behind) gets backpressure.
    pub fn window_room(&self) -> u64 {
        self.cfg
            .window
            .saturating_sub(self.order.window_used() + self.deliveries.len() as u64)
    }
    /// This process (see [`Member::new`]).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    /// The process this member takes member `m` of its view for (see `incarnation`'s docs),
    /// if it took one yet.
    pub fn process_of(&self, m: MemberId) -> Option<u64> {
        let r = self.view.rank_of(m)?;
        self.order.pinned().get(r).copied().filter(|&x| x != 0)
    }
    /// Members this one has not received any frame from yet.
    pub fn not_heard_from(&self) -> Vec<MemberId> {
        (0..self.view.len())
            .filter(|&r| r != self.rank && self.ms.last_heard(r).is_none())
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
        self.view.rank_of(m).and_then(|r| self.ms.last_heard(r))
    }

    /// Why this member stopped, once [`Status::is_final`].
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.ms.stop_reason()
    }

    /// Where this member stands; hosts check it after every step (see [`Status`]).
    pub fn status(&self) -> Status {
        let s = self.ms.status();
        if self.st.awaiting() && !s.is_final() {
            Status::Joining
        } else {
            s
        }
    }

    /// The view-change ballot this member leads, if any, and whether its decision was sent
    /// (to observe a change from outside: the simulator crashes leaders mid-change).
    pub fn leading(&self) -> Option<(Ballot, bool)> {
        self.ms.leading()
    }

    /// Members of the current view this member suspects.
    pub fn suspects(&self) -> Vec<MemberId> {
        self.ms.suspects(&self.view)
    }

    /// Lends the view change the member's other parts for one step.
    fn split(&mut self) -> (&mut Change, Ctx<'_>) {
        (
            &mut self.ms,
            Ctx {
                cfg: &self.cfg,
                view: &self.view,
                me: self.me,
                rank: self.rank,
                now: self.now,
                order: &mut self.order,
                tx: &mut self.tx,
                st: &mut self.st,
                stats: &mut self.stats,
            },
        )
    }

    /// Changes who may join from now on (the control plane's allowlist). Pending requests of
    /// processes no longer admitted are dropped; members already in the view stay.
    pub fn set_admission(&mut self, admission: Admission) {
        if let Admission::Listed(ok) = &admission {
            self.ms.retain_joins(ok);
        }
        self.cfg.admission = admission;
    }

    /// Asks the group to remove this member (graceful leave). Submit nothing more and wait until
    /// [`Member::window_room`] is back to the whole window before calling, or the messages not
    /// yet delivered are lost with the leave. The status becomes [`Status::Left`] once the view
    /// without this member is committed. The leave waits while a joiner is taking its state
    /// from this member, while the view has no other member, and while this member is not
    /// serving (a minority); and if the members the group can go on with are only joiners still
    /// waiting for their state, the group keeps this member until it has handed the state over.
    pub fn leave(&mut self) {
        self.leave_pending = true;
        self.try_leave();
    }

    /// Whether the host's leave is pending and nothing holds it back (see [`Member::leave`]).
    fn may_leave(&self) -> bool {
        self.leave_pending
            && !self.st.sending()
            && self.state_owed.is_empty()
            && self.view.len() > 1
            && matches!(self.ms.status(), Status::Serving | Status::Changing)
    }

    /// Starts the pending leave if nothing holds it back (see [`Member::leave`]).
    fn try_leave(&mut self) {
        if !self.may_leave() {
            // A joiner is taking (or is about to take) its state from us: leaving now would
            // wedge the view before the transfer ends, and if we are the only member with
            // the state, no view can keep both the state and the group (simulator seed
            // 101708: the leaving member's only peer was the joiner it was sending the state
            // to). The leave starts when the transfer is over (taken, or the joiner removed).
            return;
        }
        self.leave_pending = false;
        let (ms, mut cx) = self.split();
        ms.leave(&mut cx);
    }

    /// The host could not use the state this joiner received (it does not decode): this
    /// process holds none of the group's state, so it must not serve. It stops as if
    /// excluded (nothing more is delivered or sent; the group removes it as silent) and its
    /// host starts a new process to join again, as after an exclusion.
    pub fn refuse_state(&mut self) {
        self.ms.give_up();
        self.deliveries.clear();
        self.after_state.clear();
    }

    /// A member of the view (not a joiner) is to be sent the application's state as of the
    /// last delivery it was handed (a whole-group restart's recovery, see
    /// `replica/recovery.rs`): nothing more is delivered before the state
    /// ([`Delivered::State`]), and what was waiting to be taken comes after it.
    pub fn expect_state(&mut self) {
        self.st.expect(self.view.id);
        self.after_state.extend(self.deliveries.drain(..));
    }

    /// Starts sending `state` (the application's snapshot as of the install of the current
    /// view) to joiner `to`. Called by the host on a view change whose `state_from` is this
    /// member, for each of its `joined`, before handling any later delivery.
    pub fn send_state(&mut self, to: MemberId, state: Vec<u8>) {
        self.state_owed.remove(&to);
        if self.view.rank_of(to).is_none() {
            return;
        }
        self.st.send(
            to,
            self.view.id,
            state,
            self.now,
            &mut self.tx,
            &mut self.stats,
        );
    }

    /// Offers a message for ordering.
    pub fn submit(&mut self, payload: Vec<u8>) -> Result<Seq, SubmitError> {
        if payload.len() > self.cfg.max_payload {
            return Err(SubmitError::TooLarge {
                size: payload.len(),
                max: self.cfg.max_payload,
            });
        }
        match self.ms.status() {
            Status::Serving | Status::Changing => {}
            s => return Err(SubmitError::NotServing(s.label())),
        }
        if self.window_room() == 0 {
            self.stats.window_full += 1;
            return Err(SubmitError::WindowFull);
        }
        let seq = self.order.push_own(payload);
        self.stats.submitted += 1;
        if self.view.len() == 1 && self.ms.frozen().is_none() {
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
            self.handle_control(h.sender, h.view, h.incarnation, frame.control_payload());
            return;
        }
        if h.group == self.group && h.view < self.view.id {
            // A stale member: tell it how its view ended (it learns it was excluded).
            let (ms, mut cx) = self.split();
            ms.catch_up(&mut cx, h.sender, h.incarnation);
        } else if h.group == self.group && h.view > self.view.id {
            // A newer view: we may have missed its commit. Counts as a sign of life, and we
            // ask its sender for the commit.
            if let Some(r) = self.view.rank_of(h.sender) {
                self.ms.heard(r, now);
            }
            self.ask_for_commit(h.sender);
        }
        let drop = if h.group != self.group {
            Some(ProtoDrop::WrongGroup)
        } else if h.view != self.view.id || matches!(self.ms.status(), Status::Joining) {
            Some(ProtoDrop::WrongView)
        } else if h.sender == self.me {
            Some(ProtoDrop::OwnFrame)
        } else if self.view.rank_of(h.sender).is_none() {
            Some(ProtoDrop::UnknownSender)
        } else if frame.row.len() != self.view.len() {
            Some(ProtoDrop::RowSize)
        } else {
            None
        };
        if let Some(d) = drop {
            self.stats.drop_frame(d);
            return;
        }
        if self.ms.status().is_final() {
            return;
        }
        let r = self.view.rank_of(h.sender).unwrap_or(0);
        if !self.admit(r, h.incarnation, Some(frame.row.incarnation(self.rank))) {
            return;
        }
        self.ms.heard_in_minority(r, self.view.len());
        if self.ms.last_heard(r).is_none() {
            // First contact: answer at once so start-up barriers complete quickly.
            self.tx.status_to(r);
        }
        self.ms.heard(r, now);
        self.tx.on_heard(r);
        let merged = self.order.merge_row(r, &frame.row);
        if (merged.beyond_sent || merged.other_process) && self.restarted_by.is_none() {
            // A peer holds messages of ours that we never sent: this process is a new
            // incarnation of a member that already ran in this view.
            self.restarted_by = Some(self.view.members[r]);
        }
        self.tx
            .on_ack(r, merged.acked_before, merged.acked_after, self.now);
        if h.flags & wire::FLAG_GAP != 0
            && !self.cfg.sabotaged(Sabotage::NoRetransmit)
            && self.tx.on_gap_report(r, merged.acked_after, self.now)
        {
            self.stats.fast_retransmits += 1;
        }
        if h.kind == Kind::Data {
            let receipt = self
                .order
                .receive(r, h.seq.0, &frame, self.now, &mut self.stats);
            if receipt.advanced {
                self.tx.status_to_all();
            }
            if receipt.answer {
                self.tx.status_to(r);
            }
            self.report_gaps();
        }
        if self.ms.frozen().is_none() {
            self.stats.nulls_sent += self.order.fill_nulls();
        }
        self.deliver();
    }

    /// Delivers what the ordering allows, unless wedged or waiting for the state.
    fn deliver(&mut self) {
        if self.ms.frozen().is_some() || self.ms.status().is_final() {
            return;
        }
        if let Some(bytes) = self.st.take_complete() {
            self.deliveries.push_back(Delivered::State(bytes));
            self.deliveries.extend(self.after_state.drain(..));
            self.ms.state_arrived();
        }
        if self.st.awaiting() {
            return;
        }
        let check = !self.cfg.sabotaged(Sabotage::DeliverBeforeStable);
        self.stats.delivered += self.order.deliver(&self.view, check, &mut self.deliveries);
    }

    /// Advances timers: membership, retransmissions and periodic status rows.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.try_leave();
        let installing = {
            let (ms, mut cx) = self.split();
            ms.on_timer(&mut cx)
        };
        self.follow(installing);
        if self.ms.status().is_final() {
            // Excluded or left: nothing is sent any more, so nothing is retransmitted (the
            // retransmission timers would queue resends that never leave, without end).
            return;
        }
        let busy = self.order.busy(self.tx.unsent());
        let period = if busy {
            self.cfg.status_interval
        } else {
            self.cfg.heartbeat
        };
        self.report_gaps();
        let order = &self.order;
        self.tx.on_timeout(
            self.now,
            period,
            |p| order.acked_by(p),
            !self.cfg.sabotaged(Sabotage::NoRetransmit),
        );
    }

    /// The next instant at which [`Member::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Instant {
        if self.ms.status().is_final() {
            return Instant(u64::MAX);
        }
        if self.may_leave() {
            return self.now;
        }
        let soon = self
            .order
            .busy(self.tx.unsent())
            .then(|| self.now + self.cfg.status_interval);
        let gap = self
            .order
            .next_gap_report(|r| self.tx.reorder_window(r))
            .unwrap_or(Instant(u64::MAX));
        self.tx
            .deadline(soon)
            .min(self.membership_deadline())
            .min(gap)
    }

    /// Gaps in peers' messages held long enough to be losses are reported to their senders
    /// now (a row flagged `GAP`; see `Order::gap_due`).
    fn report_gaps(&mut self) {
        for r in 0..self.view.len() {
            if self
                .order
                .take_due_gap(r, self.now, self.tx.reorder_window(r))
            {
                self.tx.status_to(r);
            }
        }
    }

    fn membership_deadline(&self) -> Instant {
        match self.ms.status() {
            Status::Excluded | Status::Left => return Instant(u64::MAX),
            _ => {}
        }
        self.ms
            .deadline(self.view.len(), self.rank, &self.cfg, self.st.sending())
    }

    /// The next delivered message, view change or joiner state, in total order.
    pub fn poll_delivery(&mut self) -> Option<Delivered> {
        self.deliveries.pop_front()
    }

    /// Returns a transmitted frame's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.tx.recycle(buf);
    }

    /// The next frame to send. `now` is the host's clock: new messages are stamped with it
    /// (their retransmission deadline and round-trip sample), so a member that was quiet does
    /// not start them from the last instant it was called with (a deadline already past, a
    /// spurious resend, and an inflated round trip).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.now = self.now.max(now);
        if !self.tx.has_pending() && self.view.len() > 1 && !self.ms.status().is_final() {
            self.tx
                .produce(&self.order, self.ms.frozen(), self.now, &mut self.stats);
        }
        self.tx.pop()
    }

    fn handle_control(&mut self, sender: MemberId, view: ViewId, inc: u64, payload: &[u8]) {
        let Some(ctl) = Ctl::decode(payload) else {
            self.stats.bad_control += 1;
            return;
        };
        if let Ctl::Fragment {
            msg,
            index,
            count,
            bytes,
        } = ctl
        {
            // Put back together, the message is handled as if one frame had carried it.
            match self.frag.add(sender, msg, index, count, bytes) {
                Ok(Some(whole))
                    if !matches!(Ctl::decode(&whole), None | Some(Ctl::Fragment { .. })) =>
                {
                    self.handle_control(sender, view, inc, &whole)
                }
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => self.stats.bad_control += 1,
            }
            return;
        }
        match ctl {
            Ctl::Commit { decision, to } => {
                let installing = {
                    let (ms, mut cx) = self.split();
                    ms.on_commit(&mut cx, decision, to)
                };
                self.follow(installing);
                return;
            }
            Ctl::Join { nonce, echo } => {
                let installing = {
                    let (ms, mut cx) = self.split();
                    ms.on_join(&mut cx, sender, nonce, echo)
                };
                self.follow(installing);
                return;
            }
            Ctl::Challenge => {
                self.ms.on_challenge(sender, inc);
                return;
            }
            _ => {}
        }
        if self.ms.status().is_final() || self.view.id == ViewId(0) {
            return;
        }
        let drop = if view < self.view.id {
            let (ms, mut cx) = self.split();
            ms.catch_up(&mut cx, sender, inc);
            Some(ProtoDrop::WrongView)
        } else if view > self.view.id {
            self.ask_for_commit(sender);
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
            self.stats.drop_frame(d);
            return;
        }
        let r = self.view.rank_of(sender).unwrap_or(0);
        if let Ctl::Replaced { you } = ctl {
            // Names this process: of this run, whoever sent it (and a key holder could as well
            // stop sending to us).
            if you == self.incarnation && self.restarted_by.is_none() {
                self.restarted_by = Some(sender);
            }
            return;
        }
        if !self.admit(r, inc, None) {
            return;
        }
        self.ms.heard(r, self.now);
        self.ms.heard_in_minority(r, self.view.len());
        if self.ms.is_suspected(r) && matches!(ctl, Ctl::Suspect { .. } | Ctl::Leave) {
            // A suspected member's suspicions are not taken up (a healed minority's are
            // stale). Its ballots are still answered: Paxos is safe whoever leads, and with
            // one-way suspicions (a leader suspected by a member it does not suspect) ignoring
            // them could leave every would-be leader waiting for a member that ignores it.
            return;
        }
        match ctl {
            Ctl::State {
                view,
                offset,
                total,
                chunk,
            } => {
                let part = Chunk {
                    view,
                    offset,
                    total,
                    bytes: chunk,
                };
                self.st
                    .on_chunk(sender, part, &mut self.tx, &mut self.stats);
                self.deliver();
            }
            Ctl::StateAck { view, have } => {
                self.st
                    .on_ack(sender, view, have, self.now, &mut self.tx, &mut self.stats);
            }
            ctl => {
                let installing = {
                    let (ms, mut cx) = self.split();
                    ms.on_ctl(&mut cx, r, sender, ctl)
                };
                self.follow(installing);
            }
        }
        let installing = {
            let (ms, mut cx) = self.split();
            ms.drive(&mut cx)
        };
        self.follow(installing);
    }

    /// Whether a frame of process `inc` counts for rank `r` ([`Order::admit`]); `echo` is what
    /// the frame's row says of our own process (control frames have no row). A frame that
    /// does not count is counted as dropped and answered: an unconfirmed process gets our row
    /// (which echoes it), another process is told it was replaced.
    fn admit(&mut self, r: usize, inc: u64, echo: Option<u64>) -> bool {
        match self.order.admit(r, inc, echo) {
            Admit::Pinned => true,
            Admit::Unconfirmed => {
                self.stats.drop_frame(ProtoDrop::Unconfirmed);
                if echo.is_some() {
                    // Its answer to our row counts, and it resends what we dropped (the row
                    // is flagged as reporting a gap).
                    self.tx.resend_request_to(r);
                } else {
                    // A control frame has no row to prove its process is of this run: it
                    // counts once a data or status frame of that process has (it is sent
                    // again).
                    self.tx.status_to(r);
                }
                false
            }
            Admit::Other => {
                self.stats.drop_frame(ProtoDrop::OtherIncarnation);
                self.tell_replaced(r, inc);
                false
            }
        }
    }

    /// A member of a newer view was heard: send it our row (at most once per status interval
    /// and member), so that it tells us how our view ended ([`Change::catch_up`]). Its members
    /// answer our frames, but ours may go to none of them: a member left alone in its view
    /// (its only peer crashed after committing the next view, whose commit this member missed)
    /// sends only to that peer, and would wait for good (simulator seed 5285). A joiner (no view
    /// yet) has its own way in.
    fn ask_for_commit(&mut self, to: MemberId) {
        if self.view.id == ViewId(0) || self.ms.status().is_final() || to == self.me {
            return;
        }
        let due = self
            .asked_commit
            .get(&to)
            .is_none_or(|&t| self.now >= t + self.cfg.status_interval);
        if due {
            self.asked_commit.insert(to, self.now);
            self.tx
                .status_now(to, &self.order, self.ms.frozen(), &mut self.stats);
        }
    }

    /// Tells process `process`, whose frame of rank `r` was refused, that another process
    /// holds its place (at most once per status interval and rank).
    fn tell_replaced(&mut self, r: usize, process: u64) {
        let due = self.replaced_told[r]
            .is_none_or(|(p, t)| p != process || self.now >= t + self.cfg.status_interval);
        if due {
            self.replaced_told[r] = Some((process, self.now));
            let ctl = Ctl::Replaced { you: process };
            self.tx
                .emit_ctl(Dest::One(self.view.members[r]), &ctl, &mut self.stats);
        }
    }

    /// Installs what the view change decided, if anything.
    fn follow(&mut self, installing: Option<Installing>) {
        match installing {
            None => {}
            Some(Installing::Survivor(d)) => {
                let mut out = std::mem::take(&mut self.deliveries);
                let installed = {
                    let (ms, mut cx) = self.split();
                    ms.install(&mut cx, d, &mut out)
                };
                self.deliveries = out;
                if let Some(i) = installed {
                    self.start_view(i);
                }
            }
            Some(Installing::Joiner(d)) => {
                let installed = {
                    let (ms, mut cx) = self.split();
                    ms.install_joiner(&mut cx, d)
                };
                self.start_view(installed);
            }
        }
    }

    /// Resets every part for the installed view, reports it, and submits again the own
    /// messages the old view did not deliver.
    fn start_view(&mut self, installed: Installed) {
        let Installed {
            change,
            again,
            leave_postponed,
        } = installed;
        let view = change.view.clone();
        let n = view.len();
        self.rank = view.rank_of(self.me).unwrap_or(0);
        self.order = Order::new(n, self.rank, self.cfg.recv_window(), self.incarnation);
        self.order.set_persisted(self.persisted);
        // The processes the decision names are the view's: no other counts in it (a frame of
        // an earlier run, with the same view number, names another).
        for (m, inc) in self.ms.decided_incarnations() {
            if let Some(r) = view.rank_of(m) {
                self.order.pin(r, inc);
            }
        }
        self.tx.reset(&view, self.rank, self.now);
        self.replaced_told = vec![None; n];
        self.asked_commit.clear();
        self.ms.reset(n, self.rank, self.now);
        self.st.clear_outgoing();
        self.frag.retain(|m| view.rank_of(m).is_some());
        self.view = view;
        self.state_owed = if change.state_from == Some(self.me) {
            change.joined.iter().copied().collect()
        } else {
            BTreeSet::new()
        };
        self.leave_pending |= leave_postponed;
        self.deliveries.push_back(Delivered::View(change));
        for p in again {
            self.order.push_own(p);
        }
        if n == 1 {
            self.deliver();
        }
    }
}

#[cfg(test)]
impl Member {
    /// Queues a control message as this member would (tests forge decisions with it).
    pub(super) fn emit_ctl_for_tests(&mut self, dest: Dest, ctl: &Ctl) {
        self.tx.emit_ctl(dest, ctl, &mut self.stats);
    }
}
