//! State transfer: the application's state, as of the install of a view, sent to the members
//! that joined with it, in acknowledged chunks (a window of 16 in flight, the rest resent from
//! the last acknowledgement on the membership timer). The joiner delivers the state
//! ([`Delivered::State`](crate::proto::Delivered::State)) before any message of its first view.

use super::Ctl;
use crate::proto::event::{Dest, Stats};
use crate::proto::transmit::Transmitter;
use crate::types::{Instant, MemberId, View, ViewId};
use crate::wire;
use core::time::Duration;

/// Chunks in flight before an acknowledgement.
const WINDOW: usize = 16;

#[derive(Debug)]
struct StateOut {
    to: MemberId,
    view: ViewId,
    bytes: Vec<u8>,
    acked: usize,
    sent_to: usize,
    /// When the joiner last acknowledged more (or the transfer started).
    progress_at: Instant,
}

/// A joiner's incoming state: the view it is for, the bytes so far, the total once known.
#[derive(Debug)]
struct StateIn {
    view: ViewId,
    bytes: Vec<u8>,
    total: Option<u32>,
}

/// One chunk of a state, as received.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) view: ViewId,
    pub(crate) offset: u32,
    pub(crate) total: u32,
    pub(crate) bytes: Vec<u8>,
}

/// States being sent to joiners, and the one this member awaits as a joiner.
#[derive(Debug)]
pub(crate) struct StateTransfer {
    outgoing: Vec<StateOut>,
    incoming: Option<StateIn>,
    /// The state this joiner took (its view and size): a resent chunk of it is acknowledged
    /// whole, so that its sender, whose last acknowledgement was lost, sees the transfer end.
    taken: Option<(ViewId, u32)>,
    /// Bytes of state per control frame.
    chunk: usize,
}

impl StateTransfer {
    pub(crate) fn new(max_frame: usize) -> StateTransfer {
        StateTransfer {
            outgoing: Vec::new(),
            incoming: None,
            taken: None,
            chunk: wire::max_payload_for(max_frame, 1)
                .saturating_sub(32)
                .max(16),
        }
    }

    /// Whether this member waits for its state (a joiner in its first view).
    pub(crate) fn awaiting(&self) -> bool {
        self.incoming.is_some()
    }

    /// Whether states are being sent.
    pub(crate) fn sending(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Bytes held by the transfers (sent and received), for memory accounting.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.outgoing.iter().map(|o| o.bytes.len()).sum::<usize>()
            + self.incoming.as_ref().map_or(0, |i| i.bytes.len())
    }

    /// A joiner admitted into `view`: its state comes next.
    pub(crate) fn expect(&mut self, view: ViewId) {
        self.incoming = Some(StateIn {
            view,
            bytes: Vec::new(),
            total: None,
        });
    }

    /// The whole state, once every byte arrived (taken).
    pub(crate) fn take_complete(&mut self) -> Option<Vec<u8>> {
        match &self.incoming {
            Some(StateIn {
                bytes,
                total: Some(total),
                ..
            }) if bytes.len() == *total as usize => {
                let i = self.incoming.take()?;
                self.taken = Some((i.view, i.bytes.len() as u32));
                Some(i.bytes)
            }
            _ => None,
        }
    }

    /// Starts sending `bytes` (the state as of the install of `view`) to joiner `to`.
    pub(crate) fn send(
        &mut self,
        to: MemberId,
        view: ViewId,
        bytes: Vec<u8>,
        now: Instant,
        tx: &mut Transmitter,
        stats: &mut Stats,
    ) {
        self.outgoing.retain(|o| o.to != to);
        self.outgoing.push(StateOut {
            to,
            view,
            bytes,
            acked: 0,
            sent_to: 0,
            progress_at: now,
        });
        let i = self.outgoing.len() - 1;
        self.send_chunks(i, tx, stats);
    }

