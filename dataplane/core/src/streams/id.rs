//! Stream entry ids (`<ms>-<seq>`) and their parsing, as `redis-server` parses them
//! (`t_stream.c`: `streamGenericParseIDOrReply`, `streamParseIntervalIDOrReply`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// An entry id: milliseconds, then a sequence number within them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    /// The next id, if any (`streamIncrID`).
    pub fn next(self) -> Option<StreamId> {
        if self.seq < u64::MAX {
            Some(StreamId::new(self.ms, self.seq + 1))
        } else if self.ms < u64::MAX {
            Some(StreamId::new(self.ms + 1, 0))
        } else {
            None
        }
    }

    /// The previous id, if any (`streamDecrID`).
    pub fn prev(self) -> Option<StreamId> {
        if self.seq > 0 {
            Some(StreamId::new(self.ms, self.seq - 1))
        } else if self.ms > 0 {
            Some(StreamId::new(self.ms - 1, u64::MAX))
        } else {
            None
        }
    }

    pub fn is_zero(self) -> bool {
        self == StreamId::MIN
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Redis's message for any id it cannot read.
pub const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";

/// A number as `string2ull` reads it: decimal digits (an optional `+` and leading blanks, as
/// `strtoull` allows), not negative, at most `u64::MAX`.
fn ull(s: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(s).ok()?;
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// How an id was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// `<ms>-<seq>`, `<ms>` (with the sequence the caller gave for a missing one), `-` or `+`.
    Id(StreamId),
    /// `<ms>-*` (XADD only): the sequence is generated.
    AutoSeq(u64),
}

/// Parses an id. `strict`: `-` and `+` are refused; `auto_seq`: `<ms>-*` is allowed;
/// `missing_seq`: the sequence of an id written as `<ms>` alone.
pub fn parse(
    s: &[u8],
    missing_seq: u64,
    strict: bool,
    auto_seq: bool,
) -> Result<Parsed, &'static str> {
    if s.len() > 127 {
        return Err(INVALID_ID);
    }
    match s {
        b"-" if !strict => return Ok(Parsed::Id(StreamId::MIN)),
        b"+" if !strict => return Ok(Parsed::Id(StreamId::MAX)),
        b"-" | b"+" => return Err(INVALID_ID),
        _ => {}
    }
    let (ms, seq) = match s.iter().position(|&b| b == b'-') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let ms = ull(ms).ok_or(INVALID_ID)?;
    match seq {
        None => Ok(Parsed::Id(StreamId::new(ms, missing_seq))),
        Some(b"*") if auto_seq => Ok(Parsed::AutoSeq(ms)),
        Some(seq) => Ok(Parsed::Id(StreamId::new(ms, ull(seq).ok_or(INVALID_ID)?))),
    }
}

/// An id where only a whole one may stand (`-` and `+` allowed unless `strict`).
pub fn parse_id(s: &[u8], missing_seq: u64, strict: bool) -> Result<StreamId, &'static str> {
    match parse(s, missing_seq, strict, false)? {
        Parsed::Id(id) => Ok(id),
        Parsed::AutoSeq(_) => Err(INVALID_ID),
    }
}

/// One end of an interval (XRANGE, XPENDING, XAUTOCLAIM): an id, or `(id` excluding it;
/// returns the id and whether it is excluded.
pub fn parse_interval(s: &[u8], missing_seq: u64) -> Result<(StreamId, bool), &'static str> {
    if s.len() > 1 && s[0] == b'(' {
        Ok((parse_id(&s[1..], missing_seq, true)?, true))
    } else {
        Ok((parse_id(s, missing_seq, false)?, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_redis_reads_them() {
        let id = |s: &str| parse_id(s.as_bytes(), 0, false);
        assert_eq!(id("5-3"), Ok(StreamId::new(5, 3)));
        assert_eq!(id("5"), Ok(StreamId::new(5, 0)));
        assert_eq!(
            parse_id(b"5", u64::MAX, false),
            Ok(StreamId::new(5, u64::MAX))
        );
        assert_eq!(id("-"), Ok(StreamId::MIN));
        assert_eq!(id("+"), Ok(StreamId::MAX));
        assert_eq!(parse_id(b"+", 0, true), Err(INVALID_ID));
        assert_eq!(
            id("18446744073709551615-18446744073709551615"),
            Ok(StreamId::MAX)
        );
        for bad in [
            "",
            "x",
            "5-",
            "-5",
            "5-x",
            "5--1",
            "18446744073709551616",
            "1.5",
        ] {
            assert_eq!(id(bad), Err(INVALID_ID), "{bad:?}");
        }
        assert_eq!(parse(b"7-*", 0, true, true), Ok(Parsed::AutoSeq(7)));
        assert_eq!(parse(b"7-*", 0, true, false), Err(INVALID_ID));
        assert_eq!(parse_interval(b"(5-1", 0), Ok((StreamId::new(5, 1), true)));
        assert_eq!(parse_interval(b"(-", 0), Err(INVALID_ID));
        assert_eq!(parse_interval(b"(", 0), Err(INVALID_ID));
        assert_eq!(StreamId::new(1, u64::MAX).next(), Some(StreamId::new(2, 0)));
        assert_eq!(StreamId::MAX.next(), None);
        assert_eq!(StreamId::new(2, 0).prev(), Some(StreamId::new(1, u64::MAX)));
        assert_eq!(StreamId::MIN.prev(), None);
    }
}
