//! What other threads see of a running engine and may ask of it (the control plane's agent,
//! the application's handle), exchanged through [`Shared`].

use crate::transport::TransportStats;
use conveyor_core::proto::{Admission, Stats};
use conveyor_core::queue::{Op, QueueSpec};
use conveyor_core::types::MemberId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) ready: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) finished: AtomicBool,
    pub(super) engine_parked: AtomicBool,
    pub(super) app_parked: AtomicBool,
    pub(super) app_thread: Mutex<Option<Thread>>,
    pub(super) status: Mutex<String>,
    pub(super) delivered: AtomicU64,
    pub(super) view: AtomicU64,
    pub(super) live: Mutex<Live>,
    /// The engine stopped because this member left the group at its request.
    pub(super) left: AtomicBool,
    /// Requests from other threads (the control plane's agent), taken a few times a second.
    pub(super) directives: Mutex<Vec<Directive>>,
    /// [`conveyor_core::replica::Replica::told_through`] plus one, stored once the effects up
    /// to it are in the event ring (0: none yet).
    pub(super) told_through: AtomicU64,
    /// The group's cross-shard state (`conveyor_core::shard::Shards`), republished when it
    /// changes, once the group was given a shard map: what this process's forwarders read.
    pub(super) shards: Mutex<Option<Arc<conveyor_core::shard::Shards>>>,
    /// Rung each time `shards` is republished (the forwarders wait on them).
    pub(super) shards_bells: Mutex<Vec<Arc<Bell>>>,
}

/// Wakes a thread waiting for something another thread publishes (an engine's cross-shard
/// state, for the forwarders): rung by the publisher, waited on with a timeout. A ring while
/// no one waits is kept for the next wait.
#[derive(Debug, Default)]
pub struct Bell {
    rung: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Bell {
    pub fn ring(&self) {
        if let Ok(mut r) = self.rung.lock() {
            *r = true;
            self.cv.notify_all();
        }
    }

    /// Waits until rung or `timeout` passed; returns whether it was rung (and clears it).
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let Ok(guard) = self.rung.lock() else {
            return false;
        };
        match self.cv.wait_timeout_while(guard, timeout, |r| !*r) {
            Ok((mut r, _)) => std::mem::replace(&mut *r, false),
            Err(_) => false,
        }
    }
}

/// What another thread (the member's control-plane agent) may ask of a running engine. Taken
/// by the polling loop a few times a second, off the message path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Submit an operation to the group (for example [`Op::Pipelines`]), once serving.
    Submit(Op),
    /// Who may join from now on (the control plane's allowlist).
    Admit(Admission),
    /// Leave the group gracefully.
    Leave,
    /// This member's application restarted and kept a record of what it heard: see
    /// [`conveyor_core::replica::Replica::resume`] (`since`: the position it was told
    /// through; `unanswered`: its pushes, encoded, it still waits for).
    Resume {
        since: u64,
        unanswered: std::collections::BTreeMap<conveyor_core::types::RequestId, Vec<u8>>,
    },
}

/// Observes a running engine from another thread.
#[derive(Clone, Debug)]
pub struct Probe {
    pub(super) shared: Arc<Shared>,
}

impl Probe {
    pub fn live(&self) -> Live {
        self.shared
            .live
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }
    /// The group's cross-shard state as this member last applied it, once the group was given
    /// a shard map (see [`crate::shard`]).
    pub fn shards(&self) -> Option<Arc<conveyor_core::shard::Shards>> {
        self.shared.shards.lock().ok().and_then(|s| s.clone())
    }
    /// Rings `bell` each time the engine republishes its cross-shard state ([`Probe::shards`]).
    pub fn ring_on_shards(&self, bell: Arc<Bell>) {
        if let Ok(mut b) = self.shared.shards_bells.lock() {
            b.push(bell);
        }
    }
    /// Whether the engine stopped because this member left the group (a graceful leave).
    pub fn has_left(&self) -> bool {
        self.shared.left.load(Ordering::Acquire)
    }
    /// Hands a directive to the engine (taken within about 200 ms).
    pub fn direct(&self, d: Directive) {
        if let Ok(mut v) = self.shared.directives.lock() {
            v.push(d);
        }
    }
}

/// What a running engine looks like, refreshed a few times a second (for the control plane).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// `serving`, `changing`, `joining`, `minority`, `excluded`, `left`.
    pub status: &'static str,
    pub view: u32,
    pub members: Vec<MemberId>,
    pub proto: Stats,
    pub queues: Vec<(String, usize)>,
    /// The queues' settings, in the order of `queues`.
    pub specs: Vec<QueueSpec>,
    /// Requests put back in their queue after their invoker was removed (seen here).
    pub requeued: u64,
    /// This member's speculated assignments (over all its incarnations).
    pub speculation: super::Speculation,
    pub rejoins: u64,
    /// Version of the pipelines set through the group (0: the group file's).
    pub pipelines_version: u64,
    /// The transport's counters (and its XDP program's, if any).
    pub transport: TransportStats,
    /// The durable log's figures, for a member with a data directory.
    pub log: Option<LogLive>,
}

/// A member's durable log, as [`Live`] shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogLive {
    /// Every step before this position is on this member's disk.
    pub persisted: u64,
    /// Effects (acceptances, ends of runs) waiting for a majority's disks.
    pub held_for_disks: u64,
    /// Pushes refused because the disks did not take the log (durable queues whose policy is
    /// `reject`; see `Replica::submit_encoded`).
    pub refused_for_disks: u64,
    /// The disk is full now: the writer retries, the member applies nothing more meanwhile,
    /// and pushes wait (backpressure).
    pub disk_full: bool,
    /// Writes that failed (a full disk, an I/O error) and were tried again.
    pub failed_writes: u64,
    pub records: u64,
    pub bytes: u64,
    pub snapshots: u64,
}
