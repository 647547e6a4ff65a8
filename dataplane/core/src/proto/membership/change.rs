//! The view change: failure detection, wedging, single-decree Paxos on the next view and its
//! cut, the ragged-edge cleanup and the install, joins and leaves (the protocol is described in
//! [`super`]).
//!
//! [`Change`] owns the membership state of one member; its leader's side (ballots, the cut) is in
//! `ballot.rs`, the install of a decided view in `install.rs`. It acts on the member's other parts
//! through a [`Ctx`] the member lends it (ordering to freeze and clean up, the transmitter for
//! control messages, state transfer) and never calls back into the member: when a decision is
//! to be installed it says so ([`Installing`]), and the member resets its parts for the new
//! view.

use super::ballot::{Leading, Promised};
use super::state_transfer::StateTransfer;
use super::{Ballot, Ctl, Decision, Status, StopReason, ViewChange};
use crate::proto::config::{Admission, ProtoConfig};
use crate::proto::event::{Dest, ProtoDrop, Stats};
use crate::proto::order::Order;
use crate::proto::transmit::Transmitter;
use crate::types::{Instant, MemberId, View, ViewId};
use crate::wire;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

/// The member's other parts and its situation, lent to the view change for one step.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a ProtoConfig,
    pub(crate) view: &'a View,
    pub(crate) me: MemberId,
    pub(crate) rank: usize,
    pub(crate) now: Instant,
    pub(crate) order: &'a mut Order,
    pub(crate) tx: &'a mut Transmitter,
    pub(crate) st: &'a mut StateTransfer,
    pub(crate) stats: &'a mut Stats,
}

impl Ctx<'_> {
    pub(super) fn n(&self) -> usize {
        self.view.len()
    }
    pub(super) fn emit(&mut self, dest: Dest, ctl: &Ctl) {
        self.tx.emit_ctl(dest, ctl, self.stats);
    }
}

/// A decision this member must install now.
#[derive(Debug)]
pub(crate) enum Installing {
    /// As a member of the view the decision ends.
    Survivor(Decision),
    /// As a joiner admitted by it.
    Joiner(Decision),
}

/// What the install of a decision left to the member: the new view and its own messages to
/// submit again in it.
#[derive(Debug)]
pub(crate) struct Installed {
    pub(crate) change: ViewChange,
    pub(crate) again: Vec<Vec<u8>>,
    /// This member was leaving, and the decision kept it (no other member had the state): it
    /// asks to leave again once it has handed the state over.
    pub(crate) leave_postponed: bool,
}

/// Frozen `received` counts and delivered slots, once wedged.
pub(crate) type Frozen = (Vec<u64>, u64);

/// Membership state of one member. See the module docs.
#[derive(Debug)]
pub(crate) struct Change {
    pub(super) status: Status,
    /// Why the status became final.
    pub(super) stop: Option<StopReason>,
    /// When each rank was last heard from (own entry: `None`).
    pub(super) last_heard: Vec<Option<Instant>>,
    pub(super) suspected: Vec<bool>,
    /// When this member itself first suspected each rank.
    pub(super) suspected_at: Vec<Option<Instant>>,
    pub(super) frozen: Option<Frozen>,
    pub(super) wedged_at: Option<Instant>,
    pub(super) promised: Option<Ballot>,
    pub(super) accepted: Option<(Ballot, Decision)>,
    pub(super) round_seen: u32,
    pub(super) leading: Option<Leading>,
    /// Until when this member starts no ballot of its own: it was outbid by, or promised, another
    /// leader's higher ballot, and leaves that leader a failure timeout to finish. Without it,
    /// members that each take themselves for the leader (the lowest ranks suspecting each other
    /// after a partition) outbid each other forever (seeds 100120, 110199, 118662, 141687).
    pub(super) yield_until: Option<Instant>,
    /// The decision that ended the previous view (sent to stale members).
    pub(super) last_commit: Option<Decision>,
    pub(super) catchup_at: BTreeMap<MemberId, Instant>,
    pub(super) next_ctl_at: Instant,
    pub(super) view_started: Instant,
    /// The configured first view: a member never heard from is given `startup_grace` from this
    /// member's start before it is suspected (it may not have started yet). In later views
    /// every member was alive when the view was agreed.
    pub(super) initial: bool,
    /// Admitted join requests not yet in a view, with when each was last repeated (a joiner
    /// repeats its request until it is in; a request not repeated for `failure_timeout` is
    /// dropped).
    pub(super) joins: BTreeMap<MemberId, (Instant, u64)>,
    /// Members that joined in this view (a repeated `Join` from them gets the commit again).
    pub(super) joined_now: BTreeSet<MemberId>,
    /// The join nonce of every member of the view that came in by a join (see
    /// [`Decision::nonces`]).
    pub(super) nonces: BTreeMap<MemberId, u64>,
    /// A joiner's own nonce.
    pub(super) my_nonce: u64,
    pub(super) leaving: bool,
    pub(super) leaving_ranks: Vec<bool>,
    /// A joiner's contacts.
    pub(super) contacts: Vec<MemberId>,
    /// A joiner's contacts' processes, from their challenges (see [`Ctl::Join`]).
    pub(super) contact_processes: BTreeMap<MemberId, u64>,
}

