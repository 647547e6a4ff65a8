//! The checks of the sharded-deployment simulator: counting each shard's order once (the first
//! replica to apply each position), what a member's application is told, and the end of a run.

use super::{Counted, Event, ShardReport, ShardSim, ShardViolation, STEPS};
use conveyor_core::proto::Status;
use conveyor_core::queue::Effect;
use conveyor_core::shard::ShardId;
use conveyor_core::types::{MemberId, RequestId};
use conveyor_core::Claim;
use rand::Rng;

impl ShardSim {
    /// Counts the effects of the step member `m` of shard `s` just applied, if it is the first
    /// replica of its shard to apply that position; checks the replicas' states agree.
    pub(super) fn count_step(
        &mut self,
        s: usize,
        m: usize,
        effects: &[Effect],
    ) -> Result<(), ShardViolation> {
        if !self.members[s][m].holds_state {
            return Ok(());
        }
        let q = self.members[s][m].replica.queue();
        let pos = q.applied();
        let digest = q.digest();
        match self.digests[s].get(&pos) {
            Some(d) if *d != digest => {
                return Err(self.violation(
                    "replicas identical",
                    format!("shard {s} member {m} differs from another replica at position {pos}"),
                ))
            }
            Some(_) => {}
            None => {
                self.digests[s].insert(pos, digest);
            }
        }
        if pos <= self.counted[s] {
            return Ok(());
        }
        self.counted[s] = pos;
        let key = (q.epoch(), pos);
        if self.trace {
            for e in effects {
                eprintln!("t={} shard {s} pos {pos} (m{m}): {e:?}", self.now);
            }
        }
        for e in effects {
            match e {
                // A trigger's push taken (at once, or after it waited for room); a blocked
                // continuation admitted is no new run.
                Effect::Accepted { pusher, id } | Effect::Admitted { pusher, id, .. }
                    if *pusher != conveyor_core::queue::FORWARDER
                        && !matches!(e, Effect::Admitted { step, .. } if step != STEPS[0].0) =>
                {
                    if s != 0 {
                        return Err(self.violation(
                            "pushes",
                            format!("run {id:?} accepted in shard {s}: triggers push to shard 0"),
                        ));
                    }
                    self.admitted.insert(*id);
                    self.note(s, key, Counted::Admitted(*id));
                }
                Effect::Completed {
                    id, step, terminal, ..
                } => {
                    if !self.admitted.contains(id) {
                        return Err(self.violation(
                            "validity",
                            format!("shard {s} completed {step} of {id:?}, never admitted"),
                        ));
                    }
                    let n = {
                        let n = self.completions.entry((*id, step.clone())).or_default();
                        *n += 1;
                        *n
                    };
                    if n > 1 {
                        return Err(self.violation(
                            "exactly once",
                            format!("step {step} of {id:?} completed {n} times (now in shard {s})"),
                        ));
                    }
                    self.note(s, key, Counted::Completed(*id, step.clone()));
                    if *terminal {
                        if s != 0 {
                            return Err(self.violation(
                                "end in origin shard",
                                format!("{id:?} ended in shard {s}, not its origin shard 0"),
                            ));
                        }
                        *self.ended.entry(*id).or_default() += 1;
                        self.note(s, key, Counted::Ended(*id));
                    }
                }
                Effect::Failed { id, .. } | Effect::Rejected { id, .. } => {
                    return Err(self.violation("failures", format!("{id:?} failed: {e:?}")))
                }
                Effect::Inbox { .. } => {}
                Effect::Requeued { .. } => self.report.requeued += 1,
                Effect::Blocked { .. } => self.report.blocked += 1,
                Effect::DuplicateCompletion { .. } => self.report.duplicate_completions += 1,
                Effect::ShardMap { moved, version, .. } => {
                    self.report.moved += *moved as u64;
                    self.report.remapped += u64::from(*version == 2);
                }
                Effect::ViewInstalled { .. } => self.report.view_changes += 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// Durable runs: what was counted at `key` (epoch, position) of shard `s`'s order, to be
    /// taken back if a restarted shard goes on from before it.
    fn note(&mut self, s: usize, key: (u64, u64), c: Counted) {
        if self.cfg.durable {
            self.history[s].entry(key).or_default().push(c);
        }
    }

    /// Restarted shard `s` decided to go on from the logs at `at` (an epoch and a position):
    /// what was counted in a later epoch, or in that one after the position, never was; what
    /// anyone was told must lie before it (the durable promise: an acceptance, an end).
    pub(super) fn decided(&mut self, s: usize, at: Claim) -> Result<(), ShardViolation> {
        self.awaiting[s] = false;
        self.report.decided += 1;
        let kept = |k: &(u64, u64)| k.0 < at.epoch || (k.0 == at.epoch && k.1 <= at.position);
        let lost: Vec<Counted> = self.history[s]
            .iter()
            .filter(|(k, _)| !kept(k))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect();
        self.history[s].retain(|k, _| kept(k));
        if self.trace {
            eprintln!(
                "t={} shard {s} decided {at:?}: {} counted effects taken back",
                self.now,
                lost.len()
            );
        }
        self.report.undone += lost.len() as u64;
        for c in lost {
            match c {
                Counted::Admitted(id) => {
                    self.admitted.remove(&id);
                }
                Counted::Completed(id, step) => {
                    if let Some(n) = self.completions.get_mut(&(id, step)) {
                        *n = n.saturating_sub(1);
                    }
                }
                Counted::Ended(id) => {
                    if let Some(n) = self.ended.get_mut(&id) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        }
        self.counted[s] = at.position;
        self.digests[s].retain(|p, _| *p <= at.position);
        for h in 0..self.cfg.members {
            let host = &self.hosts[h];
            if let Some(id) = host
                .told_accepted
                .iter()
                .find(|id| !self.admitted.contains(id))
            {
                return Err(self.violation(
                    "durable",
                    format!("trigger {h} was told {id:?} accepted; shard {s} restarted from {at:?} without it"),
                ));
            }
            if let Some(id) = host
                .told
                .keys()
                .find(|id| self.ended.get(id).copied().unwrap_or(0) == 0)
            {
                return Err(self.violation(
                    "durable",
                    format!("trigger {h} was told {id:?} ended; shard {s} restarted from {at:?} without its end"),
                ));
            }
        }
        Ok(())
    }

    /// What member `m` of shard `s`'s application does with the effects that concern it.
    pub(super) fn act(
        &mut self,
        s: usize,
        m: usize,
        effects: Vec<Effect>,
    ) -> Result<(), ShardViolation> {
        let me = MemberId(m as u16);
        let shard = Some(ShardId(s as u16));
        for e in effects {
            if !e.concerns(me, shard) {
                continue;
            }
            let id = match &e {
                Effect::Accepted { id, .. }
                | Effect::Completed { id, .. }
                | Effect::Failed { id, .. }
                | Effect::Requeued { id, .. }
                | Effect::Blocked { id, .. }
                | Effect::Admitted { id, .. }
                | Effect::Rejected { id, .. } => Some(*id),
                _ => None,
            };
            if let Some(id) = id {
                if s != 0 || id.origin() != me {
                    return Err(self.violation(
                        "told the right member",
                        format!(
                            "member {m} of shard {s} told of {id:?}, a run it did not start: {e:?}"
                        ),
                    ));
                }
            }
            match e {
                Effect::Assigned { req, .. } => {
                    let exec = self.rng.gen_range(self.cfg.exec_us.0..=self.cfg.exec_us.1);
                    let inc = self.members[s][m].inc;
                    let job = self.event_seq;
                    self.jobs.insert(job, (req.instance, req));
                    self.schedule(self.now + exec, Event::Finish { s, m, inc, job });
                }
                Effect::Accepted { id, .. } => {
                    self.hosts[m].accepted.insert(id);
                    self.hosts[m].told_accepted.insert(id);
                }
                Effect::Admitted { id, step, .. } if step == STEPS[0].0 => {
                    self.hosts[m].accepted.insert(id);
                }
                Effect::Rejected { id, .. } | Effect::Failed { id, .. } => {
                    if let Some(j) = &mut self.hosts[m].journal {
                        j.answered.insert(id);
                    }
                }
                Effect::Completed {
                    id,
                    instance,
                    terminal: true,
                    ..
                } => {
                    if self.ended.get(&id).copied().unwrap_or(0) == 0 {
                        return Err(self.violation(
                            "told ends happened",
                            format!("trigger {m} told {id:?} ended before the order ended it"),
                        ));
                    }
                    let host = &mut self.hosts[m];
                    if let Some(j) = &mut host.journal {
                        j.answered.insert(id);
                    }
                    if !host.told_instances.insert((id, instance)) && host.resumed {
                        // Told again after the trigger resumed from its journal: the end
                        // its journal holds (as `conveyor bench`'s tally, not counted twice).
                        continue;
                    }
                    let n = {
                        let n = self.hosts[m].told.entry(id).or_default();
                        *n += 1;
                        *n
                    };
                    if n > 1 && !self.hosts[m].crashed {
                        return Err(self.violation(
                            "told once",
                            format!("trigger {m} told the end of {id:?} {n} times"),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Everything is done: every trigger pushed everything (or its process died), every
    /// admitted run ended, every live member serves with nothing waiting.
    pub(super) fn done(&self) -> bool {
        let pushed = (0..self.cfg.members)
            .all(|h| self.hosts[h].pushes_left == 0 || !self.members[0][h].alive);
        let ended = self
            .admitted
            .iter()
            .all(|id| self.ended.get(id).copied().unwrap_or(0) >= 1);
        let quiet = self.members.iter().flatten().all(|x| {
            !x.alive
                || (x.replica.status() == Status::Serving
                    && x.outbox.is_empty()
                    && x.replica.queue().shards().waiting() == 0
                    && x.replica.queue().size() == 0)
        });
        let told = (0..self.cfg.members).all(|h| {
            let host = &self.hosts[h];
            // A trigger whose process is gone for good is told nothing more.
            host.crashed
                || !self.members[0][h].alive
                || (host
                    .accepted
                    .iter()
                    .all(|id| host.told.get(id).copied().unwrap_or(0) >= 1)
                    && host
                        .journal
                        .as_ref()
                        .is_none_or(|j| j.pushed.keys().all(|id| j.answered.contains(id))))
        });
        pushed && ended && quiet && told
    }

    pub(super) fn pending(&self) -> String {
        let unended: Vec<&RequestId> = self
            .admitted
            .iter()
            .filter(|id| self.ended.get(id).copied().unwrap_or(0) == 0)
            .take(5)
            .collect();
        let members: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .flat_map(|(s, row)| {
                row.iter().enumerate().map(move |(m, x)| {
                    format!(
                        "s{s}m{m}: {} {} view {:?} outbox {} waiting {} size {}",
                        if x.alive { "alive" } else { "dead" },
                        x.replica.status().label(),
                        x.replica.view().members,
                        x.outbox.len(),
                        x.replica.queue().shards().waiting(),
                        x.replica.queue().size()
                    )
                })
            })
            .collect();
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(h, host)| {
                let untold = host
                    .accepted
                    .iter()
                    .filter(|id| host.told.get(id).copied().unwrap_or(0) == 0)
                    .count();
                let unanswered = host.journal.as_ref().map_or(0, |j| {
                    j.pushed.keys().filter(|id| !j.answered.contains(id)).count()
                });
                format!(
                    "host {h}: {} pushes left, {untold} accepted runs' ends not told, {unanswered} journaled pushes unanswered{}",
                    host.pushes_left,
                    if host.crashed { " (crashed)" } else { "" }
                )
            })
            .collect();
        format!(
            "not done: {} of {} admitted runs not ended (e.g. {unended:?}); {}; {}",
            self.admitted
                .iter()
                .filter(|id| self.ended.get(id).copied().unwrap_or(0) == 0)
                .count(),
            self.admitted.len(),
            hosts.join("; "),
            members.join("; ")
        )
    }

    pub(super) fn finish_checks(mut self) -> Result<ShardReport, ShardViolation> {
        for id in &self.admitted {
            for (step, _) in STEPS {
                let n = self
                    .completions
                    .get(&(*id, step.to_string()))
                    .copied()
                    .unwrap_or(0);
                if n != 1 {
                    return Err(self.violation(
                        "exactly once",
                        format!("step {step} of admitted {id:?} completed {n} times"),
                    ));
                }
            }
            if self.ended.get(id) != Some(&1) {
                return Err(self.violation(
                    "exactly once",
                    format!("{id:?} ended {:?} times", self.ended.get(id)),
                ));
            }
        }
        for h in 0..self.cfg.members {
            if let Some((id, n)) = self.hosts[h].told.iter().find(|(_, n)| **n > 1) {
                if !self.hosts[h].crashed {
                    return Err(
                        self.violation("told once", format!("trigger {h} told {id:?} {n} times"))
                    );
                }
            }
        }
        // Entries each shard took from the others, as its most advanced live replica holds it.
        for (b, row) in self.members.iter().enumerate() {
            self.report.forwarded += row
                .iter()
                .filter(|x| x.alive)
                .map(|x| {
                    (0..self.cfg.shards)
                        .filter(|&a| a != b)
                        .map(|a| x.replica.queue().shards().watermark(ShardId(a as u16)))
                        .sum::<u64>()
                })
                .max()
                .unwrap_or(0);
        }
        for host in &self.hosts {
            for f in host.forwarders.values() {
                self.report.forwarder_went_back += f.stats().went_back;
                self.report.acks += f.stats().acks;
            }
        }
        self.report.admitted = self.admitted.len();
        self.report.ended = self.ended.len();
        self.report.end_us = self.now;
        Ok(self.report)
    }
}
