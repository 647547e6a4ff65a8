//! A member's data directory: the log of delivered operations, written with group commit, and
//! the snapshots behind it (the formats are `conveyor_core::durable`'s).
//!
//! - [`DataDir::open`] makes or opens the directory and checks whose it is: an identity file
//!   (`CONVEYOR`) names the layout and the group; a directory of another group or layout is
//!   refused by name, never written into.
//! - [`recover`] reads what the directory holds: the newest snapshot and the log records after
//!   it. A torn tail in the newest segment (a batch cut by a crash) is cut off and reported
//!   ([`Recovered::cut`]); anything else that does not read back (a corrupt record with intact
//!   batches after it, a gap between segments, a damaged snapshot) is an error naming the file
//!   and the offset.
//! - [`LogWriter`] appends from the polling thread without blocking it: records go through a
//!   bounded queue (full: [`Appended::Full`], the caller holds back) to a thread that writes
//!   whatever has accumulated as one batch, then `fdatasync`s it once (group commit), and
//!   publishes the position up to which records are on disk ([`LogWriter::persisted`]). A full
//!   disk stops the frontier, not the process: the batch is taken back off the file, the error
//!   is logged once and counted, and the write is tried again until space comes back.
//!
//! Files: `log-<generation>-<first position>.cvl` segments and
//! `snapshot-<generation>-<position>.cvs` snapshots (written to `.tmp`, synced, renamed, the
//! directory synced). A generation is one history of the log: a member that takes a state it
//! did not make itself (a joiner's, or the group's after a whole-group restart) may hold a log
//! of another history at the same positions, so the state's snapshot starts the next
//! generation, and the files of the ones before go once it is on disk. Recovery reads only the
//! newest generation (what a crash left of older ones is removed).

use conveyor_core::durable::log::{self as seg, RecordKind, SegmentHeader, Tail, BATCH_START};
use conveyor_core::durable::{snapshot, FormatError, LAYOUT};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[cfg(test)]
mod tests;

