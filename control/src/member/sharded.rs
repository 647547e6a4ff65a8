//! `conveyor node` for a sharded group (`[shards]` in the group file): the member runs a
//! member of every shard in one process, each shard its own engine on its own transport (its
//! own group: view, key, epoch, membership; see `GroupConfig::for_shard`), and the process's
//! forwarders carry continuations between its shards (`conveyor_dataplane::shard`). An
//! invoker runs the pipelines' functions in every shard (each shard dispatches only the queues
//! the map gives it); a trigger creates the queues in every shard, submits the file's shard
//! map to each, and pushes each request to the shard owning its entry queue.
//!
//! A trigger's gateway serves every shard: a call goes to the shard owning its pipeline's
//! entry queue, and its output comes back there.
//!
//! With the dpdk and afxdp transports the shards share the process's one DPDK port, or one
//! AF_XDP socket and XDP program (`transport::open_all`, `transport::shared`). The XDP member
//! filter over the other transports is refused with shards by the group file's checks.
//!
//! The member reports each shard to the control plane (and follows its shard map);
//! `metrics_address` serves every shard's series, by shard.

use super::{
    gateway_config, invoker_ids, log_transport, notify_service_manager, BeforeLeave, DRAIN_WAIT,
    LEAVE_WAIT,
};
use crate::config::{Executor, GroupConfig, Role};
use crate::trigger::gateway::Gateway;
use crate::trigger::loadgen::run_trigger;
use anyhow::{anyhow, Context, Result};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::shard::{ForwarderConfig, ShardId};
use conveyor_dataplane::engine::{Clock, Directive, EngineHandle, EngineReport};
use conveyor_dataplane::invoker::{run_invoker_with, InvokerApp, InvokerReport};
use conveyor_dataplane::shard::{Forwarders, ShardMember};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the forwarders wait at most when they have nothing to send: an engine that
/// republishes its cross-shard state (a new outbox entry, a watermark moved) wakes them at once.
const FORWARDER_IDLE: Duration = Duration::from_millis(1);

/// One shard's member in this process.
struct Shard {
    handle: Arc<EngineHandle>,
    /// An invoker's application when it runs on its own thread, and what it executed.
    app: Option<InvokerApp>,
    report: Option<Arc<Mutex<InvokerReport>>>,
    host: Option<Arc<crate::executors::FunctionHost>>,
}

