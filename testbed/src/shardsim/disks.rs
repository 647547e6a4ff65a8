//! The durable side of the sharded-deployment simulator: each member's log on its host's disk
//! ([`LogDisk`], the model the group simulator uses too), a member restarted from it, and
//! where a restarted shard's group decided its history goes on.

use super::{configured, group, start_ops, Event, ShardSim, ShardViolation};
use conveyor_core::queue::Effect;
use conveyor_core::types::{Instant, MemberId, View, ViewId};
use conveyor_core::{RecoveryStage, Replica};
use rand::Rng;

impl ShardSim {
    /// A member restarted from its disk holds its shard's state once its group decided; the
    /// first to, decides for the checks where the shard's history goes on from.
    pub(super) fn note_recovery(&mut self, s: usize, m: usize) -> Result<(), ShardViolation> {
        let x = &mut self.members[s][m];
        if !x.recovering {
            return Ok(());
        }
        let Some((RecoveryStage::Recovered, decision)) = x.replica.recovery() else {
            return Ok(());
        };
        let at = decision.map(|d| d.at);
        x.recovering = false;
        x.holds_state = true;
        if let (true, Some(at)) = (self.awaiting[s], at) {
            self.decided(s, at)?;
        }
        Ok(())
    }

    /// Host `h` starts its member of shard `s` again from its data directory, as a member of
    /// the group file's view, as `conveyor node` does: its claim first, then what its host
    /// submits at every start.
    pub(super) fn restart_from_disk(&mut self, s: usize, h: usize) {
        let n = self.cfg.members;
        let me = MemberId(h as u16);
        let inc = self.members[s][h].inc + 1;
        let mut replica = Replica::new(
            self.cfg.proto.clone(),
            self.keys[s].clone(),
            group(s),
            View::new(ViewId(1), configured(n)),
            me,
            ((s as u64) << 40) | ((h as u64) << 20) | (u64::from(inc) + 1),
            Instant::from_micros(self.now),
        )
        .expect("valid shard sim config");
        replica.recover_from(self.members[s][h].disk.synced_state());
        replica.set_durable(true, &configured(n));
        if s == 0 {
            self.resume_trigger(h, &mut replica);
        }
        let claim = replica.claim();
        let ops = start_ops(s, me, self.cfg.capacity, true, &self.map1);
        let x = &mut self.members[s][h];
        x.replica = replica;
        x.inc = inc;
        x.alive = true;
        x.rejoining = false;
        x.holds_state = false;
        x.recovering = true;
        x.outbox = claim.into_iter().chain(ops).collect();
        x.timer = self.now;
        self.report.restarts_from_disk += 1;
        if s == 0 && self.hosts[h].pushes_left > 0 {
            // A new trigger process goes on with the pushes left.
            self.schedule(self.now + 1_000, Event::Push { h, inc });
        }
        self.schedule(self.now, Event::Timer { s, m: h, inc });
    }

    /// Member `m` of shard `s`'s host writes what its replica hands it to its log (a snapshot
    /// first, then records at consecutive positions); the disk syncs at random moments, and
    /// the replica is told how far. Whether it was told anything new.
    pub(super) fn write_log(&mut self, s: usize, m: usize) -> Result<bool, ShardViolation> {
        if !self.cfg.durable || !self.members[s][m].alive {
            return Ok(false);
        }
        let sync = self.rng.gen_bool(self.cfg.sync_chance);
        let x = &mut self.members[s][m];
        while let Some(p) = x.replica.poll_persist() {
            if let Err(e) = x.disk.write(p) {
                return Err(self.violation("log", format!("s{s}m{m}'s log: {e}")));
            }
        }
        if sync {
            x.disk.synced = x.disk.written;
        }
        if x.disk.synced > x.disk_told {
            x.disk_told = x.disk.synced;
            x.replica.persisted(x.disk.synced);
            return Ok(true);
        }
        Ok(false)
    }
}

/// What a step of a durable queue tells outside its shard only once a majority's disks hold
/// it (see `conveyor_core::replica::durable`).
pub(super) fn held_for_disks(e: &Effect) -> bool {
    matches!(
        e,
        Effect::Accepted { .. }
            | Effect::Redis { .. }
            | Effect::Outbox { .. }
            | Effect::Inbox { .. }
    ) || conveyor_core::queue::ended(e).is_some()
}
