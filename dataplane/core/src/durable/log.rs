//! A log segment: its header, its records, and reading one back (see the module docs of
//! [`crate::durable`]).
//!
//! ```text
//! header, 32 bytes:  magic "CVYLOG\0\x01" | layout u32 | group u32 | first position u64
//!                    | reserved u32 (0) | CRC-32 of the 28 bytes before
//! record:            body length u32 | CRC-32 of the body u32 | body
//! body:              position u64 | kind u8 | flags u8 | payload
//! ```
//!
//! Integers are little-endian. Positions run on without a gap from the header's first
//! position, across segments too.

use super::{check_header, crc, u32_at, u64_at, FormatError, LAYOUT};

pub const SEGMENT_MAGIC: [u8; 8] = *b"CVYLOG\0\x01";
pub const HEADER_LEN: usize = 32;
/// Length and checksum before a record's body.
pub const RECORD_HEAD: usize = 8;
/// Position, kind and flags before a record's payload.
pub const BODY_HEAD: usize = 10;
/// The largest record body read back (a longer length is not a record).
pub const MAX_BODY: usize = 64 << 20;
/// Flag of the first record of a batch (one write, then one sync).
pub const BATCH_START: u8 = 1;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A delivered operation, as its encoding ([`crate::queue::Op::encode`]).
    Op = 1,
    /// A view installed ([`super::ViewRecord`]).
    View = 2,
    /// The restart a restarted group decided on ([`super::RestartRecord`]).
    Restart = 3,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Op),
            2 => Some(RecordKind::View),
            3 => Some(RecordKind::Restart),
            _ => None,
        }
    }
}

/// A segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub group: u32,
    /// The position of its first record.
    pub first: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&LAYOUT.to_le_bytes());
        h[12..16].copy_from_slice(&self.group.to_le_bytes());
        h[16..24].copy_from_slice(&self.first.to_le_bytes());
        let c = crc(&h[..28]);
        h[28..32].copy_from_slice(&c.to_le_bytes());
        h
    }

    /// Parses a header, checking it is a segment of layout [`LAYOUT`] of `group`.
    pub fn parse(b: &[u8], group: u32) -> Result<SegmentHeader, FormatError> {
        check_header(b, "log segment", &SEGMENT_MAGIC, HEADER_LEN, 28, group)?;
        Ok(SegmentHeader {
            group,
            first: u64_at(b, 16).unwrap_or(0),
        })
    }
}

/// Appends one record to `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    position: u64,
    kind: RecordKind,
    flags: u8,
    payload: &[u8],
) {
    let len = (BODY_HEAD + payload.len()) as u32;
    let at = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&position.to_le_bytes());
    out.push(kind as u8);
    out.push(flags);
    out.extend_from_slice(payload);
    let c = crc(&out[at + RECORD_HEAD..]);
    out[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
}

/// A record read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub position: u64,
    pub kind: RecordKind,
    pub flags: u8,
    pub payload: &'a [u8],
    /// Where the record starts in the segment, and its whole length.
    pub offset: usize,
    pub len: usize,
}

/// How a segment's bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte is a valid record.
    Clean,
    /// From `offset` on, the bytes are not valid records, and no intact later batch follows:
    /// a write cut by a crash. The segment is to be cut at `offset`.
    Torn { offset: u64, reason: String },
}

/// A segment read back: its header, its valid records, and how it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    pub header: SegmentHeader,
    pub records: Vec<Record<'a>>,
    /// The length of the valid part (header and records).
    pub valid_len: usize,
    pub tail: Tail,
}

impl Scan<'_> {
    /// The position after the last valid record (the next one to write).
    pub fn next_position(&self) -> u64 {
        self.records
            .last()
            .map_or(self.header.first, |r| r.position + 1)
    }
}

