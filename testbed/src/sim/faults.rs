//! The process faults the simulator drives: crashes (at the worst moments of a view change
//! too), graceful leaves, and the new processes that follow (a joiner, or a restart from the
//! group file).

use super::*;

/// What a member just did of a view change (see [`Sim::moment`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Moment {
    decided: bool,
    committed: bool,
    sending_state: bool,
    /// The size of the view the member last led a change in.
    led: usize,
}

impl Sim {
    /// The group file's members.
    pub(super) fn configured(&self) -> Vec<MemberId> {
        (0..self.cfg.members as u16).map(MemberId).collect()
    }

    /// The state member `i`'s log replays to, from what its last process synced (what a
    /// process restarted from the data directory recovers).
    pub(super) fn synced_state(&self, i: usize) -> conveyor_core::queue::QueueState {
        self.nodes[i].disk.synced_state()
    }

    /// What member `i` just did of a view change, in the step that ends now: sent its decision
    /// as leader, committed one, started sending a joiner its state. Called once per step.
    pub(super) fn moment(&mut self, i: usize) -> Moment {
        let m = self.nodes[i].replica.member();
        let (view, len, leading) = (m.view().id, m.view().len(), m.leading());
        let was = self.nodes[i].was_leading.take();
        let sending_state = std::mem::take(&mut self.nodes[i].sending_state);
        self.nodes[i].was_leading = leading.map(|l| l.1);
        if leading.is_some() {
            self.nodes[i].led = len;
        }
        let before = std::mem::replace(&mut self.nodes[i].moment_view, view);
        Moment {
            led: self.nodes[i].led,
            decided: leading.is_some_and(|l| l.1) && was != Some(true),
            // It led with a decision out, and installed a view in this step: it committed.
            committed: was == Some(true) && leading.is_none() && before < view,
            sending_state,
        }
    }

    /// The mid-change crash ([`MidChange`]): whether member `i` dies at the end of this step.
    /// Once a run (twice in groups of five or more), and only if the others of its view keep a
    /// majority.
    pub(super) fn crash_now(&mut self, i: usize, delivered: bool, moment: Moment) -> bool {
        let view = self.nodes[i].replica.member().view().clone();
        let Some(when) = self.cfg.crash_mid_change else {
            return false;
        };
        let allowed = if self.cfg.members >= 5 { 2 } else { 1 };
        if self.mid_change_crashes >= allowed {
            return false;
        }
        let moment = match when {
            MidChange::LeaderDecided => moment.decided,
            MidChange::LeaderCommitting => moment.committed,
            MidChange::StateSender => moment.sending_state,
            MidChange::Delivering => {
                delivered
                    && self.nodes.iter().enumerate().any(|(j, n)| {
                        j != i
                            && n.alive
                            && n.replica.member().view().id == view.id
                            && n.replica.status() == Status::Changing
                    })
            }
        };
        if !moment {
            return false;
        }
        // The others of its view (installed or not) that are alive and not out, and whether
        // one of them has the queue state. Joiners still waiting for theirs take part in the
        // change (they are left out of the next view and join again): they count for the
        // crash of their state's sender (the sender and its joiner may be needed for a
        // majority), not for the other moments (which would crash more often than a run can
        // keep a majority). If every member left is such a joiner, the group lost its state.
        let (mut others, mut with_state) = (0, false);
        for m in &view.members {
            let j = usize::from(m.0);
            if let Some(n) = self.nodes.get(j).filter(|n| j != i && n.alive) {
                let joining = n.replica.status() == Status::Joining;
                if !n.replica.status().is_final() && (!joining || when == MidChange::StateSender) {
                    others += 1;
                    with_state |= !joining;
                }
            }
        }
        if others * 2 <= view.len() || !with_state {
            return false;
        }
        self.mid_change_crashes += 1;
        match when {
            MidChange::Delivering => self.report.corners.crash_after_delivering += 1,
            MidChange::StateSender => self.report.corners.state_sender_crash += 1,
            _ => self.report.corners.leader_crash_mid_change += 1,
        }
        true
    }

    /// Whether the member, a leader, may be cut off at the end of this step: the next cut of
    /// `cfg.cut_leaders` is at what it just did.
    pub(super) fn cut_now(&self, moment: Moment) -> bool {
        match self.cfg.cut_leaders.get(self.leaders_cut) {
            Some(CutAt::Decided) => moment.decided,
            Some(CutAt::Committed) => moment.committed,
            None => false,
        }
    }

