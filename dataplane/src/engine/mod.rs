//! The polling engine: one thread per member that owns a [`Replica`] (the protocol core and the
//! queue replica) and the transport, pinned to a core when configured, exchanging work with application threads
//! through lock-free rings (crossbeam's bounded `ArrayQueue`, Vyukov's MPMC array queue).
//!
//! Idle policy (configuration): after the last piece of work, spin for `spin_us`, then yield
//! the core for `yield_us` (lets other runnable threads of a shared machine run while staying
//! responsive), then park in `ppoll` on the transport's descriptor and an eventfd until the next
//! protocol timer, at most `park_max_us`. Application threads wake a parked engine through the
//! eventfd only when it is parked, so a busy engine costs them no system call. The same policy
//! governs an application thread waiting for events.

//!
//! Parts: [`idle`] (the idle policy and the clock), [`handle`] (the application's side:
//! [`EngineHandle`], [`Submitter`]), [`probe`] (what other threads see and ask: [`Probe`],
//! [`Live`], [`Directive`]), and `poll_loop` (the polling thread).

pub mod handle;
pub mod idle;
mod log;
mod poll_loop;
pub mod probe;

pub use handle::{EngineHandle, Submitter};
pub use idle::{Clock, IdlePolicy};
pub use probe::{Bell, Directive, Live, LogLive, Probe};

use crate::transport::TransportStats;
use conveyor_core::proto::{ProtoConfig, Stats, SubmitError};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::types::{GroupId, MemberId, View};
use conveyor_core::wire::Key;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub proto: ProtoConfig,
    pub key: Key,
    pub group: GroupId,
    pub view: View,
    pub me: MemberId,
    /// Names of the members by id, for messages.
    pub names: Vec<String>,
    pub idle: IdlePolicy,
    /// Pin the polling thread to this core.
    pub core: Option<usize>,
    /// How long to wait for every peer at start.
    pub startup_timeout: Duration,
    /// How long to keep serving after a shutdown was delivered, so peers deliver it too.
    pub linger: Duration,
    /// When a view change removes this member (or it finds it restarted inside a view), come
    /// back as a new member (a joiner, with state transfer) instead of stopping.
    pub rejoin: bool,
    /// Not in the first view: start by asking to join (a member added to a running group).
    pub join: bool,
    /// Speculation (see `conveyor_core::replica`): this member's application is told of the
    /// requests assigned to it before they are delivered ([`Effect::Speculated`], then
    /// [`Effect::Confirmed`] or [`Effect::Discarded`]). Only for an application that handles
    /// those, such as [`crate::invoker::InvokerApp`].
    pub speculate: bool,
    /// The data directory (`[member] data_dir`): every step of the order is logged there,
    /// what a durable queue tells waits for a majority of the group file's members' disks,
    /// and a member started from it recovers (see `conveyor_core::replica`, "recovery"): the
    /// whole group restarting from its data directories loses nothing it was told.
    pub data_dir: Option<std::path::PathBuf>,
    /// The log's segment size (default 64 MiB); a snapshot of the state is taken each time
    /// the log has grown by this much, and the segments wholly before it are deleted, so the
    /// data directory holds about two segments and a snapshot.
    pub log_segment_bytes: Option<u64>,
}

/// An application that runs inside the polling thread (run-to-completion): it sees this
/// member's events as they are delivered and returns operations to order, with no ring and no
/// thread hand-off. For short functions on machines with few cores; anything that blocks
/// belongs in an application thread behind the rings instead.
pub trait InlineApp: Send {
    /// Called once every member is present.
    fn start(&mut self, out: &mut Vec<Op>);
    /// Called for each event of this member, in delivery order.
    fn on_event(&mut self, ev: Event, clock: &Clock, out: &mut Vec<Op>);
}

/// An effect of the replicated queue that concerns this member, stamped with the engine's clock
/// when it was delivered.
#[derive(Clone, Debug)]
pub struct Event {
    pub at_us: u64,
    pub effect: Effect,
}

/// What the engine did, returned when it stops.
#[derive(Clone, Debug, Default)]
pub struct EngineReport {
    pub proto: Stats,
    pub transport: TransportStats,
    pub malformed_ops: u64,
    pub delivered_slots: u64,
    pub digest: [u8; 32],
    pub queues: Vec<(String, usize)>,
    pub error: Option<String>,
    /// Loop iterations that took more than 1 ms (parking excluded): the polling thread was
    /// descheduled or an inline function ran long. A sign of oversubscribed cores.
    pub stalls_over_1ms: u64,
    pub longest_stall_us: u64,
    /// Times the idle policy parked instead of yielding because the core was contended.
    pub contended_spells: u64,
    /// Times this member was removed and came back as a new member.
    pub rejoins: u64,
    pub speculation: Speculation,
}

/// A member's speculated assignments (see `conveyor_core::replica`): started before delivery,
/// then confirmed by it, or discarded (the execution's result dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Speculation {
    pub started: u64,
    pub confirmed: u64,
    pub discarded: u64,
    /// Over the confirmed ones: the time from speculation to confirmation, summed
    /// (microseconds): how much earlier their functions could start.
    pub lead_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Startup(String),
    #[error("the engine stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

pub(crate) const CMD_RING: usize = 4096;
/// A yield that gave the core away this long means a CPU-bound thread shares it.
pub(crate) const CONTENDED_YIELD: Duration = Duration::from_millis(1);
/// How long to park instead of yielding after seeing such a yield.
pub(crate) const CONTENDED_FOR: Duration = Duration::from_millis(20);
pub(crate) const EVENT_RING: usize = 1 << 16;
/// An inline application's event that took this long ran a function: the polling thread then
/// yields its core once (members sharing it poll). Shorter ones (a confirmation releasing a
/// held completion, bookkeeping) do not.
pub(crate) const INLINE_YIELD_AFTER: Duration = Duration::from_micros(10);
pub(crate) const RECV_BATCH: usize = 64;
/// How long inline functions that are ready at once run back to back before their completions
/// are sent (one frame for several) and the loop polls again.
pub(crate) const INLINE_BATCH: Duration = Duration::from_micros(250);
