//! Sans-IO total-order multicast (Derecho's protocol over unreliable datagrams).
//!
//! This module has no sockets, no clock, no threads and no randomness. A host drives one
//! [`Member`] in this order, repeatedly:
//!
//! 1. [`Member::handle_frame`] for every frame received, [`Member::submit`] for every message
//!    the application wants ordered (an `Err(WindowFull)` is backpressure: retry later);
//! 2. [`Member::handle_timeout`] when the instant given by [`Member::poll_timeout`] has passed;
//! 3. [`Member::poll_delivery`] until `None`: messages in the agreed total order;
//! 4. [`Member::poll_transmit`] until `None`: frames to send, then [`Member::recycle`] the
//!    buffers.
//!
//! Most hosts drive a [`crate::replica::Replica`] instead, which applies the deliveries to
//! the replicated queue.
//!
//! # Protocol
//!
//! Every member of the view may send. Message `k` of the member of rank `r` (null or not)
//! occupies global slot `k * N + r`; slots are delivered in order. A member with nothing to send
//! fills its slots with nulls up to the highest sequence it has seen from anyone, so that the
//! round-robin order never waits for an idle sender; null runs cost five bytes on the wire.
//!
//! Every frame carries its sender's *status row* (Derecho's SST row): for every rank, how many
//! messages of that rank it holds contiguously, and how many slots it has delivered.
//!
//! Every frame also names its sender's *process* (incarnation, drawn at random when the process
//! starts), and the row names, per rank, the process whose messages it counts. In the group
//! file's first view a member takes a process for a rank only from a frame whose row names the
//! member's own process (it proves the frame was sent after this process started: a replayed
//! frame of an earlier run of the group, with the same key and view numbers, cannot); in later
//! views, the processes the decision names. Frames of any other process are dropped, and a
//! commit is believed only if it keeps its receiver by name or is addressed to its process. A slot
//! `(k, r)` is *stable* once every member's row says it holds message `k` of `r`; a slot that
//! carries a message is delivered only once stable (stability before delivery, so a delivery
//! survives any failure of a minority, which the view-change protocol relies on). A null slot
//! is passed once a majority holds it: it is identical everywhere and carries nothing, and a
//! majority is what a view change needs to tell it was a null.
//!
//! Reliability, flow control and batching: see [`transmit`]. A member has at most `window` of
//! its own messages undelivered; `submit` beyond that returns [`SubmitError::WindowFull`].
//! Receivers accept a sender's slots only within `4 * window` of what they delivered, so
//! memory per sender is bounded.
//!
//! # Parts
//!
//! Each part owns its state; [`Member`] composes them and is the only one that calls across:
//! - [`config`]: tunables and admission;
//! - [`event`]: what the member gives its host (deliveries, frames, counters, errors);
//! - [`order`]: what the member holds of each sender, the status rows, delivery in order;
//! - [`transmit`]: framing, what to send next, retransmission and status timers;
//! - `fragment`: control messages larger than a frame, split and put back together;
//! - [`membership`]: the view change ([`membership::change`]: failure detection, Paxos, the
//!   ragged-edge cut, install) and [`membership::state_transfer`] (a joiner's state).

pub mod config;
pub mod event;
pub(crate) mod fragment;
mod member;
pub mod membership;
pub(crate) mod order;
pub(crate) mod transmit;

#[cfg(test)]
mod tests;

pub use config::{Admission, ConfigError, ProtoConfig, Sabotage};
pub use event::{Delivered, Delivery, Dest, ProtoDrop, Stats, SubmitError, Transmit};
pub use member::Member;

/// A process's incarnation from a random number (the host's: [`Member`] draws none): in
/// `1..2^63`, the top bit being the row's mark for a process heard but not yet confirmed.
pub fn draw_incarnation(random: u64) -> u64 {
    (random >> 1).max(1)
}
pub use membership::{Ballot, Decision, Status, StopReason, ViewChange};
