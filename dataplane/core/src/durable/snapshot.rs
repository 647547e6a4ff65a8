//! A snapshot file: the replicated state as of a position.
//!
//! ```text
//! header, 40 bytes:  magic "CVYSNAP\x01" | layout u32 | group u32 | position u64
//!                    | body length u64 | CRC-32 of the body u32 | CRC-32 of the 36 bytes before
//! body:              the state (QueueState::snapshot)
//! ```
//!
//! `position` is the number of operations the state has applied: the log resumes there.

use super::{check_header, crc, u32_at, u64_at, FormatError, LAYOUT};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"CVYSNAP\x01";
pub const HEADER_LEN: usize = 40;

/// Encodes a snapshot of `body` (the state) as of `position`.
pub fn encode(group: u32, position: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&LAYOUT.to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc(body).to_le_bytes());
    let c = crc(&out[..36]);
    out.extend_from_slice(&c.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A snapshot read back: its position and the state's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot<'a> {
    pub position: u64,
    pub body: &'a [u8],
}

/// Parses a snapshot of `group`, checking both checksums.
pub fn parse(b: &[u8], group: u32) -> Result<Snapshot<'_>, FormatError> {
    check_header(b, "snapshot", &SNAPSHOT_MAGIC, HEADER_LEN, 36, group)?;
    let len = u64_at(b, 24).unwrap_or(0);
    let body = &b[HEADER_LEN..];
    if body.len() as u64 != len || u32_at(b, 32) != Some(crc(body)) {
        return Err(FormatError::SnapshotChecksum {
            offset: HEADER_LEN as u64,
        });
    }
    Ok(Snapshot {
        position: u64_at(b, 16).unwrap_or(0),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_any_flipped_bit_is_caught() {
        let b = encode(7, 42, b"the state");
        assert_eq!(
            parse(&b, 7).unwrap(),
            Snapshot {
                position: 42,
                body: b"the state"
            }
        );
        assert_eq!(
            parse(&b, 8).unwrap_err(),
            FormatError::OtherGroup {
                found: 7,
                expected: 8
            }
        );
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut bad = b.clone();
                bad[i] ^= 1 << bit;
                assert!(parse(&bad, 7).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(parse(&b[..b.len() - 1], 7).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(parse(&longer, 7).is_err());
    }
}
