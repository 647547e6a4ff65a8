//! Frame formats: emit and parse, with the group's keyed MAC checked before anything else is read.
//!
//! A frame is `header (40 bytes) | body (len bytes) | mac (16 bytes)`, all integers little endian:
//!
//! ```text
//!  0  magic   u16  0x5643 ("CV")        16 seq     u64  sequence of the first entry
//!  2  version u8   3                     24 len     u32  body length in bytes
//!  3  kind    u8   Data=1, Status=2,     28 flags   u32  bit 0: GAP; others must be zero
//!                  Control=3             32 incarnation u64  the sending process (see below)
//!  4  group   u32  group id
//!  8  view    u32  view id
//! 12  sender  u16  sending member
//! 14  count   u16  entries in the body
//! ```
//!
//! `incarnation` is a number the sending process drew at random when it started (a joiner's
//! is its join nonce), below 2^63: two processes with one member id tell themselves apart by
//! it, and so do two runs of a group (same key, same view numbers). A receiver takes one
//! process per member and view and refuses the frames of any other: the one a view's decision
//! names, or in the group file's first view the first whose row names the receiver's own
//! process (a process restarted into a view its previous self ran in, a replayed frame of an
//! earlier run; see `proto::order`). A row's `incarnation[i]` with the top bit set is not a
//! count's process but an echo: the process last heard for rank `i`, not yet taken.
//!
//! The body of every frame starts with the sender's status row (the role of a row of Derecho's
//! shared state table), followed by `count` entries for `Data` frames, none for `Status`
//! frames, and exactly one data entry for `Control` frames (a membership or state-transfer
//! message, encoded by `proto::membership`; its row is a placeholder of one rank):
//!
//! ```text
//! row:    n u16 | reserved u16 | heartbeat u64 | delivered u64 | persisted u64
//!         | received[n] u64 | incarnation[n] u64
//! entry:  tag u8 = 0 (data) | len u32 | payload       -- one message, occupies one sequence number
//!         tag u8 = 1 (nulls) | run u32 (>= 1)          -- `run` null messages (empty slots)
//! ```
//!
//! The MAC is BLAKE3 in keyed mode over header and body, truncated to 16 bytes, compared in
//! constant time. Parsing checks it first; a frame that fails is never interpreted further.
//! Parsing never panics and never allocates: [`Frame`] borrows the input.

use crate::types::{GroupId, MemberId, Seq, ViewId};
use core::fmt;
use thiserror::Error;

pub const MAGIC: u16 = 0x5643;
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 40;
pub const MAC_LEN: usize = 16;
/// Bytes a frame needs besides its row and entries.
pub const OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// Bytes of a data entry besides its payload.
pub const DATA_ENTRY_OVERHEAD: usize = 5;
const NULL_ENTRY_LEN: usize = 5;
const ROW_FIXED: usize = 28;
/// Members a status row may describe; bounds every row allocation.
pub const MAX_MEMBERS: usize = 1024;
/// Header flag of a status frame sent to one member: "I hold messages of yours beyond the
/// contiguous count in my row" (a gap: resend from there without waiting for a timeout).
pub const FLAG_GAP: u32 = 1;
const KNOWN_FLAGS: u32 = FLAG_GAP;

/// The group's shared secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }
    /// Parses 64 hexadecimal digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(KeyError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_digit(chunk[0]).ok_or(KeyError::Digit)?;
            let lo = hex_digit(chunk[1]).ok_or(KeyError::Digit)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Key(out))
    }
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let h = blake3::keyed_hash(&self.0, data);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
        out
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("expected 64 hexadecimal digits (32 bytes), found {0} characters")]
    Length(usize),
    #[error("not a hexadecimal digit")]
    Digit,
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Status row plus one or more entries (messages or null runs).
    Data = 1,
    /// Status row only: acknowledgement, stability information and heartbeat.
    Status = 2,
    /// Membership: exactly one data entry holding a control message (view changes, joins,
    /// state transfer); its row is the sender's, or a single zero for a joiner.
    Control = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            2 => Some(Kind::Status),
            3 => Some(Kind::Control),
            _ => None,
        }
    }
}

/// Why a frame was refused. Each reason has its own drop counter.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq, Hash)]
pub enum WireError {
    #[error("frame shorter than header and MAC")]
    TooShort,
    #[error("MAC check failed")]
    BadMac,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version")]
    BadVersion,
    #[error("unknown frame kind")]
    UnknownKind,
    #[error("length field disagrees with frame size")]
    BadLength,
    #[error("unknown flags set")]
    BadFlags,
    #[error("malformed status row")]
    BadRow,
    #[error("malformed entry")]
    BadEntry,
    #[error("entry count disagrees with body")]
    BadCount,
}

