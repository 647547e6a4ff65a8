//! The application side of a running engine: [`EngineHandle`] (start, submit, events, stop)
//! and [`Submitter`] (submit from any thread).

use super::poll_loop;
use super::probe::{Live, Probe, Shared};
use super::{
    Clock, EngineConfig, EngineError, EngineReport, Event, IdlePolicy, InlineApp, CMD_RING,
    EVENT_RING,
};
use crate::sys::EventFd;
use crate::transport::Transport;
use conveyor_core::proto::SubmitError;
use conveyor_core::queue::Op;
use conveyor_core::types::MemberId;
use conveyor_core::Replica;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

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
        let (log, recovered) = match &cfg.data_dir {
            Some(path) => {
                let (log, state) =
                    super::log::EngineLog::open(path, cfg.group.0, cfg.log_segment_bytes)
                        .map_err(EngineError::Startup)?;
                (Some(log), Some(state))
            }
            None => (None, None),
        };
        let mut replica = if cfg.join {
            Replica::joining(
                cfg.proto.clone(),
                cfg.key.clone(),
                cfg.group,
                cfg.me,
                cfg.view.members.clone(),
                conveyor_core::proto::draw_incarnation(crate::sys::random_u64()),
                clock.now(),
            )
        } else {
            Replica::new(
                cfg.proto.clone(),
                cfg.key.clone(),
                cfg.group,
                cfg.view.clone(),
                cfg.me,
                // This process, told apart from any earlier one with this id (a restart from
                // the group file into a view its previous self ran in is refused by peers).
                conveyor_core::proto::draw_incarnation(crate::sys::random_u64()),
                clock.now(),
            )
        }
        .map_err(|e| EngineError::Startup(e.to_string()))?;
        replica.set_speculation(cfg.speculate);
        if let Some(state) = recovered {
            if cfg.join {
                replica.set_log_state(state);
            } else {
                // From the data directory: the group decides which log it goes on from.
                replica.recover_from(state);
            }
            replica.set_durable(true, &cfg.view.members);
            if let Some(claim) = replica.claim() {
                replica
                    .submit(&claim)
                    .map_err(|e| EngineError::Startup(format!("the recovery claim: {e}")))?;
            }
        }
        let wake =
            Arc::new(EventFd::new().map_err(|e| EngineError::Startup(format!("eventfd: {e}")))?);
        let cmds = Arc::new(ArrayQueue::new(CMD_RING));
        let events = Arc::new(ArrayQueue::new(EVENT_RING));
        let shared = Arc::new(Shared::default());
        let mut log = log;
        if let Some(l) = log.as_mut() {
            let (wake, shared) = (wake.clone(), shared.clone());
            l.wake_with(crate::durable::Waker(Arc::new(move || {
                if shared.engine_parked.load(Ordering::SeqCst) {
                    wake.wake();
                }
            })));
        }
        let max_payload = cfg.proto.max_payload;
        let idle = cfg.idle;
        let me = cfg.me;
        let thread = poll_loop::spawn(
            cfg,
            replica,
            transport,
            poll_loop::Rings {
                cmds: cmds.clone(),
                events: events.clone(),
                wake: wake.clone(),
                shared: shared.clone(),
            },
            clock,
            inline,
            log,
        )?;
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

    /// How far this member's application has been handed the ends of its runs: read this,
    /// then drain the events; once drained, every end applied at a position up to the value
    /// read has been seen (see [`conveyor_core::replica::Replica::told_through`]). An
    /// application that records it, restarted, gets the rest with [`EngineHandle::resume`].
    /// `None` until the member holds the group's state.
    pub fn told_through(&self) -> Option<u64> {
        self.shared
            .told_through
            .load(Ordering::Acquire)
            .checked_sub(1)
    }

    /// A restarted application resumes: see [`Directive::Resume`] (taken within about
    /// 200 ms).
    pub fn resume(
        &self,
        since: u64,
        unanswered: std::collections::BTreeMap<conveyor_core::types::RequestId, Vec<u8>>,
    ) {
        if let Ok(mut v) = self.shared.directives.lock() {
            v.push(super::Directive::Resume { since, unanswered });
        }
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

    /// Asks the engine to stop (as [`EngineHandle::stop`] does) from any thread, without
    /// waiting: whoever holds the handle then sees it finished and joins it.
    pub fn stop_engine(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// Offers an operation for ordering. A full ring is backpressure: the operation comes back
    /// (`false`).
    pub fn try_submit(&self, op: &Op) -> Result<bool, EngineError> {
        let bytes = self.encode(op)?;
        self.offer(bytes).map(|back| back.is_none())
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
