//! The polling engine: one thread per member that owns the protocol core, the queue replica and
//! the transport, pinned to a core when configured, exchanging work with application threads
//! through lock-free rings (crossbeam's bounded `ArrayQueue`, Vyukov's MPMC array queue).
//!
//! Idle policy (configuration): after the last piece of work, spin for `spin_us`, then yield
//! the core for `yield_us` (lets other runnable threads of a shared machine run while staying
//! responsive), then park in `ppoll` on the transport's descriptor and an eventfd until the next
//! protocol timer, at most `park_max_us`. Application threads wake a parked engine through the
//! eventfd only when it is parked, so a busy engine costs them no system call. The same policy
//! governs an application thread waiting for events.

use crate::membership::Status;
use crate::proto::{Admission, Delivered, Dest, Member, ProtoConfig, Stats, SubmitError};
use crate::queue::{Effect, Op, QueueSpec, QueueState};
use crate::sys::{poll_readable, EventFd};
use crate::transport::{RecvBatch, Transport, TransportStats};
use crate::types::{GroupId, Instant, MemberId, View};
use crate::wire::Key;
use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

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
}

#[derive(Debug, Default)]
struct Shared {
    ready: AtomicBool,
    stop: AtomicBool,
    finished: AtomicBool,
    engine_parked: AtomicBool,
    app_parked: AtomicBool,
    app_thread: Mutex<Option<Thread>>,
    status: Mutex<String>,
    delivered: AtomicU64,
    view: AtomicU64,
    live: Mutex<Live>,
    /// The engine stopped because this member left the group at its request.
    left: AtomicBool,
    /// Requests from other threads (the control plane's agent), taken a few times a second.
    directives: Mutex<Vec<Directive>>,
}

/// What another thread (the member's control-plane agent) may ask of a running engine. Taken
/// by the polling loop a few times a second, off the message path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Submit an operation to the group (for example [`Op::Pipelines`]), once serving.
    Submit(Op),
    /// Who may join from now on (the control plane's allowlist).
    Admit(Admission),
    /// Leave the group gracefully.
    Leave,
}

/// Observes a running engine from another thread.
#[derive(Clone, Debug)]
pub struct Probe {
    shared: Arc<Shared>,
}

impl Probe {
    pub fn live(&self) -> Live {
        self.shared
            .live
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }
    /// Whether the engine stopped because this member left the group (a graceful leave).
    pub fn has_left(&self) -> bool {
        self.shared.left.load(Ordering::Acquire)
    }
    /// Hands a directive to the engine (taken within about 200 ms).
    pub fn direct(&self, d: Directive) {
        if let Ok(mut v) = self.shared.directives.lock() {
            v.push(d);
        }
    }
}

/// What a running engine looks like, refreshed a few times a second (for the control plane).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// `serving`, `changing`, `joining`, `minority`, `excluded`, `left`.
    pub status: &'static str,
    pub view: u32,
    pub members: Vec<MemberId>,
    pub proto: Stats,
    pub queues: Vec<(String, usize)>,
    /// The queues' settings, in the order of `queues`.
    pub specs: Vec<QueueSpec>,
    /// Requests put back in their queue after their invoker was removed (seen here).
    pub requeued: u64,
    pub rejoins: u64,
    /// Version of the pipelines set through the group (0: the group file's).
    pub pipelines_version: u64,
    /// The transport's counters (and its XDP program's, if any).
    pub transport: TransportStats,
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

/// The application side of a running engine.
#[derive(Debug)]
pub struct EngineHandle {
    /// The command ring, the wake-up and the size limit, as other threads get them.
    sub: Submitter,
    events: Arc<ArrayQueue<Event>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<EngineReport>>,
    clock: Clock,
    idle: IdlePolicy,
    me: MemberId,
}

const CMD_RING: usize = 4096;
/// A yield that gave the core away this long means a CPU-bound thread shares it.
const CONTENDED_YIELD: Duration = Duration::from_millis(1);
/// How long to park instead of yielding after seeing such a yield.
const CONTENDED_FOR: Duration = Duration::from_millis(20);
const EVENT_RING: usize = 1 << 16;
const RECV_BATCH: usize = 64;

