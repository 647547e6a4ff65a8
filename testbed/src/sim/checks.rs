//! The checkers: every delivery, view and state a member's replica applies goes through these,
//! right after the step that produced it (see the module docs of [`super`] for the list).

use super::disks::told_outside;
use super::*;

/// What a replica applied: a message (its id, its operation) or a view (who it removed).
pub(super) enum Cause<'a> {
    Msg(u64, &'a Op),
    View(&'a [MemberId]),
}

impl Sim {
    /// Lets member `i`'s replica apply its deliveries, one at a time, and checks every
    /// property after each.
    pub(super) fn deliver(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let held = self.nodes[i].replica.held_for_disks();
            let Some(applied) = self.nodes[i].replica.poll_applied() else {
                break;
            };
            // This step's acceptances and ends wait for the disks: they count as told when
            // released, not now.
            self.gated_step = self.nodes[i].replica.held_for_disks() > held;
            match applied {
                Applied::Message {
                    delivery,
                    malformed,
                    effects,
                } => {
                    if self.epoch.awaiting_decision {
                        // The first replica to hold the restarted group's state: the step it
                        // just applied decided (its effects are the new history's).
                        if let Some((RecoveryStage::Recovered, Some(d))) =
                            self.nodes[i].replica.recovery()
                        {
                            let at = d.at;
                            self.decided(at)?;
                        }
                    }
                    self.on_message(i, delivery, malformed, &effects)?
                }
                Applied::View {
                    change: vc,
                    effects,
                } => {
                    if std::env::var_os("SIM_TRACE").is_some() {
                        eprintln!("t={} m{i} installs view {} {:?}: removed {:?} joined {:?} state from {:?} cut {}", self.now, vc.view.id.0, vc.view.members, vc.removed, vc.joined, vc.state_from, vc.cut);
                    }
                    // The replica reports the view before it puts anything back, as the
                    // engine hands it on.
                    if !matches!(effects.first(), Some(Effect::ViewInstalled { view, .. }) if *view == vc.view.id.0)
                    {
                        return Err(self.violation(
                            "effects in order",
                            format!(
                                "m{i}'s view {} did not start with its ViewInstalled: {effects:?}",
                                vc.view.id.0
                            ),
                        ));
                    }
                    let item = Item::View(vc.view.id, vc.view.members.clone());
                    if self.nodes[i].pos.is_none() && self.cfg.not_admitted == Some(i) {
                        return Err(self.violation(
                            "admission",
                            format!(
                                "m{i}, not on the admission list, was admitted into view {}",
                                vc.view.id.0
                            ),
                        ));
                    }
                    if self.nodes[i].pos.is_none() {
                        // A joiner: it starts right after the installation of its first view
                        // (which an old member may install after it, when the member that
                        // committed was itself left out: resolved at the joiner's state).
                        self.nodes[i].first_view = Some(item);
                        continue;
                    }
                    self.check_order(i, item)?;
                    self.cuts.entry(vc.previous.id).or_insert(vc.cut);
                    if vc.state_from == Some(MemberId(i as u16)) {
                        self.nodes[i].sending_state = true;
                        let size = self.nodes[i].replica.queue().snapshot().len();
                        self.max_state = self.max_state.max(size);
                    }
                    self.after_apply(i, &effects, Cause::View(&vc.removed))?;
                    self.report.view_changes += 1;
                    self.report.resubmitted += vc.resubmitted;
                }
                Applied::Speculated { effects } => self.on_speculated(i, &effects)?,
                Applied::Persisted { effects } => self.on_persisted(i, effects)?,
                Applied::State { ok, effects } => {
                    if !ok {
                        return Err(self.violation(
                            "state transfer",
                            format!("m{i} received a state that does not decode"),
                        ));
                    }
                    let recovery = self.nodes[i].replica.recovery().map(|(s, _)| s);
                    if recovery == Some(RecoveryStage::Recovered) {
                        self.report.corners.recovery_state += 1;
                    }
                    if let Some(claim) = self.nodes[i].replica.claim() {
                        // A joiner admitted before a restarted group decided: it claims.
                        self.report.corners.joiner_claims += 1;
                        self.nodes[i].outbox.push_front((claim, None));
                    }
                    self.resolve_first_view(i)?;
                    let pos = self.nodes[i].pos.unwrap_or(0);
                    let q = self.nodes[i].replica.queue();
                    let holds = recovery.is_none_or(|s| s == RecoveryStage::Recovered);
                    if holds && self.digests.get(pos.wrapping_sub(1)) != Some(&Some(q.digest())) {
                        return Err(self.violation(
                            "replicas identical",
                            format!("joiner m{i}'s transferred state differs from the group's at its first view"),
                        ));
                    }
                    // The pipelines the state carries reach the joiner's application, as the
                    // engine hands them on.
                    let carried = q.pipeline_docs().map(|(v, d)| (v, d.to_vec()));
                    let told = effects.iter().find_map(|e| match e {
                        Effect::Pipelines { version, docs } => Some((*version, docs.clone())),
                        _ => None,
                    });
                    // (A joiner sent the claims holds its own log's state, not the group's.)
                    if holds && told != carried {
                        return Err(self.violation(
                            "pipelines after state transfer",
                            format!(
                                "joiner m{i} holds pipelines {carried:?} and was told {told:?}"
                            ),
                        ));
                    }
                    if told.is_some() {
                        self.report.pipelines_after_state += 1;
                    }
                    self.told_on_return(i, &effects)?;
                    self.report.joins += 1;
                    let me = MemberId(i as u16);
                    self.nodes[i].outbox.extend(
                        invoker_ops(me, self.cfg.durable)
                            .into_iter()
                            .map(|op| (op, None)),
                    );
                }
            }
        }
        if let Some(p) = self.nodes[i].replica.member().restarted_in_view() {
            if !self.nodes[i].configured_restart {
                return Err(self.violation(
                    "no false restart detection",
                    format!("m{i} believes it restarted, from {p}'s row"),
                ));
            }
            // It did restart: as the engine does, it rejoins as a new member.
            self.report.corners.restart_detected += 1;
            self.rejoin(i);
            return Ok(());
        }
        let m = self.nodes[i].replica.member();
        // Excluded or left: the process is replaced by a new incarnation that joins.
        if m.status().is_final() && !self.nodes[i].rejoin_scheduled {
            if self.nodes[i].pos.is_none() && self.nodes[i].first_view.take().is_some() {
                // Admitted, and the view changed again before its state arrived: it gives up
                // and joins again.
                self.report.corners.change_before_state += 1;
            }
            if let Some(after) = self.cfg.rejoin_after_us {
                self.nodes[i].rejoin_scheduled = true;
                self.schedule(self.now + after, Event::Rejoin { at: i });
            }
        }
        Ok(())
    }

    /// A joiner's place in the reference: right after its first view.
    fn resolve_first_view(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].pos.is_some() {
            return Ok(());
        }
        let Some(item) = self.nodes[i].first_view.clone() else {
            return Ok(());
        };
        let Some(p) = self.reference.iter().position(|x| *x == item) else {
            return Err(self.violation(
                "virtual synchrony",
                format!("joiner m{i} got its state or a message before any old member installed its first view {item:?}"),
            ));
        };
        self.nodes[i].pos = Some(p + 1);
        Ok(())
    }

    /// Total order, agreement and virtual synchrony: `item` must be the next of the reference
    /// for member `i`.
    fn check_order(&mut self, i: usize, item: Item) -> Result<(), Violation> {
        self.resolve_first_view(i)?;
        let Some(pos) = self.nodes[i].pos else {
            return Err(self.violation(
                "virtual synchrony",
                format!("joiner m{i} delivered {item:?} before its first view"),
            ));
        };
        match self.reference.get(pos) {
            Some(r) if *r != item => {
                return Err(self.violation(
                    "total order",
                    format!("m{i} delivered {item:?} at position {pos} where another member delivered {r:?}"),
                ));
            }
            Some(_) => {}
            None => {
                if let Item::View(id, members) = &item {
                    if let Some(other) = self
                        .reference
                        .iter()
                        .find(|x| matches!(x, Item::View(v, m) if v == id && m != members))
                    {
                        return Err(self.violation(
                            "one view per id",
                            format!("view {} installed as {members:?} and as {other:?}", id.0),
                        ));
                    }
                }
                self.reference.push(item);
            }
        }
        self.nodes[i].pos = Some(pos + 1);
        Ok(())
    }

    fn on_message(
        &mut self,
        i: usize,
        d: Delivery,
        malformed: bool,
        effects: &[Effect],
    ) -> Result<(), Violation> {
        let inc = self.nodes[i].inc;
        let id = d
            .payload
            .len()
            .checked_sub(8)
            .and_then(|at| d.payload.get(at..))
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(u64::MAX);
        // Integrity.
        let Some((origin, oinc, counter, payload)) = self.submitted.get(&id).cloned() else {
            return Err(self.violation(
                "integrity",
                format!(
                    "m{i} delivered {}:{} which was never submitted",
                    d.sender, d.seq.0
                ),
            ));
        };
        if payload != d.payload || MemberId(origin as u16) != d.sender {
            return Err(self.violation(
                "integrity",
                format!("m{i} delivered message {id} with another payload or sender"),
            ));
        }
        if !self.nodes[i].seen.insert(id) {
            return Err(self.violation(
                "integrity",
                format!("m{i} (incarnation {inc}) delivered message {id} twice"),
            ));
        }
        // Per-sender FIFO.
        let last = self.nodes[i].last_from.insert((origin, oinc), counter);
        if last.is_some_and(|l| l >= counter) {
            return Err(self.violation(
                "per-sender FIFO",
                format!(
                    "m{i} delivered m{origin}'s #{counter} after #{}",
                    last.unwrap_or(0)
                ),
            ));
        }
        if !d.in_cut {
            self.nodes[i].data_slots.push(d.slot);
        }
        // Stability: outside the cleanup, every member of that view holds it (the process
        // the delivering member takes for it: another one with that id, restarted from the
        // group file into this view, holds nothing of it).
        if !d.in_cut {
            let me = self.nodes[i].replica.member();
            for (j, other) in self.nodes.iter().enumerate() {
                let m = other.replica.member();
                let known = me.process_of(MemberId(j as u16));
                if known.is_some_and(|x| x != m.incarnation()) {
                    continue;
                }
                // Not a member of the delivering view (a process of an earlier history, after
                // a whole-group restart, may sit in a view with the same id).
                if me.view().id == d.view && !me.view().members.contains(&MemberId(j as u16)) {
                    continue;
                }
                if m.view().id == d.view && !m.has_received(d.sender, d.seq) {
                    return Err(self.violation(
                        "stability before delivery",
                        format!(
                            "m{i} delivered {}:{} which m{j} does not hold",
                            d.sender, d.seq.0
                        ),
                    ));
                }
            }
        }
        self.check_order(i, Item::Msg(id))?;
        let op = Op::decode(&d.payload);
        let Some(op) = op.ok().filter(|_| !malformed) else {
            return Err(self.violation("integrity", format!("m{i} delivered an undecodable op")));
        };
        if let Op::Push { req, .. } = &op {
            if req.step == "s0" && self.holds(i) {
                self.admitted.insert(req.id);
                let q = self.nodes[i].replica.queue();
                let at = (q.epoch(), q.applied());
                self.epoch.admitted_at.entry(req.id).or_insert(at);
            }
        }
        self.after_apply(i, effects, Cause::Msg(id, &op))
    }

    /// Whether member `i`'s replica holds the group's state (not a restarted one still
    /// recovering).
    pub(super) fn holds(&self, i: usize) -> bool {
        self.nodes[i]
            .replica
            .recovery()
            .is_none_or(|(stage, _)| stage == RecoveryStage::Recovered)
    }

    /// Replica digests, exactly one consumer, credits, completions by their executors, and the
    /// effects for this member.
    fn after_apply(
        &mut self,
        i: usize,
        effects: &[Effect],
        cause: Cause<'_>,
    ) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        let pos = self.nodes[i].pos.unwrap_or(1) - 1;
        // A restarted member holds the group's state only once recovered (see
        // `conveyor_core::replica::recovery`): until then its queue is its own log's, and it
        // applies nothing. The first replica holding the group's state to reach a position
        // counts its effects.
        let digest = self
            .holds(i)
            .then(|| self.nodes[i].replica.queue().digest());
        let first = match self.digests.get_mut(pos) {
            Some(Some(dg)) => {
                if digest.is_some_and(|d| d != *dg) {
                    return Err(self.violation(
                        "replicas identical",
                        format!("m{i}'s queue state differs at position {pos}"),
                    ));
                }
                false
            }
            Some(slot @ None) => {
                *slot = digest;
                digest.is_some()
            }
            None => {
                self.digests.push(digest);
                digest.is_some()
            }
        };
        if first {
            self.count_credits(&cause);
        }
        let end = self.nodes[i].replica.queue().applied();
        for e in effects {
            if self.cfg.durable && told_outside(e) {
                if self.gated_step {
                    self.nodes[i].awaiting_disks.push_back((end, e.clone()));
                } else if !matches!(
                    e,
                    Effect::Rejected {
                        reason: RejectReason::NoSuchQueue,
                        ..
                    }
                ) {
                    // Told now (a push into no queue at all has nothing to keep, and is told
                    // at once): the step must be on a majority's disks already.
                    self.check_on_disks(i, end, e)?;
                }
            }
            if !(self.gated_step && told_outside(e)) {
                self.note_told(i, e)?;
            }
            match e {
                Effect::Discarded {
                    consumer,
                    speculation,
                    ..
                } if *consumer == me => self.discard(i, *speculation)?,
                Effect::Speculated { .. } | Effect::Discarded { .. } => {
                    return Err(
                        self.violation("speculation", format!("m{i} was told {e:?} by a delivery"))
                    );
                }
                Effect::Assigned { consumer, req } | Effect::Confirmed { consumer, req, .. } => {
                    // An instance is handed out once in a run: a request put back gets a new
                    // one, so a late completion of the old one cannot count.
                    if first
                        && !(self.assigned.insert(req.instance)
                            && self.ever_assigned.insert(req.instance))
                    {
                        return Err(self.violation(
                            "exactly one consumer",
                            format!(
                                "{}/{} (instance {}) assigned twice",
                                req.id, req.step, req.instance
                            ),
                        ));
                    }
                    if first {
                        let c = self.credits.entry(*consumer).or_default();
                        c.1 += 1;
                        if c.1 > c.0 {
                            let (granted, taken) = *c;
                            return Err(self.violation(
                                "credits",
                                format!(
                                    "{consumer} was assigned {taken} requests on {granted} credits"
                                ),
                            ));
                        }
                    }
                    if let Effect::Confirmed {
                        consumer,
                        req,
                        speculation,
                    } = e
                    {
                        if *consumer != me {
                            return Err(self.violation(
                                "speculation",
                                format!("m{i} was told {consumer}'s assignment confirmed"),
                            ));
                        }
                        let inc = self.nodes[i].inc;
                        self.exec_of.insert(req.instance, (i, inc));
                        self.confirm(i, req, *speculation)?;
                    } else if *consumer == me {
                        let inc = self.nodes[i].inc;
                        self.exec_of.insert(req.instance, (i, inc));
                        self.execute(i, req.clone(), None);
                    }
                }
                Effect::Requeued { old_instance, .. } if first => {
                    self.assigned.remove(old_instance);
                    self.report.requeued += 1;
                }
                Effect::Completed {
                    id,
                    instance,
                    terminal,
                    step,
                    ..
                } if first => {
                    self.assigned.remove(instance);
                    // A completion counts only from the execution the instance was assigned
                    // to (not from an earlier one of the same request, nor a confused one).
                    let by = match cause {
                        Cause::Msg(msg, _) => self.completion_exec.get(&msg).copied(),
                        Cause::View(_) => None,
                    };
                    let ran = self.exec_of.get(instance).copied();
                    if by.is_none() || by != ran {
                        return Err(self.violation(
                            "completion by its executor",
                            format!("{id}/{step} (instance {instance}) completed by the execution {by:?}, assigned to {ran:?}"),
                        ));
                    }
                    // Exactly once, as it happens: one effect per step instance, one end per
                    // run.
                    if !self.completed.insert(*instance) {
                        return Err(self.violation(
                            "exactly once",
                            format!("{id}/{step} (instance {instance}) completed twice"),
                        ));
                    }
                    if *terminal {
                        let epoch = self.nodes[i].replica.queue().epoch();
                        self.epoch.ended_at.insert(*id, (epoch, end));
                        let n = {
                            let n = self.finished.entry(*id).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if n > 1 {
                            return Err(self.violation(
                                "exactly once",
                                format!("run {id} finished {n} times"),
                            ));
                        }
                    }
                }
                Effect::Rejected { id, .. } if first => {
                    self.rejected.insert(*id);
                    let epoch = self.nodes[i].replica.queue().epoch();
                    self.epoch.rejected_at.entry(*id).or_insert((epoch, end));
                }
                Effect::DuplicateCompletion { .. } if first => {
                    // Refused: reported twice, or by an earlier incarnation after its request
                    // was put back (a zombie's).
                    if let Cause::Msg(msg, _) = cause {
                        let by = self.completion_exec.get(&msg).map(|e| e.1);
                        let via = self.submitted.get(&msg).map(|s| s.1);
                        if by.is_some() && by != via {
                            self.report.corners.zombie_completion += 1;
                        } else {
                            self.report.corners.duplicate_completion += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What a member coming back in the same process is told with its state: only outcomes of
    /// its own runs that did happen (a run finished, a push rejected), then its return.
    fn told_on_return(&mut self, i: usize, effects: &[Effect]) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        for e in effects {
            let real = match e {
                Effect::Completed {
                    id, terminal: true, ..
                } => id.origin() == me && self.finished.contains_key(id),
                Effect::Failed { id, .. } => id.origin() == me,
                Effect::Rejected { id, .. } => id.origin() == me && self.rejected.contains(id),
                Effect::Rejoined {
                    origin,
                    pushed_again,
                    ..
                } => {
                    if *pushed_again > 0 {
                        self.report.corners.pushed_again += 1;
                    }
                    *origin == me
                }
                Effect::Completed { .. } | Effect::Overwritten { .. } => false,
                _ => true,
            };
            if !real {
                return Err(self.violation("origin told", format!("m{i}, back, was told {e:?}")));
            }
            self.note_told(i, e)?;
        }
        Ok(())
    }

    /// A member's stream client, at its `counter`th push: adds an entry (the stream kept to
    /// 20), reads for its consumer (every third read blocks, for ever, until an entry comes
    /// or its next turn gives up on it); what it reads it acknowledges.
    pub(super) fn stream_ops(&mut self, at: usize, counter: u64) {
        let me = MemberId(at as u16);
        let now_ms = self.now / 1000;
        let node = &mut self.nodes[at];
        // A read still blocked since the last turn: given up on.
        let blocked: Vec<u64> = node
            .redis
            .iter()
            .filter(|(_, a)| matches!(a, RedisAsk::Read(true)))
            .map(|(t, _)| *t)
            .collect();
        for t in blocked {
            node.redis_token += 1;
            let op = redis_op(
                me,
                node.redis_token,
                now_ms,
                &format!("conveyor-unblock {t}"),
            );
            node.outbox.push_back((op, None));
        }
        let ask = |node: &mut Node, a: RedisAsk, cmd: String| {
            node.redis_token += 1;
            node.redis.insert(node.redis_token, a);
            let op = redis_op(me, node.redis_token, now_ms, &cmd);
            node.outbox.push_back((op, None));
        };
        ask(
            node,
            RedisAsk::Other,
            format!("XADD st MAXLEN 20 * n {at}-{counter}"),
        );
        let block = counter.is_multiple_of(3);
        let cmd = if block {
            format!("XREADGROUP GROUP g c{at} COUNT 2 BLOCK 0 STREAMS st >")
        } else {
            format!("XREADGROUP GROUP g c{at} COUNT 2 STREAMS st >")
        };
        ask(node, RedisAsk::Read(block), cmd);
    }

    /// A Redis reply member `i`'s client was told: entries read are acknowledged, and no
    /// entry is acknowledged twice in the run (property "streams").
    fn on_redis_reply(&mut self, i: usize, token: u64, reply: &Value) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        let Some(ask) = self.nodes[i].redis.remove(&token) else {
            return Ok(());
        };
        match (ask, reply) {
            (RedisAsk::Read(blocked), Value::ByKey(keys)) => {
                if blocked {
                    self.report.corners.stream_blocked_served += 1;
                }
                let now_ms = self.now / 1000;
                for (_, entries) in keys {
                    let Value::Array(entries) = entries else {
                        continue;
                    };
                    for e in entries {
                        let Value::Array(p) = e else { continue };
                        let Some(Value::Bulk(id)) = p.first() else {
                            continue;
                        };
                        let node = &mut self.nodes[i];
                        node.redis_token += 1;
                        node.redis
                            .insert(node.redis_token, RedisAsk::Ack(id.clone()));
                        let cmd = format!("XACK st g {}", String::from_utf8_lossy(id));
                        let op = redis_op(me, node.redis_token, now_ms, &cmd);
                        node.outbox.push_back((op, None));
                    }
                }
            }
            (RedisAsk::Ack(id), Value::Int(1)) => {
                if !self.stream_acked.insert(id.clone()) {
                    return Err(self.violation(
                        "streams",
                        format!(
                            "m{i} was told entry {} acknowledged, a second time in the run",
                            String::from_utf8_lossy(&id)
                        ),
                    ));
                }
                self.report.corners.stream_acks += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// An end of one of its runs told to member `i`'s process: never twice (a process that
    /// comes back is told only what it missed).
    pub(super) fn note_told(&mut self, i: usize, e: &Effect) -> Result<(), Violation> {
        if let Effect::Redis {
            origin,
            token,
            reply,
        } = e
        {
            if usize::from(origin.0) == i {
                return self.on_redis_reply(i, *token, reply);
            }
            return Ok(());
        }
        if let Effect::Accepted { id, .. } = e {
            self.epoch.told_accepted.insert(*id);
        }
        let id = match e {
            Effect::Completed {
                id, terminal: true, ..
            }
            | Effect::Failed { id, .. } => *id,
            // Not a queue's settings refused (no run).
            Effect::Rejected { id, pusher, .. } if *pusher != MemberId(u16::MAX) => *id,
            _ => return Ok(()),
        };
        self.epoch.told_ended.insert(id);
        if id.origin() == MemberId(i as u16) && !self.nodes[i].told.insert(id) {
            return Err(self.violation(
                "origin told",
                format!("m{i} was told the end of run {id} twice"),
            ));
        }
        Ok(())
    }

    /// Starts executing `req` at member `i` (`speculative`: its completion waits for the
    /// confirmation).
    fn execute(&mut self, i: usize, req: Request, speculative: Option<u64>) {
        let exec = self.rng.gen_range(self.cfg.exec_us.0..=self.cfg.exec_us.1);
        let inc = self.nodes[i].inc;
        self.nodes[i].executing.push(Some((inc, req, speculative)));
        let req_idx = self.nodes[i].executing.len() - 1;
        self.schedule(
            self.now + exec,
            Event::Finish {
                at: i,
                inc,
                req_idx,
            },
        );
    }

    /// Assignments member `i`'s replica speculated: each is new (not told before and not
    /// resolved), and starts.
    fn on_speculated(&mut self, i: usize, effects: &[Effect]) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        for e in effects {
            match e {
                Effect::Speculated {
                    consumer,
                    req,
                    speculation,
                } if *consumer == me => {
                    let key = (self.nodes[i].inc, *speculation);
                    if self.nodes[i].gates.contains_key(&key) {
                        return Err(self.violation(
                            "speculation",
                            format!("m{i} numbered two speculations {speculation}"),
                        ));
                    }
                    self.nodes[i].gates.insert(key, Gate::Running(req.clone()));
                    self.execute(i, req.clone(), Some(*speculation));
                }
                Effect::Discarded {
                    consumer,
                    speculation,
                    ..
                } if *consumer == me => self.discard(i, *speculation)?,
                other => {
                    return Err(self.violation("speculation", format!("m{i} speculated {other:?}")));
                }
            }
        }
        Ok(())
    }

    /// The delivered order confirmed at member `i` the assignment of `req` speculated as
    /// `speculation`: that speculation exists, unresolved, for the same request; its
    /// completion goes out (now if it finished, else when it does) for the delivered
    /// instance.
    fn confirm(&mut self, i: usize, req: &Request, speculation: u64) -> Result<(), Violation> {
        let inc = self.nodes[i].inc;
        let key = (inc, speculation);
        let same = |r: &Request| {
            r.id == req.id
                && r.step == req.step
                && r.queue == req.queue
                && r.payload == req.payload
                && r.http == req.http
        };
        let gate = self.nodes[i].gates.remove(&key);
        match gate {
            Some(Gate::Running(r)) if same(&r) => {
                self.nodes[i]
                    .gates
                    .insert(key, Gate::Confirmed(req.instance));
            }
            Some(Gate::Finished(op)) if matches!(&op, Op::Complete { id, step, .. } if *id == req.id && *step == req.step) =>
            {
                self.report.corners.speculation_confirmed += 1;
                if let Op::Complete { instance, .. } = &op {
                    if *instance != req.instance {
                        self.report.corners.speculation_reinstanced += 1;
                    }
                }
                self.submit_completion(i, inc, op, req.instance);
            }
            other => {
                return Err(self.violation(
                    "speculation",
                    format!(
                        "m{i} was told {}/{} (instance {}, speculation {speculation}) confirmed; that speculation is {other:?}",
                        req.id, req.step, req.instance
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A speculation of member `i` discarded: it exists, unresolved; its completion is
    /// dropped.
    fn discard(&mut self, i: usize, speculation: u64) -> Result<(), Violation> {
        let key = (self.nodes[i].inc, speculation);
        match self.nodes[i].gates.remove(&key) {
            Some(Gate::Running(_)) => {
                self.nodes[i].gates.insert(key, Gate::Discarded);
            }
            Some(Gate::Finished(_)) => {}
            other => {
                return Err(self.violation(
                    "speculation",
                    format!("m{i} was told speculation {speculation} discarded; it is {other:?}"),
                ));
            }
        }
        self.report.corners.speculation_discarded += 1;
        Ok(())
    }

    /// Credits offered by the operation applied, and a removed consumer's credits forgotten
    /// (the next incarnation offers its own).
    fn count_credits(&mut self, cause: &Cause<'_>) {
        match cause {
            Cause::View(removed) => {
                for m in removed.iter() {
                    self.credits.remove(m);
                }
            }
            Cause::Msg(_, op) => {
                let offer = match op {
                    Op::Ready { consumer, credits }
                    | Op::ReadyFor {
                        consumer, credits, ..
                    }
                    | Op::Complete {
                        consumer, credits, ..
                    }
                    | Op::Fail {
                        consumer, credits, ..
                    } => Some((*consumer, *credits)),
                    _ => None,
                };
                if let Some((c, n)) = offer {
                    self.credits.entry(c).or_default().0 += u64::from(n);
                }
            }
        }
    }

    /// The null rule, from the global state: a null a member passes outside a view change's
    /// cleanup is held by a majority of the view at that moment (so that the survivors of any
    /// change can tell it was a null), and no member passes a slot beyond the cut of its view
    /// once one is decided. Runs after every step of member `i`.
    pub(super) fn check_nulls(&mut self, i: usize) -> Result<(), Violation> {
        let (view, slots) = {
            let m = self.nodes[i].replica.member();
            (m.view().clone(), m.delivered_slots())
        };
        let (passed_view, passed) = self.nodes[i].passed;
        let data = std::mem::take(&mut self.nodes[i].data_slots);
        self.nodes[i].passed = (view.id, slots);
        if let Some(cut) = self.cuts.get(&view.id) {
            if slots > *cut {
                return Err(self.violation(
                    "null rule",
                    format!(
                        "m{i} passed slot {} of view {}, beyond the cut {cut} decided for it",
                        slots - 1,
                        view.id.0
                    ),
                ));
            }
        }
        if passed_view != view.id || view.len() < 2 {
            return Ok(());
        }
        // Only while every member of the view is still in it (alive, or crashed in it): once
        // one moved on, the view's cut is decided and checked above.
        let in_view = view.members.iter().all(|m| {
            self.nodes
                .get(usize::from(m.0))
                .is_some_and(|n| n.replica.member().view().id == view.id)
        });
        if !in_view {
            return Ok(());
        }
        let n = view.len() as u64;
        for g in passed..slots {
            if data.contains(&g) {
                continue;
            }
            let sender = view.members[(g % n) as usize];
            let seq = Seq(g / n);
            // A member whose process is no longer the one member `i` takes for it (it crashed
            // and restarted from the group file) cannot be asked what the old one held: it is
            // given the benefit of the doubt.
            let me = self.nodes[i].replica.member();
            let holders = view
                .members
                .iter()
                .filter(|m| {
                    let other = self.nodes[usize::from(m.0)].replica.member();
                    me.process_of(**m).is_some_and(|x| x != other.incarnation())
                        || other.has_received(sender, seq)
                })
                .count();
            if holders * 2 <= view.len() {
                return Err(self.violation(
                    "null rule",
                    format!(
                        "m{i} passed the null at slot {g} ({sender}'s #{}) of view {} held by {holders} of {} members",
                        seq.0,
                        view.id.0,
                        view.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bounded memory, against bounds of the simulator's own from the configuration: ordering
    /// slots (a receive window of four send windows per sender), frames queued (a window of own
    /// messages, plus retransmissions, status, control and state frames per member), pending
    /// joins and catch-ups (two per member), and bytes of state and fragments (twice the
    /// largest state any replica could send, plus four unfinished 1 MiB messages per member).
    pub(super) fn check_memory(&self, i: usize) -> Result<(), Violation> {
        let m = self.nodes[i].replica.member();
        let members = self.cfg.members;
        let window = self.cfg.proto.window as usize;
        let slots_bound = members * 4 * window;
        let (deliveries, queued, pending, bytes) = m.buffered_other();
        let frames_bound = 4 * window + 32 * members + 64;
        let state_bound = 2 * self.max_state + members * 4 * (1 << 20);
        let over = [
            ("ordering slots", m.buffered_slots(), slots_bound),
            ("deliveries not taken", deliveries, slots_bound + 2),
            ("frames queued", queued, frames_bound),
            ("pending joins and catch-ups", pending, 2 * members),
            ("state and fragment bytes", bytes, state_bound),
        ]
        .into_iter()
        .find(|(_, v, b)| v > b);
        match over {
            Some((what, v, b)) => Err(self.violation(
                "bounded memory",
                format!("m{i} holds {v} {what}, bound {b}"),
            )),
            None => Ok(()),
        }
    }

    /// Validity, at the end of a run: everything a member submitted, if that member (the same
    /// process) is still alive and serving, was delivered; nothing a survivor submitted was
    /// dropped at a view change.
    pub(super) fn check_validity(&self) -> Result<(), Violation> {
        let delivered: BTreeSet<u64> = self
            .reference
            .iter()
            .filter_map(|x| match x {
                Item::Msg(id) => Some(*id),
                Item::View(..) => None,
            })
            .collect();
        for (id, (node, inc, counter, _)) in &self.submitted {
            let n = &self.nodes[*node];
            let live = n.alive && n.inc == *inc && n.replica.status() == Status::Serving;
            if live && !delivered.contains(id) {
                return Err(self.violation(
                    "validity",
                    format!("m{node}'s submission #{counter} (incarnation {inc}) was never delivered, and m{node} serves on"),
                ));
            }
        }
        Ok(())
    }
}