pub(super) fn run(
    cfg: &GroupConfig,
    idx: usize,
    member: &str,
    workload: Option<&Path>,
    report: Option<&Path>,
    join_token: Option<String>,
) -> Result<()> {
    let count = cfg.shard_count();
    let me = &cfg.file.members[idx];
    let inline = me.executor == Executor::Inline;
    let mut shards: Vec<Shard> = Vec::new();
    // One transport per shard, or one device shared by them all (dpdk: one port per process;
    // afxdp: one socket per interface queue and one XDP program per interface).
    let specs: Vec<_> = (0..count)
        .map(|s| cfg.for_shard(s).transport_spec(idx))
        .collect();
    let opened =
        conveyor_dataplane::transport::open_all(&specs).context("the shards' transports")?;
    for (s, opened) in (0..count).zip(opened) {
        let scfg = cfg.for_shard(s);
        let ecfg = scfg.engine_config(idx);
        tracing::info!(
            "member {member}, shard {s} of {count} (group {:?}): transport {} on {}",
            scfg.file.group.name,
            opened.description,
            scfg.addresses[idx]
        );
        let submitter = Arc::new(std::sync::OnceLock::new());
        let host = crate::executors::FunctionHost::for_engine(submitter.clone(), Clock::new());
        let app = (me.role == Role::Invoker).then(|| {
            InvokerApp::new(
                ecfg.me,
                cfg.pipelines.clone(),
                me.credits,
                ecfg.proto.max_payload,
            )
            .with_executors(host.clone())
        });
        let report = app.as_ref().map(|a| a.report());
        let (handle, app) = match app {
            Some(a) if inline => (
                EngineHandle::start_with(ecfg, opened.transport, Clock::new(), Some(Box::new(a)))?,
                None,
            ),
            a => (
                EngineHandle::start(ecfg, opened.transport, Clock::new())?,
                a,
            ),
        };
        let _ = submitter.set(handle.submitter());
        shards.push(Shard {
            handle: Arc::new(handle),
            app,
            report,
            host: (me.role == Role::Invoker).then_some(host),
        });
    }
    let before_leave: BeforeLeave = Arc::new(std::sync::OnceLock::new());
    let signalled = leave_all_on_signal(member, &shards, before_leave.clone())?;
    let _reporters: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(s, sh)| {
            crate::plane::start_shard_reporter(
                cfg,
                idx,
                sh.handle.probe(),
                join_token.clone(),
                s as u16,
            )
        })
        .collect();
    let _metrics = match &me.metrics_address {
        Some(a) => Some(crate::plane::serve_shard_metrics(
            cfg,
            idx,
            shards.iter().map(|s| s.handle.probe()).collect(),
            a,
        )?),
        None => None,
    };
    let startup = Duration::from_secs(cfg.file.group.startup_timeout_s);
    for (s, sh) in shards.iter().enumerate() {
        sh.handle
            .wait_ready(startup)
            .map_err(|e| anyhow!("member {member}, shard {s}: {e}"))?;
    }
    tracing::info!("member {member}: all members present in its {count} shards");
    notify_service_manager("READY=1");
    // The forwarders, over this process's members of every shard.
    let stop_forwarders = Arc::new(AtomicBool::new(false));
    let members: Vec<ShardMember> = shards
        .iter()
        .enumerate()
        .map(|(s, sh)| ShardMember {
            shard: ShardId(s as u16),
            me: sh.handle.me(),
            probe: sh.handle.probe(),
            submitter: sh.handle.submitter(),
        })
        .collect();
    let forwarders = {
        let stop = stop_forwarders.clone();
        let cfg = ForwarderConfig {
            resend_after: Duration::from_millis(20),
            ..ForwarderConfig::default()
        };
        std::thread::Builder::new()
            .name("forwarders".into())
            .spawn(move || {
                Forwarders::new(members, cfg).run(&Clock::new(), FORWARDER_IDLE, &stop)
            })?
    };
    // The Redis protocol, over every shard: each command ordered in the shard owning its
    // streams; every shard's event reader hands the replies to its hub.
    let resp = if me.resp.is_some() && !(me.role == Role::Trigger && workload.is_some()) {
        super::start_resp(
            cfg,
            idx,
            member,
            &shards.iter().map(|s| &*s.handle).collect::<Vec<_>>(),
            cfg.for_shard(0).engine_config(idx).proto.max_payload,
        )?
    } else {
        None
    };
    let hub = resp.as_ref().map(|r| r.hub.clone());
    let outcome = match me.role {
        Role::Invoker => invoke(member, &mut shards, &signalled, hub.as_deref()),
        Role::Trigger => trigger(
            cfg,
            idx,
            member,
            &shards,
            workload,
            report,
            &before_leave,
            hub.clone(),
        ),
    };
    drop(resp);
    // Every shard's engine ends (a shutdown delivered, a leave, a failure) before the
    // forwarders stop: until then a continuation may still have to cross.
    let mut reports: Vec<(usize, EngineReport, Option<InvokerReport>)> = Vec::new();
    let mut hosts = Vec::new();
    for (s, sh) in shards.into_iter().enumerate() {
        // The gateway's threads hold the members until it ends.
        let Ok(handle) = Arc::try_unwrap(sh.handle) else {
            return Err(anyhow!("member {member}: shard {s}'s engine is still held"));
        };
        let rep = if outcome.is_err() {
            handle.stop()
        } else {
            handle.join()
        };
        let inv = sh.report.and_then(|r| r.lock().ok().map(|r| r.clone()));
        hosts.extend(sh.host);
        reports.push((s, rep, inv));
    }
    stop_forwarders.store(true, Ordering::Release);
    let fw = forwarders
        .join()
        .map_err(|_| anyhow!("member {member}: the forwarders' thread panicked"))?;
    tracing::info!(
        "member {member}: forwarders sent {} entries ({} times back to a watermark), {} acknowledgements",
        fw.sent,
        fw.went_back,
        fw.acks
    );
    for h in hosts {
        h.stop();
        for line in h.summary() {
            tracing::info!("member {member}: {line}");
        }
    }
    let mut error = None;
    let (mut started, mut confirmed, mut discarded, mut lead) = (0, 0, 0, 0);
    for (_, rep, _) in &reports {
        started += rep.speculation.started;
        confirmed += rep.speculation.confirmed;
        discarded += rep.speculation.discarded;
        lead += rep.speculation.lead_us;
    }
    if me.role == Role::Invoker {
        // The line the bench reads (summed over the shards, as an unsharded member says it).
        tracing::info!(
            "member {member}: speculation: started {started}, confirmed {confirmed}, discarded {discarded}, lead_us {}",
            lead.checked_div(confirmed).unwrap_or(0)
        );
    }
    for (s, rep, inv) in reports {
        log_transport(&format!("{member} (shard {s})"), &rep.transport);
        if let Some(r) = inv {
            tracing::info!(
                "member {member}, shard {s}: executed {} requests, {} failed; retransmitted {} slots",
                r.executed,
                r.failed,
                rep.proto.retransmitted_slots
            );
        }
        if let Some(e) = rep.error {
            if !signalled.load(Ordering::SeqCst) {
                error.get_or_insert(anyhow!("member {member}, shard {s}: {e}"));
            }
        }
    }
    outcome?;
    if let Some(e) = error {
        return Err(e);
    }
    if signalled.load(Ordering::SeqCst) {
        tracing::info!("member {member}: stopped at the signal's request");
    }
    Ok(())
}

