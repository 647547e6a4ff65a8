//! The checks of the sharded-deployment simulator: counting each shard's order once (the first
//! replica to apply each position), what a member's application is told, and the end of a run.

use super::{Event, ShardReport, ShardSim, ShardViolation, STEPS};
use conveyor_core::proto::Status;
use conveyor_core::queue::Effect;
use conveyor_core::shard::ShardId;
use conveyor_core::types::{MemberId, RequestId};
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
                    if *terminal {
                        if s != 0 {
                            return Err(self.violation(
                                "end in origin shard",
                                format!("{id:?} ended in shard {s}, not its origin shard 0"),
                            ));
                        }
                        *self.ended.entry(*id).or_default() += 1;
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
                }
                Effect::Admitted { id, step, .. } if step == STEPS[0].0 => {
                    self.hosts[m].accepted.insert(id);
                }
                Effect::Completed {
                    id, terminal: true, ..
                } => {
                    if self.ended.get(&id).copied().unwrap_or(0) == 0 {
                        return Err(self.violation(
                            "told ends happened",
                            format!("trigger {m} told {id:?} ended before the order ended it"),
                        ));
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
            host.crashed
                || host
                    .accepted
                    .iter()
                    .all(|id| host.told.get(id).copied().unwrap_or(0) >= 1)
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
        format!(
            "not done: {} of {} admitted runs not ended (e.g. {unended:?}); {}",
            self.admitted.len() - self.ended.len(),
            self.admitted.len(),
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
