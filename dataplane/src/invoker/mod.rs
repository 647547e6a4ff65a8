//! The invoker role: subscribes to the queues of its pipelines, announces readiness, runs the
//! functions of the requests assigned to it and pushes their continuations, chosen by the
//! pipeline's rules from the function's output, in the same ordered operation that completes
//! the request (continuation passing: no orchestrator on the path).
//!
//! Two ways to run: inline in the polling thread ([`InvokerApp`] as an
//! [`InlineApp`](crate::engine::InlineApp): no hand-off, the fastest on few cores, for short
//! functions), or in an application thread fed through the engine's rings ([`run_invoker`]).
//!
//! Built-in functions run there. A step with an external function (an executor in the
//! pipeline) becomes a [`Job`] handed to the invoker's [`Executors`], which run it on their own
//! threads and submit the completion [`Job::finish`] builds; the member's credits bound how many
//! jobs it holds at once.

pub mod builtins;

use crate::engine::{Clock, EngineError, EngineHandle, Event, InlineApp};
use conveyor_core::pipeline::{External, Function, Output, Pipeline};
use conveyor_core::queue::{Effect, Op, Request};
use conveyor_core::types::{MemberId, RequestId};
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

/// How an external function failed: the HTTP status the call answers with, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionError {
    pub status: u16,
    pub message: String,
}

impl FunctionError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        FunctionError {
            status,
            message: message.into(),
        }
    }
}

/// Where a speculated execution stands (see `conveyor_core::replica`): its completion goes
/// out only once the delivered order confirms the assignment.
#[derive(Debug)]
enum Gate {
    /// Running, not confirmed yet.
    Running,
    /// Confirmed, as this instance: the completion goes out when the function is done.
    Confirmed(u64),
    /// Done, the completion held until the confirmation.
    Done(Vec<Op>),
    /// Discarded while running: the completion is dropped when the function is done.
    Discarded,
}

/// A speculation as the invoker knows it: its number, with the request's run and step (the
/// number alone is not enough: a replica that rejoins numbers its speculations from 1 again,
/// while executions of the one before may still be running).
type SpecKey = (u64, RequestId, String);

/// The speculated executions of an invoker, by [`SpecKey`], shared with the executors' threads
/// (which finish jobs).
#[derive(Debug, Default)]
pub struct Gates {
    by: std::collections::HashMap<SpecKey, Gate>,
    /// Speculated executions whose result was dropped (the delivered order gave the request
    /// elsewhere, or a view change came first).
    pub discarded: u64,
    /// Speculated executions confirmed.
    pub confirmed: u64,
}

/// Sets the request instance that a completion or failure names (a speculated execution is
/// confirmed as the delivered instance, which differs when the order before it did).
fn name_instance(ops: &mut [Op], instance: u64) {
    for op in ops {
        if let Op::Complete { instance: i, .. } | Op::Fail { instance: i, .. } = op {
            *i = instance;
        }
    }
}

impl Gates {
    /// The operations that complete speculation `n`, done: to submit now if confirmed, held if
    /// not yet, dropped if discarded (or unknown: a replica before a rejoin speculated it).
    fn finished(&mut self, n: SpecKey, mut ops: Vec<Op>) -> Vec<Op> {
        match self.by.remove(&n) {
            Some(Gate::Confirmed(instance)) => {
                name_instance(&mut ops, instance);
                ops
            }
            Some(Gate::Running) => {
                self.by.insert(n, Gate::Done(ops));
                Vec::new()
            }
            Some(Gate::Discarded) | None => Vec::new(),
            Some(g @ Gate::Done(_)) => {
                self.by.insert(n, g);
                Vec::new()
            }
        }
    }

    /// Speculation `n` confirmed as `instance`: its completion if it is done (to submit now).
    /// `None` if this invoker knows no such speculation (it runs the request then).
    fn confirmed(&mut self, n: SpecKey, instance: u64) -> Option<Vec<Op>> {
        let out = match self.by.remove(&n)? {
            Gate::Done(mut ops) => {
                name_instance(&mut ops, instance);
                ops
            }
            Gate::Running => {
                self.by.insert(n, Gate::Confirmed(instance));
                Vec::new()
            }
            g => {
                self.by.insert(n, g);
                return None;
            }
        };
        self.confirmed += 1;
        Some(out)
    }