/// An invoker: the functions of every shard, inline in each engine's polling thread or on an
/// application thread per shard; returns when every shard's engine ended.
fn invoke(
    member: &str,
    shards: &mut [Shard],
    signalled: &AtomicBool,
    hub: Option<&crate::resp::Hub>,
) -> Result<()> {
    // The Redis server's replies, from whichever shard ordered the command.
    let to_hub = move |e: &Effect| hub.is_some_and(|h| h.on_effect(e));
    std::thread::scope(|sc| -> Result<()> {
        let mut threads = Vec::new();
        for (s, sh) in shards.iter_mut().enumerate() {
            let handle = &sh.handle;
            match sh.app.take() {
                Some(app) => threads.push((
                    s,
                    sc.spawn(move || run_invoker_with(handle, app, to_hub).map(|_| ())),
                )),
                None => threads.push((
                    s,
                    sc.spawn(move || {
                        while !handle.is_finished() {
                            // Functions inline: the ring carries only the Redis replies.
                            if let Some(ev) = handle.next_event(Duration::from_millis(200)) {
                                to_hub(&ev.effect);
                            }
                        }
                        Ok(())
                    }),
                )),
            }
        }
        for (s, t) in threads {
            match t.join() {
                Ok(Err(_)) if signalled.load(Ordering::SeqCst) => {}
                Ok(r) => r.map_err(|e| anyhow!("member {member}, shard {s}: {e}"))?,
                Err(_) => return Err(anyhow!("member {member}, shard {s}: invoker panicked")),
            }
        }
        Ok(())
    })
}