    /// Cuts leader `i` off, with the members its last frames `reached`, for 2 to 12 failure
    /// timeouts (a leader cut as it commits: also until 2 to 6 after the last cut healed),
    /// when they are a minority of the view it led the change in (otherwise the next such
    /// moment is tried).
    pub(super) fn cut_off(&mut self, i: usize, reached: BTreeSet<usize>, moment: Moment) {
        let mut side: Vec<usize> = reached.into_iter().collect();
        side.push(i);
        if side.len() * 2 >= moment.led {
            return;
        }
        side.sort_unstable();
        let ft = self.cfg.proto.failure_timeout.as_micros() as u64;
        let mut end = self.now + ft * self.rng.gen_range(2..12);
        if moment.committed {
            // Past the heal of the leader cut before it (whose decision may differ): the
            // members left meet that one's promise first.
            end = end.max(self.leader_cut_end + ft * self.rng.gen_range(2..6));
        }
        self.leader_cut_end = end;
        self.cfg.partitions.push((self.now, end, side));
        self.schedule(end, Event::Heal);
        self.last_fault = self.last_fault.max(end);
        self.leaders_cut += 1;
        self.report.corners.leader_cut += 1;
    }

    /// A leaving member asks to leave once everything it sent is delivered. One left alone
    /// in its view while it waited stops, as `conveyor node` does (`leave_on_signal`: there is
    /// no group to leave; seed 166541, where the others were excluded or refused and the
    /// leaving member, holding back its completions, kept the group's last requests forever).
    pub(super) fn maybe_leave(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let m = node.replica.member();
        if node.leaving && m.status() == Status::Serving && m.view().len() == 1 {
            // Rare (once in 100,000 seeds): counted as a crash, not as a corner to reach.
            node.leaving = false;
            self.crash(i);
            return;
        }
        if node.leaving
            && m.status() == Status::Serving
            && m.window_room() == m.config().window
            && m.view().len() > 1
        {
            node.leaving = false;
            node.replica.leave();
            self.report.corners.leave += 1;
        }
    }

    /// Member `i`'s process stops: its executions die with it.
    pub(super) fn crash(&mut self, i: usize) {
        if self.changing() {
            self.report.corners.crash_during_change += 1;
        }
        let node = &mut self.nodes[i];
        node.alive = false;
        node.executing.clear();
        node.gates.clear();
        node.outbox.clear();
        self.report.crashes += 1;
    }

    /// Every process of the group is killed at once (what the disks had not synced is lost);
    /// each member restarts from its data directory soon after, as `conveyor node` does. A
    /// new history starts from what the restarted members decide (see [`Sim::decided`]): the
    /// checks of one history (the reference order, instances, credits) start again.
    pub(super) fn group_down(&mut self) {
        // Sometimes one member comes back late (a slow host): the others decide without it,
        // and its log (perhaps longer, of the history before) is what a later restart meets.
        let late = if self.rng.gen_bool(0.3) {
            Some(self.rng.gen_range(0..self.nodes.len()))
        } else {
            None
        };
        for i in 0..self.nodes.len() {
            if self.nodes[i].alive {
                self.crash(i);
            }
            let at = if late == Some(i) {
                self.report.corners.late_restart += 1;
                self.now + self.rng.gen_range(20_000..200_000)
            } else {
                self.now + self.rng.gen_range(0..GROUP_RESTART_SPREAD_US)
            };
            self.last_fault = self.last_fault.max(at);
            self.schedule(at, Event::Restart { at: i });
        }
        self.report.corners.group_restart += 1;
        self.reference.clear();
        self.digests.clear();
        self.cuts.clear();
        self.assigned.clear();
        self.ever_assigned.clear();
        self.exec_of.clear();
        self.credits.clear();
        self.completed.clear();
        self.epoch.awaiting_decision = true;
    }

    /// A restarted group decided to go on from the log at `at` (an epoch and a position): runs
    /// admitted, ended or refused in a later epoch, or in that one at or after the position,
    /// never were (what anyone was told must lie before it: that is the durable promise), and
    /// no disk holds this history beyond it.
    pub(super) fn decided(&mut self, at: conveyor_core::Claim) -> Result<(), Violation> {
        self.epoch.awaiting_decision = false;
        let kept = |p: &(u64, u64)| p.0 < at.epoch || (p.0 == at.epoch && p.1 <= at.position);
        let position = at.position;
        let e = &self.epoch;
        let lost = |m: &BTreeMap<RequestId, (u64, u64)>, id: &RequestId| {
            m.get(id).is_none_or(|p| !kept(p))
        };
        if let Some(id) = e
            .told_ended
            .iter()
            .find(|id| lost(&e.ended_at, id) && lost(&e.rejected_at, id))
        {
            return Err(self.violation(
                "durable",
                format!(
                    "run {id} was told ended (its step ends at {:?}), yet the restarted group goes on from {at:?}",
                    e.ended_at.get(id)
                ),
            ));
        }
        if let Some(id) = e.told_accepted.iter().find(|id| lost(&e.admitted_at, id)) {
            return Err(self.violation(
                "durable",
                format!(
                    "push {id} was told accepted (its step ends at {:?}), yet the restarted group goes on from {at:?}",
                    e.admitted_at.get(id)
                ),
            ));
        }
        let keep = |m: &mut BTreeMap<RequestId, (u64, u64)>| m.retain(|_, p| kept(p));
        keep(&mut self.epoch.admitted_at);
        keep(&mut self.epoch.ended_at);
        keep(&mut self.epoch.rejected_at);
        let e = &self.epoch;
        self.finished.retain(|id, _| e.ended_at.contains_key(id));
        self.admitted.retain(|id| e.admitted_at.contains_key(id));
        self.rejected.retain(|id| e.rejected_at.contains_key(id));
        for n in &mut self.nodes {
            n.synced_ever = n.synced_ever.min(position);
        }
        Ok(())
    }

