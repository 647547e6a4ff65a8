//! How a polling loop waits when there is no work, and the host clock it reads.

use conveyor_core::types::Instant;

/// How a polling loop waits when there is no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    pub spin_us: u64,
    pub yield_us: u64,
    pub park_max_us: u64,
    /// Scheduler time slice asked for the polling thread, microseconds (0: the kernel's).
    pub slice_us: u64,
}

impl IdlePolicy {
    /// Suited to a small machine shared by several members and a load generator.
    ///
    /// Measured with 3 members and a load generator on 2 cores (`conveyor bench --workload
    /// constant --chain 2`): any busy spin before yielding delays the member sharing the core
    /// (5 us of spin: overhead p50 72 us instead of 50); parking at once pays a wake-up per hop
    /// (p50 above 300 us); a short scheduler slice keeps yielding pollers from being starved for
    /// milliseconds (p99 halved).
    pub const SHARED: IdlePolicy = IdlePolicy {
        spin_us: 0,
        yield_us: 2000,
        park_max_us: 1000,
        slice_us: 300,
    };
    /// A core of its own: never park.
    pub const DEDICATED: IdlePolicy = IdlePolicy {
        spin_us: u64::MAX / 4,
        yield_us: 0,
        park_max_us: 1000,
        slice_us: 0,
    };
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy::SHARED
    }
}

/// The host's monotonic clock (CLOCK_MONOTONIC), shared by the engine and the application
/// threads, and comparable between the processes of one host (used for per-hop breakdowns).
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock;

impl Clock {
    pub fn new() -> Clock {
        Clock
    }
    pub fn now_us(&self) -> u64 {
        crate::sys::monotonic_us()
    }
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.now_us())
    }
}
