//! The invoker role: subscribes to the queues of its pipelines, announces readiness, runs the
//! functions of the requests assigned to it and pushes their continuations, chosen by the
//! pipeline's rules from the function's output, in the same ordered operation that completes
//! the request (continuation passing: no orchestrator on the path).

use crate::engine::{EngineError, EngineHandle};
use crate::pipeline::Pipeline;
use crate::queue::{Effect, Op, Request};
use std::time::Duration;

/// What an invoker did.
#[derive(Clone, Debug, Default)]
pub struct InvokerReport {
    pub executed: u64,
    pub failed: u64,
    pub busy_us: u64,
}

fn find<'a>(pipelines: &'a [Pipeline], req: &Request) -> Option<&'a Pipeline> {
    pipelines.iter().find(|p| {
        p.steps
            .get(&req.step)
            .is_some_and(|s| s.queue.name == req.queue)
    })
}

/// Subscribes to every queue of `pipelines` with `credits` requests in flight at most, then
/// serves until a shutdown is delivered or the engine stops.
pub fn run_invoker(
    handle: &EngineHandle,
    pipelines: &[Pipeline],
    credits: u32,
) -> Result<InvokerReport, EngineError> {
    let me = handle.me();
    let clock = handle.clock();
    for p in pipelines {
        for q in p.queue_specs() {
            handle.submit(&Op::Subscribe {
                consumer: me,
                queue: q.name,
            })?;
        }
    }
    handle.submit(&Op::Ready {
        consumer: me,
        credits: credits.max(1),
    })?;
    let mut report = InvokerReport::default();
    loop {
        let Some(ev) = handle.next_event(Duration::from_millis(100)) else {
            if handle.is_finished() {
                return Err(EngineError::Stopped(handle.status()));
            }
            continue;
        };
        match ev.effect {
            Effect::Assigned { req, .. } => {
                let Some((p, step)) =
                    find(pipelines, &req).and_then(|p| p.steps.get(&req.step).map(|s| (p, s)))
                else {
                    report.failed += 1;
                    handle.submit(&Op::Fail {
                        consumer: me,
                        id: req.id,
                        step: req.step.clone(),
                        error: format!(
                            "no pipeline has step {:?} on queue {:?}",
                            req.step, req.queue
                        ),
                        credits: 1,
                    })?;
                    continue;
                };
                let t0 = clock.now_us();
                let out = step.function.run(&req.payload);
                let exec = clock.now_us().saturating_sub(t0);
                report.executed += 1;
                report.busy_us += exec;
                let mut meta = req.meta;
                meta.exec_us += exec;
                meta.hops += 1;
                let outputs = p.continuations(&req, &out, meta);
                let result = outputs.is_empty().then_some(out.payload);
                handle.submit(&Op::Complete {
                    consumer: me,
                    id: req.id,
                    step: req.step,
                    outputs,
                    result,
                    meta,
                    credits: 1,
                })?;
            }
            Effect::Shutdown { .. } => return Ok(report),
            _ => {}
        }
    }
}
