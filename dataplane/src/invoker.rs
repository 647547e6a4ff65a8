//! The invoker role: subscribes to the queues of its pipelines, announces readiness, runs the
//! functions of the requests assigned to it and pushes their continuations, chosen by the
//! pipeline's rules from the function's output, in the same ordered operation that completes
//! the request (continuation passing: no orchestrator on the path).
//!
//! Two ways to run: inline in the polling thread ([`InvokerApp`] as an
//! [`InlineApp`](crate::engine::InlineApp): no hand-off, the fastest on few cores, for short
//! functions), or in an application thread fed through the engine's rings ([`run_invoker`]).

use crate::engine::{Clock, EngineError, EngineHandle, Event, InlineApp};
use crate::pipeline::Pipeline;
use crate::queue::{Effect, Op, Request};
use crate::types::MemberId;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an invoker did.
#[derive(Clone, Debug, Default)]
pub struct InvokerReport {
    pub executed: u64,
    pub failed: u64,
    pub busy_us: u64,
    pub shut_down: bool,
}

/// The invoker's logic, independent of the thread it runs on.
#[derive(Debug)]
pub struct InvokerApp {
    me: MemberId,
    pipelines: Vec<Pipeline>,
    credits: u32,
    max_payload: usize,
    report: Arc<Mutex<InvokerReport>>,
}

impl InvokerApp {
    pub fn new(me: MemberId, pipelines: Vec<Pipeline>, credits: u32, max_payload: usize) -> Self {
        InvokerApp {
            me,
            pipelines,
            credits: credits.max(1),
            max_payload,
            report: Arc::default(),
        }
    }

    /// A view of the report that stays readable after the app moved into the engine.
    pub fn report(&self) -> Arc<Mutex<InvokerReport>> {
        self.report.clone()
    }

    /// Subscriptions and the first credits.
    pub fn start_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        for p in &self.pipelines {
            for q in p.queue_specs() {
                ops.push(Op::Subscribe {
                    consumer: self.me,
                    queue: q.name,
                });
            }
        }
        ops.push(Op::Ready {
            consumer: self.me,
            credits: self.credits,
        });
        ops
    }

    /// Whether this event is this member joining a view (after it was removed and came back
    /// as a new member): its subscriptions and credits went with the old member, so it
    /// announces them again.
    pub fn rejoined(&self, ev: &Event) -> bool {
        matches!(&ev.effect, Effect::ViewInstalled { joined, .. } if joined.contains(&self.me))
    }

    fn find(&self, req: &Request) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| {
            p.steps
                .get(&req.step)
                .is_some_and(|s| s.queue.name == req.queue)
        })
    }

    /// Runs an assigned request; returns the operation that completes it.
    pub fn handle(&mut self, ev: Event, clock: &Clock) -> Option<Op> {
        let req = match ev.effect {
            Effect::Assigned { req, .. } => req,
            Effect::Shutdown { .. } => {
                if let Ok(mut r) = self.report.lock() {
                    r.shut_down = true;
                }
                return None;
            }
            _ => return None,
        };
        let me = self.me;
        let fail = |req: &Request, error: String| Op::Fail {
            consumer: me,
            id: req.id,
            instance: req.instance,
            step: req.step.clone(),
            error,
            credits: 1,
        };
        let Some((p, step)) = self
            .find(&req)
            .and_then(|p| p.steps.get(&req.step).map(|s| (p, s)))
        else {
            if let Ok(mut r) = self.report.lock() {
                r.failed += 1;
            }
            let e = format!(
                "no pipeline has step {:?} on queue {:?}",
                req.step, req.queue
            );
            return Some(fail(&req, e));
        };
        let t0 = clock.now_us();
        let out = step.function.run(&req.payload);
        let t1 = clock.now_us();
        let exec = t1.saturating_sub(t0);
        let mut meta = req.meta;
        meta.exec_us += exec;
        meta.hops += 1;
        meta.order_us += ev.at_us.saturating_sub(meta.submitted_us);
        meta.handoff_us += t0.saturating_sub(ev.at_us);
        meta.submitted_us = t1;
        let outputs = p.continuations(&req, &out, meta);
        let result = outputs.is_empty().then_some(out.payload);
        let op = Op::Complete {
            consumer: me,
            id: req.id,
            instance: req.instance,
            step: req.step.clone(),
            outputs,
            result,
            meta,
            credits: 1,
        };
        let size = op.encode().len();
        if let Ok(mut r) = self.report.lock() {
            r.executed += 1;
            r.busy_us += exec;
        }
        if size > self.max_payload {
            return Some(fail(
                &req,
                format!(
                    "the output makes a completion of {size} bytes, above max_payload {}",
                    self.max_payload
                ),
            ));
        }
        Some(op)
    }
}

impl InlineApp for InvokerApp {
    fn start(&mut self, out: &mut Vec<Op>) {
        out.extend(self.start_ops());
    }
    fn on_event(&mut self, ev: Event, clock: &Clock, out: &mut Vec<Op>) {
        if self.rejoined(&ev) {
            out.extend(self.start_ops());
        }
        out.extend(self.handle(ev, clock));
    }
}

/// Runs the invoker in the calling thread, fed through the engine's rings, until a shutdown is
/// delivered or the engine stops.
pub fn run_invoker(
    handle: &EngineHandle,
    mut app: InvokerApp,
) -> Result<InvokerReport, EngineError> {
    let clock = handle.clock();
    for op in app.start_ops() {
        handle.submit(&op)?;
    }
    let report = app.report();
    loop {
        let Some(ev) = handle.next_event(Duration::from_millis(100)) else {
            if handle.is_finished() {
                return Err(EngineError::Stopped(handle.status()));
            }
            continue;
        };
        if app.rejoined(&ev) {
            for op in app.start_ops() {
                handle.submit(&op)?;
            }
        }
        if let Some(op) = app.handle(ev, &clock) {
            handle.submit(&op)?;
        }
        let r = report.lock().map(|r| r.clone()).unwrap_or_default();
        if r.shut_down {
            return Ok(r);
        }
    }
}
