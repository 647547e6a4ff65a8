//! Protocol newtypes shared by every layer: member, view, group and sequence identifiers and the
//! core's own notion of time. The protocol core never reads a clock: callers pass an [`Instant`].

use core::fmt;
use core::ops::{Add, Sub};
use core::time::Duration;
use serde::{Deserialize, Serialize};

/// A member's stable identity inside its group (its index in the group configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub u16);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// A membership epoch. Static membership uses a single view; view changes increment it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewId(pub u32);

/// The group a frame belongs to (derived from the configuration), checked on every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u32);

/// Per-sender message sequence number inside a view (0, 1, 2, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

/// Identity of a function request, assigned by the trigger that created it; kept by all the
/// continuations of the request through the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl RequestId {
    /// Request ids are unique per group: the origin member in the top 16 bits, a counter below.
    pub fn new(origin: MemberId, counter: u64) -> Self {
        RequestId((u64::from(origin.0) << 48) | (counter & ((1 << 48) - 1)))
    }
    pub fn origin(self) -> MemberId {
        MemberId((self.0 >> 48) as u16)
    }
    pub fn counter(self) -> u64 {
        self.0 & ((1 << 48) - 1)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin(), self.counter())
    }
}

/// Time as the protocol core sees it: microseconds since an arbitrary origin chosen by the host
/// (the engine uses a process-local monotonic clock, the simulator virtual time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    pub fn as_micros(self) -> u64 {
        self.0
    }
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_micros() as u64))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, other: Instant) -> Duration {
        self.saturating_since(other)
    }
}

/// A view: its number and its members in rank order. The rank of a member (its index here)
/// decides its round-robin delivery slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub id: ViewId,
    pub members: Vec<MemberId>,
}

impl View {
    pub fn new(id: ViewId, members: Vec<MemberId>) -> Self {
        View { id, members }
    }
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    pub fn rank_of(&self, m: MemberId) -> Option<usize> {
        self.members.iter().position(|&x| x == m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_packs_origin_and_counter() {
        let id = RequestId::new(MemberId(7), 123_456);
        assert_eq!(id.origin(), MemberId(7));
        assert_eq!(id.counter(), 123_456);
        assert_ne!(
            RequestId::new(MemberId(1), 5),
            RequestId::new(MemberId(2), 5)
        );
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let a = Instant(10);
        let b = a + Duration::from_micros(5);
        assert_eq!(b, Instant(15));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(b - a, Duration::from_micros(5));
    }
}