/// The record at `at`, if one is there whose length and checksum hold (whatever its position).
fn record_at(b: &[u8], at: usize) -> Result<Record<'_>, String> {
    let Some(len) = u32_at(b, at) else {
        return Err(format!(
            "{} bytes left, a record needs {RECORD_HEAD} and a body",
            b.len() - at
        ));
    };
    let len = len as usize;
    if !(BODY_HEAD..=MAX_BODY).contains(&len) {
        return Err(format!("record length {len} out of range"));
    }
    let end = at + RECORD_HEAD + len;
    if end > b.len() {
        return Err(format!(
            "record of {len} bytes, only {} left",
            (b.len() - at).saturating_sub(RECORD_HEAD)
        ));
    }
    let body = &b[at + RECORD_HEAD..end];
    if u32_at(b, at + 4) != Some(crc(body)) {
        return Err("record checksum does not match".into());
    }
    let Some(kind) = RecordKind::from_u8(body[8]) else {
        return Err(format!("record kind {} unknown", body[8]));
    };
    Ok(Record {
        position: u64_at(body, 0).unwrap_or(0),
        kind,
        flags: body[9],
        payload: &body[BODY_HEAD..],
        offset: at,
        len: RECORD_HEAD + len,
    })
}

/// Reads a segment of `group`: its header, then records while they check and their positions
/// run on from the header's first. At the first one that does not, the rest is a torn tail
/// unless a valid record starting a later batch follows ([`FormatError::Corrupt`]). A header
/// that does not parse is an error here; whether a segment with a torn header may be dropped
/// (the newest one, its creation cut by a crash) is for the caller to decide.
pub fn scan(b: &[u8], group: u32) -> Result<Scan<'_>, FormatError> {
    let header = SegmentHeader::parse(b, group)?;
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let mut next = header.first;
    while at < b.len() {
        let bad = match record_at(b, at) {
            Ok(r) if r.position == next => {
                records.push(r);
                at += r.len;
                next += 1;
                continue;
            }
            Ok(r) => format!("position {} where {next} was due", r.position),
            Err(reason) => reason,
        };
        if let Some(later) = later_batch(b, at + 1, next) {
            return Err(FormatError::Corrupt {
                offset: at as u64,
                reason: format!("{bad}; an intact batch starts at offset {later}"),
            });
        }
        return Ok(Scan {
            header,
            records,
            valid_len: at,
            tail: Tail::Torn {
                offset: at as u64,
                reason: bad,
            },
        });
    }
    Ok(Scan {
        header,
        records,
        valid_len: at,
        tail: Tail::Clean,
    })
}