impl EngineHandle {
    /// Starts the engine thread over `transport` (peer index = member id).
    pub fn start(
        cfg: EngineConfig,
        transport: Box<dyn Transport>,
        clock: Clock,
    ) -> Result<EngineHandle, EngineError> {
        Self::start_with(cfg, transport, clock, None)
    }

    /// Starts the engine with an application running inside the polling thread.
    pub fn start_with(
        cfg: EngineConfig,
        transport: Box<dyn Transport>,
        clock: Clock,
        inline: Option<Box<dyn InlineApp>>,
    ) -> Result<EngineHandle, EngineError> {
        let member = if cfg.join {
            Member::joining(
                cfg.proto.clone(),
                cfg.key.clone(),
                cfg.group,
                cfg.me,
                cfg.view.members.clone(),
                clock.now(),
            )
        } else {
            Member::new(
                cfg.proto.clone(),
                cfg.key.clone(),
                cfg.group,
                cfg.view.clone(),
                cfg.me,
                clock.now(),
            )
        }
        .map_err(|e| EngineError::Startup(e.to_string()))?;
        let wake =
            Arc::new(EventFd::new().map_err(|e| EngineError::Startup(format!("eventfd: {e}")))?);
        let cmds = Arc::new(ArrayQueue::new(CMD_RING));
        let events = Arc::new(ArrayQueue::new(EVENT_RING));
        let shared = Arc::new(Shared::default());
        let max_payload = cfg.proto.max_payload;
        let idle = cfg.idle;
        let me = cfg.me;
        let mut engine = Engine {
            member,
            replica: QueueState::new(),
            transport,
            cmds: cmds.clone(),
            events: events.clone(),
            wake: wake.clone(),
            shared: shared.clone(),
            clock,
            overflow: VecDeque::new(),
            effects: Vec::new(),
            malformed_ops: 0,
            inline,
            inline_started: false,
            contended_spells: 0,
            tx_frames: Vec::new(),
            inline_events: VecDeque::new(),
            local_ops: VecDeque::new(),
            rejoins: 0,
            requeued: 0,
            leaving: false,
            joins_refused_said: 0,
            cfg,
        };
        let thread = thread::Builder::new()
            .name(format!("conveyor-engine-{}", me.0))
            .spawn(move || engine.run())
            .map_err(|e| EngineError::Startup(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            sub: Submitter {
                cmds,
                wake,
                shared: shared.clone(),
                max_payload,
            },
            events,
            shared,
            thread: Some(thread),
            clock,
            idle,
            me,
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// Waits until every peer was heard from; says whom it is waiting for every second.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let start = std::time::Instant::now();
        let mut last_said = std::time::Instant::now();
        loop {
            if self.shared.ready.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.shared.finished.load(Ordering::Acquire) {
                return Err(EngineError::Startup(self.status()));
            }
            if start.elapsed() >= timeout {
                return Err(EngineError::Startup(format!(
                    "start-up timed out after {}s: {}",
                    timeout.as_secs(),
                    self.status()
                )));
            }
            if last_said.elapsed() >= Duration::from_secs(1) {
                last_said = std::time::Instant::now();
                tracing::info!(
                    "{} ({}s of {}s)",
                    self.status(),
                    start.elapsed().as_secs(),
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A handle other threads can submit through (executors' workers), also in inline mode.
    pub fn submitter(&self) -> Submitter {
        self.sub.clone()
    }

    /// The handle's own errors name the engine's status.
    fn with_status(&self, e: EngineError) -> EngineError {
        match e {
            EngineError::Stopped(_) => EngineError::Stopped(self.status()),
            e => e,
        }
    }

    /// Offers an operation for ordering. A full ring is backpressure: the operation comes back.
    pub fn try_submit(&self, op: &Op) -> Result<bool, EngineError> {
        let bytes = self.sub.encode(op)?;
        self.sub
            .offer(bytes)
            .map(|back| back.is_none())
            .map_err(|e| self.with_status(e))
    }

    /// Offers an operation, waiting while the ring is full.
    pub fn submit(&self, op: &Op) -> Result<(), EngineError> {
        self.sub.submit(op).map_err(|e| self.with_status(e))
    }

    pub fn try_event(&self) -> Option<Event> {
        self.events.pop()
    }

    /// The next event, waiting at most `timeout` by the idle policy.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let start = std::time::Instant::now();
        loop {
            if let Some(e) = self.events.pop() {
                return Some(e);
            }
            let waited = start.elapsed();
            if waited >= timeout || self.shared.finished.load(Ordering::Acquire) {
                return self.events.pop();
            }
            let us = waited.as_micros() as u64;
            if us < self.idle.spin_us {
                std::hint::spin_loop();
            } else if us < self.idle.spin_us.saturating_add(self.idle.yield_us) {
                thread::yield_now();
            } else {
                if let Ok(mut t) = self.shared.app_thread.lock() {
                    *t = Some(thread::current());
                }
                self.shared.app_parked.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if self.events.is_empty() {
                    let left = timeout.saturating_sub(waited);
                    thread::park_timeout(left.min(Duration::from_micros(self.idle.park_max_us)));
                }
                self.shared.app_parked.store(false, Ordering::SeqCst);
            }
        }
    }

    /// A handle that only observes the engine, for other threads (reporting).
    pub fn probe(&self) -> Probe {
        Probe {
            shared: self.shared.clone(),
        }
    }

    /// Counters and state of the running engine (refreshed every 200 ms).
    pub fn live(&self) -> Live {
        self.shared
            .live
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The id of the view installed at this member.
    pub fn view_id(&self) -> u64 {
        self.shared.view.load(Ordering::Relaxed)
    }

    /// Global slots delivered so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// Whether the engine stopped because this member left the group (a graceful leave).
    pub fn has_left(&self) -> bool {
        self.shared.left.load(Ordering::Acquire)
    }

    pub fn status(&self) -> String {
        self.shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Stops the engine and returns its report.
    pub fn stop(mut self) -> EngineReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.sub.wake.wake();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    /// Waits for the engine to finish by itself (after a delivered shutdown) and returns its
    /// report.
    pub fn join(mut self) -> EngineReport {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Submits operations to a running engine from any thread; see [`EngineHandle::submitter`].
#[derive(Clone, Debug)]
pub struct Submitter {
    cmds: Arc<ArrayQueue<Vec<u8>>>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
    max_payload: usize,
}

impl Submitter {
    /// The encoded operation, if one message can carry it.
    fn encode(&self, op: &Op) -> Result<Vec<u8>, EngineError> {
        let bytes = op.encode();
        if bytes.len() > self.max_payload {
            return Err(SubmitError::TooLarge {
                size: bytes.len(),
                max: self.max_payload,
            }
            .into());
        }
        Ok(bytes)
    }

    /// Puts `bytes` in the ring and wakes a parked engine; a full ring gives them back.
    fn offer(&self, bytes: Vec<u8>) -> Result<Option<Vec<u8>>, EngineError> {
        if self.shared.finished.load(Ordering::Acquire) {
            return Err(EngineError::Stopped("the engine stopped".into()));
        }
        if let Err(back) = self.cmds.push(bytes) {
            return Ok(Some(back));
        }
        fence(Ordering::SeqCst);
        if self.shared.engine_parked.load(Ordering::SeqCst) {
            self.wake.wake();
        }
        Ok(None)
    }

    /// Offers an operation, waiting while the ring is full (backpressure). Encoded once.
    pub fn submit(&self, op: &Op) -> Result<(), EngineError> {
        let mut bytes = self.encode(op)?;
        let mut spins = 0u32;
        while let Some(back) = self.offer(bytes)? {
            bytes = back;
            spins += 1;
            if spins < 64 {
                thread::yield_now();
            } else {
                thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.shared.stop.store(true, Ordering::SeqCst);
            self.sub.wake.wake();
            let _ = t.join();
        }
    }
}

struct Engine {
    cfg: EngineConfig,
    member: Member,
    replica: QueueState,
    transport: Box<dyn Transport>,
    cmds: Arc<ArrayQueue<Vec<u8>>>,
    events: Arc<ArrayQueue<Event>>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
    clock: Clock,
    /// Events that did not fit the event ring.
    overflow: VecDeque<Event>,
    effects: Vec<Effect>,
    malformed_ops: u64,
    inline: Option<Box<dyn InlineApp>>,
    inline_started: bool,
    /// Times a long yield switched the idle policy to parking (see `CONTENDED_YIELD`).
    contended_spells: u64,
    /// Events for the inline application, run one per loop iteration so that frames are
    /// received, acknowledged and sent between two functions.
    inline_events: VecDeque<Event>,
    /// Frames taken from the protocol for one send, reused between iterations.
    tx_frames: Vec<crate::proto::Transmit>,
    /// Encoded operations of the inline application waiting for window room.
    local_ops: VecDeque<Vec<u8>>,
    rejoins: u64,
    requeued: u64,
    /// A graceful leave was asked for: it starts once what this member submitted is delivered.
    leaving: bool,
    joins_refused_said: u64,
}

impl Engine {
    fn queue_local(&mut self, ops: Vec<Op>) {
        for op in ops {
            let bytes = op.encode();
            if bytes.len() > self.cfg.proto.max_payload {
                tracing::warn!(
                    "an operation of {} bytes exceeds max_payload; dropped",
                    bytes.len()
                );
                self.malformed_ops += 1;
            } else {
                self.local_ops.push_back(bytes);
            }
        }
    }

    fn set_status(&self, s: String) {
        if let Ok(mut st) = self.shared.status.lock() {
            *st = s;
        }
    }

    fn name(&self, m: MemberId) -> String {
        self.cfg
            .names
            .get(m.0 as usize)
            .cloned()
            .unwrap_or_else(|| m.to_string())
    }

    fn run(&mut self) -> EngineReport {
        if let Some(core) = self.cfg.core {
            let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
            tracing::info!(core, pinned = ok, "polling thread pinned");
        }
        crate::sys::set_timer_slack_ns(1000);
        if self.cfg.idle.slice_us > 0 {
            let us = self.cfg.idle.slice_us;
            if !crate::sys::set_sched_slice(Duration::from_micros(us)) {
                tracing::info!(us, "the kernel refused a custom scheduler slice (needs Linux 6.12+); using its default");
            }
        }
        let mut rb = RecvBatch::new(RECV_BATCH, self.cfg.proto.max_frame + 64);
        let first: Vec<usize> = self
            .member
            .view()
            .members
            .iter()
            .map(|m| usize::from(m.0))
            .collect();
        self.transport.view_installed(&first);
        let mut idle_since: Option<std::time::Instant> = None;
        let mut shutdown_at: Option<std::time::Instant> = None;
        let started = std::time::Instant::now();
        let mut error = None;
        let mut last_iter = std::time::Instant::now();
        let (mut stalls, mut longest) = (0u64, 0u64);
        let mut contended_until: Option<std::time::Instant> = None;
        let mut minority_said = false;
        let mut live_at = std::time::Instant::now();
        self.publish_live();
        self.shared
            .view
            .store(u64::from(self.member.view().id.0), Ordering::Relaxed);
        self.set_status(format!(
            "waiting for {}",
            self.member
                .not_heard_from()
                .iter()
                .map(|m| self.name(*m))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        loop {
            let gap = last_iter.elapsed().as_micros() as u64;
            last_iter = std::time::Instant::now();
            if gap > 1000 {
                stalls += 1;
            }
            longest = longest.max(gap);
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            if let Some(t) = shutdown_at {
                if t.elapsed() >= self.cfg.linger {
                    break;
                }
            }
            if live_at.elapsed() >= Duration::from_millis(200) {
                live_at = std::time::Instant::now();
                self.take_directives();
                self.publish_live();
            }
            let mut work = self.take_commands();
            match self.receive(&mut rb) {
                Ok(w) => work |= w,
                Err(e) => {
                    error = Some(format!("receive failed: {e}"));
                    break;
                }
            }
            let now = self.clock.now();
            if now >= self.member.poll_timeout() {
                self.member.handle_timeout(now);
            }
            let removed = self.member.status() == Status::Excluded
                || self.member.restarted_in_view().is_some();
            if removed {
                // What the removed incarnation still has to say goes out first (a leader that
                // commits a view without itself queued the commit for the others).
                self.transmit();
            }
            if removed && self.cfg.rejoin {
                self.rejoin();
                continue;
            }
            if let Some(peer) = self.member.restarted_in_view() {
                error = Some(format!(
                    "{} holds messages this member sent before it restarted: this process is a new incarnation of a member of a view that outlived it; it cannot take its old place (it would have to rejoin as a new member)",
                    self.name(peer)
                ));
                break;
            }
            match self.member.status() {
                Status::Left => {
                    self.transmit();
                    let msg = format!(
                        "left the group at its request (view {} no longer includes it)",
                        self.member.view().id.0
                    );
                    tracing::info!("{msg}");
                    self.set_status(msg);
                    self.shared.left.store(true, Ordering::Release);
                    break;
                }
                Status::Excluded => {
                    self.transmit();
                    error = Some(format!(
                        "this member is excluded from the group (view {}): a view change removed it (it was suspected, partitioned or too slow); it may come back only as a new member",
                        self.member.view().id.0,
                    ));
                    break;
                }
                Status::Minority if !minority_said => {
                    minority_said = true;
                    let msg = format!(
                        "minority: only {} of the {} members of view {} are reachable (suspected: {}); this member stopped serving and waits for the majority's decision",
                        self.member.view().len() - self.member.suspects().len(),
                        self.member.view().len(),
                        self.member.view().id.0,
                        self.member.suspects().iter().map(|m| self.name(*m)).collect::<Vec<_>>().join(", ")
                    );
                    tracing::warn!("{msg}");
                    self.set_status(msg);
                }
                _ => {}
            }
            if self.apply_deliveries() {
                work = true;
                if self.replica.is_shut_down() && shutdown_at.is_none() {
                    shutdown_at = Some(std::time::Instant::now());
                }
            }
            work |= self.take_commands();
            // Acknowledgements leave before a function runs, so that peers are not held up.
            work |= self.transmit();
            if self.run_inline() {
                work = true;
                self.take_commands();
                self.transmit();
                if self.cfg.idle.yield_us > 0 {
                    // A function held this core for a while: let other members sharing it poll
                    // (their acknowledgements are what our next delivery waits for).
                    thread::yield_now();
                }
            }
            if !self.shared.ready.load(Ordering::Relaxed) {
                let missing = self.member.not_heard_from();
                if missing.is_empty() {
                    self.set_status("all members heard from".into());
                    self.shared.ready.store(true, Ordering::Release);
                    if let Some(app) = self.inline.as_mut() {
                        let mut out = Vec::new();
                        app.start(&mut out);
                        self.inline_started = true;
                        self.queue_local(out);
                    }
                } else {
                    let names: Vec<String> = missing
                        .iter()
                        .map(|m| format!("{} ({m})", self.name(*m)))
                        .collect();
                    self.set_status(format!("waiting for {}", names.join(", ")));
                    if started.elapsed() >= self.cfg.startup_timeout {
                        error = Some(format!(
                            "no frame from {} after {}s: is it running, with the same key and addresses?",
                            names.join(", "),
                            self.cfg.startup_timeout.as_secs()
                        ));
                        break;
                    }
                }
            }
            self.flush_overflow();
            if work {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            let idle_us = since.elapsed().as_micros() as u64;
            let p = self.cfg.idle;
            let contended = contended_until.is_some_and(|t| std::time::Instant::now() < t);
            if idle_us < p.spin_us {
                std::hint::spin_loop();
            } else if idle_us < p.spin_us.saturating_add(p.yield_us) && !contended {
                let t = std::time::Instant::now();
                thread::yield_now();
                if t.elapsed() >= CONTENDED_YIELD {
                    // Another thread held this core for a long while (a CPU-bound process):
                    // a yielding poller waits behind its whole slice at every hop, while a
                    // parked one is woken by the frame and preempts it. Park for a while.
                    contended_until = Some(std::time::Instant::now() + CONTENDED_FOR);
                    self.contended_spells += 1;
                }
            } else {
                self.park();
                last_iter = std::time::Instant::now();
            }
        }
        if let Some(e) = &error {
            self.set_status(e.clone());
            tracing::error!("{e}");
        }
        self.shared.finished.store(true, Ordering::Release);
        self.wake_app();
        EngineReport {
            proto: self.member.stats().clone(),
            transport: self.transport.stats(),
            malformed_ops: self.malformed_ops,
            delivered_slots: self.member.delivered_slots(),
            digest: self.replica.digest(),
            queues: self
                .replica
                .queues()
                .map(|(n, d)| (n.to_string(), d))
                .collect(),
            error,
            stalls_over_1ms: stalls,
            longest_stall_us: longest,
            contended_spells: self.contended_spells,
            rejoins: self.rejoins,
        }
    }

    fn publish_live(&self) {
        if let Ok(mut l) = self.shared.live.lock() {
            l.status = self.member.status().label();
            l.view = self.member.view().id.0;
            l.members.clone_from(&self.member.view().members);
            l.proto = self.member.stats().clone();
            l.queues = self
                .replica
                .queues()
                .map(|(n, d)| (n.to_string(), d))
                .collect();
            l.specs = self.replica.specs().cloned().collect();
            l.requeued = self.requeued;
            l.rejoins = self.rejoins;
            l.pipelines_version = self.replica.pipelines_version();
            l.transport = self.transport.stats();
        }
    }

    /// Carries out what other threads asked for, and logs refused joins.
    fn take_directives(&mut self) {
        let ds = match self.shared.directives.lock() {
            Ok(mut v) => std::mem::take(&mut *v),
            Err(_) => Vec::new(),
        };
        for d in ds {
            match d {
                Directive::Submit(op) => self.queue_local(vec![op]),
                Directive::Admit(a) => {
                    if a != self.cfg.proto.admission {
                        tracing::info!(admission = ?a, "admission changed by the control plane");
                        self.cfg.proto.admission = a.clone();
                        self.member.set_admission(a);
                    }
                }
                Directive::Leave => {
                    tracing::warn!("leaving the group (asked by the control plane)");
                    self.leaving = true;
                }
            }
        }
        if self.leaving
            && self.local_ops.is_empty()
            && self.cmds.is_empty()
            && self.member.window_room() == self.cfg.proto.window
        {
            self.leaving = false;
            self.member.leave();
        }
        let refused = self.member.stats().joins_refused;
        if refused > self.joins_refused_said {
            let who = self
                .member
                .stats()
                .last_join_refused
                .map(|m| self.name(m))
                .unwrap_or_default();
            tracing::warn!(
                "refused {} join request(s), the last from {who}: not admitted; the group is unchanged",
                refused - self.joins_refused_said,
            );
            self.joins_refused_said = refused;
        }
    }

    /// Starts over as a joiner: a new member process as far as the group is concerned.
    fn rejoin(&mut self) {
        let msg = format!(
            "removed from the group (view {}); rejoining as a new member",
            self.member.view().id.0
        );
        tracing::warn!("{msg}");
        self.set_status(msg);
        let contacts: Vec<MemberId> = (0..self.cfg.names.len() as u16)
            .map(MemberId)
            .filter(|m| *m != self.cfg.me)
            .collect();
        let s = self.member.stats();
        tracing::info!(
            delivered = s.delivered,
            retransmitted_slots = s.retransmitted_slots,
            view_changes = s.view_changes,
            "counters of the removed incarnation"
        );
        match Member::joining(
            self.cfg.proto.clone(),
            self.cfg.key.clone(),
            self.cfg.group,
            self.cfg.me,
            contacts,
            self.clock.now(),
        ) {
            Ok(m) => {
                self.member = m;
                self.replica = QueueState::new();
                self.inline_events.clear();
                self.local_ops.clear();
                self.rejoins += 1;
            }
            Err(e) => tracing::error!("cannot rejoin: {e}"),
        }
    }

    fn park(&mut self) {
        let now = self.clock.now();
        let mut until = self.member.poll_timeout();
        if let Some(t) = self.transport.next_deadline_us() {
            until = until.min(Instant::from_micros(t));
        }
        let wait = until
            .saturating_since(now)
            .min(Duration::from_micros(self.cfg.idle.park_max_us));
        if wait.is_zero() {
            return;
        }
        if !self.transport.prepare_park() {
            return;
        }
        self.shared.engine_parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.cmds.is_empty() && !self.shared.stop.load(Ordering::SeqCst) {
            let mut fds = vec![self.wake.raw()];
            if let Some(fd) = self.transport.poll_fd() {
                fds.push(fd);
            }
            let _ = poll_readable(&fds, wait);
        }
        self.shared.engine_parked.store(false, Ordering::SeqCst);
        self.wake.drain();
    }

    /// Moves operations from the ring into the protocol, as far as the window allows. While
    /// the window is full, operations stay in the ring: the application sees backpressure.
    fn take_commands(&mut self) -> bool {
        let mut work = false;
        if !matches!(self.member.status(), Status::Serving | Status::Changing) {
            // Joining, or in a minority: operations wait (the ring fills: backpressure).
            return false;
        }
        while self.member.window_room() > 0 {
            let Some(op) = self.local_ops.pop_front().or_else(|| self.cmds.pop()) else {
                break;
            };
            match self.member.submit(op) {
                Ok(_) => work = true,
                // The handle checks sizes before the ring; count anything that slips through.
                Err(_) => self.malformed_ops += 1,
            }
        }
        work
    }

    fn receive(&mut self, rb: &mut RecvBatch) -> std::io::Result<bool> {
        let mut work = false;
        for _ in 0..4 {
            let n = self.transport.recv(rb)?;
            if n == 0 {
                break;
            }
            work = true;
            let now = self.clock.now();
            for (peer, bytes) in rb.iter() {
                if peer.is_some() {
                    self.member.handle_frame(now, bytes);
                }
            }
            if n < RECV_BATCH {
                break;
            }
        }
        Ok(work)
    }

    fn apply_deliveries(&mut self) -> bool {
        let mut any = false;
        while let Some(d) = self.member.poll_delivery() {
            any = true;
            let d = match d {
                Delivered::Message(d) => d,
                Delivered::View(vc) => {
                    self.on_view_change(vc);
                    continue;
                }
                Delivered::State(bytes) => {
                    match QueueState::from_snapshot(&bytes) {
                        Ok(q) => {
                            self.replica = q;
                            if let Some((version, docs)) = self.replica.pipeline_docs() {
                                let mut fx = vec![Effect::Pipelines {
                                    version,
                                    docs: docs.to_vec(),
                                }];
                                self.route_effects(&mut fx);
                            }
                        }
                        Err(e) => {
                            tracing::error!("the state received on joining does not decode: {e}")
                        }
                    }
                    continue;
                }
            };
            let op = match Op::decode(&d.payload) {
                Ok(op) => op,
                Err(_) => {
                    self.malformed_ops += 1;
                    continue;
                }
            };
            let mut effects = std::mem::take(&mut self.effects);
            effects.clear();
            self.replica.apply(op, &mut effects);
            self.route_effects(&mut effects);
            self.effects = effects;
        }
        if any {
            self.shared
                .delivered
                .store(self.member.delivered_slots(), Ordering::Relaxed);
            self.wake_app();
        }
        any
    }

    /// A view installed: the queue puts back what removed members held, joiners get the
    /// state, and the application hears of it.
    fn on_view_change(&mut self, vc: crate::membership::ViewChange) {
        let ids: Vec<usize> = vc.view.members.iter().map(|m| usize::from(m.0)).collect();
        self.transport.view_installed(&ids);
        let names = |ms: &[MemberId]| {
            ms.iter()
                .map(|m| self.name(*m))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(
            view = vc.view.id.0,
            removed = %names(&vc.removed),
            joined = %names(&vc.joined),
            cut = vc.cut,
            resubmitted = vc.resubmitted,
            wedged_us = vc.wedged_for.as_micros() as u64,
            "view installed"
        );
        self.shared
            .view
            .store(u64::from(vc.view.id.0), Ordering::Relaxed);
        let mut effects = std::mem::take(&mut self.effects);
        effects.clear();
        effects.push(Effect::ViewInstalled {
            view: vc.view.id.0,
            members: vc.view.members.clone(),
            removed: vc.removed.clone(),
            joined: vc.joined.clone(),
            wedged_us: vc.wedged_for.as_micros() as u64,
            suspected_at_us: vc.suspected_at.map(|t| t.as_micros()),
        });
        self.replica.remove_members(&vc.removed, &mut effects);
        self.requeued += effects
            .iter()
            .filter(|e| matches!(e, Effect::Requeued { .. }))
            .count() as u64;
        if vc.state_from == Some(self.cfg.me) {
            let snap = self.replica.snapshot();
            for j in &vc.joined {
                self.member.send_state(*j, snap.clone());
            }
        }
        self.route_effects(&mut effects);
        self.effects = effects;
    }

    /// Hands this member's effects to the application.
    fn route_effects(&mut self, effects: &mut Vec<Effect>) {
        let me = self.cfg.me;
        {
            let at_us = self.clock.now_us();
            for e in effects.drain(..) {
                let mine = match &e {
                    Effect::Assigned { consumer, .. } => *consumer == me,
                    Effect::Blocked { id, .. }
                    | Effect::Accepted { id, .. }
                    | Effect::Admitted { id, .. }
                    | Effect::Rejected { id, .. }
                    | Effect::Overwritten { id, .. }
                    | Effect::Completed { id, .. }
                    | Effect::Failed { id, .. } => id.origin() == me,
                    Effect::Requeued { id, .. } => id.origin() == me,
                    Effect::Shutdown { .. }
                    | Effect::ViewInstalled { .. }
                    | Effect::Pipelines { .. } => true,
                    Effect::Created { .. }
                    | Effect::Empty { .. }
                    | Effect::DuplicateCompletion { .. } => false,
                };
                if mine {
                    let ev = Event { at_us, effect: e };
                    if self.inline.is_some() && self.inline_started {
                        self.inline_events.push_back(ev);
                    } else if !self.overflow.is_empty() {
                        self.overflow.push_back(ev);
                    } else if let Err(ev) = self.events.push(ev) {
                        self.overflow.push_back(ev);
                    }
                }
            }
        }
    }

    /// Runs the inline application on one pending event.
    fn run_inline(&mut self) -> bool {
        let Some(ev) = self.inline_events.pop_front() else {
            return false;
        };
        let mut out = Vec::new();
        if let Some(app) = self.inline.as_mut() {
            app.on_event(ev, &self.clock, &mut out);
        }
        self.queue_local(out);
        true
    }

    fn flush_overflow(&mut self) {
        while let Some(ev) = self.overflow.pop_front() {
            if let Err(ev) = self.events.push(ev) {
                self.overflow.push_front(ev);
                break;
            }
        }
    }

    fn wake_app(&self) {
        fence(Ordering::SeqCst);
        if self.shared.app_parked.load(Ordering::SeqCst) {
            if let Ok(t) = self.shared.app_thread.lock() {
                if let Some(t) = t.as_ref() {
                    t.unpark();
                }
            }
        }
    }

    fn transmit(&mut self) -> bool {
        let n = self.member.view().len();
        let me = self.cfg.me;
        let mut frames = std::mem::take(&mut self.tx_frames);
        while let Some(t) = self.member.poll_transmit() {
            frames.push(t);
        }
        if frames.is_empty() {
            self.tx_frames = frames;
            return false;
        }
        let mut batch: Vec<(usize, &[u8])> = Vec::with_capacity(frames.len() * n);
        for t in &frames {
            match t.dest {
                Dest::All => {
                    for m in &self.member.view().members {
                        if *m != me {
                            batch.push((m.0 as usize, &t.frame));
                        }
                    }
                }
                Dest::One(m) => batch.push((m.0 as usize, &t.frame)),
            }
        }
        if let Err(e) = self.transport.send(&batch) {
            tracing::warn!("send failed: {e}");
        }
        drop(batch);
        for t in frames.drain(..) {
            self.member.recycle(t.frame);
        }
        self.tx_frames = frames;
        true
    }
}
