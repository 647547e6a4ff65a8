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
use std::collections::BTreeSet;
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
    /// Queues this member announced it takes from (since it last joined).
    subscribed: BTreeSet<String>,
}

impl InvokerApp {
    pub fn new(me: MemberId, pipelines: Vec<Pipeline>, credits: u32, max_payload: usize) -> Self {
        InvokerApp {
            me,
            pipelines,
            credits: credits.max(1),
            max_payload,
            report: Arc::default(),
            subscribed: BTreeSet::new(),
        }
    }

    /// A view of the report that stays readable after the app moved into the engine.
    pub fn report(&self) -> Arc<Mutex<InvokerReport>> {
        self.report.clone()
    }

    /// Subscriptions and the first credits.
    pub fn start_ops(&mut self) -> Vec<Op> {
        self.subscribed.clear();
        let mut ops = self.subscribe_ops();
        ops.push(Op::Ready {
            consumer: self.me,
            credits: self.credits,
        });
        ops
    }

    /// Subscriptions to the pipelines' queues not yet subscribed.
    fn subscribe_ops(&mut self) -> Vec<Op> {
        let mut ops = Vec::new();
        for p in &self.pipelines {
            for q in p.queue_specs() {
                if self.subscribed.insert(q.name.clone()) {
                    ops.push(Op::Subscribe {
                        consumer: self.me,
                        queue: q.name,
                    });
                }
            }
        }
        ops
    }

    /// The group's pipelines changed (through the control plane): later requests run by the
    /// new rules, and the new pipelines' queues are subscribed. A document that does not parse
    /// (the control plane validates them, so a version mismatch) leaves the pipelines as they
    /// were, and says so.
    pub fn set_pipelines(&mut self, version: u64, docs: &[String]) -> Vec<Op> {
        let parsed: Result<Vec<Pipeline>, _> =
            docs.iter().map(|d| Pipeline::from_json(d)).collect();
        match parsed {
            Ok(ps) => {
                tracing::info!(
                    version,
                    pipelines = %ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                    "pipelines updated"
                );
                self.pipelines = ps;
                self.subscribe_ops()
            }
            Err(e) => {
                tracing::error!(
                    version,
                    "pipelines from the group do not parse, keeping the current ones: {e}"
                );
                Vec::new()
            }
        }
    }

    /// The operations an event calls for besides running a function: subscriptions again after
    /// a rejoin, new subscriptions after a pipeline change.
    pub fn bookkeeping(&mut self, ev: &Event) -> Vec<Op> {
        match &ev.effect {
            Effect::ViewInstalled { joined, .. } if joined.contains(&self.me) => self.start_ops(),
            Effect::Pipelines { version, docs } => self.set_pipelines(*version, docs),
            _ => Vec::new(),
        }
    }

    /// The pipelines this invoker runs now.
    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
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
        out.extend(self.bookkeeping(&ev));
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
                if handle.has_left() {
                    return Ok(report.lock().map(|r| r.clone()).unwrap_or_default());
                }
                return Err(EngineError::Stopped(handle.status()));
            }
            continue;
        };
        for op in app.bookkeeping(&ev) {
            handle.submit(&op)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Meta;
    use crate::types::RequestId;

    fn assigned(me: MemberId, step: &str, queue: &str) -> Event {
        Event {
            at_us: 0,
            effect: Effect::Assigned {
                consumer: me,
                req: Request {
                    id: RequestId(7),
                    instance: 3,
                    step: step.into(),
                    queue: queue.into(),
                    payload: b"x".to_vec(),
                    meta: Meta::default(),
                },
            },
        }
    }

    fn outputs(op: Option<Op>) -> Vec<String> {
        match op {
            Some(Op::Complete { outputs, .. }) => outputs.into_iter().map(|r| r.step).collect(),
            other => panic!("expected a completion, got {other:?}"),
        }
    }

    #[test]
    fn a_pipeline_change_applies_to_later_requests_and_subscribes_new_queues() {
        let me = MemberId(1);
        let clock = Clock::new();
        let p1 = Pipeline::from_json(
            r#"{"name":"p","entry":"a","steps":{"a":{"function":"echo","next":[{"to":["b"]}]},"b":{"function":"echo"}}}"#,
        )
        .unwrap();
        let mut app = InvokerApp::new(me, vec![p1], 4, 4096);
        let start = app.start_ops();
        assert_eq!(
            start.len(),
            3,
            "two subscriptions and the credits: {start:?}"
        );
        assert_eq!(outputs(app.handle(assigned(me, "a", "p.a"), &clock)), ["b"]);
        // Version 2: `a` now continues to `c`, and pipeline `q` is new.
        let docs = vec![
            r#"{"name":"p","entry":"a","steps":{"a":{"function":"echo","next":[{"to":["c"]}]},"b":{"function":"echo"},"c":{"function":"echo"}}}"#.to_string(),
            r#"{"name":"q","entry":"x","steps":{"x":{"function":"echo"}}}"#.to_string(),
        ];
        let ev = Event {
            at_us: 0,
            effect: Effect::Pipelines { version: 2, docs },
        };
        let ops = app.bookkeeping(&ev);
        let subs: Vec<String> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Subscribe { queue, .. } => Some(queue.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(subs, ["p.c", "q.x"], "only the queues not yet subscribed");
        assert_eq!(outputs(app.handle(assigned(me, "a", "p.a"), &clock)), ["c"]);
        assert!(outputs(app.handle(assigned(me, "x", "q.x"), &clock)).is_empty());
        // A document that does not parse leaves everything as it was.
        let bad = Event {
            at_us: 0,
            effect: Effect::Pipelines {
                version: 3,
                docs: vec!["{".into()],
            },
        };
        assert!(app.bookkeeping(&bad).is_empty());
        assert_eq!(app.pipelines().len(), 2);
        // After a rejoin everything is subscribed again, with credits.
        let rejoin = Event {
            at_us: 0,
            effect: Effect::ViewInstalled {
                view: 5,
                members: vec![MemberId(0), me],
                removed: vec![],
                joined: vec![me],
                wedged_us: 0,
                suspected_at_us: None,
            },
        };
        assert_eq!(
            app.bookkeeping(&rejoin).len(),
            5,
            "p.a, p.b, p.c, q.x and the credits"
        );
    }
}