const IDENTITY: &str = "CONVEYOR";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{dir} is the data directory of group {found:#x}, not of this group ({expected:#x}): refused (point [member] data_dir elsewhere)")]
    OtherGroup {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{dir} holds layout {found} data; this build reads layout {LAYOUT}: refused")]
    Layout { dir: PathBuf, found: u32 },
    #[error("{dir} is not a Conveyor data directory ({reason}): refused")]
    NotADataDir { dir: PathBuf, reason: String },
    #[error("{file}: {source}; the member stops rather than skip it (moving the data directory aside lets it rejoin as a new member, with the state from the others)")]
    Format { file: PathBuf, source: FormatError },
    #[error("{file}: its first position is {found}, the log before it ends at {expected}: records are missing")]
    Gap {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> DurableError + 'a {
    move |source| DurableError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// A member's data directory, checked to be this group's.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    group: u32,
}

impl DataDir {
    /// Opens `path` for `group`, making it (and its identity file) if it does not exist or is
    /// empty.
    pub fn open(path: &Path, group: u32) -> Result<DataDir, DurableError> {
        fs::create_dir_all(path).map_err(io_err(path, "create directory"))?;
        let id = path.join(IDENTITY);
        let dir = DataDir {
            path: path.to_path_buf(),
            group,
        };
        match fs::read_to_string(&id) {
            Ok(text) => dir.check_identity(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // (A temporary file is a first open that a crash cut: not someone else's.)
                let stray = fs::read_dir(path)
                    .map_err(io_err(path, "list"))?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|name| !name.ends_with(".tmp"));
                if let Some(name) = stray {
                    return Err(DurableError::NotADataDir {
                        dir: dir.path,
                        reason: format!("no {IDENTITY} file, yet it holds {name:?}"),
                    });
                }
                let text = format!("conveyor data directory\nlayout {LAYOUT}\ngroup {group:#x}\n");
                write_durably(path, IDENTITY, text.as_bytes())?;
            }
            Err(e) => return Err(io_err(&id, "read")(e)),
        }
        Ok(dir)
    }

    fn check_identity(&self, text: &str) -> Result<(), DurableError> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map(str::trim)
        };
        let not_ours = |reason: String| DurableError::NotADataDir {
            dir: self.path.clone(),
            reason,
        };
        if text.lines().next() != Some("conveyor data directory") {
            return Err(not_ours(format!(
                "{IDENTITY} does not start with \"conveyor data directory\""
            )));
        }
        let layout = field("layout")
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| not_ours(format!("{IDENTITY} has no readable layout line")))?;
        if layout != LAYOUT {
            return Err(DurableError::Layout {
                dir: self.path.clone(),
                found: layout,
            });
        }
        let group = field("group")
            .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| not_ours(format!("{IDENTITY} has no readable group line")))?;
        if group != self.group {
            return Err(DurableError::OtherGroup {
                dir: self.path.clone(),
                found: group,
                expected: self.group,
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    /// Files named `prefix<generation>-<number>suffix`, by generation and number.
    fn numbered(
        &self,
        prefix: &str,
        suffix: &str,
    ) -> Result<Vec<(u64, u64, PathBuf)>, DurableError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.path).map_err(io_err(&self.path, "list"))? {
            let e = e.map_err(io_err(&self.path, "list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let parsed = name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .and_then(|r| r.split_once('-'))
                .and_then(|(g, n)| Some((g.parse::<u64>().ok()?, n.parse::<u64>().ok()?)));
            if let Some((g, n)) = parsed {
                out.push((g, n, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest generation any file belongs to (0 for none).
    fn generation(&self) -> Result<u64, DurableError> {
        let segs = self.numbered("log-", ".cvl")?;
        let snaps = self.numbered("snapshot-", ".cvs")?;
        Ok(segs.iter().chain(&snaps).map(|f| f.0).max().unwrap_or(0))
    }

    /// Files of generations before `generation` (left by a crash in the middle of starting
    /// a new one).
    fn older_than(&self, generation: u64) -> Result<Vec<PathBuf>, DurableError> {
        let mut old = self.numbered("log-", ".cvl")?;
        old.extend(self.numbered("snapshot-", ".cvs")?);
        Ok(old
            .into_iter()
            .filter(|f| f.0 < generation)
            .map(|f| f.2)
            .collect())
    }

    fn of_newest(&self, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, DurableError> {
        let g = self.generation()?;
        Ok(self
            .numbered(prefix, suffix)?
            .into_iter()
            .filter(|f| f.0 == g)
            .map(|(_, n, p)| (n, p))
            .collect())
    }

    /// The newest generation's segments, by first position.
    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, DurableError> {
        self.of_newest("log-", ".cvl")
    }

    /// The newest generation's snapshots, by position.
    fn snapshots(&self) -> Result<Vec<(u64, PathBuf)>, DurableError> {
        self.of_newest("snapshot-", ".cvs")
    }
}

fn segment_name(generation: u64, first: u64) -> String {
    format!("log-{generation:010}-{first:020}.cvl")
}

fn snapshot_name(generation: u64, position: u64) -> String {
    format!("snapshot-{generation:010}-{position:020}.cvs")
}

/// Writes `name` in `dir` whole or not at all: a temporary file, synced, renamed, the
/// directory synced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DurableError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
    f.write_all(bytes).map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "sync"))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))
}

/// What a torn tail cost: cut off the newest segment at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// What a data directory held.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The newest snapshot: its position and the state's bytes.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Log records after it (or from 0), in order: (position, kind, bytes).
    pub records: Vec<(u64, RecordKind, Vec<u8>)>,
    /// The next position to write.
    pub next: u64,
    /// The generation read (the writer goes on in it).
    pub generation: u64,
    /// A torn tail cut off the newest segment (also logged as a warning).
    pub cut: Option<Cut>,
}

/// Reads a data directory back (see the module docs). Cuts a torn tail off the newest
/// segment on disk.
pub fn recover(dir: &DataDir) -> Result<Recovered, DurableError> {
    let mut out = Recovered::default();
    // Temporary files are writes that never completed: never read.
    for e in fs::read_dir(&dir.path).map_err(io_err(&dir.path, "list"))? {
        let p = e.map_err(io_err(&dir.path, "list"))?.path();
        if p.extension().is_some_and(|x| x == "tmp") {
            fs::remove_file(&p).map_err(io_err(&p, "remove"))?;
        }
    }
    // What a crash left of older generations (a new one's snapshot is on disk).
    let generation = dir.generation()?;
    for p in dir.older_than(generation)? {
        tracing::info!(
            "{}: of an older generation of the log; removed",
            p.display()
        );
        fs::remove_file(&p).map_err(io_err(&p, "remove"))?;
    }
    out.generation = generation;
    if let Some((_, path)) = dir.snapshots()?.pop() {
        let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
        let s = snapshot::parse(&bytes, dir.group).map_err(|source| DurableError::Format {
            file: path.clone(),
            source,
        })?;
        out.snapshot = Some((s.position, s.body.to_vec()));
        out.next = s.position;
    }
    let segments = dir.segments()?;
    let last = segments.len().saturating_sub(1);
    let mut expected: Option<u64> = None;
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_err(path, "read"))?;
        let format = |source| DurableError::Format {
            file: path.clone(),
            source,
        };
        let scan = match seg::scan(&bytes, dir.group) {
            Ok(s) => s,
            // The newest segment's creation cut by a crash (its header never synced).
            Err(FormatError::Short { .. } | FormatError::HeaderChecksum { .. }) if i == last => {
                let cut = Cut {
                    file: path.clone(),
                    offset: 0,
                    bytes: bytes.len() as u64,
                    reason: "the segment's header was never written whole".into(),
                };
                tracing::warn!(
                    "{}: {}; removed ({} bytes)",
                    cut.file.display(),
                    cut.reason,
                    cut.bytes
                );
                fs::remove_file(path).map_err(io_err(path, "remove"))?;
                sync_dir(&dir.path)?;
                out.cut = Some(cut);
                break;
            }
            Err(e) => return Err(format(e)),
        };
        let first = scan.header.first;
        let snapshot_at = out.snapshot.as_ref().map_or(0, |s| s.0);
        if let Some(exp) = expected {
            // A segment goes on from the one before, or from a snapshot that jumped ahead of
            // it (a joiner's state): what lies between is in the snapshot.
            if first != exp && !(first > exp && first <= snapshot_at) {
                return Err(DurableError::Gap {
                    file: path.clone(),
                    expected: exp,
                    found: first,
                });
            }
        } else if first > out.next {
            // The log must reach back to the snapshot (or to position 0).
            return Err(DurableError::Gap {
                file: path.clone(),
                expected: out.next,
                found: first,
            });
        }
        for r in &scan.records {
            if r.position >= out.next {
                out.records.push((r.position, r.kind, r.payload.to_vec()));
            }
        }
        expected = Some(scan.next_position());
        out.next = out.next.max(scan.next_position());
        if let Tail::Torn { offset, reason } = &scan.tail {
            if i != last {
                // Sealed (synced whole) before the next segment was started.
                return Err(format(FormatError::Corrupt {
                    offset: *offset,
                    reason: format!("{reason}, in a segment that later segments follow"),
                }));
            }
            let cut = Cut {
                file: path.clone(),
                offset: *offset,
                bytes: bytes.len() as u64 - offset,
                reason: reason.clone(),
            };
            tracing::warn!(
                "{}: torn tail at offset {} ({}): cut off {} bytes (a write a crash interrupted; it was never reported persisted)",
                cut.file.display(),
                cut.offset,
                cut.reason,
                cut.bytes
            );
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path, "open"))?;
            f.set_len(*offset).map_err(io_err(path, "truncate"))?;
            f.sync_all().map_err(io_err(path, "sync"))?;
            out.cut = Some(cut);
        }
    }
    Ok(out)
}