impl Change {
    pub(crate) fn new(n: usize, now: Instant, status: Status) -> Change {
        Change {
            status,
            stop: None,
            last_heard: vec![None; n],
            suspected: vec![false; n],
            suspected_at: vec![None; n],
            frozen: None,
            wedged_at: None,
            promised: None,
            accepted: None,
            round_seen: 0,
            leading: None,
            yield_until: None,
            last_commit: None,
            catchup_at: BTreeMap::new(),
            next_ctl_at: now,
            view_started: now,
            initial: true,
            joins: BTreeMap::new(),
            joined_now: BTreeSet::new(),
            nonces: BTreeMap::new(),
            my_nonce: 0,
            leaving: false,
            leaving_ranks: vec![false; n],
            contacts: Vec::new(),
            contact_processes: BTreeMap::new(),
        }
    }

    /// A process asking to join through `contacts`, with `nonce` for this process.
    pub(crate) fn joining(now: Instant, contacts: Vec<MemberId>, nonce: u64) -> Change {
        let mut c = Change::new(1, now, Status::Joining);
        c.contacts = contacts;
        c.my_nonce = nonce;
        c
    }

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    pub(crate) fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// A joiner's state arrived: it serves.
    pub(crate) fn state_arrived(&mut self) {
        self.status = Status::Serving;
    }

