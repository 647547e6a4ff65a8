//! The engine's durable log: what the replica hands the host to persist goes to the data
//! directory's [`LogWriter`], and what the disk holds goes back to the replica (see
//! `conveyor_core::replica` "durable" and "recovery"). At start, and whenever the process's
//! replica is replaced (a rejoin, a recovery given up), the log is read back and replayed: the
//! state a restarted member claims with (or, for a joiner, claims with if the group has not
//! decided yet).

use crate::durable::{recover, DataDir, DurableError, LogOptions, LogWriter};
use conveyor_core::durable::replay;
use conveyor_core::queue::QueueState;
use conveyor_core::{Persist, Replica};
use std::path::Path;
use std::sync::atomic::Ordering;

/// A member's log, open for writing.
#[derive(Debug)]
pub(super) struct EngineLog {
    dir: DataDir,
    writer: Option<LogWriter>,
    opts: LogOptions,
    /// A record the writer's queue had no room for: offered again before anything else, and
    /// until it is taken the replica applies nothing more (the disk is the bottleneck; the
    /// group slows down rather than this member buffering without bound).
    pending: Option<Persist>,
    /// Bytes of records handed to the writer since the last snapshot: past `snapshot_bytes`
    /// (a segment's size), the replica is asked for one (older segments then go).
    since_snapshot: u64,
    snapshot_bytes: u64,
    /// Snapshots handed to the writer.
    snapshots: u64,
    /// The counters of the writers before this one (stopped at a reopen).
    failed_before: u64,
    records_before: u64,
    bytes_before: u64,
    /// Wakes the polling thread when the disk takes more (see [`EngineLog::wake_with`]).
    waker: Option<crate::durable::Waker>,
}

impl EngineLog {
    /// Opens `path` for `group`, reads it back and starts writing after it (in segments of
    /// `segment_bytes`, a snapshot each time the log grew by that much); the state the log
    /// replays to.
    pub(super) fn open(
        path: &Path,
        group: u32,
        segment_bytes: Option<u64>,
    ) -> Result<(EngineLog, QueueState), String> {
        let dir = DataDir::open(path, group).map_err(|e| e.to_string())?;
        let mut opts = LogOptions::default();
        if let Some(b) = segment_bytes {
            opts.segment_bytes = b.max(4096);
        }
        let mut log = EngineLog {
            dir,
            writer: None,
            opts,
            pending: None,
            since_snapshot: 0,
            snapshot_bytes: opts.segment_bytes,
            snapshots: 0,
            failed_before: 0,
            records_before: 0,
            bytes_before: 0,
            waker: None,
        };
        let state = log.reopen()?;
        Ok((log, state))
    }

    /// Stops the writer (what it holds reaches the disk), reads the directory back and
    /// starts writing after it; the state the log replays to. The replica that used it is
    /// being replaced: what it had not handed over yet is dropped with it.
    pub(super) fn reopen(&mut self) -> Result<QueueState, String> {
        self.pending = None;
        if let Some(w) = self.writer.take() {
            let s = w.stats();
            self.failed_before += s.failed_writes.load(Ordering::Relaxed);
            self.records_before += s.records.load(Ordering::Relaxed);
            self.bytes_before += s.bytes.load(Ordering::Relaxed);
            w.stop().map_err(|e| e.to_string())?;
        }
        let r = recover(&self.dir).map_err(|e| e.to_string())?;
        if let Some(cut) = &r.cut {
            tracing::warn!(
                "{}: a torn write at offset {} cut off ({} bytes): {}",
                cut.file.display(),
                cut.offset,
                cut.bytes,
                cut.reason
            );
        }
        let state = replay(
            r.snapshot.as_ref().map(|s| s.1.as_slice()),
            r.records.iter().map(|(p, k, b)| (*p, *k, b.as_slice())),
        )
        .map_err(|e| {
            format!(
                "{}: the log does not replay: {e}",
                self.dir.path().display()
            )
        })?;
        tracing::info!(
            "{}: recovered {} records (generation {}), the state at position {} (epoch {})",
            self.dir.path().display(),
            r.records.len(),
            r.generation,
            state.applied(),
            state.epoch()
        );
        let w = LogWriter::start(&self.dir, r.next, r.generation, self.opts)
            .map_err(|e| e.to_string())?;
        if let Some(wake) = &self.waker {
            w.on_persisted(wake.clone());
        }
        self.writer = Some(w);
        Ok(state)
    }

    /// `wake` is called (from the writer's thread) each time the disk takes more: a parked
    /// polling thread takes the new position at once (its rows say it from their next
    /// sending; what waits for a majority's disks waits for that) rather than at its next
    /// wake-up.
    pub(super) fn wake_with(&mut self, wake: crate::durable::Waker) {
        if let Some(w) = &self.writer {
            w.on_persisted(wake.clone());
        }
        self.waker = Some(wake);
    }

    /// The log's figures for [`super::Live`] (`held_for_disks` is the replica's).
    pub(super) fn live(&self) -> super::LogLive {
        let Some(w) = self.writer.as_ref() else {
            return super::LogLive::default();
        };
        let s = w.stats();
        super::LogLive {
            persisted: w.persisted(),
            held_for_disks: 0,
            refused_for_disks: 0,
            disk_full: s.disk_full.load(Ordering::Relaxed),
            failed_writes: s.failed_writes.load(Ordering::Relaxed) + self.failed_before,
            records: s.records.load(Ordering::Relaxed) + self.records_before,
            bytes: s.bytes.load(Ordering::Relaxed) + self.bytes_before,
            snapshots: self.snapshots,
        }
    }

    /// Whether a record waits for room in the writer's queue (apply nothing more meanwhile).
    pub(super) fn backed_up(&self) -> bool {
        self.pending.is_some()
    }

    /// Hands the writer what the replica has to persist, and tells the replica what is on
    /// disk. The writer's error, if it stopped on one (the member must stop: its disk no
    /// longer takes the log).
    pub(super) fn drive(&mut self, replica: &mut Replica) -> Result<bool, DurableError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(false);
        };
        let mut work = false;
        while let Some(p) = self.pending.take().or_else(|| replica.poll_persist()) {
            match p {
                Persist::Record {
                    position,
                    kind,
                    bytes,
                } => {
                    let len = bytes.len() as u64;
                    if let Err(bytes) = w.offer(position, kind, bytes) {
                        self.pending = Some(Persist::Record {
                            position,
                            kind,
                            bytes,
                        });
                        break;
                    }
                    self.since_snapshot += len;
                }
                Persist::Snapshot { position, state } => {
                    self.since_snapshot = 0;
                    self.snapshots += 1;
                    w.snapshot(position, state);
                }
            }
            work = true;
        }
        if self.since_snapshot >= self.snapshot_bytes && replica.snapshot_now() {
            // Taken on the next pass, after every record before it.
            self.since_snapshot = 0;
        }
        // (A full disk is said by the writer's thread, which tries again until space is back:
        // meanwhile what waits for the disks waits, and this member applies nothing more.)
        w.check()?;
        replica.set_disk_full(w.stats().disk_full.load(Ordering::Relaxed));
        replica.persisted(w.persisted());
        Ok(work)
    }

    /// Stops the writer: what it holds reaches the disk.
    pub(super) fn stop(&mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.stop() {
                tracing::error!("log writer: {e}");
            }
        }
    }
}
