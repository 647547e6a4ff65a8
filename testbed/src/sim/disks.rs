//! The disks of a durable run: each member's log as its process writes it (synced at random
//! moments, a crash losing what was not synced), what a majority's disks must hold before
//! anything waiting for them is told, and every log replaying to its member's state at the end.

use super::*;

impl Sim {
    /// Effects member `i`'s replica held until a majority of the group had their step on
    /// disk: by then, a majority of the group file's hosts must hold the step on disk (the
    /// model's truth, not what the rows said); then they count as told.
    pub(super) fn on_persisted(
        &mut self,
        i: usize,
        effects: Vec<(u64, Effect)>,
    ) -> Result<(), Violation> {
        for (p, e) in effects {
            // The position the simulator saw the step end at, not the replica's word for it.
            let seen = self.nodes[i]
                .awaiting_disks
                .iter()
                .position(|(_, a)| *a == e);
            let p = match seen {
                Some(k) => {
                    let (end, _) = self.nodes[i]
                        .awaiting_disks
                        .remove(k)
                        .unwrap_or((p, e.clone()));
                    if p < end {
                        return Err(self.violation(
                            "durable",
                            format!("m{i} released {e:?} at position {p}; its step ends at {end}"),
                        ));
                    }
                    end
                }
                // Ends told on a return, with the state (they lie before its position).
                None => p,
            };
            self.check_on_disks(i, p, &e)?;
            // A returning origin's `Rejoined` waits behind the ends it missed (it says which
            // of its requests are unknown: not before their ends are told).
            if !told_outside(&e) && !matches!(e, Effect::Rejoined { .. }) {
                return Err(self.violation(
                    "durable",
                    format!("m{i} held {e:?} for the disks, which tells nothing outside"),
                ));
            }
            self.report.corners.told_after_disks += 1;
            self.note_told(i, &e)?;
        }
        Ok(())
    }

    /// `e`, told by member `i` now, needs the disks to reach `p`: a majority of the group
    /// file's hosts must have synced that far (the model's truth, not what the rows said).
    pub(super) fn check_on_disks(&self, i: usize, p: u64, e: &Effect) -> Result<(), Violation> {
        // A majority of the group file's members (any majority that restarts meets it).
        let on_disk = self.nodes.iter().filter(|n| n.synced_ever >= p).count();
        if on_disk <= self.nodes.len() / 2 {
            return Err(self.violation(
                "durable",
                format!(
                    "m{i} told {e:?} with its step (to position {p}) on {on_disk} of the {} members' disks",
                    self.nodes.len(),
                ),
            ));
        }
        Ok(())
    }

    /// Member `i`'s process writes what its replica hands it to its log (a snapshot first,
    /// then records at consecutive positions); its disk syncs at random moments, and the
    /// replica is told how far. A crash loses what was not synced (the process's log goes with
    /// it; what it synced stays on the host's disk: `synced_ever`).
    pub(super) fn write_log(&mut self, i: usize) -> Result<(), Violation> {
        if !self.cfg.durable {
            return Ok(());
        }
        while let Some(p) = self.nodes[i].replica.poll_persist() {
            if let Err(e) = self.nodes[i].disk.write(p) {
                return Err(self.violation("log", format!("m{i}'s log: {e}")));
            }
        }
        // What a restarted member's disk holds counts for the group only once its replica
        // holds the group's state (before, it is its own log's history, which may differ at
        // the same positions); the replica is told either way, and must not count it.
        let holds = self.holds(i);
        let n = &mut self.nodes[i];
        if holds {
            n.synced_ever = n.synced_ever.max(n.disk.synced);
        }
        if n.disk.synced < n.disk.written && self.rng.gen_bool(0.5) {
            n.disk.synced = n.disk.written;
            if holds {
                n.synced_ever = n.synced_ever.max(n.disk.synced);
            }
            n.replica.persisted(n.disk.synced);
        }
        Ok(())
    }

    /// At the end of a durable run: every serving member's log replays to its queue's state.
    pub(super) fn check_logs(&mut self) -> Result<(), Violation> {
        if !self.cfg.durable {
            return Ok(());
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.alive || n.replica.status() != Status::Serving || n.disk.log.is_empty() {
                continue;
            }
            let Some(Persist::Snapshot { state, .. }) = n.disk.log.first() else {
                return Err(
                    self.violation("log", format!("m{i}'s log does not start with a snapshot"))
                );
            };
            let records = n.disk.log[1..].iter().filter_map(|p| match p {
                Persist::Record {
                    position,
                    kind,
                    bytes,
                } => Some((*position, *kind, bytes.as_slice())),
                Persist::Snapshot { .. } => None,
            });
            let replayed = conveyor_core::durable::replay(Some(state), records);
            let ok = replayed
                .as_ref()
                .is_ok_and(|q| q.digest() == n.replica.queue().digest());
            if !ok {
                let why = match replayed {
                    Ok(_) => "a different state".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(self.violation(
                    "log replays",
                    format!("m{i}'s log does not replay to its queue's state: {why}"),
                ));
            }
            self.report.corners.logs_replayed += 1;
        }
        Ok(())
    }
}

/// Whether an effect is told outside the group (and so, on a durable queue, waits for the
/// disks): a push accepted, a run's end.
pub(super) fn told_outside(e: &Effect) -> bool {
    matches!(e, Effect::Accepted { .. } | Effect::Redis { .. })
        || conveyor_core::queue::ended(e).is_some()
}