    /// Speculation `n` discarded: a held completion is dropped, a running one will be.
    fn discard(&mut self, n: SpecKey) {
        if let Some(Gate::Running) = self.by.remove(&n) {
            self.by.insert(n, Gate::Discarded);
        }
        self.discarded += 1;
    }

    /// Speculations still open (running, or done and held).
    pub fn open(&self) -> usize {
        self.by
            .values()
            .filter(|g| matches!(g, Gate::Running | Gate::Done(_)))
            .count()
    }
}

/// What completes a request, wherever its function ran.
#[derive(Clone, Debug)]
struct Finisher {
    me: MemberId,
    max_payload: usize,
    report: Arc<Mutex<InvokerReport>>,
}

impl Finisher {
    /// `op` (a completion or failure) frees no generic credit; the credit goes back to
    /// `queue`'s, as [`Op::ReadyFor`] after it.
    fn for_queue(&self, mut op: Op, queue: String) -> [Op; 2] {
        if let Op::Complete { credits, .. } | Op::Fail { credits, .. } = &mut op {
            *credits = 0;
        }
        let credit = Op::ReadyFor {
            consumer: self.me,
            queue,
            credits: 1,
        };
        [op, credit]
    }

    fn fail(&self, req: &Request, status: u16, error: String) -> Op {
        if let Ok(mut r) = self.report.lock() {
            r.failed += 1;
        }
        Op::Fail {
            consumer: self.me,
            id: req.id,
            instance: req.instance,
            step: req.step.clone(),
            error,
            status,
            credits: 1,
        }
    }

    /// The completion of `req` (delivered at `at_us`) whose function ran from `t0` to `t1`.
    fn finish(
        &self,
        p: &Pipeline,
        req: Request,
        at_us: u64,
        result: Result<Output, FunctionError>,
        t0: u64,
        t1: u64,
    ) -> Op {
        let exec = t1.saturating_sub(t0);
        if let Ok(mut r) = self.report.lock() {
            r.executed += 1;
            r.busy_us += exec;
        }
        let out = match result {
            Ok(out) => out,
            Err(e) => return self.fail(&req, e.status, e.message),
        };
        let mut meta = req.meta;
        meta.exec_us += exec;
        meta.hops += 1;
        meta.order_us += at_us.saturating_sub(meta.submitted_us);
        meta.handoff_us += t0.saturating_sub(at_us);
        meta.submitted_us = t1;
        // A function's error answer (an HTTP status of 400 or more, as an http function or an
        // OpenWhisk web action gives it; a Lambda function's error document) ends the run: it
        // is the run's answer, status, headers and body as the function gave them, and no
        // later step runs on it.
        let refused = out.ends_the_run();
        let outputs = if refused {
            if let Ok(mut r) = self.report.lock() {
                r.failed += 1;
            }
            Vec::new()
        } else {
            p.continuations(&req, &out, meta)
        };
        let terminal = outputs.is_empty();
        let op = Op::Complete {
            consumer: self.me,
            id: req.id,
            instance: req.instance,
            step: req.step.clone(),
            outputs,
            reply: if terminal { out.http } else { None },
            result: terminal.then_some(out.payload),
            meta,
            credits: 1,
        };
        let size = op.encode().len();
        if size > self.max_payload {
            return self.fail(
                &req,
                500,
                format!(
                    "the output makes a completion of {size} bytes, above group.max_payload {} \
                     (raise it in the group file, with group.max_frame, up to 65000 bytes a frame)",
                    self.max_payload
                ),
            );
        }
        op
    }
}

/// A request for an external function, handed to the invoker's [`Executors`].
#[derive(Debug)]
pub struct Job {
    pub req: Request,
    pub function: Arc<External>,
    /// When the assignment was delivered (engine clock).
    pub at_us: u64,
    pipeline: Arc<Pipeline>,
    finisher: Finisher,
    /// A speculated execution: which, and the invoker's gates.
    speculation: Option<(SpecKey, Arc<Mutex<Gates>>)>,
}

