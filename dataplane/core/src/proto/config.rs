//! The protocol's tunables, who may join, and why a configuration is refused.

use crate::types::MemberId;
use crate::wire;
use core::time::Duration;
use std::collections::BTreeSet;
use thiserror::Error;

/// Tunables of the protocol core. See the sample configuration for what each means in practice.
#[derive(Clone, Debug)]
pub struct ProtoConfig {
    /// Own messages (data or null) that may be undelivered at once.
    pub window: u64,
    /// Largest frame emitted, MAC included.
    pub max_frame: usize,
    /// Largest message payload accepted by `submit` (at most what fits in one frame).
    pub max_payload: usize,
    /// Period of status rows while messages are in flight (loss recovery of acknowledgements).
    pub status_interval: Duration,
    /// Period of status rows when idle (heartbeat).
    pub heartbeat: Duration,
    /// A member not heard from for this long is suspected, which starts a view change
    /// (see [`crate::proto::membership`]). Several heartbeats, plus scheduling noise.
    pub failure_timeout: Duration,
    /// In the configured first view, how long a member never heard from is waited for before
    /// it is suspected (members start at different times; the host's start-up timeout).
    pub startup_grace: Duration,
    /// Who may join the group.
    pub admission: Admission,
    /// Retransmission timeout before any round trip is measured, and its lower bound after.
    pub rto: Duration,
    /// Upper bound of the retransmission timeout after back-off (towards a peer gone silent).
    pub rto_max: Duration,
    /// Deliberate protocol bugs, for proving that the simulator's checkers catch them. Exists
    /// only with the `sabotage` feature, which only the simulator's tests enable.
    #[cfg(feature = "sabotage")]
    pub sabotage: Sabotage,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        ProtoConfig {
            window: 256,
            max_frame: 8192,
            max_payload: 4096,
            status_interval: Duration::from_millis(2),
            heartbeat: Duration::from_millis(5),
            failure_timeout: Duration::from_millis(30),
            startup_grace: Duration::from_secs(20),
            admission: Admission::Any,
            rto: Duration::from_micros(500),
            rto_max: Duration::from_millis(200),
            #[cfg(feature = "sabotage")]
            sabotage: Sabotage::None,
        }
    }
}

impl ProtoConfig {
    /// Whether the deliberate bug `s` is switched on (never, without the `sabotage` feature).
    #[inline]
    pub(crate) fn sabotaged(&self, _s: Sabotage) -> bool {
        #[cfg(feature = "sabotage")]
        {
            self.sabotage == _s
        }
        #[cfg(not(feature = "sabotage"))]
        {
            false
        }
    }

    /// How far beyond what it delivered a member accepts a sender's slots: this bounds the
    /// memory held per sender.
    pub(crate) fn recv_window(&self) -> u64 {
        self.window.saturating_mul(4)
    }
}

/// Which processes may join (they must hold the group key in any case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Any holder of the group key.
    Any,
    /// Only these member ids; other join requests are refused and counted.
    Listed(BTreeSet<MemberId>),
}

/// Deliberate protocol bugs, switched on one at a time by the simulator's negative tests to
/// prove that its checkers catch them. Without the `sabotage` feature the type exists (so that
/// the checks compile away) but no configuration can carry one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Deliver a slot as soon as it is held locally, without waiting for stability.
    DeliverBeforeStable,
    /// Never retransmit.
    NoRetransmit,
    /// Ragged-edge cleanup that delivers only what this member holds, ignoring the agreed cut.
    IgnoreCut,
    /// Install a proposal without waiting for a majority to accept it.
    CommitWithoutMajority,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("window must be at least 1")]
    Window,
    #[error("max_payload {max_payload} does not fit a frame of {max_frame} bytes for {members} members (at most {fits})")]
    Payload {
        max_payload: usize,
        max_frame: usize,
        members: usize,
        fits: usize,
    },
    #[error("the view has no members, or more than {}", wire::MAX_MEMBERS)]
    ViewSize,
    #[error("member {0} is not in the view")]
    NotInView(MemberId),
    #[error("incarnation {0:#x} must be in 1..2^63 (see `proto::draw_incarnation`)")]
    Incarnation(u64),
}