/// The writer's settings.
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// A segment is closed (and a new one started) once it holds this many bytes.
    pub segment_bytes: u64,
    /// Records queued for the writer at most (beyond: [`Appended::Full`]).
    pub queue_records: usize,
    /// Bytes written in one batch at most.
    pub batch_bytes: usize,
    /// How long to wait before trying a write that failed (a full disk) again.
    pub retry: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            queue_records: 65536,
            batch_bytes: 4 << 20,
            retry: Duration::from_millis(100),
        }
    }
}

/// Whether [`LogWriter::append`] took a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    Queued,
    /// The writer's queue is full (the disk is slower than the group, or full): hold the
    /// record back and offer it again.
    Full,
}

/// The writer's counters.
#[derive(Debug, Default)]
pub struct LogStats {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
    /// Writes that failed (a full disk, an I/O error) and were tried again.
    pub failed_writes: AtomicU64,
    /// The disk is full now (the last write failed with ENOSPC).
    pub disk_full: AtomicBool,
    pub segments: AtomicU64,
}

enum Cmd {
    Record(u64, RecordKind, Vec<u8>),
    Snapshot(u64, Vec<u8>),
}

/// Appends records to the log from the polling thread, a thread of its own writing and syncing
/// them in batches (see the module docs).
#[derive(Debug)]
pub struct LogWriter {
    tx: Option<SyncSender<Cmd>>,
    persisted: Arc<AtomicU64>,
    stats: Arc<LogStats>,
    thread: Option<JoinHandle<Result<(), DurableError>>>,
    next: u64,
    /// Snapshots that start a new generation, queued, and those the writer has written: the
    /// persisted position is the old history's until they are equal.
    resets_sent: u64,
    resets_done: Arc<AtomicU64>,
    waker: Arc<OnceLock<Waker>>,
    /// Set when the writer is stopped: a write that waits for space gives up then.
    stopping: Arc<AtomicBool>,
}

