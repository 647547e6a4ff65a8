//! `conveyor node`: runs one member of a group from the group's configuration file.

use crate::config::{Executor, GroupConfig, Role};
use crate::gateway::{Gateway, GatewayConfig};
use crate::loadgen::{run_trigger, WorkloadSpec};
use anyhow::{anyhow, bail, Context, Result};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::types::MemberId;
use conveyor_dataplane::engine::{Clock, EngineHandle};
use conveyor_dataplane::invoker::{run_invoker, InvokerApp};
use conveyor_dataplane::transport::afxdp::{AfXdpConfig, AfXdpTransport};
use conveyor_dataplane::transport::dpdk::{DpdkConfig, DpdkTransport, EalOptions};
use conveyor_dataplane::transport::impair::Impaired;
use conveyor_dataplane::transport::rdma::ibverbs::{IbvConfig, IbvDevice};
use conveyor_dataplane::transport::rdma::{RdmaConfig, RdmaTransport, Verbs};
use conveyor_dataplane::transport::shm::{ShmConfig, ShmTransport};
use conveyor_dataplane::transport::udp::UdpTransport;
use conveyor_dataplane::transport::Transport;
use conveyor_ebpf::{HookConfig, XdpHook};
use std::net::SocketAddr;
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
    let ecfg = cfg.engine_config(idx);
    let first_view: Vec<usize> = ecfg.view.members.iter().map(|m| usize::from(m.0)).collect();
    let (transport, mode) = open_transport(&cfg, idx, &first_view)?;
    let peers: Vec<String> = cfg
        .file
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, m)| format!("{}@{}", m.name, m.address))
        .collect();
    tracing::info!(
        "member {member} ({:?}) of group {:?}: transport {mode} on {local}; peers: {}",
        me.role,
        cfg.file.group.name,
        peers.join(", ")
    );
    let startup = ecfg.startup_timeout;
    let max_payload = ecfg.proto.max_payload;
    // External functions run on the executors' threads and submit their completions through
    // the engine, once it is started.
    let submitter = std::sync::Arc::new(std::sync::OnceLock::new());
    let host = crate::functions::FunctionHost::for_engine(submitter.clone(), Clock::new());
    let invoker = (me.role == Role::Invoker).then(|| {
        InvokerApp::new(
            ecfg.me,
            cfg.pipelines.clone(),
            me.credits,
            ecfg.proto.max_payload,
        )
        .with_executors(host.clone())
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
    let _ = submitter.set(handle.submitter());
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
            host.stop();
            for line in host.summary() {
                tracing::info!("member {member}: {line}");
            }
            log_transport(member, &rep.transport);
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
                if let Some(gw) = &me.gateway {
                    let handle = std::sync::Arc::new(handle);
                    let invokers = cfg
                        .file
                        .members
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| m.role == Role::Invoker)
                        .map(|(i, _)| MemberId(i as u16))
                        .collect();
                    let g = Gateway::start(
                        &GatewayConfig {
                            address: gw.address.parse().map_err(|e| {
                                anyhow!("member[{idx}].gateway.address {:?}: {e}", gw.address)
                            })?,
                            timeout: Duration::from_secs(gw.timeout_s),
                            workers: gw.workers,
                        },
                        handle.clone(),
                        cfg.pipelines.clone(),
                        invokers,
                        max_payload,
                    )?;
                    let names: Vec<&str> = cfg.pipelines.iter().map(|p| p.name.as_str()).collect();
                    tracing::info!(
                        "member {member}: gateway on http://{} (OpenFaaS routes): POST /function/NAME for {}",
                        g.address,
                        names.join(", ")
                    );
                    g.wait();
                    if let Ok(h) = std::sync::Arc::try_unwrap(handle) {
                        h.join();
                    }
                    return Ok(());
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
            log_transport(member, &er.transport);
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

/// Opens the member's transport as the group file says, with the XDP program on its interface
/// when one is named, and the injected impairments when `group.impair` is set. Returns it with
/// a description for the log (the medium, and for afxdp the mode).
pub(crate) fn open_transport(
    cfg: &GroupConfig,
    idx: usize,
    first_view: &[usize],
) -> Result<(Box<dyn Transport>, String)> {
    let me = &cfg.file.members[idx];
    let member = &me.name;
    let local = cfg.addresses[idx];
    let mut hook = match &me.interface {
        None => None,
        Some(ifname) => {
            // The first view's set is written before the program goes live: peers already
            // running are not dropped while this member starts.
            let h = XdpHook::attach(
                ifname,
                HookConfig {
                    group: cfg.engine_config(idx).group.0,
                    filter: true,
                },
                &crate::xdp::member_set(&cfg.addresses, first_view),
            )
            .map_err(|e| anyhow!("member {member}: member[{idx}].interface = {ifname:?}: attaching the XDP program: {e}"))?;
            Some(h)
        }
    };
    let steering;
    let (inner, mut mode): (Box<dyn Transport>, String) = match cfg.file.group.transport.as_str() {
        "afxdp" => {
            let SocketAddr::V4(local4) = local else {
                bail!("member {member}: the afxdp transport speaks IPv4 only; member[{idx}].address is {local}");
            };
            let ifname = me.interface.clone().unwrap_or_default();
            let t = AfXdpTransport::open(&AfXdpConfig {
                interface: ifname.clone(),
                queue: me.queue,
                local: local4,
                peers: cfg.addresses.clone(),
                max_frame: cfg.file.group.max_frame,
                force_copy: false,
            })
            .map_err(|e| anyhow!("member {member}: starting the afxdp transport: {e}"))?;
            let h = hook
                .as_mut()
                .ok_or_else(|| anyhow!("member {member}: afxdp without an XDP program"))?;
            h.steer(local4.port(), me.queue, t.fd()).map_err(|e| {
                anyhow!(
                    "member {member}: steering port {} to the AF_XDP socket: {e}",
                    local4.port()
                )
            })?;
            steering = Some((local4.port(), me.queue, t.fd()));
            let mode = format!(
                "afxdp ({} mode, {ifname} queue {})",
                if t.zero_copy() { "zero-copy" } else { "copy" },
                me.queue
            );
            (Box::new(t), mode)
        }
        "dpdk" => {
            steering = None;
            let SocketAddr::V4(local4) = local else {
                bail!("member {member}: the dpdk transport speaks IPv4 only; member[{idx}].address is {local}");
            };
            let d = me
                .dpdk
                .as_ref()
                .ok_or_else(|| anyhow!("member {member}: member[{idx}].dpdk is missing"))?;
            let dcfg = DpdkConfig {
                port: d.port.clone(),
                max_frame: cfg.file.group.max_frame,
                rx_descriptors: d.rx_descriptors,
                tx_descriptors: d.tx_descriptors,
                mbufs: d.mbufs,
                poll_us: d.poll_us,
                ..DpdkConfig::new(
                    EalOptions {
                        lcores: d.lcores.clone(),
                        allow: d.allow.clone(),
                        vdevs: d.vdevs.clone(),
                        hugepages: d.hugepages,
                        memory_mb: d.memory_mb,
                        extra: d.eal_args.clone(),
                    },
                    local4,
                    cfg.addresses.clone(),
                )
            };
            let t = DpdkTransport::open(&dcfg).map_err(|e| {
                anyhow!("member {member}: starting the dpdk transport (member[{idx}].dpdk): {e}")
            })?;
            let mode = format!("dpdk (port {})", t.describe());
            (Box::new(t), mode)
        }
        "rdma" => {
            steering = None;
            let r = me.rdma.clone().unwrap_or(crate::config::RdmaSection {
                port: 1,
                poll_us: 50,
                ..Default::default()
            });
            let dev = IbvDevice::open(&IbvConfig {
                device: r.device.clone(),
                port: r.port,
                gid_index: r.gid_index,
            })
            .map_err(|e| {
                anyhow!("member {member}: starting the rdma transport (member[{idx}].rdma): {e}")
            })?;
            let desc = dev.describe();
            let t = RdmaTransport::open(
                &RdmaConfig {
                    group: shm_tag(cfg),
                    me: idx,
                    peers: cfg.addresses.clone(),
                    max_frame: cfg.file.group.max_frame,
                    poll_us: r.poll_us,
                },
                std::sync::Arc::new(dev),
            )
            .map_err(|e| anyhow!("member {member}: starting the rdma transport: {e}"))?;
            (
                Box::new(t),
                format!("rdma ({desc}; side channel TCP {local})"),
            )
        }
        "shm" => {
            steering = None;
            let dir = std::env::var_os("CONVEYOR_SHM_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/dev/shm".into());
            let scfg = ShmConfig {
                dir,
                tag: shm_tag(cfg),
                me: idx,
                members: cfg.addresses.len(),
                max_frame: cfg.file.group.max_frame,
            };
            let t = ShmTransport::open(&scfg)
                .map_err(|e| anyhow!("member {member}: starting the shm transport: {e}"))?;
            let mode = format!("shm (inbox {})", scfg.inbox_path(idx).display());
            (Box::new(t), mode)
        }
        _ => {
            steering = None;
            let udp = UdpTransport::bind(local, cfg.addresses.clone())
                .with_context(|| format!("member {member}: starting the udp transport"))?;
            (Box::new(udp), "udp".to_string())
        }
    };
    let inner: Box<dyn Transport> = match &cfg.impair {
        None => inner,
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
            Box::new(Impaired::new(inner, spec))
        }
    };
    Ok(match hook {
        None => (inner, mode),
        Some(h) => {
            mode.push_str(&format!(
                ", XDP member filter on {} ({})",
                h.interface(),
                if h.is_owner() {
                    "attached by this member"
                } else {
                    "shared with the member that attached it"
                }
            ));
            let hooked = crate::xdp::Hooked::new(inner, h, &cfg.addresses, first_view, steering);
            (Box::new(hooked), mode)
        }
    })
}

/// The transport's counters at the end, and the XDP program's if there is one.
fn log_transport(member: &str, t: &conveyor_dataplane::transport::TransportStats) {
    tracing::info!(
        "member {member}: transport sent {} frames ({} by the kernel's path), received {} ({} by the kernel's path); malformed {}, unknown source {}, send errors {}, not for us {}, unresolved {}",
        t.frames_sent,
        t.kernel_path_sent,
        t.frames_received,
        t.kernel_path_received,
        t.malformed,
        t.unknown_source,
        t.send_errors,
        t.not_for_us,
        t.unresolved
    );
    if !t.device.is_empty() {
        let x: Vec<String> = t.device.iter().map(|(k, v)| format!("{k} {v}")).collect();
        tracing::info!("member {member}: device: {}", x.join(", "));
    }
    if !t.xdp.is_empty() {
        let x: Vec<String> = t.xdp.iter().map(|(k, v)| format!("{k} {v}")).collect();
        tracing::info!("member {member}: XDP: {}", x.join(", "));
    }
}

/// Names this group's shared-memory files apart from other groups' on the host (and from other
/// runs of a group of the same name with another key).
fn shm_tag(cfg: &GroupConfig) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cfg.file.group.name.as_bytes());
    h.update(b"\0");
    h.update(cfg.file.group.key.as_bytes());
    h.finalize().to_hex()[..16].to_string()
}
