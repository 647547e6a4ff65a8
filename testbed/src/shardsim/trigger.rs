//! The triggers of the sharded-deployment simulator: each host's pushes into shard 0, and the
//! journal a trigger may keep and a new trigger process resumes from.

use super::{Event, ShardSim, STEPS};
use conveyor_core::queue::{Meta, Op, Request};
use conveyor_core::types::{MemberId, RequestId};
use conveyor_core::Replica;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// A trigger's journal (see [`ShardSimConfig::journal`]): kept by the kernel, it outlives the
/// trigger's process.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Every push, written before it is submitted (encoded).
    pub(super) pushed: BTreeMap<RequestId, Vec<u8>>,
    /// Runs whose end (or refusal) the trigger was told.
    pub(super) answered: BTreeSet<RequestId>,
    /// How far its member of shard 0 had told it the ends of its runs.
    pub(super) told_through: u64,
}

impl ShardSim {
    /// The trigger of host `h` (in its member of shard 0's process) pushes its next request.
    pub(super) fn push(&mut self, h: usize, inc: u32) {
        let x = &self.members[0][h];
        if !x.alive || x.inc != inc || self.hosts[h].pushes_left == 0 {
            return;
        }
        let host = &mut self.hosts[h];
        host.pushes_left -= 1;
        host.counter += 1;
        let id = RequestId::new(MemberId(h as u16), host.counter);
        let req = Request {
            id,
            instance: 0,
            step: STEPS[0].0.into(),
            queue: STEPS[0].1.into(),
            payload: id.0.to_le_bytes().to_vec(),
            meta: Meta::default(),
            http: None,
        };
        let op = Op::Push {
            pusher: MemberId(h as u16),
            req,
        };
        if let Some(j) = &mut self.hosts[h].journal {
            j.pushed.insert(id, op.encode());
        }
        self.members[0][h].outbox.push_back(op);
        let _ = self.step(0, h);
        if self.hosts[h].pushes_left > 0 {
            let gap = self
                .rng
                .gen_range(self.cfg.push_gap_us.0..=self.cfg.push_gap_us.1);
            self.schedule(self.now + gap, Event::Push { h, inc });
        }
    }

    /// A new trigger process on host `h` with a journal: its member of shard 0 (`replica`,
    /// new) is asked to tell the ends after the journal's position and to push again the
    /// journal's unanswered pushes the order does not hold.
    pub(super) fn resume_trigger(&mut self, h: usize, replica: &mut Replica) {
        let Some(j) = &self.hosts[h].journal else {
            return;
        };
        let unanswered: BTreeMap<RequestId, Vec<u8>> = j
            .pushed
            .iter()
            .filter(|(id, _)| !j.answered.contains(id))
            .map(|(id, op)| (*id, op.clone()))
            .collect();
        self.report.trigger_resumes += 1;
        self.report.journal_unanswered += unanswered.len() as u64;
        replica.resume(j.told_through, unanswered);
        self.hosts[h].resumed = true;
    }
}