/// Called by the writer's thread each time the persisted position moves (see
/// [`LogWriter::on_persisted`]).
#[derive(Clone)]
pub struct Waker(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Record(p, k, b) => write!(f, "Record({p}, {k:?}, {} bytes)", b.len()),
            Cmd::Snapshot(p, b) => write!(f, "Snapshot({p}, {} bytes)", b.len()),
        }
    }
}

impl LogWriter {
    /// Starts the writer on `dir`, appending from position `next` in `generation` (what
    /// [`recover`] said). A log that starts after position 0 needs a snapshot at or after its
    /// start: write one ([`LogWriter::snapshot`]) before the first record.
    pub fn start(
        dir: &DataDir,
        next: u64,
        generation: u64,
        opts: LogOptions,
    ) -> Result<LogWriter, DurableError> {
        let (tx, rx) = mpsc::sync_channel(opts.queue_records.max(1));
        let persisted = Arc::new(AtomicU64::new(next));
        let stats = Arc::new(LogStats::default());
        let resets_done = Arc::new(AtomicU64::new(0));
        let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
        let mut w = Writer::open(
            dir.clone(),
            next,
            generation,
            opts,
            persisted.clone(),
            stats.clone(),
            resets_done.clone(),
        )?;
        w.waker = waker.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        w.stopping = stopping.clone();
        let thread = thread::Builder::new()
            .name("conveyor-log".into())
            .spawn(move || w.run(rx))
            .map_err(io_err(&dir.path, "start the log writer thread"))?;
        Ok(LogWriter {
            tx: Some(tx),
            persisted,
            stats,
            thread: Some(thread),
            next,
            resets_sent: 0,
            resets_done,
            waker,
            stopping,
        })
    }

    /// Has the writer's thread call `wake` each time the persisted position moves (a polling
    /// thread that parks is woken to tell the others: what waits for the disks waits for
    /// that). Once per writer.
    pub fn on_persisted(&self, wake: Waker) {
        let _ = self.waker.set(wake);
    }

    /// Queues a step of the order (`kind`, its encoding) at `position`, which must be the
    /// next one.
    pub fn append(&mut self, position: u64, kind: RecordKind, bytes: Vec<u8>) -> Appended {
        match self.offer(position, kind, bytes) {
            Ok(()) => Appended::Queued,
            Err(_) => Appended::Full,
        }
    }