impl WireError {
    pub const ALL: [WireError; 10] = [
        WireError::TooShort,
        WireError::BadMac,
        WireError::BadMagic,
        WireError::BadVersion,
        WireError::UnknownKind,
        WireError::BadLength,
        WireError::BadFlags,
        WireError::BadRow,
        WireError::BadEntry,
        WireError::BadCount,
    ];
    pub fn label(self) -> &'static str {
        match self {
            WireError::TooShort => "too_short",
            WireError::BadMac => "bad_mac",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion => "bad_version",
            WireError::UnknownKind => "unknown_kind",
            WireError::BadLength => "bad_length",
            WireError::BadFlags => "bad_flags",
            WireError::BadRow => "bad_row",
            WireError::BadEntry => "bad_entry",
            WireError::BadCount => "bad_count",
        }
    }
    pub fn index(self) -> usize {
        WireError::ALL.iter().position(|&e| e == self).unwrap_or(0)
    }
}

/// The fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub group: GroupId,
    pub view: ViewId,
    pub sender: MemberId,
    pub count: u16,
    pub seq: Seq,
    /// [`FLAG_GAP`] or 0.
    pub flags: u32,
    /// The sending process (drawn at random when it started).
    pub incarnation: u64,
}

/// A sender's status row, owned (used when emitting and in the protocol state).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Row {
    pub heartbeat: u64,
    /// Global delivery slots the sender has delivered.
    pub delivered: u64,
    /// Where the sender's durable log reaches: every step of the order before this position
    /// (operations and views, counted as `QueueState::applied` counts them) is on its disk. 0
    /// for a member without a log. Carried for the layer above (the replica's majority rule
    /// for durable queues); the protocol itself does not read it.
    pub persisted: u64,
    /// Per view rank: contiguous messages received from that member (its own: messages sent).
    pub received: Vec<u64>,
    /// Per view rank: the process whose messages `received` counts (its incarnation; 0: none
    /// heard yet; top bit set: heard, not yet taken, see the module docs). Missing entries are
    /// sent as 0.
    pub incarnations: Vec<u64>,
}

impl Row {
    pub fn encoded_len(n: usize) -> usize {
        ROW_FIXED + 16 * n
    }
}

/// A borrowed status row inside a parsed frame.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub heartbeat: u64,
    pub delivered: u64,
    pub persisted: u64,
    received: &'a [u8],
    incarnations: &'a [u8],
}

impl<'a> RowRef<'a> {
    pub fn len(&self) -> usize {
        self.received.len() / 8
    }
    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }
    /// Received count at rank `i`; 0 out of range.
    pub fn received(&self, i: usize) -> u64 {
        self.received.get(i * 8..i * 8 + 8).map(le_u64).unwrap_or(0)
    }
    /// The process whose messages `received(i)` counts; 0 out of range or none heard yet.
    pub fn incarnation(&self, i: usize) -> u64 {
        self.incarnations
            .get(i * 8..i * 8 + 8)
            .map(le_u64)
            .unwrap_or(0)
    }
    pub fn to_owned(&self) -> Row {
        Row {
            heartbeat: self.heartbeat,
            delivered: self.delivered,
            persisted: self.persisted,
            received: (0..self.len()).map(|i| self.received(i)).collect(),
            incarnations: (0..self.len()).map(|i| self.incarnation(i)).collect(),
        }
    }
}

/// One entry of a data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    Data(&'a [u8]),
    Nulls(u32),
}

impl Entry<'_> {
    /// Sequence numbers this entry occupies.
    pub fn slots(&self) -> u64 {
        match self {
            Entry::Data(_) => 1,
            Entry::Nulls(n) => u64::from(*n),
        }
    }
}

