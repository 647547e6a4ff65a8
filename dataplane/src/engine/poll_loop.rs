//! The polling thread: [`Engine`] drives a [`Replica`] over a transport, applies the idle
//! policy, and hands effects to the application.

use super::probe::Shared;
use super::{
    Clock, EngineConfig, EngineError, EngineReport, Event, InlineApp, Speculation, CONTENDED_FOR,
    CONTENDED_YIELD, INLINE_BATCH, INLINE_YIELD_AFTER, RECV_BATCH,
};
use crate::engine::probe::Directive;
use crate::sys::{poll_readable, EventFd};
use crate::transport::{RecvBatch, Transport};
use conveyor_core::proto::membership::{Status, StopReason};
use conveyor_core::proto::{Dest, SubmitError, Transmit};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::types::{Instant, MemberId, RequestId};
use conveyor_core::{RecoveryStage, Replica};
use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The rings and flags the polling thread shares with the application's side.
pub(super) struct Rings {
    pub(super) cmds: Arc<ArrayQueue<Vec<u8>>>,
    pub(super) events: Arc<ArrayQueue<Event>>,
    pub(super) wake: Arc<EventFd>,
    pub(super) shared: Arc<Shared>,
}

/// Starts the polling thread.
pub(super) fn spawn(
    cfg: EngineConfig,
    replica: Replica,
    transport: Box<dyn Transport>,
    rings: Rings,
    clock: Clock,
    inline: Option<Box<dyn InlineApp>>,
    log: Option<super::log::EngineLog>,
) -> Result<JoinHandle<EngineReport>, EngineError> {
    let me = cfg.me;
    let mut engine = Engine {
        replica,
        log,
        transport,
        cmds: rings.cmds,
        events: rings.events,
        wake: rings.wake,
        shared: rings.shared,
        clock,
        overflow: VecDeque::new(),
        malformed_ops: 0,
        applied: 0,
        bad_states_said: 0,
        inline,
        inline_started: false,
        contended_spells: 0,
        tx_frames: Vec::new(),
        inline_events: VecDeque::new(),
        local_ops: VecDeque::new(),
        set_aside: VecDeque::new(),
        rejoins: 0,
        resuming: false,
        requeued: 0,
        refused_for_disks: 0,
        speculation: Speculation::default(),
        speculated_at: std::collections::HashMap::new(),
        leaving: false,
        joins_refused_said: 0,
        shards_published: 0,
        cfg,
    };
    thread::Builder::new()
        .name(format!("conveyor-engine-{}", me.0))
        .spawn(move || engine.run())
        .map_err(|e| EngineError::Startup(format!("cannot start the engine thread: {e}")))
}

