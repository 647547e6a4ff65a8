//! Control messages larger than one frame, in fragments.
//!
//! The transports drop frames larger than `max_frame` (plus a small margin), and some control
//! messages grow with the group's state: a view change's `Promise` lists every run of nulls a
//! member holds and has not delivered (up to the receive window's worth per sender after a long
//! stall), a `Decision` names every member and nonce. Such a message is sent as `Fragment`s, each
//! in its own frame of at most `max_frame`, and put back together by the receiver, which then
//! handles it like any control message of that sender. Nothing is acknowledged: the view change
//! repeats what it waits for, and a lost fragment costs that repetition, as a lost frame does.
//!
//! Bounded: a message is at most [`MAX_MESSAGE`] bytes, and a receiver keeps at most
//! [`PARTIAL_PER_SENDER`] unfinished messages per sender (a new one drops the oldest).

use crate::types::MemberId;
use std::collections::BTreeMap;

/// The largest control message sent in fragments.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;
/// Unfinished messages kept per sender.
pub(crate) const PARTIAL_PER_SENDER: usize = 4;
/// Bytes a `Fragment`'s own fields take in a control payload, at most (enum tag, message
/// number, index, count and the length of the bytes, as postcard varints).
const FRAGMENT_FIELDS: usize = 1 + 5 + 3 + 3 + 5;

/// The pieces of `payload`, each small enough that its `Fragment` fits `room` bytes of control
/// payload; `None` if the message is too large to send at all.
pub(crate) fn split(payload: &[u8], room: usize) -> Option<Vec<Vec<u8>>> {
    let piece = room.checked_sub(FRAGMENT_FIELDS).filter(|p| *p > 0)?;
    if payload.len() > MAX_MESSAGE || payload.len().div_ceil(piece) > usize::from(u16::MAX) {
        return None;
    }
    Some(payload.chunks(piece).map(<[u8]>::to_vec).collect())
}

#[derive(Debug)]
struct Partial {
    count: u16,
    pieces: Vec<Option<Vec<u8>>>,
    have: u16,
    bytes: usize,
}

/// Unfinished messages by sender and message number.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    partial: BTreeMap<(MemberId, u32), Partial>,
}

/// Why a fragment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// An index beyond the count, a count of zero, a count that disagrees with earlier pieces,
    /// or a message beyond [`MAX_MESSAGE`].
    Malformed,
}

impl Reassembly {
    /// Stores piece `index` of `count` of message `msg` from `from`; the whole message once
    /// every piece is there (then forgotten).
    pub(crate) fn add(
        &mut self,
        from: MemberId,
        msg: u32,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if count == 0 || index >= count {
            return Err(Refused::Malformed);
        }
        if !self.partial.contains_key(&(from, msg)) {
            // Make room: the sender's oldest unfinished messages go (a message number wraps
            // only after 2^32 fragmented messages, so "oldest" is the lowest number here).
            while self.partial.range((from, 0)..=(from, u32::MAX)).count() >= PARTIAL_PER_SENDER {
                let Some(oldest) = self
                    .partial
                    .range((from, 0)..=(from, u32::MAX))
                    .map(|(k, _)| *k)
                    .next()
                else {
                    break;
                };
                self.partial.remove(&oldest);
            }
            self.partial.insert(
                (from, msg),
                Partial {
                    count,
                    pieces: vec![None; usize::from(count)],
                    have: 0,
                    bytes: 0,
                },
            );
        }
        let p = self
            .partial
            .get_mut(&(from, msg))
            .ok_or(Refused::Malformed)?;
        if p.count != count || p.bytes + bytes.len() > MAX_MESSAGE {
            self.partial.remove(&(from, msg));
            return Err(Refused::Malformed);
        }
        let slot = &mut p.pieces[usize::from(index)];
        if slot.is_none() {
            p.bytes += bytes.len();
            p.have += 1;
            *slot = Some(bytes);
        }
        if p.have < p.count {
            return Ok(None);
        }
        let whole = self
            .partial
            .remove(&(from, msg))
            .map(|p| p.pieces.into_iter().flatten().flatten().collect());
        Ok(whole)
    }

    /// Bytes held in unfinished messages.
    pub(crate) fn bytes(&self) -> usize {
        self.partial.values().map(|p| p.bytes).sum()
    }

    /// Forgets what senders other than `keep` had begun (a new view).
    pub(crate) fn retain(&mut self, keep: impl Fn(MemberId) -> bool) {
        self.partial.retain(|(m, _), _| keep(*m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_in_any_order_make_the_message_once() {
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let pieces = split(&msg, 100).unwrap();
        assert!(pieces.iter().all(|p| p.len() + FRAGMENT_FIELDS <= 100));
        let count = pieces.len() as u16;
        let mut r = Reassembly::default();
        for (i, p) in pieces.iter().enumerate().skip(1).rev() {
            assert_eq!(r.add(MemberId(1), 7, i as u16, count, p.clone()), Ok(None));
            // A duplicate changes nothing.
            assert_eq!(r.add(MemberId(1), 7, i as u16, count, p.clone()), Ok(None));
        }
        // Another sender's message of the same number is another message.
        assert_eq!(r.add(MemberId(2), 7, 0, count, pieces[0].clone()), Ok(None));
        assert_eq!(
            r.add(MemberId(1), 7, 0, count, pieces[0].clone()),
            Ok(Some(msg))
        );
        assert_eq!(r.bytes(), pieces[0].len());
    }

    #[test]
    fn bad_pieces_are_refused_and_memory_stays_bounded() {
        let mut r = Reassembly::default();
        assert_eq!(
            r.add(MemberId(1), 1, 3, 3, vec![1]),
            Err(Refused::Malformed)
        );
        assert_eq!(
            r.add(MemberId(1), 1, 0, 0, vec![1]),
            Err(Refused::Malformed)
        );
        assert_eq!(r.add(MemberId(1), 1, 0, 3, vec![1]), Ok(None));
        assert_eq!(
            r.add(MemberId(1), 1, 1, 4, vec![1]),
            Err(Refused::Malformed)
        );
        for msg in 0..100 {
            let _ = r.add(MemberId(2), msg, 0, 2, vec![0; 1000]);
        }
        assert!(r.bytes() <= PARTIAL_PER_SENDER * 1000);
        assert!(split(&vec![0; MAX_MESSAGE + 1], 1000).is_none());
        assert!(split(&[1, 2, 3], FRAGMENT_FIELDS).is_none());
    }
}