    fn send_chunks(&mut self, i: usize, tx: &mut Transmitter, stats: &mut Stats) {
        let cs = self.chunk;
        let o = &mut self.outgoing[i];
        let total = o.bytes.len();
        let end = total.min(o.acked + WINDOW * cs);
        let dest = Dest::One(o.to);
        if total == 0 && o.sent_to == 0 {
            o.sent_to = 1;
            let empty = Ctl::State {
                view: o.view,
                offset: 0,
                total: 0,
                chunk: Vec::new(),
            };
            tx.emit_ctl(dest, &empty, stats);
        }
        while o.sent_to < end {
            let to = (o.sent_to + cs).min(total);
            let chunk = Ctl::State {
                view: o.view,
                offset: o.sent_to as u32,
                total: total as u32,
                chunk: o.bytes[o.sent_to..to].to_vec(),
            };
            o.sent_to = to;
            tx.emit_ctl(dest, &chunk, stats);
        }
    }

    /// The joiner `from` holds the first `have` bytes of the state of `view`.
    pub(crate) fn on_ack(
        &mut self,
        from: MemberId,
        view: ViewId,
        have: u32,
        now: Instant,
        tx: &mut Transmitter,
        stats: &mut Stats,
    ) {
        let Some(i) = self
            .outgoing
            .iter()
            .position(|o| o.to == from && o.view == view)
        else {
            return;
        };
        let o = &mut self.outgoing[i];
        let acked = o.acked.max(have as usize).min(o.bytes.len());
        if acked > o.acked {
            o.progress_at = now;
        }
        o.acked = acked;
        if o.acked >= o.bytes.len() {
            self.outgoing.remove(i);
        } else {
            self.send_chunks(i, tx, stats);
        }
    }

    /// A chunk from `from` for the state of `view`: kept if it is the next one, and
    /// acknowledged with what is held.
    pub(crate) fn on_chunk(
        &mut self,
        from: MemberId,
        chunk: Chunk,
        tx: &mut Transmitter,
        stats: &mut Stats,
    ) {
        let Chunk {
            view,
            offset,
            total,
            bytes: chunk,
        } = chunk;
        let Some(inc) = &mut self.incoming else {
            if let Some((v, have)) = self.taken.filter(|(v, _)| *v == view) {
                tx.emit_ctl(Dest::One(from), &Ctl::StateAck { view: v, have }, stats);
            }
            return;
        };
        if inc.view != view {
            return;
        }
        if offset as usize == inc.bytes.len() && inc.bytes.len() + chunk.len() <= total as usize {
            inc.bytes.extend_from_slice(&chunk);
            inc.total = Some(total);
        }
        let have = inc.bytes.len() as u32;
        tx.emit_ctl(Dest::One(from), &Ctl::StateAck { view, have }, stats);
    }

    /// The membership timer: what is not acknowledged is sent again from the last
    /// acknowledgement; transfers for another view, or to a member no longer in it, stop.
    /// Returns the joiners that acknowledged nothing more for `timeout`: until its state is
    /// in, a joiner delivers nothing and so holds at most a receive window of each sender,
    /// which caps the whole group; one that does not take its state is to be suspected.
    pub(crate) fn resend(
        &mut self,
        view: &View,
        now: Instant,
        timeout: Duration,
        tx: &mut Transmitter,
        stats: &mut Stats,
    ) -> Vec<MemberId> {
        self.outgoing.retain(|o| o.acked < o.bytes.len().max(1));
        self.outgoing
            .retain(|o| o.view == view.id && view.rank_of(o.to).is_some());
        let stalled = self
            .outgoing
            .iter()
            .filter(|o| now.saturating_since(o.progress_at) >= timeout)
            .map(|o| o.to)
            .collect();
        for i in 0..self.outgoing.len() {
            let o = &mut self.outgoing[i];
            o.sent_to = o.acked;
            self.send_chunks(i, tx, stats);
        }
        stalled
    }

    /// A new view: transfers of the old one stop.
    pub(crate) fn clear_outgoing(&mut self) {
        self.outgoing.clear();
    }
}