    /// Whether some live member is in the middle of a view change.
    pub(super) fn changing(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.alive && matches!(n.replica.status(), Status::Changing | Status::Minority))
    }

    pub(super) fn rejoin(&mut self, i: usize) {
        let n = &self.nodes[i];
        let restarted = n.replica.member().restarted_in_view().is_some();
        if n.alive && !n.replica.member().status().is_final() && !restarted {
            return;
        }
        if self.changing() {
            self.report.corners.join_during_change += 1;
        }
        // An excluded process that is still running: with zombies, its executions go on and
        // its next incarnation reports them (as the engine's executors do across a rejoin).
        let zombie = n.alive && self.cfg.zombies && !restarted;
        let contacts: Vec<MemberId> = (0..self.cfg.members as u16)
            .filter(|&j| j as usize != i)
            .map(MemberId)
            .collect();
        let mut replica = Replica::joining(
            self.cfg.proto.clone(),
            self.key.clone(),
            GROUP,
            MemberId(i as u16),
            contacts,
            // Each process that joins has a nonce of its own (the engine draws one at random;
            // here, the incarnation it will be, which no draw of the seed depends on).
            incarnation(self.run, i, self.nodes[i].inc + 1),
            Instant::from_micros(self.now),
        )
        .expect("valid sim config");
        replica.set_speculation(self.cfg.speculate);
        replica.set_durable(self.cfg.durable, &self.configured());
        if self.cfg.durable {
            // From its data directory, in case the group has not decided a state yet.
            replica.set_log_state(self.synced_state(i));
        }
        // The same process coming back (as the engine does): the new replica is told what the
        // old one applied and which pushes it left unanswered; it tells the outcomes missed and
        // pushes again what never reached the order. Its pushes still waiting to be submitted
        // stay (the engine's command ring).
        let same_process = n.alive && !restarted;
        if same_process {
            let old = &mut self.nodes[i].replica;
            let applied = old.applied();
            let unanswered = old.take_unanswered();
            if !unanswered.is_empty() {
                self.report.corners.origin_came_back += 1;
            }
            replica.set_rejoining(applied, unanswered);
        }
        // A joiner's place in the order is known at its first view.
        self.nodes[i].start_process(replica, None, ViewId(0), zombie, same_process);
    }

    /// A crashed member's process starts again with the group file's view, as `conveyor node`
    /// starts every original member: with no state, a member of the first view.
    pub(super) fn restart_configured(&mut self, i: usize) {
        let view = View::new(
            ViewId(1),
            (0..self.cfg.members as u16).map(MemberId).collect(),
        );
        let me = MemberId(i as u16);
        let mut replica = Replica::new(
            self.cfg.proto.clone(),
            self.key.clone(),
            GROUP,
            view,
            me,
            incarnation(self.run, i, self.nodes[i].inc + 1),
            Instant::from_micros(self.now),
        )
        .expect("valid sim config");
        if self.cfg.durable {
            // From its data directory: what its last process had synced.
            replica.recover_from(self.synced_state(i));
            self.report.corners.restart_from_log += 1;
        }
        replica.set_speculation(self.cfg.speculate);
        replica.set_durable(self.cfg.durable, &self.configured());
        self.report.corners.configured_restart += 1;
        // Its deliveries, if any, are those of the first view from its start.
        let node = &mut self.nodes[i];
        let claim = replica.claim();
        node.start_process(replica, Some(0), ViewId(1), false, false);
        node.configured_restart = true;
        // Its claim goes before anything else (a recovering member takes nothing else).
        node.outbox.extend(claim.map(|c| (c, None)));
        node.outbox.extend(
            invoker_ops(me, self.cfg.durable)
                .into_iter()
                .map(|op| (op, None)),
        );
    }
}