impl Job {
    /// The operations that complete this job, given what the function did between `t0` and
    /// `t1` (engine clock), to submit in this order: the completion (its continuations pushed
    /// by the pipeline's rules, or the failure), then the credit it frees, for its own queue
    /// (see [`InvokerApp::start_ops`]).
    ///
    /// A speculated execution's operations are held until the assignment is confirmed (then
    /// submitted by the invoker's application) and dropped if it is discarded: this returns
    /// nothing for it until then.
    pub fn finish(self, result: Result<Output, FunctionError>, t0: u64, t1: u64) -> Vec<Op> {
        let queue = self.req.queue.clone();
        let op = self
            .finisher
            .finish(&self.pipeline, self.req, self.at_us, result, t0, t1);
        let ops = self.finisher.for_queue(op, queue).into();
        match self.speculation {
            Some((n, gates)) => match gates.lock() {
                Ok(mut g) => g.finished(n, ops),
                Err(_) => Vec::new(),
            },
            None => ops,
        }
    }

    /// Whether this execution is speculated (its assignment not delivered yet).
    pub fn speculated(&self) -> bool {
        self.speculation.is_some()
    }

    /// The largest output that can be carried on (a completion holds it once per branch).
    pub fn max_output(&self) -> usize {
        self.finisher.max_payload
    }
}

/// Runs external functions: takes jobs without blocking and submits each one's completion
/// ([`Job::finish`]) itself when its function is done.
pub trait Executors: Send + Sync + std::fmt::Debug {
    fn dispatch(&self, job: Job);
}

/// The invoker's logic, independent of the thread it runs on.
#[derive(Debug)]
pub struct InvokerApp {
    me: MemberId,
    pipelines: Vec<Arc<Pipeline>>,
    credits: u32,
    report: Arc<Mutex<InvokerReport>>,
    finisher: Finisher,
    executors: Option<Arc<dyn Executors>>,
    /// Queues this member announced it takes from (since it last joined).
    subscribed: BTreeSet<String>,
    gates: Arc<Mutex<Gates>>,
}

impl InvokerApp {
    pub fn new(me: MemberId, pipelines: Vec<Pipeline>, credits: u32, max_payload: usize) -> Self {
        let report: Arc<Mutex<InvokerReport>> = Arc::default();
        InvokerApp {
            me,
            pipelines: pipelines.into_iter().map(Arc::new).collect(),
            credits: credits.max(1),
            report: report.clone(),
            finisher: Finisher {
                me,
                max_payload,
                report,
            },
            executors: None,
            subscribed: BTreeSet::new(),
            gates: Arc::default(),
        }
    }

    /// The speculated executions (counts for reports and metrics).
    pub fn gates(&self) -> Arc<Mutex<Gates>> {
        self.gates.clone()
    }

    /// Runs the steps with external functions on `executors` (without them, such steps fail).
    pub fn with_executors(mut self, executors: Arc<dyn Executors>) -> Self {
        self.executors = Some(executors);
        self
    }

    /// A view of the report that stays readable after the app moved into the engine.
    pub fn report(&self) -> Arc<Mutex<InvokerReport>> {
        self.report.clone()
    }

    /// Subscriptions and the first credits. A built-in function's queue is subscribed: the
    /// member's `credits` (generic, [`Op::Ready`]) take from it. An external function's queue
    /// is not: it gets credits of its own ([`Op::ReadyFor`]), as many as the function's
    /// `concurrency` (at most `credits`), and each of its completions gives back one of those
    /// ([`Job::finish`]), so that an invoker never takes more of a function's requests than it
    /// can start at once; the rest wait in the group's queue for whichever invoker frees a
    /// slot first, rather than behind a busy one.
    pub fn start_ops(&mut self) -> Vec<Op> {
        self.subscribed.clear();
        let mut ops = self.subscribe_ops();
        ops.push(Op::Ready {
            consumer: self.me,
            credits: self.credits,
        });
        ops
    }