/// A trigger: with a workload, runs it across the shards and shuts every shard down; without,
/// creates the queues and submits the map in every shard, then serves (its gateway, its Redis
/// protocol) until the shutdowns.
#[allow(clippy::too_many_arguments)]
fn trigger(
    cfg: &GroupConfig,
    idx: usize,
    member: &str,
    shards: &[Shard],
    workload: Option<&Path>,
    report: Option<&Path>,
    before_leave: &BeforeLeave,
    hub: Option<Arc<crate::resp::Hub>>,
) -> Result<()> {
    let map = cfg.shard_map();
    let Some(wpath) = workload else {
        for sh in shards {
            for p in &cfg.pipelines {
                for q in p.queue_specs() {
                    sh.handle.submit(&Op::Create(q))?;
                }
            }
        }
        conveyor_dataplane::shard::submit_map(shards.iter().map(|sh| &*sh.handle), &map)?;
        if let Some(gw) = &cfg.file.members[idx].gateway {
            let handles: Vec<Arc<EngineHandle>> = shards.iter().map(|s| s.handle.clone()).collect();
            let g = Gateway::start_sharded(
                &gateway_config(cfg, idx, gw, hub)?,
                handles,
                map,
                cfg.pipelines.clone(),
                invoker_ids(cfg),
                cfg.for_shard(0).engine_config(idx).proto.max_payload,
            )?;
            let drainer = g.drainer();
            let who = member.to_string();
            let _ = before_leave.set(Box::new(move || {
                let left = drainer.drain(DRAIN_WAIT);
                if left > 0 {
                    tracing::warn!(
                        "member {who}: {left} call(s) still wait after {}s; they get a 503",
                        DRAIN_WAIT.as_secs()
                    );
                }
            }));
            tracing::info!(
                "member {member}: gateway on http://{} (OpenFaaS routes) over {} shards",
                g.address,
                shards.len()
            );
            g.wait();
            return Ok(());
        }
        // Every shard's events at once (a Redis reply may come from any of them).
        std::thread::scope(|sc| {
            for sh in shards {
                let hub = hub.clone();
                sc.spawn(move || {
                    while !sh.handle.is_finished() {
                        match sh.handle.next_event(Duration::from_millis(200)) {
                            Some(ev) if matches!(ev.effect, Effect::Shutdown { .. }) => break,
                            Some(ev) => {
                                if let Some(h) = &hub {
                                    h.on_effect(&ev.effect);
                                }
                            }
                            None => {}
                        }
                    }
                });
            }
        });
        return Ok(());
    };
    let (spec, pipeline) = super::load_workload(cfg, wpath)?;
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let engines: Vec<&EngineHandle> = shards.iter().map(|s| &*s.handle).collect();
    let rep = run_trigger(&engines, &map, pipeline, &spec, &names)?;
    for sh in shards {
        sh.handle.submit(&Op::Shutdown { by: sh.handle.me() })?;
    }
    tracing::info!("member {member}: the run is over; every shard shuts down");
    super::write_report(report, &rep)
}

/// SIGTERM and SIGINT: the member leaves every shard's group; where a shard cannot let it go
/// within [`LEAVE_WAIT`] (or at a second signal) its engine stops at once.
fn leave_all_on_signal(
    member: &str,
    shards: &[Shard],
    before_leave: BeforeLeave,
) -> Result<Arc<AtomicBool>> {
    let signalled = Arc::new(AtomicBool::new(false));
    let flag = signalled.clone();
    let member = member.to_string();
    let engines: Vec<_> = shards
        .iter()
        .map(|s| (s.handle.probe(), s.handle.submitter()))
        .collect();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            tracing::warn!("member {member}: second signal: stopping without leaving");
            for (_, sub) in &engines {
                sub.stop_engine();
            }
            return;
        }
        tracing::info!("member {member}: signal received: leaving every shard");
        notify_service_manager("STOPPING=1");
        let (engines, member) = (engines.clone(), member.clone());
        let before = before_leave.clone();
        std::thread::spawn(move || {
            if let Some(f) = before.get() {
                f();
            }
            for (probe, _) in &engines {
                probe.direct(Directive::Leave);
            }
            let start = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let waiting: Vec<usize> = engines
                    .iter()
                    .enumerate()
                    .filter(|(_, (p, _))| !p.has_left() && !p.is_finished())
                    .map(|(s, _)| s)
                    .collect();
                if waiting.is_empty() {
                    return;
                }
                if start.elapsed() >= LEAVE_WAIT
                    || waiting.iter().any(|&s| {
                        let live = engines[s].0.live();
                        (live.members.len() <= 1 && live.status == "serving")
                            || matches!(live.status, "minority" | "joining" | "excluded")
                    })
                {
                    tracing::warn!("member {member}: stopping shards {waiting:?} without leaving");
                    for s in waiting {
                        engines[s].1.stop_engine();
                    }
                    return;
                }
            }
        });
    })
    .context("installing the SIGTERM/SIGINT handler")?;
    Ok(signalled)
}