    /// [`LogWriter::append`], handing the bytes back when the queue is full.
    pub fn offer(
        &mut self,
        position: u64,
        kind: RecordKind,
        bytes: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        debug_assert_eq!(position, self.next, "log positions run on without a gap");
        let Some(tx) = &self.tx else {
            return Err(bytes);
        };
        match tx.try_send(Cmd::Record(position, kind, bytes)) {
            Ok(()) => {
                self.next = position + 1;
                Ok(())
            }
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => match c {
                Cmd::Record(_, _, b) => Err(b),
                Cmd::Snapshot(_, b) => Err(b),
            },
        }
    }

    /// Writes a snapshot of the state as of `position` once every record before it is on
    /// disk, then deletes the segments and snapshots it makes useless. Blocks while the
    /// writer's queue is full.
    /// A snapshot anywhere else than where the log is (a state this member did not make: a
    /// joiner's, or the group's after a restart) starts a new generation: the log goes on from
    /// its position, and the older generations go once it is on disk.
    pub fn snapshot(&mut self, position: u64, state: Vec<u8>) {
        if let Some(tx) = &self.tx {
            if tx.send(Cmd::Snapshot(position, state)).is_ok() {
                if position != self.next {
                    self.resets_sent += 1;
                }
                self.next = position;
            }
        }
    }

    /// Every record before this position is on disk (synced), in the history being written
    /// (0 while a new generation's snapshot is not on disk yet).
    pub fn persisted(&self) -> u64 {
        if self.resets_done.load(Ordering::Acquire) < self.resets_sent {
            return 0;
        }
        self.persisted.load(Ordering::Acquire)
    }

    /// A handle on the persisted position, for another thread.
    pub fn persisted_handle(&self) -> Arc<AtomicU64> {
        self.persisted.clone()
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The writer's error, if it stopped on one (it then takes nothing more: appends say
    /// [`Appended::Full`] and the persisted position stays).
    pub fn check(&mut self) -> Result<(), DurableError> {
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            return self.shutdown();
        }
        Ok(())
    }