/// A parsed, authenticated frame borrowing its input.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub header: Header,
    pub row: RowRef<'a>,
    entries: &'a [u8],
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<'a> Frame<'a> {
    /// Authenticates and parses a frame. The MAC is checked before any field is interpreted.
    pub fn parse(key: &Key, bytes: &'a [u8]) -> Result<Frame<'a>, WireError> {
        if bytes.len() < OVERHEAD {
            return Err(WireError::TooShort);
        }
        let (signed, mac) = bytes.split_at(bytes.len() - MAC_LEN);
        if !ct_eq(&key.mac(signed), mac) {
            return Err(WireError::BadMac);
        }
        if le_u16(&signed[0..2]) != MAGIC {
            return Err(WireError::BadMagic);
        }
        if signed[2] != VERSION {
            return Err(WireError::BadVersion);
        }
        let kind = Kind::from_u8(signed[3]).ok_or(WireError::UnknownKind)?;
        let len = le_u32(&signed[24..28]) as usize;
        if len != signed.len() - HEADER_LEN {
            return Err(WireError::BadLength);
        }
        let flags = le_u32(&signed[28..32]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::BadFlags);
        }
        let header = Header {
            kind,
            group: GroupId(le_u32(&signed[4..8])),
            view: ViewId(le_u32(&signed[8..12])),
            sender: MemberId(le_u16(&signed[12..14])),
            count: le_u16(&signed[14..16]),
            seq: Seq(le_u64(&signed[16..24])),
            flags,
            incarnation: le_u64(&signed[32..40]),
        };
        let body = &signed[HEADER_LEN..];
        if body.len() < ROW_FIXED {
            return Err(WireError::BadRow);
        }
        let n = le_u16(&body[0..2]) as usize;
        if n == 0 || n > MAX_MEMBERS || le_u16(&body[2..4]) != 0 {
            return Err(WireError::BadRow);
        }
        let row_len = Row::encoded_len(n);
        if body.len() < row_len {
            return Err(WireError::BadRow);
        }
        let row = RowRef {
            heartbeat: le_u64(&body[4..12]),
            delivered: le_u64(&body[12..20]),
            persisted: le_u64(&body[20..28]),
            received: &body[ROW_FIXED..ROW_FIXED + 8 * n],
            incarnations: &body[ROW_FIXED + 8 * n..row_len],
        };
        let entries = &body[row_len..];
        match kind {
            Kind::Status => {
                if header.count != 0 || !entries.is_empty() {
                    return Err(WireError::BadCount);
                }
            }
            Kind::Control => {
                let mut it = EntryIter { rest: entries };
                match (header.count, it.next(), it.next()) {
                    (1, Some(Ok(Entry::Data(_))), None) => {}
                    (_, Some(Err(e)), _) => return Err(e),
                    _ => return Err(WireError::BadCount),
                }
            }
            Kind::Data => {
                if header.count == 0 {
                    return Err(WireError::BadCount);
                }
                let mut found = 0usize;
                let mut slots = 0u64;
                for e in (EntryIter { rest: entries }) {
                    let e = e?;
                    found += 1;
                    slots += e.slots();
                }
                if found != usize::from(header.count) {
                    return Err(WireError::BadCount);
                }
                if header.seq.0.checked_add(slots).is_none() {
                    return Err(WireError::BadEntry);
                }
            }
        }
        Ok(Frame {
            header,
            row,
            entries,
        })
    }

    /// The control message of a `Control` frame (validated by `parse`); empty otherwise.
    pub fn control_payload(&self) -> &'a [u8] {
        match (self.header.kind, (EntryIter { rest: self.entries }).next()) {
            (Kind::Control, Some(Ok(Entry::Data(p)))) => p,
            _ => &[],
        }
    }

    /// The entries of a `Data` frame (validated by `parse`), in sequence order from
    /// `header.seq`.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        EntryIter { rest: self.entries }.map_while(Result::ok)
    }
}

struct EntryIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<Entry<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 5 {
            self.rest = &[];
            return Some(Err(WireError::BadEntry));
        }
        let tag = self.rest[0];
        let v = le_u32(&self.rest[1..5]);
        let after = &self.rest[5..];
        match tag {
            0 => {
                let len = v as usize;
                if after.len() < len {
                    self.rest = &[];
                    return Some(Err(WireError::BadEntry));
                }
                let (payload, rest) = after.split_at(len);
                self.rest = rest;
                Some(Ok(Entry::Data(payload)))
            }
            1 if v >= 1 => {
                self.rest = after;
                Some(Ok(Entry::Nulls(v)))
            }
            _ => {
                self.rest = &[];
                Some(Err(WireError::BadEntry))
            }
        }
    }
}

/// Writes one frame into a caller-provided buffer. Call [`FrameWriter::push_data`] and
/// [`FrameWriter::push_nulls`] while they fit, then [`FrameWriter::finish`].
#[derive(Debug)]
pub struct FrameWriter<'b> {
    buf: &'b mut Vec<u8>,
    max_frame: usize,
    count: u16,
    slots: u64,
    last_null_at: Option<usize>,
}