/// The offset of a valid record that starts a batch at position `next` or later, at `from`
/// or after. (Bytes inside a torn record's payload could be made to look like one: a payload
/// crafted to hold a whole valid record. Such a log is reported corrupt rather than cut; the
/// member stops and says where, and nothing is lost silently.)
fn later_batch(b: &[u8], from: usize, next: u64) -> Option<usize> {
    (from..b.len().saturating_sub(RECORD_HEAD + BODY_HEAD - 1)).find(|&at| {
        record_at(b, at).is_ok_and(|r| r.flags & BATCH_START != 0 && r.position >= next)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const G: u32 = 0xC0;

    /// A segment from `first` with `batches` (each a list of payloads).
    fn segment(first: u64, batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut out = SegmentHeader { group: G, first }.encode().to_vec();
        let mut pos = first;
        for batch in batches {
            for (i, p) in batch.iter().enumerate() {
                let flags = if i == 0 { BATCH_START } else { 0 };
                encode_record(&mut out, pos, RecordKind::Op, flags, p);
                pos += 1;
            }
        }
        out
    }

    fn payloads(s: &Scan<'_>) -> Vec<Vec<u8>> {
        s.records.iter().map(|r| r.payload.to_vec()).collect()
    }

    #[test]
    fn records_read_back_with_their_positions() {
        let b = segment(7, &[vec![b"a".to_vec(), b"bc".to_vec()], vec![vec![]]]);
        let s = scan(&b, G).unwrap();
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.valid_len, b.len());
        assert_eq!(payloads(&s), vec![b"a".to_vec(), b"bc".to_vec(), vec![]]);
        let pos: Vec<u64> = s.records.iter().map(|r| r.position).collect();
        assert_eq!(pos, vec![7, 8, 9]);
        assert_eq!(s.next_position(), 10);
        assert_eq!(s.records[0].flags, BATCH_START);
        assert_eq!(s.records[1].flags, 0);
        assert_eq!(s.records[2].flags, BATCH_START);
    }

    #[test]
    fn another_group_or_layout_or_file_is_refused_by_name() {
        let b = segment(0, &[vec![b"x".to_vec()]]);
        assert_eq!(
            scan(&b, 0xC1).unwrap_err(),
            FormatError::OtherGroup {
                found: G,
                expected: 0xC1
            }
        );
        let mut other = b.clone();
        other[8] = 1; // layout 1 (before claims had epochs)
        let c = crc(&other[..28]);
        other[28..32].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            scan(&other, G).unwrap_err(),
            FormatError::Layout { found: 1 }
        );
        let mut flipped = b.clone();
        flipped[17] ^= 1;
        assert!(matches!(
            scan(&flipped, G).unwrap_err(),
            FormatError::HeaderChecksum { .. }
        ));
        assert!(matches!(
            scan(b"{\"not\": \"a log segment but long enough\"}", G).unwrap_err(),
            FormatError::NotOurs { .. }
        ));
        assert!(matches!(
            scan(&b[..10], G).unwrap_err(),
            FormatError::Short { len: 10, .. }
        ));
    }

    #[test]
    fn a_record_corrupted_in_a_batch_synced_before_a_later_one_stops_the_read() {
        let b = segment(
            0,
            &[
                vec![b"one".to_vec(), b"two".to_vec()],
                vec![b"three".to_vec()],
            ],
        );
        let second = HEADER_LEN + RECORD_HEAD + BODY_HEAD + 3;
        let mut bad = b.clone();
        bad[second + RECORD_HEAD + BODY_HEAD] ^= 0x40; // a payload byte of "two"
        match scan(&bad, G).unwrap_err() {
            FormatError::Corrupt { offset, reason } => {
                assert_eq!(offset, second as u64);
                assert!(reason.contains("checksum"), "{reason}");
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_bad_record_in_the_last_batch_is_a_torn_tail_even_with_valid_records_after_it() {
        // Sectors of one write can reach the disk out of order: the last batch may lose a
        // record in its middle and keep the next. Nothing of that batch was synced.
        let b = segment(
            0,
            &[
                vec![b"one".to_vec()],
                vec![b"two".to_vec(), b"three".to_vec()],
            ],
        );
        let second = HEADER_LEN + RECORD_HEAD + BODY_HEAD + 3;
        let mut bad = b.clone();
        bad[second + RECORD_HEAD + BODY_HEAD] ^= 0x40;
        let s = scan(&bad, G).unwrap();
        assert_eq!(payloads(&s), vec![b"one".to_vec()]);
        assert_eq!(s.valid_len, second);
        assert!(matches!(s.tail, Tail::Torn { offset, .. } if offset == second as u64));
    }

    #[test]
    fn a_position_out_of_sequence_is_not_a_record_of_this_log() {
        let mut b = segment(0, &[vec![b"a".to_vec()]]);
        encode_record(&mut b, 5, RecordKind::Op, BATCH_START, b"b");
        let s = scan(&b, G).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(matches!(&s.tail, Tail::Torn { reason, .. } if reason.contains("position 5")));
        // ... and corruption if an intact later batch follows it.
        encode_record(&mut b, 2, RecordKind::Op, BATCH_START, b"c");
        assert!(matches!(scan(&b, G), Err(FormatError::Corrupt { .. })));
    }

    proptest! {
        /// Cut anywhere, a segment reads back as the records wholly before the cut and a torn
        /// tail (or clean, at a record's end): never an error, never a record that was not
        /// written.
        #[test]
        fn a_segment_cut_anywhere_keeps_the_records_before_the_cut(
            batches in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let b = segment(3, &batches);
            let at = HEADER_LEN + cut.index(b.len() - HEADER_LEN + 1);
            let s = scan(&b[..at], G).unwrap();
            let all: Vec<Vec<u8>> = batches.concat();
            let kept = payloads(&s);
            prop_assert_eq!(&kept[..], &all[..kept.len()]);
            let ends: Vec<usize> = s.records.iter().map(|r| r.offset + r.len).collect();
            prop_assert_eq!(s.valid_len, *ends.last().unwrap_or(&HEADER_LEN));
            prop_assert!(at - s.valid_len < b.len());
            match s.tail {
                Tail::Clean => prop_assert_eq!(s.valid_len, at),
                Tail::Torn { offset, .. } => prop_assert_eq!(offset as usize, s.valid_len),
            }
        }

        /// Any bytes after a valid header: records or a torn tail or corruption, never a panic.
        #[test]
        fn garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut b = SegmentHeader { group: G, first: 0 }.encode().to_vec();
            b.extend_from_slice(&tail);
            let _ = scan(&b, G);
        }
    }
}
