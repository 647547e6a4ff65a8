//! The on-disk formats of durable queues (layout 3: the state includes the Redis streams): the log's segments and the snapshots
//! behind them, encoded and checked here without I/O; the engine's `durable` module does the
//! files, the group commit and the syncs.
//!
//! A member of a group with durable queues appends the operations it delivers to a log in its
//! data directory, in delivery order, each at its position (the number of operations applied
//! before it). The log is a sequence of segment files, each a [`log::SegmentHeader`] (which
//! group, which layout, the position of its first record) followed by records; a record is its
//! length, a CRC-32 of its body, and the body (position, kind, flags, payload). Records are
//! written in batches, one write and one `fdatasync` per batch (group commit); the first record
//! of a batch carries [`log::BATCH_START`].
//!
//! Reading a segment back ([`log::scan`]) tells a torn write from corruption. A crash can tear
//! only the batch being written when it struck, the last one in the file: a later batch is
//! written only once the one before it is synced. So a record that does not check (short, bad
//! length, bad checksum, a position out of sequence) is a torn tail if no valid record that
//! starts a batch follows it (the log is cut there, with a warning), and corruption if one does
//! (an earlier, synced batch changed on disk: the member stops and names the file and the
//! offset, never skipping what it cannot read).
//!
//! A snapshot ([`snapshot`]) is the replicated state as of a position, written to a temporary
//! file, synced and renamed into place, so a snapshot file is whole or absent; segments whose
//! records all lie behind the newest snapshot are deleted.

pub mod log;
pub mod snapshot;

use crate::queue::{Op, QueueState};
use crate::types::MemberId;
use log::RecordKind;
use serde::{Deserialize, Serialize};

/// The layout this build writes and reads. A data directory of another layout is refused.
/// 4: shards (the map, outboxes and inbox watermarks in the state; a request's origin shard;
/// effects that name it).
pub const LAYOUT: u32 = 4;

/// What is wrong with a segment's or a snapshot's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a Conveyor {what}: it starts with {found:02x?}")]
    NotOurs { what: &'static str, found: Vec<u8> },
    #[error("written in layout {found}; this build reads layout {LAYOUT}")]
    Layout { found: u32 },
    #[error("it belongs to group {found:#x}; this member's group is {expected:#x}")]
    OtherGroup { found: u32, expected: u32 },
    #[error("{what} header checksum does not match (offset 0)")]
    HeaderChecksum { what: &'static str },
    #[error("{len} bytes: too short for a {what} header ({need} bytes)")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error(
        "corrupt record at offset {offset} ({reason}), followed by later batches that are \
         intact: not a torn write at the tail"
    )]
    Corrupt { offset: u64, reason: String },
    #[error("snapshot body checksum does not match (offset {offset})")]
    SnapshotChecksum { offset: u64 },
}

/// A view's step of the order, as the log records it: what
/// [`QueueState::install_view`] applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    pub survivors: Vec<MemberId>,
    pub removed: Vec<MemberId>,
}

impl ViewRecord {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<ViewRecord, postcard::Error> {
        postcard::from_bytes(b)
    }
}

/// The step a whole-group restart adds to the order where the restarted members decided
/// (see `replica/recovery.rs`): the state's new epoch, and the consumers whose requests went
/// back to their queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub epoch: u64,
    pub removed: Vec<MemberId>,
}

impl RestartRecord {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<RestartRecord, postcard::Error> {
        postcard::from_bytes(b)
    }
}

/// Why a log does not replay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the snapshot does not decode: {0}")]
    Snapshot(String),
    #[error("record at position {found}, where the state is at {expected}")]
    Position { expected: u64, found: u64 },
    #[error("record at position {position} does not decode: {reason}")]
    Record { position: u64, reason: String },
}

/// Rebuilds the queue state a member's log describes: `snapshot` (or an empty state), then
/// each record, which must be at the position the state has reached. The state is the one
/// the member had when it wrote the last record (with its consumers' requests still in
/// flight: a whole-group restart puts those back in their queues).
pub fn replay<'a>(
    snapshot: Option<&[u8]>,
    records: impl IntoIterator<Item = (u64, RecordKind, &'a [u8])>,
) -> Result<QueueState, ReplayError> {
    let mut q = match snapshot {
        Some(b) => {
            QueueState::from_snapshot(b).map_err(|e| ReplayError::Snapshot(e.to_string()))?
        }
        None => QueueState::new(),
    };
    let mut effects = Vec::new();
    for (position, kind, bytes) in records {
        if position != q.applied() {
            return Err(ReplayError::Position {
                expected: q.applied(),
                found: position,
            });
        }
        let bad = |e: &dyn std::fmt::Display| ReplayError::Record {
            position,
            reason: e.to_string(),
        };
        match kind {
            RecordKind::Op => q.apply(Op::decode(bytes).map_err(|e| bad(&e))?, &mut effects),
            RecordKind::View => {
                let v = ViewRecord::decode(bytes).map_err(|e| bad(&e))?;
                q.install_view(&v.survivors, &v.removed, &mut effects);
            }
            RecordKind::Restart => {
                let r = RestartRecord::decode(bytes).map_err(|e| bad(&e))?;
                q.restart(r.epoch, &r.removed, &mut effects);
            }
        }
        effects.clear();
    }
    Ok(q)
}

/// Checks the header that starts a segment or a snapshot (`what`): at least `len` bytes,
/// `magic` first, the header's CRC-32 at `crc_at` over the bytes before it, layout
/// [`LAYOUT`] at offset 8 and `group` at offset 12.
pub(crate) fn check_header(
    b: &[u8],
    what: &'static str,
    magic: &[u8; 8],
    len: usize,
    crc_at: usize,
    group: u32,
) -> Result<(), FormatError> {
    if b.len() < len {
        return Err(FormatError::Short {
            what,
            len: b.len(),
            need: len,
        });
    }
    if b[..8] != magic[..] {
        return Err(FormatError::NotOurs {
            what,
            found: b[..8].to_vec(),
        });
    }
    if u32_at(b, crc_at) != Some(crc(&b[..crc_at])) {
        return Err(FormatError::HeaderChecksum { what });
    }
    let layout = u32_at(b, 8).unwrap_or(0);
    if layout != LAYOUT {
        return Err(FormatError::Layout { found: layout });
    }
    let found = u32_at(b, 12).unwrap_or(0);
    if found != group {
        return Err(FormatError::OtherGroup {
            found,
            expected: group,
        });
    }
    Ok(())
}

/// CRC-32 (IEEE) of `bytes`.
pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