impl<'b> FrameWriter<'b> {
    /// Starts a frame. `buf` is cleared. `max_frame` bounds the finished frame, MAC included.
    pub fn new(buf: &'b mut Vec<u8>, max_frame: usize, header: &Header, row: &Row) -> Self {
        buf.clear();
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.push(VERSION);
        buf.push(header.kind as u8);
        buf.extend_from_slice(&header.group.0.to_le_bytes());
        buf.extend_from_slice(&header.view.0.to_le_bytes());
        buf.extend_from_slice(&header.sender.0.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes()); // count, patched in finish
        buf.extend_from_slice(&header.seq.0.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // len, patched in finish
        buf.extend_from_slice(&header.flags.to_le_bytes());
        buf.extend_from_slice(&header.incarnation.to_le_bytes());
        buf.extend_from_slice(&(row.received.len() as u16).to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
        buf.extend_from_slice(&row.heartbeat.to_le_bytes());
        buf.extend_from_slice(&row.delivered.to_le_bytes());
        buf.extend_from_slice(&row.persisted.to_le_bytes());
        for r in &row.received {
            buf.extend_from_slice(&r.to_le_bytes());
        }
        for i in 0..row.received.len() {
            let inc = row.incarnations.get(i).copied().unwrap_or(0);
            buf.extend_from_slice(&inc.to_le_bytes());
        }
        FrameWriter {
            buf,
            max_frame,
            count: 0,
            slots: 0,
            last_null_at: None,
        }
    }

    /// Bytes still free for entries.
    pub fn remaining(&self) -> usize {
        self.max_frame.saturating_sub(self.buf.len() + MAC_LEN)
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Sequence numbers covered so far.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Appends one message; false (nothing written) if it does not fit.
    pub fn push_data(&mut self, payload: &[u8]) -> bool {
        if self.count == u16::MAX || payload.len() + DATA_ENTRY_OVERHEAD > self.remaining() {
            return false;
        }
        self.buf.push(0);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
        self.slots += 1;
        self.last_null_at = None;
        true
    }

    /// Appends `n` null slots, merged with a null run just before; false if it does not fit.
    pub fn push_nulls(&mut self, n: u32) -> bool {
        if n == 0 {
            return true;
        }
        if let Some(at) = self.last_null_at {
            let cur = le_u32(&self.buf[at + 1..at + 5]);
            if let Some(sum) = cur.checked_add(n) {
                self.buf[at + 1..at + 5].copy_from_slice(&sum.to_le_bytes());
                self.slots += u64::from(n);
                return true;
            }
        }
        if self.count == u16::MAX || NULL_ENTRY_LEN > self.remaining() {
            return false;
        }
        self.last_null_at = Some(self.buf.len());
        self.buf.push(1);
        self.buf.extend_from_slice(&n.to_le_bytes());
        self.count += 1;
        self.slots += u64::from(n);
        true
    }

    /// Patches count and length and appends the MAC. Returns the frame length.
    pub fn finish(self, key: &Key) -> usize {
        let count = self.count;
        let body_len = (self.buf.len() - HEADER_LEN) as u32;
        self.buf[14..16].copy_from_slice(&count.to_le_bytes());
        self.buf[24..28].copy_from_slice(&body_len.to_le_bytes());
        let mac = key.mac(self.buf);
        self.buf.extend_from_slice(&mac);
        self.buf.len()
    }
}

/// Appends a valid MAC to arbitrary bytes, for fuzzers and tests that need to reach the parser
/// behind the MAC check. Never used by the protocol itself.
#[doc(hidden)]
pub fn sign_for_tests(key: &Key, signed: &[u8]) -> Vec<u8> {
    let mut out = signed.to_vec();
    out.extend_from_slice(&key.mac(signed));
    out
}

/// Largest payload one message may carry in a frame of `max_frame` bytes for `n` members.
pub fn max_payload_for(max_frame: usize, n: usize) -> usize {
    max_frame.saturating_sub(OVERHEAD + Row::encoded_len(n) + DATA_ENTRY_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> Key {
        Key::from_bytes([7u8; 32])
    }

    fn header(kind: Kind) -> Header {
        Header {
            kind,
            group: GroupId(9),
            view: ViewId(1),
            sender: MemberId(2),
            count: 0,
            seq: Seq(40),
            flags: 0,
            incarnation: 77,
        }
    }

    fn row(n: usize) -> Row {
        Row {
            heartbeat: 5,
            delivered: 6,
            persisted: 7,
            received: (0..n as u64).collect(),
            incarnations: (0..n as u64).map(|i| 100 + i).collect(),
        }
    }

    #[derive(Clone, Debug)]
    enum E {
        D(Vec<u8>),
        N(u32),
    }

    fn emit(kind: Kind, entries: &[E], n: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf, 65_000, &header(kind), &row(n));
        for e in entries {
            match e {
                E::D(p) => assert!(w.push_data(p)),
                E::N(k) => assert!(w.push_nulls(*k)),
            }
        }
        w.finish(&key());
        buf
    }

    #[test]
    fn status_round_trip() {
        let f = emit(Kind::Status, &[], 3);
        let p = Frame::parse(&key(), &f).unwrap();
        assert_eq!(p.header.kind, Kind::Status);
        assert_eq!(p.header.sender, MemberId(2));
        assert_eq!(p.row.to_owned(), row(3));
        assert_eq!(p.entries().count(), 0);
    }

    #[test]
    fn adjacent_nulls_merge_into_one_entry() {
        let f = emit(Kind::Data, &[E::N(3), E::N(4), E::D(vec![1]), E::N(1)], 2);
        let p = Frame::parse(&key(), &f).unwrap();
        let got: Vec<_> = p.entries().collect();
        assert_eq!(
            got,
            vec![Entry::Nulls(7), Entry::Data(&[1]), Entry::Nulls(1)]
        );
        assert_eq!(p.header.count, 3);
    }

    #[test]
    fn wrong_key_and_any_flipped_bit_are_refused() {
        let f = emit(Kind::Data, &[E::D(b"hello".to_vec())], 3);
        assert_eq!(
            Frame::parse(&Key::from_bytes([8u8; 32]), &f).unwrap_err(),
            WireError::BadMac
        );
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert_eq!(Frame::parse(&key(), &g).unwrap_err(), WireError::BadMac);
        }
    }

    #[test]
    fn frame_respects_max_size() {
        let mut buf = Vec::new();
        let r = row(3);
        let mut w = FrameWriter::new(&mut buf, 200, &header(Kind::Data), &r);
        let mut n = 0;
        while w.push_data(&[0u8; 20]) {
            n += 1;
        }
        assert!(n > 0);
        let len = w.finish(&key());
        assert!(len <= 200, "{len}");
        assert_eq!(
            max_payload_for(200, 3) + OVERHEAD + Row::encoded_len(3) + 5,
            200
        );
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let k = Key::from_bytes([0xab; 32]);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(Key::from_hex("abc"), Err(KeyError::Length(3)));
        assert_eq!(Key::from_hex(&"zz".repeat(32)), Err(KeyError::Digit));
        assert_eq!(format!("{k:?}"), "Key(<secret>)");
    }

    fn sign(signed: Vec<u8>) -> Vec<u8> {
        sign_for_tests(&key(), &signed)
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::parse(&key(), &bytes);
        }

        #[test]
        fn parse_never_panics_on_signed_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(f) = Frame::parse(&key(), &sign(bytes)) {
                let _ = f.entries().count();
                let _ = f.row.to_owned();
            }
        }

        #[test]
        fn parse_never_panics_on_mutated_signed_frames(
            n in 1usize..6,
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            pos in any::<prop::sample::Index>(),
            val in any::<u8>(),
        ) {
            let entries: Vec<E> = payloads.into_iter().map(E::D).collect();
            let mut f = emit(Kind::Data, &entries, n);
            f.truncate(f.len() - MAC_LEN);
            let i = pos.index(f.len());
            f[i] = val;
            if let Ok(p) = Frame::parse(&key(), &sign(f)) {
                let _ = p.entries().count();
            }
        }

        #[test]
        fn emit_then_parse_round_trips(
            n in 1usize..8,
            entries in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64).prop_map(E::D),
                    (1u32..1000).prop_map(E::N),
                ],
                1..20),
        ) {
            let f = emit(Kind::Data, &entries, n);
            let p = Frame::parse(&key(), &f).unwrap();
            prop_assert_eq!(p.row.to_owned(), row(n));
            // Adjacent null runs merge; compare the expanded slot sequences.
            let expand = |es: Vec<(bool, Vec<u8>, u32)>| {
                let mut out: Vec<Option<Vec<u8>>> = Vec::new();
                for (d, p, k) in es {
                    if d { out.push(Some(p)); } else { for _ in 0..k { out.push(None); } }
                }
                out
            };
            let want = expand(entries.iter().map(|e| match e {
                E::D(p) => (true, p.clone(), 0),
                E::N(k) => (false, Vec::new(), *k),
            }).collect());
            let got = expand(p.entries().map(|e| match e {
                Entry::Data(p) => (true, p.to_vec(), 0),
                Entry::Nulls(k) => (false, Vec::new(), k),
            }).collect());
            prop_assert_eq!(got, want);
        }
    }
}