    /// Subscriptions to (or credits for) the pipelines' queues not yet announced.
    fn subscribe_ops(&mut self) -> Vec<Op> {
        let mut ops = Vec::new();
        for p in &self.pipelines {
            for step in p.steps.values() {
                let queue = step.queue.name.clone();
                if !self.subscribed.insert(queue.clone()) {
                    continue;
                }
                ops.push(match &step.function {
                    Function::External(f) => Op::ReadyFor {
                        consumer: self.me,
                        queue,
                        credits: f.executor.concurrency.min(self.credits),
                    },
                    Function::Builtin(_) => Op::Subscribe {
                        consumer: self.me,
                        queue,
                    },
                });
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
                self.pipelines = ps.into_iter().map(Arc::new).collect();
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
    pub fn pipelines(&self) -> &[Arc<Pipeline>] {
        &self.pipelines
    }

    fn find(&self, req: &Request) -> Option<&Arc<Pipeline>> {
        self.pipelines.iter().find(|p| {
            p.steps
                .get(&req.step)
                .is_some_and(|s| s.queue.name == req.queue)
        })
    }

    /// Runs an assigned request; returns the operations that complete it (none when an
    /// executor took it: it submits the completion itself). A speculated assignment runs the
    /// same way, its completion held until the assignment is confirmed: then returned (or
    /// submitted by its executor, if the function is still running), and dropped if the
    /// speculation is discarded.
    pub fn handle(&mut self, ev: Event, clock: &Clock) -> Vec<Op> {
        let (req, speculation) = match ev.effect {
            Effect::Assigned { req, .. } => (req, None),
            Effect::Speculated {
                req, speculation, ..
            } => {
                let key = (speculation, req.id, req.step.clone());
                if let Ok(mut g) = self.gates.lock() {
                    g.by.insert(key.clone(), Gate::Running);
                }
                (req, Some((key, self.gates.clone())))
            }
            Effect::Confirmed {
                req, speculation, ..
            } => {
                let key = (speculation, req.id, req.step.clone());
                let done = self
                    .gates
                    .lock()
                    .ok()
                    .and_then(|mut g| g.confirmed(key, req.instance));
                match done {
                    Some(ops) => return ops,
                    // Not speculated here (this application started after it was): run it.
                    None => (req, None),
                }
            }
            Effect::Discarded {
                speculation,
                id,
                step,
                ..
            } => {
                if let Ok(mut g) = self.gates.lock() {
                    g.discard((speculation, id, step));
                }
                return Vec::new();
            }
            Effect::Shutdown { .. } => {
                if let Ok(mut r) = self.report.lock() {
                    r.shut_down = true;
                }
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        let Some((p, step)) = self
            .find(&req)
            .and_then(|p| p.steps.get(&req.step).map(|s| (p, s)))
        else {
            let e = format!(
                "no pipeline has step {:?} on queue {:?}",
                req.step, req.queue
            );
            let failed = vec![self.finisher.fail(&req, 500, e)];
            return self.gated(speculation, failed);
        };
        match &step.function {
            Function::Builtin(f) => {
                let t0 = clock.now_us();
                let out = builtins::run(f, &req.payload);
                let t1 = clock.now_us();
                let done = vec![self.finisher.finish(p, req, ev.at_us, Ok(out), t0, t1)];
                self.gated(speculation, done)
            }
            Function::External(f) => {
                let Some(executors) = &self.executors else {
                    let e = format!(
                        "function {:?} needs the {} executor, which this invoker does not run",
                        f.name,
                        f.executor.kind.name()
                    );
                    let queue = req.queue.clone();
                    let failed = self.finisher.fail(&req, 500, e);
                    let failed = self.finisher.for_queue(failed, queue).into();
                    return self.gated(speculation, failed);
                };
                executors.dispatch(Job {
                    function: f.clone(),
                    at_us: ev.at_us,
                    pipeline: p.clone(),
                    finisher: self.finisher.clone(),
                    req,
                    speculation,
                });
                Vec::new()
            }
        }
    }
}

impl InvokerApp {
    /// `ops` complete an execution, speculated or not: to submit now, or held (see
    /// [`Gates::finished`]).
    fn gated(&self, speculation: Option<(SpecKey, Arc<Mutex<Gates>>)>, ops: Vec<Op>) -> Vec<Op> {
        match speculation {
            Some((n, gates)) => match gates.lock() {
                Ok(mut g) => g.finished(n, ops),
                Err(_) => Vec::new(),
            },
            None => ops,
        }
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
pub fn run_invoker(handle: &EngineHandle, app: InvokerApp) -> Result<InvokerReport, EngineError> {
    run_invoker_with(handle, app, |_| false)
}

/// [`run_invoker`], handing each event first to `also` (which says whether it took it: the
/// member's Redis protocol server takes its replies).
pub fn run_invoker_with(
    handle: &EngineHandle,
    mut app: InvokerApp,
    also: impl Fn(&Effect) -> bool,
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
        if also(&ev.effect) {
            continue;
        }
        for op in app.bookkeeping(&ev) {
            handle.submit(&op)?;
        }
        for op in app.handle(ev, &clock) {
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
    use conveyor_core::queue::Meta;
    use conveyor_core::types::RequestId;

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
                    http: None,
                },
            },
        }
    }

    fn speculated(me: MemberId, step: &str, queue: &str, n: u64) -> Event {
        let Effect::Assigned { consumer, req } = assigned(me, step, queue).effect else {
            unreachable!()
        };
        Event {
            at_us: 0,
            effect: Effect::Speculated {
                consumer,
                req,
                speculation: n,
            },
        }
    }

    /// A speculated step's completion is held until confirmed, then names the delivered
    /// instance; a discarded one's is never given; a confirmation that comes after the
    /// function ran releases it at once.
    #[test]
    fn a_speculated_completion_waits_for_its_confirmation() {
        let me = MemberId(1);
        let p = Pipeline::chain("t", 2, 0);
        let (step, queue) = {
            let s = &p.steps[&p.entry];
            (p.entry.clone(), s.queue.name.clone())
        };
        let mut app = InvokerApp::new(me, vec![p], 8, 4096);
        let clock = Clock::new();
        // Runs at once (built-in), held.
        assert!(app
            .handle(speculated(me, &step, &queue, 1), &clock)
            .is_empty());
        assert!(app
            .handle(speculated(me, &step, &queue, 2), &clock)
            .is_empty());
        assert_eq!(app.gates().lock().unwrap().open(), 2);
        // Confirmed as instance 9 (the order before it changed): the completion names it.
        let Effect::Speculated { mut req, .. } = speculated(me, &step, &queue, 1).effect else {
            unreachable!()
        };
        req.instance = 9;
        let confirm = Event {
            at_us: 0,
            effect: Effect::Confirmed {
                consumer: me,
                req,
                speculation: 1,
            },
        };
        let ops = app.handle(confirm, &clock);
        assert!(
            matches!(ops.as_slice(), [Op::Complete { instance: 9, .. }]),
            "{ops:?}"
        );
        let discard = Event {
            at_us: 0,
            effect: Effect::Discarded {
                consumer: me,
                id: RequestId(7),
                step: step.clone(),
                speculation: 2,
            },
        };
        assert!(app.handle(discard, &clock).is_empty());
        let g = app.gates();
        let g = g.lock().unwrap();
        assert_eq!((g.open(), g.confirmed, g.discarded), (0, 1, 1));
        assert_eq!(app.report().lock().unwrap().executed, 2);
    }

    /// A job of an external function speculated: its executor gets nothing to submit until the
    /// confirmation, which then hands the held operations to the application.
    #[test]
    fn a_speculated_jobs_completion_is_held_by_finish() {
        let gates: Arc<Mutex<Gates>> = Arc::default();
        let key = (5, RequestId(7), "b".to_string());
        gates.lock().unwrap().by.insert(key.clone(), Gate::Running);
        let p = Arc::new(
            Pipeline::from_json(
                r#"{"name":"p","entry":"b","steps":{
                  "b":{"function":"f","executor":{"kind":"exec","command":["true"]}}}}"#,
            )
            .unwrap(),
        );
        let step = p.entry.clone();
        let queue = p.steps[&step].queue.name.clone();
        let Function::External(function) = p.steps[&step].function.clone() else {
            panic!("an external function");
        };
        let Effect::Assigned { req, .. } = assigned(MemberId(1), &step, &queue).effect else {
            unreachable!()
        };
        let job = Job {
            req,
            function,
            at_us: 0,
            pipeline: p,
            finisher: Finisher {
                me: MemberId(1),
                max_payload: 4096,
                report: Arc::default(),
            },
            speculation: Some((key.clone(), gates.clone())),
        };
        assert!(job.speculated());
        let out = Output {
            payload: b"done".to_vec(),
            route: None,
            http: None,
            failed: false,
        };
        assert!(job.finish(Ok(out), 0, 1).is_empty());
        let ops = gates.lock().unwrap().confirmed(key, 11).unwrap();
        assert!(
            matches!(
                ops.as_slice(),
                [Op::Complete { instance: 11, .. }, Op::ReadyFor { .. }]
            ),
            "{ops:?}"
        );
        // A job of a replica before a rejoin, finishing under a number the new replica gave
        // another request: dropped, and the new speculation stays open.
        let new = (6, RequestId(8), "b".to_string());
        gates.lock().unwrap().by.insert(new, Gate::Running);
        let stale = vec![Op::Shutdown { by: MemberId(1) }];
        let held = gates
            .lock()
            .unwrap()
            .finished((6, RequestId(7), "b".into()), stale);
        assert!(held.is_empty());
        assert_eq!(gates.lock().unwrap().open(), 1);
    }

    fn outputs(ops: Vec<Op>) -> Vec<String> {
        match ops.into_iter().next() {
            Some(Op::Complete { outputs, .. }) => outputs.into_iter().map(|r| r.step).collect(),
            other => panic!("expected a completion, got {other:?}"),
        }
    }

    #[test]
    fn an_external_functions_queue_gets_as_many_credits_as_it_can_start() {
        let me = MemberId(1);
        let p = Pipeline::from_json(
            r#"{"name":"p","entry":"a","steps":{
              "a":{"function":"echo","next":[{"to":["b"]}]},
              "b":{"function":"slow","executor":{"kind":"exec","command":["true"],"concurrency":3}},
              "c":{"function":"wide","executor":{"kind":"exec","command":["true"],"concurrency":64}}}}"#,
        )
        .unwrap();
        let mut app = InvokerApp::new(me, vec![p], 8, 4096);
        let start = app.start_ops();
        let has = |want: &Op| start.iter().any(|o| o == want);
        assert!(
            has(&Op::Subscribe {
                consumer: me,
                queue: "p.a".into()
            }),
            "{start:?}"
        );
        let for_b = Op::ReadyFor {
            consumer: me,
            queue: "p.b".into(),
            credits: 3,
        };
        assert!(has(&for_b), "{start:?}");
        // Never more than the member's credits.
        let for_c = Op::ReadyFor {
            consumer: me,
            queue: "p.c".into(),
            credits: 8,
        };
        assert!(has(&for_c), "{start:?}");
        assert!(
            has(&Op::Ready {
                consumer: me,
                credits: 8
            }),
            "{start:?}"
        );
        assert_eq!(
            start.len(),
            4,
            "external queues are not subscribed: {start:?}"
        );
        // Without executors the step fails, and its credit still goes back to its queue.
        let ops = app.handle(assigned(me, "b", "p.b"), &Clock::new());
        match &ops[..] {
            [Op::Fail {
                credits: 0,
                status: 500,
                ..
            }, Op::ReadyFor {
                queue, credits: 1, ..
            }] => {
                assert_eq!(queue, "p.b")
            }
            other => panic!("{other:?}"),
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
                left: vec![],
                joined: vec![me],
                wedged_us: 0,
                suspected_at_us: None,
                cut: 0,
                resubmitted: 0,
            },
        };
        assert_eq!(
            app.bookkeeping(&rejoin).len(),
            5,
            "p.a, p.b, p.c, q.x and the credits"
        );
    }
}
