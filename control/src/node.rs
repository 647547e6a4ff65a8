//! `conveyor node`: runs one member of a group from the group's configuration file.

use crate::config::{Executor, GroupConfig, Role};
use crate::loadgen::{run_trigger, WorkloadSpec};
use anyhow::{anyhow, bail, Context, Result};
use conveyor_dataplane::engine::{Clock, EngineHandle};
use conveyor_dataplane::invoker::{run_invoker, InvokerApp};
use conveyor_dataplane::queue::{Effect, Op};
use conveyor_dataplane::transport::impair::Impaired;
use conveyor_dataplane::transport::udp::UdpTransport;
use conveyor_dataplane::transport::Transport;
use std::path::Path;
use std::time::Duration;

pub fn run(
    config: &Path,
    member: &str,
    workload: Option<&Path>,
    report: Option<&Path>,
    join_token: Option<String>,
) -> Result<()> {
    let cfg = GroupConfig::load(config)?;
    let idx = cfg.member_index(member)?;
    let me = &cfg.file.members[idx];
    let local = cfg.addresses[idx];
    let udp = UdpTransport::bind(local, cfg.addresses.clone())
        .with_context(|| format!("member {member}: starting the udp transport"))?;
    let transport: Box<dyn Transport> = match &cfg.impair {
        None => Box::new(udp),
        Some(spec) => {
            let mut spec = spec.clone();
            spec.seed = spec.seed.wrapping_mul(1000).wrapping_add(idx as u64);
            tracing::warn!(
                "member {member}: IMPAIRED transport: loss {:.2}%, duplication {:.2}%, delay {} us + jitter {} us (group.impair)",
                spec.loss * 100.0,
                spec.duplicate * 100.0,
                spec.delay_us,
                spec.jitter_us
            );
            Box::new(Impaired::new(Box::new(udp), spec))
        }
    };
    let peers: Vec<String> = cfg
        .file
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, m)| format!("{}@{}/udp", m.name, m.address))
        .collect();
    tracing::info!(
        "member {member} ({:?}) of group {:?}: transport udp on {local}; peers: {}",
        me.role,
        cfg.file.group.name,
        peers.join(", ")
    );
    let ecfg = cfg.engine_config(idx);
    let startup = ecfg.startup_timeout;
    let invoker = (me.role == Role::Invoker).then(|| {
        InvokerApp::new(
            ecfg.me,
            cfg.pipelines.clone(),
            me.credits,
            ecfg.proto.max_payload,
        )
    });
    let inline = me.executor == Executor::Inline;
    let (handle, invoker) = match invoker {
        Some(app) if inline => {
            let report = app.report();
            let h = EngineHandle::start_with(ecfg, transport, Clock::new(), Some(Box::new(app)))?;
            (h, Some((None, report)))
        }
        Some(app) => {
            let report = app.report();
            (
                EngineHandle::start(ecfg, transport, Clock::new())?,
                Some((Some(app), report)),
            )
        }
        None => (EngineHandle::start(ecfg, transport, Clock::new())?, None),
    };
    let _reporter = crate::control::start_reporter(&cfg, idx, handle.probe(), join_token);
    tracing::info!(
        "member {member}: waiting for every member (timeout {}s)",
        startup.as_secs()
    );
    handle
        .wait_ready(startup)
        .map_err(|e| anyhow!("member {member}: {e}"))?;
    tracing::info!("member {member}: all members present");
    match me.role {
        Role::Invoker => {
            let Some((app, report)) = invoker else {
                bail!("member {member}: invoker without its application");
            };
            tracing::info!(
                "member {member}: functions run {}",
                if inline {
                    "inline in the polling thread"
                } else {
                    "in an application thread"
                }
            );
            if let Some(app) = app {
                run_invoker(&handle, app)?;
            }
            let rep = handle.join();
            tracing::info!(
                "member {member}: polling loop stalls over 1 ms: {}, longest {} us; contended spells {}; retransmitted {} slots",
                rep.stalls_over_1ms,
                rep.longest_stall_us,
                rep.contended_spells,
                rep.proto.retransmitted_slots
            );
            let r = report.lock().map(|r| r.clone()).unwrap_or_default();
            tracing::info!(
                "member {member}: executed {} requests, {} failed",
                r.executed,
                r.failed
            );
            if let Some(e) = rep.error {
                bail!("member {member}: {e}");
            }
        }
        Role::Trigger => {
            let Some(wpath) = workload else {
                // Serve: create the pipelines' queues and run until a shutdown is delivered.
                for p in &cfg.pipelines {
                    for q in p.queue_specs() {
                        handle.submit(&Op::Create(q))?;
                    }
                }
                loop {
                    match handle.next_event(Duration::from_millis(200)) {
                        Some(ev) if matches!(ev.effect, Effect::Shutdown { .. }) => break,
                        _ if handle.is_finished() => bail!("member {member}: {}", handle.status()),
                        _ => {}
                    }
                }
                handle.join();
                return Ok(());
            };
            let spec: WorkloadSpec = serde_json::from_str(
                &std::fs::read_to_string(wpath)
                    .with_context(|| format!("reading {}", wpath.display()))?,
            )
            .with_context(|| format!("parsing {}", wpath.display()))?;
            let pipeline = cfg
                .pipelines
                .iter()
                .find(|p| p.name == spec.pipeline)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: no pipeline named {:?} in the group configuration",
                        wpath.display(),
                        spec.pipeline
                    )
                })?;
            let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
            let mut rep = run_trigger(&handle, pipeline, &spec, &names)?;
            handle.submit(&Op::Shutdown { by: handle.me() })?;
            let er = handle.join();
            tracing::info!(
                "member {member}: polling loop stalls over 1 ms: {}, longest {} us; contended spells {}; retransmitted {} slots",
                er.stalls_over_1ms,
                er.longest_stall_us,
                er.contended_spells,
                er.proto.retransmitted_slots
            );
            rep.retransmitted_slots = er.proto.retransmitted_slots;
            rep.dropped_frames = er.proto.dropped_total();
            rep.max_batch = er.proto.max_batch;
            let json = serde_json::to_string_pretty(&rep)?;
            match report {
                Some(p) => {
                    std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?
                }
                None => println!("{json}"),
            }
        }
    }
    Ok(())
}