struct Engine {
    cfg: EngineConfig,
    /// The protocol member and the queue replica (see `conveyor_core::replica`).
    replica: Replica,
    /// The data directory's log, when configured (see `engine/log.rs`).
    log: Option<super::log::EngineLog>,
    transport: Box<dyn Transport>,
    cmds: Arc<ArrayQueue<Vec<u8>>>,
    events: Arc<ArrayQueue<Event>>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
    /// The fingerprint of the cross-shard state last published (0: none).
    shards_published: u64,
    clock: Clock,
    /// Events that did not fit the event ring.
    overflow: VecDeque<Event>,
    /// Operations refused by the protocol (oversized), and malformed operations delivered by
    /// earlier incarnations' replicas (the current one counts its own).
    malformed_ops: u64,
    /// Deliveries the replica had applied when last looked at.
    applied: u64,
    bad_states_said: u64,
    inline: Option<Box<dyn InlineApp>>,
    inline_started: bool,
    /// Times a long yield switched the idle policy to parking (see `CONTENDED_YIELD`).
    contended_spells: u64,
    /// Events for the inline application, run one per loop iteration so that frames are
    /// received, acknowledged and sent between two functions.
    inline_events: VecDeque<Event>,
    /// Frames taken from the protocol for one send, reused between iterations.
    tx_frames: Vec<Transmit>,
    /// Encoded operations of the inline application waiting for window room.
    local_ops: VecDeque<Vec<u8>>,
    /// Operations of the application taken from the command ring on a return after a removal
    /// (see `on_rejoined`), submitted before the ring's; kept across further removals.
    set_aside: VecDeque<Vec<u8>>,
    rejoins: u64,
    /// The application resumed after a restart ([`Directive::Resume`]): the next
    /// `Effect::Rejoined` answers it.
    resuming: bool,
    requeued: u64,
    /// Pushes refused while the disks did not take the log (see `Replica::submit_encoded`).
    refused_for_disks: u64,
    speculation: Speculation,
    /// When each pending speculation was made (engine clock), for its lead.
    speculated_at: std::collections::HashMap<u64, u64>,
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
            .replica
            .member()
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
        self.shared.view.store(
            u64::from(self.replica.member().view().id.0),
            Ordering::Relaxed,
        );
        self.set_status(format!(
            "waiting for {}",
            self.replica
                .member()
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
            if now >= self.replica.poll_timeout() {
                self.replica.handle_timeout(now);
            }
            let removed = self.replica.member().status() == Status::Excluded
                || self.replica.member().restarted_in_view().is_some();
            if removed {
                // What the removed incarnation still has to say goes out first (a leader that
                // commits a view without itself queued the commit for the others).
                self.transmit();
            }
            // A recovery given up starts again from the data directory whatever `rejoin` says:
            // it is how a restarted group gets past a sender that failed.
            let abandoned = matches!(self.replica.recovery(), Some((RecoveryStage::Abandoned, _)));
            if removed && (self.cfg.rejoin || abandoned) {
                self.rejoin();
                continue;
            }
            if let Some(peer) = self.replica.member().restarted_in_view() {
                error = Some(format!(
                    "{} holds messages this member sent before it restarted: this process is a new incarnation of a member of a view that outlived it; it cannot take its old place (it would have to rejoin as a new member)",
                    self.name(peer)
                ));
                break;
            }
            match self.replica.member().status() {
                Status::Left => {
                    self.transmit();
                    let msg = format!(
                        "left the group at its request (view {} no longer includes it)",
                        self.replica.member().view().id.0
                    );
                    tracing::info!("{msg}");
                    self.set_status(msg);
                    self.shared.left.store(true, Ordering::Release);
                    break;
                }
                Status::Excluded => {
                    self.transmit();
                    error = Some(format!(
                        "this member is excluded from the group (view {}): {}; it may come back only as a new member",
                        self.replica.member().view().id.0,
                        match self.replica.member().stop_reason() {
                            Some(StopReason::Removed) | None => "a view change removed it (it was suspected, partitioned or too slow)",
                            Some(r) => r.label(),
                        }
                    ));
                    break;
                }
                Status::Minority if !minority_said => {
                    minority_said = true;
                    let msg = format!(
                        "minority: only {} of the {} members of view {} are reachable (suspected: {}); this member stopped serving and waits for the majority's decision",
                        self.replica.member().view().len() - self.replica.member().suspects().len(),
                        self.replica.member().view().len(),
                        self.replica.member().view().id.0,
                        self.replica.member().suspects().iter().map(|m| self.name(*m)).collect::<Vec<_>>().join(", ")
                    );
                    tracing::warn!("{msg}");
                    self.set_status(msg);
                }
                _ => {}
            }
            if self.apply_deliveries() {
                work = true;
                if self.replica.queue().is_shut_down() && shutdown_at.is_none() {
                    shutdown_at = Some(std::time::Instant::now());
                }
            }
            match self.persist() {
                Ok(w) => work |= w,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            work |= self.take_commands();
            // Acknowledgements leave before a function runs, so that peers are not held up.
            work |= self.transmit();
            if let Some(mut took) = self.run_inline() {
                // A backlog: what is ready runs back to back (up to INLINE_BATCH of it), and
                // the completions leave together.
                while took < INLINE_BATCH && !self.inline_events.is_empty() {
                    took += self.run_inline().unwrap_or_default();
                }
                work = true;
                self.take_commands();
                self.transmit();
                if self.cfg.idle.yield_us > 0 && took >= INLINE_YIELD_AFTER {
                    // A function held this core for a while: let other members sharing it poll
                    // (their acknowledgements are what our next delivery waits for).
                    thread::yield_now();
                }
            }
            if !self.shared.ready.load(Ordering::Relaxed) {
                let missing = self.replica.member().not_heard_from();
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
        if let Some(log) = self.log.as_mut() {
            log.stop();
        }
        self.shared.finished.store(true, Ordering::Release);
        self.wake_app();
        EngineReport {
            proto: self.replica.member().stats().clone(),
            transport: self.transport.stats(),
            malformed_ops: self.malformed_ops + self.replica.stats().malformed_ops,
            delivered_slots: self.replica.member().delivered_slots(),
            digest: self.replica.queue().digest(),
            queues: self
                .replica
                .queue()
                .queues()
                .map(|(n, d)| (n.to_string(), d))
                .collect(),
            error,
            stalls_over_1ms: stalls,
            longest_stall_us: longest,
            contended_spells: self.contended_spells,
            rejoins: self.rejoins,
            speculation: self.speculation,
        }
    }

    fn publish_live(&self) {
        if let Ok(mut l) = self.shared.live.lock() {
            l.status = self.replica.member().status().label();
            l.view = self.replica.member().view().id.0;
            l.members.clone_from(&self.replica.member().view().members);
            l.proto = self.replica.member().stats().clone();
            l.queues = self
                .replica
                .queue()
                .queues()
                .map(|(n, d)| (n.to_string(), d))
                .collect();
            l.specs = self.replica.queue().specs().cloned().collect();
            l.requeued = self.requeued;
            l.speculation = self.speculation;
            l.rejoins = self.rejoins;
            l.pipelines_version = self.replica.queue().pipelines_version();
            l.transport = self.transport.stats();
            l.log = self.log.as_ref().map(|g| {
                let mut live = g.live();
                live.held_for_disks = self.replica.held_for_disks() as u64;
                live.refused_for_disks = self.refused_for_disks;
                live
            });
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
                        self.replica.set_admission(a);
                    }
                }
                Directive::Leave => {
                    tracing::warn!("leaving the group (asked by the control plane)");
                    self.leaving = true;
                }
                Directive::Resume { since, unanswered } => {
                    tracing::info!(
                        since,
                        unanswered = unanswered.len(),
                        "the application resumes: it is told what it missed"
                    );
                    self.resuming = true;
                    self.replica.resume(since, unanswered);
                }
            }
        }
        if self.leaving
            && self.local_ops.is_empty()
            && self.set_aside.is_empty()
            && self.cmds.is_empty()
            && self.replica.window_room() == self.cfg.proto.window
        {
            self.leaving = false;
            self.replica.leave();
        }
        let refused = self.replica.member().stats().joins_refused;
        if refused > self.joins_refused_said {
            let who = self
                .replica
                .member()
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

    /// Hands the log what the replica has to persist, and the replica what is on disk.
    fn persist(&mut self) -> Result<bool, String> {
        let Some(log) = self.log.as_mut() else {
            return Ok(false);
        };
        let work = log.drive(&mut self.replica).map_err(|e| {
            format!(
                "the log writer stopped: {e}; this member stops (its disk no longer takes the log)"
            )
        })?;
        if work {
            // What the disks held may release acceptances and ends.
            self.apply_deliveries();
        }
        Ok(work)
    }

    /// Whether the replica takes the application's operations: not while a member restarted
    /// from its data directory has not recovered the group's state.
    fn recovering(&self) -> bool {
        self.replica
            .recovery()
            .is_some_and(|(stage, _)| stage != RecoveryStage::Recovered)
    }

    /// Starts over as a joiner: a new member process as far as the group is concerned. With a
    /// data directory, the joiner carries its log's state (it claims with it if a restarted
    /// group has not decided yet, and takes the group's state otherwise); that is also how a
    /// recovery given up starts again (see `RecoveryStage::Abandoned`).
    fn rejoin(&mut self) {
        let log_state = match self.log.as_mut().map(|l| l.reopen()) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::error!("cannot read the data directory back: {e}");
                self.shared.stop.store(true, Ordering::Release);
                return;
            }
            None => None,
        };
        let abandoned = matches!(self.replica.recovery(), Some((RecoveryStage::Abandoned, _)));
        let msg = if abandoned {
            "the group's state could not come (its sender failed, or the view changed); joining again".to_string()
        } else {
            format!(
                "removed from the group (view {}); rejoining as a new member",
                self.replica.member().view().id.0
            )
        };
        tracing::warn!("{msg}");
        self.set_status(msg);
        let contacts: Vec<MemberId> = (0..self.cfg.names.len() as u16)
            .map(MemberId)
            .filter(|m| *m != self.cfg.me)
            .collect();
        let s = self.replica.member().stats();
        tracing::info!(
            delivered = s.delivered,
            retransmitted_slots = s.retransmitted_slots,
            view_changes = s.view_changes,
            "counters of the removed incarnation"
        );
        // What the removed incarnation applied: the new one is told the outcomes of this
        // member's requests after it, then which of them the group holds (`Effect::Rejoined`).
        let applied = self.replica.applied();
        let unanswered = self.replica.take_unanswered();
        match Replica::joining(
            self.cfg.proto.clone(),
            self.cfg.key.clone(),
            self.cfg.group,
            self.cfg.me,
            contacts,
            conveyor_core::proto::draw_incarnation(crate::sys::random_u64()),
            self.clock.now(),
        ) {
            Ok(mut r) => {
                r.set_speculation(self.cfg.speculate);
                r.set_rejoining(applied, unanswered);
                if let Some(state) = log_state {
                    r.set_log_state(state);
                    r.set_durable(true, &self.cfg.view.members);
                }
                self.replace(r);
            }
            Err(e) => tracing::error!("cannot rejoin: {e}"),
        }
    }