    /// The counts frozen when this member wedged.
    pub(crate) fn frozen(&self) -> Option<&Frozen> {
        self.frozen.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn is_leading(&self) -> bool {
        self.leading.is_some()
    }

    /// The ballot this member leads, if any, and whether its decision is out.
    pub(crate) fn leading(&self) -> Option<(Ballot, bool)> {
        self.leading
            .as_ref()
            .map(|l| (l.ballot, l.decision.is_some()))
    }

    pub(crate) fn last_heard(&self, r: usize) -> Option<Instant> {
        self.last_heard.get(r).copied().flatten()
    }

    /// Rank `r` was heard from.
    pub(crate) fn heard(&mut self, r: usize, now: Instant) {
        if let Some(h) = self.last_heard.get_mut(r) {
            *h = Some(now);
        }
    }

    pub(crate) fn suspects(&self, view: &View) -> Vec<MemberId> {
        (0..view.len())
            .filter(|&r| self.suspected[r])
            .map(|r| view.members[r])
            .collect()
    }

    pub(crate) fn is_suspected(&self, r: usize) -> bool {
        self.suspected.get(r).copied().unwrap_or(false)
    }

    /// Join requests from processes not in `admitted` are forgotten.
    pub(crate) fn retain_joins(&mut self, admitted: &BTreeSet<MemberId>) {
        self.joins.retain(|m, _| admitted.contains(m));
    }

    /// The processes the last installed decision names for the members of its view.
    pub(crate) fn decided_incarnations(&self) -> Vec<(MemberId, u64)> {
        self.last_commit
            .as_ref()
            .map(|d| d.incarnations.clone())
            .unwrap_or_default()
    }

    /// Memory held for pending joins and catch-ups, in entries.
    pub(crate) fn buffered_entries(&self) -> usize {
        self.joins.len() + self.catchup_at.len()
    }

    /// Per-view state for a newly installed view of `n` members where this member has `rank`.
    pub(crate) fn reset(&mut self, n: usize, rank: usize, now: Instant) {
        self.last_heard = vec![None; n];
        self.suspected = vec![false; n];
        self.suspected_at = vec![None; n];
        self.leaving_ranks = vec![false; n];
        if self.leaving {
            self.leaving_ranks[rank] = true;
        }
        self.frozen = None;
        self.wedged_at = None;
        self.promised = None;
        self.accepted = None;
        self.leading = None;
        self.yield_until = None;
        self.catchup_at.clear();
        self.view_started = now;
        self.initial = false;
        self.next_ctl_at = now;
        if matches!(self.status, Status::Changing | Status::Minority) {
            self.status = Status::Serving;
        }
    }

    /// Asks the group to remove this member (graceful leave).
    pub(crate) fn leave(&mut self, cx: &mut Ctx<'_>) {
        if matches!(self.status, Status::Serving | Status::Changing) && cx.n() > 1 {
            self.leaving = true;
            self.leaving_ranks[cx.rank] = true;
            self.wedge(cx);
            self.next_ctl_at = cx.now;
        }
    }

    /// Stops delivering and sending, and freezes the counts this member reports.
    pub(super) fn wedge(&mut self, cx: &mut Ctx<'_>) {
        if self.frozen.is_none() {
            self.frozen = Some((cx.order.contiguous(), cx.order.delivered_slots()));
            self.wedged_at = Some(cx.now);
            cx.tx.status_to_all();
        }
        if self.status == Status::Serving {
            self.status = Status::Changing;
        }
    }

    pub(super) fn suspect_rank(&mut self, cx: &mut Ctx<'_>, r: usize, own: bool) {
        if r >= cx.n() || self.suspected[r] {
            return;
        }
        self.suspected[r] = true;
        if own {
            self.suspected_at[r] = Some(cx.now);
            cx.stats.suspicions += 1;
        }
        self.wedge(cx);
        self.next_ctl_at = cx.now;
    }

    /// The membership timer: join requests of a joiner, suspicions of silent members,
    /// repetition of what the view change waits for, and the change itself.
    pub(crate) fn on_timer(&mut self, cx: &mut Ctx<'_>) -> Option<Installing> {
        let now = cx.now;
        let period = cx.cfg.status_interval.max(Duration::from_micros(200));
        match self.status {
            Status::Excluded | Status::Left => return None,
            Status::Joining => {
                if now >= self.next_ctl_at {
                    self.next_ctl_at = now + period;
                    for c in self.contacts.clone() {
                        let join = Ctl::Join {
                            nonce: self.my_nonce,
                            echo: self.contact_processes.get(&c).copied().unwrap_or(0),
                        };
                        cx.emit(Dest::One(c), &join);
                    }
                }
                return None;
            }
            _ => {}
        }
        let timeout = cx.cfg.failure_timeout;
        self.joins
            .retain(|_, (t, _)| now.saturating_since(*t) < timeout);
        for r in 0..cx.n() {
            if r == cx.rank || self.suspected[r] {
                continue;
            }
            if now >= self.suspect_at(r, cx.cfg) {
                self.suspect_rank(cx, r, true);
            }
        }
        if now >= self.next_ctl_at {
            self.next_ctl_at = now + period;
            self.resend(cx);
        }
        self.drive(cx)
    }

    /// When rank `r` is suspected if it stays silent: `failure_timeout` after it was last heard
    /// from; in the configured first view, a member never heard from gets `startup_grace` from
    /// this member's start (without a bound, a member that died before this one ever heard
    /// from it would never be suspected here, and a view change that needs this member's vote
    /// for its removal would wait for it forever).
    fn suspect_at(&self, r: usize, cfg: &ProtoConfig) -> Instant {
        match self.last_heard[r] {
            None if self.initial => self.view_started + cfg.startup_grace,
            last => last.unwrap_or(self.view_started) + cfg.failure_timeout,
        }
    }

    /// When [`Change::on_timer`] is due, for a member of rank `rank` in a view of `n`
    /// (`sending_state`: state transfers are under way and resent on this timer).
    pub(crate) fn deadline(
        &self,
        n: usize,
        rank: usize,
        cfg: &ProtoConfig,
        sending_state: bool,
    ) -> Instant {
        match self.status {
            Status::Excluded | Status::Left => return Instant(u64::MAX),
            Status::Joining => return self.next_ctl_at,
            _ => {}
        }
        let mut t = Instant(u64::MAX);
        for r in 0..n {
            if r != rank && !self.suspected[r] {
                t = t.min(self.suspect_at(r, cfg));
            }
        }
        // A join waits while the state goes to an earlier joiner (see `Change::drive`): the
        // timer looks again when it may go ahead.
        if self.frozen.is_some() || sending_state || !self.joins.is_empty() {
            t = t.min(self.next_ctl_at);
        }
        t
    }

    /// Periodic repetition of whatever the view change is waiting for (losses are repaired by
    /// repeating; every handler is idempotent).
    fn resend(&mut self, cx: &mut Ctx<'_>) {
        if self.frozen.is_some() {
            // Also with no suspect: a wedged member needs a view change to serve again (a
            // healed minority), and this asks the others for one.
            let suspects = self.suspects(cx.view);
            let minority = self.status == Status::Minority;
            cx.emit(Dest::All, &Ctl::Suspect { suspects, minority });
            if self.leaving {
                cx.emit(Dest::All, &Ctl::Leave);
            }
        }
        let mut out = Vec::new();
        if let Some(l) = &self.leading {
            for &m in &l.members {
                if m == cx.me {
                    continue;
                }
                match &l.decision {
                    None if !l.promises.contains_key(&m) => out.push((
                        m,
                        Ctl::Propose {
                            ballot: l.ballot,
                            members: l.members.clone(),
                            leaving: l.leaving.clone(),
                            joiners: l.joiners.iter().map(|(j, _)| *j).collect(),
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
            cx.emit(Dest::One(m), &c);
        }
        let stalled = cx
            .st
            .resend(cx.view, cx.now, cx.cfg.failure_timeout, cx.tx, cx.stats);
        for j in stalled {
            if let Some(r) = cx.view.rank_of(j) {
                self.suspect_rank(cx, r, true);
            }
        }
    }

    /// A minority member hearing again from a member it suspected (a partition healed):
    /// suspicions are dropped so that, if no majority decided without us, the view change can
    /// complete with everyone (Paxos keeps one decision per view whoever proposes). A majority
    /// never drops a suspicion: it goes on without the suspected member.
    pub(crate) fn heard_in_minority(&mut self, r: usize, n: usize) {
        if self.status == Status::Minority && self.suspected[r] {
            self.suspected[r] = false;
            self.suspected_at[r] = None;
            let alive = self.suspected.iter().filter(|s| !**s).count();
            if alive * 2 > n {
                self.status = Status::Changing;
            }
        }
    }

    /// A frame of an older view came from `to`: tell it how its view ended (at most once per
    /// status interval), so that it learns it was excluded.
    /// Sends the decision that ended our previous view to `to`, process `process` (the one
    /// whose frame showed it stale), at most once per status interval.
    pub(crate) fn catch_up(&mut self, cx: &mut Ctx<'_>, to: MemberId, process: u64) {
        let Some(d) = &self.last_commit else {
            return;
        };
        let now = cx.now;
        let due = self
            .catchup_at
            .get(&to)
            .is_none_or(|&t| now >= t + cx.cfg.status_interval);
        if due {
            self.catchup_at.insert(to, now);
            let c = Ctl::Commit {
                decision: d.clone(),
                to: process,
            };
            cx.emit(Dest::One(to), &c);
        }
    }

    /// A control message of the view change from rank `r` (`sender`) of the current view, past
    /// the member's checks (authenticated, this view, not from a suspected member's
    /// suspicions). State transfer messages are not for this part.
    pub(crate) fn on_ctl(
        &mut self,
        cx: &mut Ctx<'_>,
        r: usize,
        sender: MemberId,
        ctl: Ctl,
    ) -> Option<Installing> {
        match ctl {
            Ctl::Suspect { suspects, minority } => {
                // Others suspecting this member do not make it suspect itself: a leader that
                // excludes it says so (its proposal or its commit), and a minority that heals
                // must be able to resume. A minority's suspicions are not taken up (they are
                // stale once it hears again), nor does a minority take up others'.
                let take = !minority && self.status != Status::Minority;
                for m in suspects.into_iter().filter(|_| take) {
                    if let Some(x) = cx.view.rank_of(m) {
                        if x != cx.rank {
                            self.suspect_rank(cx, x, false);
                        }
                    }
                }
                self.wedge(cx);
                None
            }
            Ctl::Leave => {
                if !self.leaving_ranks[r] {
                    self.leaving_ranks[r] = true;
                    self.wedge(cx);
                }
                None
            }
            Ctl::Propose {
                ballot,
                members,
                leaving,
                joiners: _,
            } => {
                self.on_propose(cx, sender, ballot, &members, &leaving);
                None
            }
            Ctl::Promise {
                ballot,
                received,
                delivered,
                accepted,
                nulls,
                pinned,
                awaiting_state,
            } => {
                let n = cx.n();
                let plausible = Self::plausible_promise(cx, &received, delivered, &nulls);
                if !plausible {
                    cx.stats.bad_control += 1;
                }
                if let Some(l) = &mut self.leading {
                    if l.ballot == ballot
                        && l.members.contains(&sender)
                        && received.len() == n
                        && pinned.len() == n
                        && plausible
                    {
                        l.promises.insert(
                            sender,
                            Promised {
                                received,
                                delivered,
                                accepted,
                                nulls,
                                pinned,
                                awaiting_state,
                            },
                        );
                    }
                }
                self.maybe_decide(cx)
            }
            Ctl::Accept { ballot, decision } => {
                if !self.plausible(cx, &decision) {
                    cx.stats.bad_control += 1;
                } else if self.promised.is_none_or(|p| ballot >= p) && decision.from == cx.view.id {
                    self.promised = Some(ballot);
                    self.round_seen = self.round_seen.max(ballot.round);
                    self.accepted = Some((ballot, decision));
                    self.wedge(cx);
                    cx.emit(Dest::One(sender), &Ctl::Accepted { ballot });
                } else if let Some(p) = self.promised {
                    cx.emit(Dest::One(sender), &Ctl::Reject { promised: p });
                }
                None
            }
            Ctl::Accepted { ballot } => {
                if let Some(l) = &mut self.leading {
                    if l.ballot == ballot && l.decision.is_some() {
                        l.accepted_by.insert(sender);
                    }
                }
                self.maybe_commit(cx)
            }
            Ctl::Reject { promised } => {
                self.round_seen = self.round_seen.max(promised.round);
                if self.leading.as_ref().is_some_and(|l| l.ballot < promised) {
                    self.leading = None;
                    self.yield_to(cx, promised);
                }
                None
            }
            Ctl::Commit { .. }
            | Ctl::Replaced { .. }
            | Ctl::Join { .. }
            | Ctl::Challenge
            | Ctl::State { .. }
            | Ctl::StateAck { .. }
            | Ctl::Fragment { .. } => None,
        }
    }

    /// Another leader's ballot is ahead of any this member would start: give it a failure
    /// timeout to finish before starting one (if it fails, it is suspected by then or its
    /// ballot is outbid in turn).
    fn yield_to(&mut self, cx: &mut Ctx<'_>, ballot: Ballot) {
        if ballot.leader != cx.me {
            self.yield_until = Some(cx.now + cx.cfg.failure_timeout);
        }
    }

    fn on_propose(
        &mut self,
        cx: &mut Ctx<'_>,
        sender: MemberId,
        ballot: Ballot,
        members: &[MemberId],
        leaving: &[MemberId],
    ) {
        if let Some(p) = self.promised {
            if ballot < p {
                cx.emit(Dest::One(sender), &Ctl::Reject { promised: p });
                return;
            }
        }
        self.promised = Some(ballot);
        self.round_seen = self.round_seen.max(ballot.round);
        if self.leading.as_ref().is_some_and(|l| l.ballot < ballot) {
            self.leading = None;
        }
        self.yield_to(cx, ballot);
        for r in 0..cx.n() {
            let m = cx.view.members[r];
            if !members.contains(&m) {
                self.suspect_rank(cx, r, false);
            }
            if leaving.contains(&m) {
                self.leaving_ranks[r] = true;
            }
        }
        if !members.contains(&cx.me) {
            return;
        }
        self.wedge(cx);
        let (received, delivered) = self.frozen.clone().unwrap_or_default();
        let nulls = cx.order.null_runs(&received);
        let promise = Ctl::Promise {
            ballot,
            received,
            delivered,
            accepted: self.accepted.clone(),
            nulls,
            pinned: cx.order.pinned().to_vec(),
            awaiting_state: cx.st.awaiting(),
        };
        cx.emit(Dest::One(sender), &promise);
    }

    /// A join request from process `nonce` with id `sender` (any view: a joiner has none).
    pub(crate) fn on_join(
        &mut self,
        cx: &mut Ctx<'_>,
        sender: MemberId,
        nonce: u64,
        echo: u64,
    ) -> Option<Installing> {
        if !matches!(self.status, Status::Serving | Status::Changing) {
            return None;
        }
        if let Admission::Listed(ok) = &cx.cfg.admission {
            if !ok.contains(&sender) {
                cx.stats.join_requests += 1;
                cx.stats.joins_refused += 1;
                cx.stats.last_join_refused = Some(sender);
                return None;
            }
        }
        if echo != cx.order.pinned().get(cx.rank).copied().unwrap_or(0) {
            // Not shown to be of this run: ask the process with that id to name us (a
            // replayed request of an earlier run would otherwise admit a process that never
            // speaks, or whose old frames of the same view numbers count).
            cx.emit(Dest::One(sender), &Ctl::Challenge);
            return None;
        }
        let rank = cx.view.rank_of(sender);
        let current = rank.is_some_and(|r| {
            self.nonces.get(&sender) == Some(&nonce) || cx.order.pinned().get(r) == Some(&nonce)
        });
        if current {
            // The process that holds this place already: a late `Join`, or one that missed
            // the commit of the view it joined with.
            let heard = rank.is_some_and(|r| self.last_heard[r].is_some());
            if self.joined_now.contains(&sender) && !heard {
                self.catchup_at.remove(&sender);
                self.catch_up(cx, sender, nonce);
            }
            return None;
        }
        if let Some((t, n)) = self.joins.get_mut(&sender) {
            if *n == nonce {
                *t = cx.now;
                return None;
            }
        }
        cx.stats.join_requests += 1;
        if let Some(r) = rank {
            // A new process with the id of a member of this view (a restart): the old one is
            // gone, and this one takes its place as a joiner. Unless the old one still speaks:
            // then this is a replayed `Join` of an earlier process (or two processes run with
            // one id), and the request waits until the member is suspected like any other.
            let alive = self.last_heard[r].is_some_and(|t| cx.now < t + cx.cfg.failure_timeout)
                && !self.suspected[r];
            if !alive {
                self.suspect_rank(cx, r, true);
            }
        }
        self.joins.insert(sender, (cx.now, nonce));
        self.drive(cx)
    }

    /// A decision that no correct member could have made is refused (counted as a bad control
    /// message): it holds the group key, but the state must stay bounded whatever it says.
    pub(super) fn plausible(&self, cx: &Ctx<'_>, d: &Decision) -> bool {
        let mut ids: Vec<MemberId> = d.next.members.clone();
        ids.sort_unstable();
        ids.dedup();
        let n = cx.n() as u64;
        let bound = cx
            .order
            .delivered_slots()
            .saturating_add(n.saturating_mul(2 * cx.cfg.recv_window() + 2));
        !d.next.members.is_empty()
            && d.next.members.len() <= wire::MAX_MEMBERS
            && ids.len() == d.next.members.len()
            && d.next.id.0 == d.from.0.wrapping_add(1)
            && d.joiners.iter().all(|j| d.next.rank_of(*j).is_some())
            && d.joiners.iter().all(|j| d.nonce_of(*j).is_some())
            && d.nonces.len() <= d.next.members.len()
            && d.nonces.iter().all(|(m, _)| d.next.rank_of(*m).is_some())
            // The cut bounds what a survivor delivers (or passes as nulls): a member the
            // decision does not keep only learns that it is out, whatever the cut.
            && (d.from != cx.view.id || d.cut <= bound || !Self::survives(cx, d))
    }

    /// A promise no correct member could have made is refused: what it says it delivered and
    /// received stays within the flow-control bound of what this member delivered (a member
    /// delivers only what every member holds, and holds at most a receive window beyond), and
    /// its null runs lie within what it received. Bounds the cut and the loop that extends it
    /// whatever a key holder sends.
    fn plausible_promise(
        cx: &Ctx<'_>,
        received: &[u64],
        delivered: u64,
        nulls: &[Vec<(u64, u64)>],
    ) -> bool {
        let n = cx.n() as u64;
        let bound = cx
            .order
            .delivered_slots()
            .saturating_add(n.saturating_mul(2 * cx.cfg.recv_window() + 2));
        // Per sender: at most a receive window beyond that.
        let per_sender = (bound / n.max(1)).saturating_add(cx.cfg.recv_window() + 1);
        delivered <= bound
            && received.iter().all(|&c| c <= per_sender)
            && nulls.len() <= received.len()
            && nulls.iter().zip(received).all(|(runs, &c)| {
                runs.len() as u64 <= c && runs.iter().all(|&(a, b)| a < b && b <= c)
            })
    }

    /// Whether this process stays in `d.next` from the old view (the view `d` ends): it is
    /// named, not as a joiner (a new process with this id), and not as another process (this
    /// one restarted from the group file into the old view, with none of its previous self's
    /// state).
    pub(super) fn survives(cx: &Ctx<'_>, d: &Decision) -> bool {
        d.next.rank_of(cx.me).is_some()
            && !d.joiners.contains(&cx.me)
            && d.incarnation_of(cx.me)
                .is_none_or(|x| x == cx.order.pinned()[cx.rank])
    }

    /// This process cannot serve (its host refused the state it was sent): as excluded.
    pub(crate) fn give_up(&mut self) {
        if !self.status.is_final() {
            self.status = Status::Excluded;
            self.stop = Some(StopReason::StateRefused);
            self.leading = None;
        }
    }

    /// A joiner learns a contact's process (a challenge's header), to name it in its requests.
    pub(crate) fn on_challenge(&mut self, sender: MemberId, process: u64) {
        if self.status == Status::Joining && self.contacts.contains(&sender) {
            self.contact_processes.insert(sender, process);
            // Answer at the next timer tick (requests are repeated every status interval).
        }
    }

    /// A committed decision (any view: from the leader, or from a member telling a stale one).
    pub(crate) fn on_commit(
        &mut self,
        cx: &mut Ctx<'_>,
        d: Decision,
        to: u64,
    ) -> Option<Installing> {
        if !self.plausible(cx, &d) {
            cx.stats.bad_control += 1;
            return None;
        }
        // Of this run: addressed to this process, or keeping it by name. Otherwise it may be
        // a replay of an earlier run's commit, which would make this member leave the group.
        let mine = cx.order.pinned().get(cx.rank).copied().unwrap_or(0);
        let keeps_me = d.from == cx.view.id
            && !d.joiners.contains(&cx.me)
            && d.next.rank_of(cx.me).is_some()
            && d.incarnation_of(cx.me) == Some(mine);
        let joins_me = d.joiners.contains(&cx.me) && d.nonce_of(cx.me) == Some(self.my_nonce);
        if to != mine && !keeps_me && !joins_me {
            cx.stats.drop_frame(ProtoDrop::Unconfirmed);
            return None;
        }
        match self.status {
            Status::Excluded | Status::Left => None,
            Status::Joining if cx.view.id == ViewId(0) => {
                // Only a decision that admits this process as a joiner: the id may also be in
                // a view as an old incarnation of this member (a decision adopted from before
                // it restarted), which is not this process.
                (d.joiners.contains(&cx.me)
                    && d.next.members.contains(&cx.me)
                    && d.nonce_of(cx.me) == Some(self.my_nonce))
                .then_some(Installing::Joiner(d))
            }
            _ => {
                if d.from == cx.view.id {
                    Some(Installing::Survivor(d))
                } else {
                    if d.from > cx.view.id {
                        // The group moved on by more than one view without us.
                        self.status = Status::Excluded;
                        let kept = !d.joiners.contains(&cx.me)
                            && d.next.rank_of(cx.me).is_some()
                            && d.incarnation_of(cx.me) == Some(mine);
                        self.stop = Some(if kept {
                            StopReason::MissedViews
                        } else {
                            StopReason::Removed
                        });
                        self.last_commit = Some(d);
                    }
                    None
                }
            }
        }
    }
}