    /// Writes and syncs what is queued, and stops the writer; its error, if it stopped on one.
    pub fn stop(mut self) -> Result<(), DurableError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), DurableError> {
        self.stopping.store(true, Ordering::Release);
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(DurableError::Io {
                path: PathBuf::new(),
                op: "log writer",
                source: io::Error::other("the log writer thread panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("log writer: {e}");
        }
    }
}

/// The writer thread's state.
struct Writer {
    waker: Arc<OnceLock<Waker>>,
    stopping: Arc<AtomicBool>,
    dir: DataDir,
    generation: u64,
    resets_done: Arc<AtomicU64>,
    opts: LogOptions,
    persisted: Arc<AtomicU64>,
    stats: Arc<LogStats>,
    /// The open segment, its path and length.
    file: File,
    path: PathBuf,
    len: u64,
    /// The next position to write, and the first of the batch in `buf`.
    next: u64,
    batch_first: u64,
    buf: Vec<u8>,
}

impl Writer {
    fn open(
        dir: DataDir,
        next: u64,
        generation: u64,
        opts: LogOptions,
        persisted: Arc<AtomicU64>,
        stats: Arc<LogStats>,
        resets_done: Arc<AtomicU64>,
    ) -> Result<Writer, DurableError> {
        // Append to the newest segment if it continues at `next`, else start one.
        let newest = dir.segments()?.pop();
        let (file, path, len) = match newest {
            Some((_, path)) => {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "open"))?;
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(io_err(&path, "read"))?;
                let scan = seg::scan(&bytes, dir.group).map_err(|source| DurableError::Format {
                    file: path.clone(),
                    source,
                })?;
                if scan.next_position() == next && scan.tail == Tail::Clean {
                    let len = bytes.len() as u64;
                    f.seek(SeekFrom::Start(len))
                        .map_err(io_err(&path, "seek"))?;
                    (f, path, len)
                } else {
                    new_segment(&dir, generation, next)?
                }
            }
            None => new_segment(&dir, generation, next)?,
        };
        stats.segments.fetch_add(1, Ordering::Relaxed);
        Ok(Writer {
            waker: Arc::new(OnceLock::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            dir,
            generation,
            resets_done,
            opts,
            persisted,
            stats,
            file,
            path,
            len,
            next,
            batch_first: next,
            buf: Vec::new(),
        })
    }

    fn run(&mut self, rx: Receiver<Cmd>) -> Result<(), DurableError> {
        let mut pending: Option<Cmd> = None;
        loop {
            let first = match pending.take() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(()),
                },
            };
            let snap = match first {
                Cmd::Snapshot(p, s) => Some((p, s)),
                Cmd::Record(p, kind, op) => {
                    self.add(p, kind, &op, true);
                    // Everything else already queued joins this batch.
                    let mut snap = None;
                    while self.buf.len() < self.opts.batch_bytes {
                        match rx.try_recv() {
                            Ok(Cmd::Record(p, kind, op)) => self.add(p, kind, &op, false),
                            Ok(Cmd::Snapshot(p, s)) => {
                                snap = Some((p, s));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_batch()?;
                    snap
                }
            };
            if let Some((p, s)) = snap {
                self.write_snapshot(p, &s)?;
            }
            pending = match rx.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return Ok(()),
            };
        }
    }

    fn add(&mut self, position: u64, kind: RecordKind, bytes: &[u8], first: bool) {
        debug_assert_eq!(position, self.next);
        if first {
            self.batch_first = position;
        }
        let flags = if first { BATCH_START } else { 0 };
        seg::encode_record(&mut self.buf, position, kind, flags, bytes);
        self.next = position + 1;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the batch in `buf` and syncs it. A full disk (ENOSPC, EDQUOT) takes the batch
    /// back off the file and tries again every `retry` until it succeeds; any other error
    /// stops the writer (a failed sync may have lost pages the kernel no longer holds dirty:
    /// trying it again could report a sync that did not happen).
    fn write_batch(&mut self) -> Result<(), DurableError> {
        let mut said = false;
        loop {
            let e = match self.try_write() {
                Ok(()) => break,
                Err(e) => e,
            };
            self.retry_when_full(e, &mut said, || {
                format!(
                    "{} records wait (pushes to durable queues are held back) and the write is tried again every {:?}",
                    self.next - self.batch_first,
                    self.opts.retry
                )
            })?;
            // Take the partial batch back off the file: records stay whole and in sequence.
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(|_| ()))
                .map_err(io_err(&self.path, "truncate after a failed write"))?;
            thread::sleep(self.opts.retry);
        }
        if said {
            tracing::info!("{}: the log is written again", self.path.display());
        }
        self.stats.disk_full.store(false, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.len += self.buf.len() as u64;
        self.buf.clear();
        self.persisted.store(self.next, Ordering::Release);
        self.wake();
        Ok(())
    }

    fn try_write(&mut self) -> Result<(), DurableError> {
        if self.len > seg::HEADER_LEN as u64
            && self.len + self.buf.len() as u64 > self.opts.segment_bytes
        {
            // The current segment is synced whole: start the next at this batch.
            let (file, path, len) = new_segment(&self.dir, self.generation, self.batch_first)?;
            (self.file, self.path, self.len) = (file, path, len);
            self.stats.segments.fetch_add(1, Ordering::Relaxed);
        }
        self.file
            .write_all(&self.buf)
            .map_err(io_err(&self.path, "write"))?;
        self.file.sync_data().map_err(io_err(&self.path, "sync"))
    }

    /// Writes a snapshot as of `position` (every record before it is synced: batches are
    /// written in order), then removes older snapshots and the segments wholly before it. A
    /// snapshot elsewhere than the log's end starts a new generation (see the module docs).
    fn write_snapshot(&mut self, position: u64, state: &[u8]) -> Result<(), DurableError> {
        let bytes = snapshot::encode(self.dir.group, position, state);
        if position == self.next {
            // At the log's end, the snapshot only lets older segments go: on a full disk it
            // is left out (the log holds everything), said and counted.
            let name = snapshot_name(self.generation, position);
            if let Err(e) = write_durably(&self.dir.path, &name, &bytes) {
                if !is_full(&e) {
                    return Err(e);
                }
                let _ = fs::remove_file(self.dir.path.join(format!("{name}.tmp")));
                self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{e}: the disk is full; the snapshot at position {position} is left out (the log behind it stays)");
                return Ok(());
            }
        } else {
            self.write_new_generation(position, &bytes)?;
            return Ok(());
        }
        for (p, path) in self.dir.snapshots()? {
            if p < position {
                fs::remove_file(&path).map_err(io_err(&path, "remove"))?;
            }
        }
        // A segment can go once the next one starts at or before the snapshot.
        let segs = self.dir.segments()?;
        for w in segs.windows(2) {
            if w[1].0 <= position && w[0].1 != self.path {
                fs::remove_file(&w[0].1).map_err(io_err(&w[0].1, "remove"))?;
            }
        }
        sync_dir(&self.dir.path)
    }

    /// A snapshot elsewhere than the log's end (see [`LogWriter::snapshot`]): the next
    /// generation starts from it. On a full disk it is tried again until there is room (the
    /// member's log cannot go on without it).
    fn write_new_generation(&mut self, position: u64, bytes: &[u8]) -> Result<(), DurableError> {
        let generation = self.generation + 1;
        let name = snapshot_name(generation, position);
        let mut said = false;
        while let Err(e) = write_durably(&self.dir.path, &name, bytes) {
            let _ = fs::remove_file(self.dir.path.join(format!("{name}.tmp")));
            self.retry_when_full(e, &mut said, || {
                format!(
                    "the state's snapshot is tried again every {:?}",
                    self.opts.retry
                )
            })?;
            thread::sleep(self.opts.retry);
        }
        self.stats.disk_full.store(false, Ordering::Relaxed);
        {
            // A state this member did not make: its log may hold another history at these
            // positions. The snapshot starts the next generation; once it is on disk, the
            // older ones go (a crash in between leaves them to recovery, which reads only
            // the newest).
            let (file, path, len) = new_segment(&self.dir, generation, position)?;
            (self.file, self.path, self.len) = (file, path, len);
            self.generation = generation;
            self.stats.segments.fetch_add(1, Ordering::Relaxed);
            self.next = position;
            self.batch_first = position;
            for p in self.dir.older_than(generation)? {
                fs::remove_file(&p).map_err(io_err(&p, "remove"))?;
            }
            sync_dir(&self.dir.path)?;
            self.persisted.store(position, Ordering::Release);
            self.resets_done.fetch_add(1, Ordering::AcqRel);
            self.wake();
        }
        Ok(())
    }

    /// A write failed with `e`: a full disk is counted, said once (`what` waits), and the
    /// write is to be tried again; any other error, or a full disk while the writer is
    /// stopped, is returned (what was not written is given up: nothing of it was told
    /// outside, it waited for the disks).
    fn retry_when_full(
        &self,
        e: DurableError,
        said: &mut bool,
        what: impl FnOnce() -> String,
    ) -> Result<(), DurableError> {
        if !is_full(&e) || self.stopping.load(Ordering::Acquire) {
            return Err(e);
        }
        self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
        self.stats.disk_full.store(true, Ordering::Relaxed);
        if !*said {
            *said = true;
            tracing::error!("{e}: the disk is full; {}", what());
        }
        Ok(())
    }

    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            (w.0)();
        }
    }
}

/// Whether a write failed for want of space (ENOSPC, EDQUOT): tried again later, not fatal.
fn is_full(e: &DurableError) -> bool {
    matches!(e, DurableError::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// Creates the segment starting at `first`: its header written and synced, the directory
/// synced.
fn new_segment(
    dir: &DataDir,
    generation: u64,
    first: u64,
) -> Result<(File, PathBuf, u64), DurableError> {
    let path = dir.path.join(segment_name(generation, first));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path, "create"))?;
    let h = SegmentHeader {
        group: dir.group,
        first,
    }
    .encode();
    f.write_all(&h).map_err(io_err(&path, "write"))?;
    f.sync_all().map_err(io_err(&path, "sync"))?;
    sync_dir(&dir.path)?;
    Ok((f, path, h.len() as u64))
}