    /// The new process's replica takes the old one's place.
    fn replace(&mut self, r: Replica) {
        self.malformed_ops += self.replica.stats().malformed_ops;
        self.replica = r;
        self.applied = 0;
        self.bad_states_said = 0;
        self.inline_events.clear();
        self.local_ops.clear();
        // The new replica numbers its speculations from 1 again.
        self.speculated_at.clear();
        self.rejoins += 1;
    }

    fn park(&mut self) {
        let now = self.clock.now();
        let mut until = self.replica.poll_timeout();
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
        if !matches!(
            self.replica.member().status(),
            Status::Serving | Status::Changing
        ) || self.recovering()
        {
            // Joining, or in a minority: operations wait (the ring fills: backpressure).
            return false;
        }
        while self.replica.window_room() > 0 {
            let Some(op) = self
                .local_ops
                .pop_front()
                .or_else(|| self.set_aside.pop_front())
                .or_else(|| self.cmds.pop())
            else {
                break;
            };
            match self.replica.submit_encoded(op) {
                Ok(_) => work = true,
                Err(SubmitError::DisksFull { queue, effect }) => {
                    // Told to the pusher as a rejection (nothing was ordered).
                    if self.refused_for_disks == 0 {
                        tracing::warn!(
                            "the disks do not take the log: pushes into {queue:?} (policy reject) are refused until they do"
                        );
                    }
                    self.refused_for_disks += 1;
                    self.route(Event {
                        at_us: self.clock.now_us(),
                        effect: *effect,
                    });
                    work = true;
                }
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
                    self.replica.handle_frame(now, bytes);
                }
            }
            if n < RECV_BATCH {
                break;
            }
        }
        Ok(work)
    }

    /// Applies what the group delivered and hands this member's effects to the application.
    fn apply_deliveries(&mut self) -> bool {
        let me = self.cfg.me;
        if self.log.as_ref().is_some_and(|l| l.backed_up()) {
            // The disk is behind: nothing more is applied until the log takes it.
            return false;
        }
        while let Some(mut e) = self.replica.poll_effect() {
            match &e {
                Effect::Rejoined { origin, .. } if *origin == me => e = self.on_rejoined(e),
                Effect::ViewInstalled { .. } => self.on_view_installed(&e),
                Effect::Requeued { .. } => self.requeued += 1,
                Effect::Speculated { speculation, .. } => {
                    self.speculation.started += 1;
                    self.speculated_at.insert(*speculation, self.clock.now_us());
                }
                Effect::Confirmed { speculation, .. } => {
                    self.speculation.confirmed += 1;
                    if let Some(at) = self.speculated_at.remove(speculation) {
                        self.speculation.lead_us += self.clock.now_us().saturating_sub(at);
                    }
                }
                Effect::Discarded { speculation, .. } => {
                    self.speculation.discarded += 1;
                    self.speculated_at.remove(speculation);
                }
                _ => {}
            }
            if e.concerns(me, self.replica.queue().shards().me()) {
                self.route(Event {
                    at_us: self.clock.now_us(),
                    effect: e,
                });
            }
        }
        if self.replica.queue().shards().me().is_some() {
            // What the forwarders may act on: with durable queues, what a majority's disks
            // hold (see `Replica::shards_to_forward`).
            let fp = self.replica.shards_fingerprint();
            if fp != self.shards_published {
                self.shards_published = fp;
                let shards = self.replica.shards_to_forward().into_owned();
                if let Ok(mut s) = self.shared.shards.lock() {
                    *s = Some(Arc::new(shards));
                }
                if let Ok(bells) = self.shared.shards_bells.lock() {
                    for b in bells.iter() {
                        b.ring();
                    }
                }
            }
        }
        if let Some(t) = self.replica.told_through() {
            // After the events it covers went to the ring (the application reads this first).
            self.shared.told_through.store(t + 1, Ordering::Release);
        }
        let bad = self.replica.stats().bad_states;
        if bad > self.bad_states_said {
            self.bad_states_said = bad;
            tracing::error!("the state received on joining does not decode");
        }
        let applied = self.replica.stats().applied;
        let any = applied != self.applied;
        if any {
            self.applied = applied;
            self.shared
                .delivered
                .store(self.replica.member().delivered_slots(), Ordering::Relaxed);
            self.wake_app();
        }
        any
    }

    /// Back in the group after a removal, with the state: the replica told the outcomes
    /// missed and pushed again what never reached the order (see
    /// `conveyor_core::queue::outcomes`). Operations the application submitted meanwhile wait
    /// in the command ring: their requests are added to the effect's `pending` (they will be
    /// submitted), so that an application told `outcomes_dropped` fails only what it can no
    /// longer hear of.
    fn on_rejoined(&mut self, e: Effect) -> Effect {
        let Effect::Rejoined {
            origin,
            pending,
            pushed_again,
            outcomes_dropped,
        } = e
        else {
            return e;
        };
        while let Some(op) = self.cmds.pop() {
            self.set_aside.push_back(op);
        }
        let mut all: std::collections::BTreeSet<RequestId> = pending.iter().copied().collect();
        all.extend(
            self.local_ops
                .iter()
                .chain(&self.set_aside)
                .filter_map(|op| Op::pushed_id(op)),
        );
        let msg = format!(
            "{}: {} requests of this member held by the group or pushed again ({pushed_again} \
             never reached the order){}",
            if std::mem::take(&mut self.resuming) {
                "the restarted application is told what it missed"
            } else {
                "back in the group after a removal"
            },
            pending.len(),
            if outcomes_dropped {
                "; the group dropped outcomes of its requests meanwhile: those it waits for \
                 and does not hold have an unknown fate"
            } else {
                ""
            }
        );
        tracing::warn!("{msg}");
        Effect::Rejoined {
            origin,
            pending: all.into_iter().collect(),
            pushed_again,
            outcomes_dropped,
        }
    }

    /// A view installed: the transport (and its XDP member filter) follows it, and it is
    /// logged. The replica has put back what removed members held and sent joiners the state.
    fn on_view_installed(&mut self, e: &Effect) {
        let Effect::ViewInstalled {
            view,
            members,
            removed,
            left,
            joined,
            wedged_us,
            cut,
            resubmitted,
            ..
        } = e
        else {
            return;
        };
        let ids: Vec<usize> = members.iter().map(|m| usize::from(m.0)).collect();
        self.transport.view_installed(&ids);
        let names = |ms: &[MemberId]| {
            ms.iter()
                .map(|m| self.name(*m))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let failed: Vec<MemberId> = removed
            .iter()
            .copied()
            .filter(|m| !left.contains(m) && !joined.contains(m))
            .collect();
        let rejoined: Vec<MemberId> = removed
            .iter()
            .copied()
            .filter(|m| joined.contains(m))
            .collect();
        let new: Vec<MemberId> = joined
            .iter()
            .copied()
            .filter(|m| !removed.contains(m))
            .collect();
        tracing::info!(
            view,
            members = %names(members),
            left = %names(left),
            failed = %names(&failed),
            joined = %names(&new),
            rejoined = %names(&rejoined),
            cut,
            resubmitted,
            wedged_us,
            "view installed"
        );
        self.shared.view.store(u64::from(*view), Ordering::Relaxed);
    }

    /// Hands an effect for this member to the application.
    fn route(&mut self, ev: Event) {
        // A Redis reply goes to the member's server, which reads the ring, even when the
        // functions run inline (only a member serving RESP submits Redis commands).
        let redis = matches!(ev.effect, Effect::Redis { .. });
        if self.inline.is_some() && self.inline_started && !redis {
            self.inline_events.push_back(ev);
        } else if !self.overflow.is_empty() {
            self.overflow.push_back(ev);
        } else if let Err(ev) = self.events.push(ev) {
            self.overflow.push_back(ev);
        }
    }

    /// Runs the inline application on one pending event; returns how long it took.
    fn run_inline(&mut self) -> Option<std::time::Duration> {
        let ev = self.inline_events.pop_front()?;
        let t0 = std::time::Instant::now();
        let mut out = Vec::new();
        if let Some(app) = self.inline.as_mut() {
            app.on_event(ev, &self.clock, &mut out);
        }
        self.queue_local(out);
        Some(t0.elapsed())
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
        let n = self.replica.member().view().len();
        let me = self.cfg.me;
        let mut frames = std::mem::take(&mut self.tx_frames);
        let now = self.clock.now();
        while let Some(t) = self.replica.poll_transmit(now) {
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
                    for m in &self.replica.member().view().members {
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
            self.replica.recycle(t.frame);
        }
        self.tx_frames = frames;
        true
    }
}
