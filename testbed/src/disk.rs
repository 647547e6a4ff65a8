//! A process's log on its host's disk, as the simulators model it (durable runs): what its
//! replica hands it ([`conveyor_core::Persist`]: a snapshot, then records at consecutive
//! positions), how far that is synced, and the state a restart from it recovers.

use conveyor_core::queue::QueueState;
use conveyor_core::Persist;

#[derive(Debug, Default)]
pub struct LogDisk {
    /// What the process's replica handed it, from its last snapshot on.
    pub log: Vec<Persist>,
    /// The position after the last record written, and after the last one synced.
    pub written: u64,
    pub synced: u64,
}

impl LogDisk {
    /// Writes `p`: a snapshot is written whole (a temporary file, synced, renamed) and the log
    /// goes on from it; a record must come at the next position after a snapshot. What is
    /// wrong is said (for the simulator's `log` property).
    pub fn write(&mut self, p: Persist) -> Result<(), String> {
        match &p {
            Persist::Snapshot { position, .. } => {
                self.log.clear();
                self.written = *position;
                self.synced = *position;
            }
            Persist::Record { position, .. } => {
                if self.log.is_empty() || *position != self.written {
                    return Err(format!(
                        "a record at position {position} where {} was due{}",
                        self.written,
                        if self.log.is_empty() {
                            " (no snapshot before it)"
                        } else {
                            ""
                        }
                    ));
                }
                self.written += 1;
            }
        }
        self.log.push(p);
        Ok(())
    }

    /// The process died: what was written and not synced is gone.
    pub fn crash(&mut self) {
        let synced = self.synced;
        self.log.retain(|p| match p {
            Persist::Record { position, .. } => *position < synced,
            Persist::Snapshot { .. } => true,
        });
        self.written = synced;
    }

    /// The state the log replays to as far as it is synced (what a process restarted from
    /// the data directory recovers).
    pub fn synced_state(&self) -> QueueState {
        let Some(Persist::Snapshot { state, .. }) = self.log.first() else {
            return QueueState::new();
        };
        let records = self.log[1..].iter().filter_map(|p| match p {
            Persist::Record {
                position,
                kind,
                bytes,
            } if *position < self.synced => Some((*position, *kind, bytes.as_slice())),
            _ => None,
        });
        conveyor_core::durable::replay(Some(state), records)
            .expect("a log the simulator checked replays")
    }
}
