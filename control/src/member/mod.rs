//! `conveyor node`: runs one member of a group from the group's configuration file: its
//! transport (opened by the dataplane's factory from the file's spec), its engine, and its role
//! (an invoker's functions, a trigger's workload or gateway), with the control plane's agent.

mod sharded;

use crate::config::{Executor, GroupConfig, Role};
use crate::trigger::gateway::{BasicAuth, ControlPlane, Gateway, GatewayConfig};
use crate::trigger::loadgen::{run_trigger, WorkloadSpec};
use anyhow::{anyhow, bail, Context, Result};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::types::MemberId;
use conveyor_dataplane::engine::{Clock, Directive, EngineHandle, Probe, Submitter};
use conveyor_dataplane::invoker::{run_invoker_with, InvokerApp};
use conveyor_dataplane::transport::TransportStats;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a member asked to stop (SIGTERM, SIGINT) waits for the group to let it leave
/// before it stops anyway.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// How long a trigger's gateway, asked to stop, lets its pending calls finish before the
/// member leaves (new calls are refused meanwhile).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// What a member does on a stop signal before it asks to leave (a gateway lets its calls
/// finish), set once its role is running.
type BeforeLeave = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// SIGTERM and SIGINT (`systemctl stop`, Ctrl-C): the member leaves the group gracefully (a
/// view change without it, which re-queues what it held at once rather than after a failure
/// timeout), then ends as usual, with its statistics. Where a leave cannot be (the member is
/// alone in its view, or not serving: a minority, a joiner), or takes longer than
/// [`LEAVE_WAIT`], or at a second signal, the engine stops at once. Returns the flag the
/// handler sets, so that the member's end is not taken for a failure.
fn leave_on_signal(
    member: &str,
    probe: Probe,
    sub: Submitter,
    before_leave: BeforeLeave,
) -> Result<Arc<AtomicBool>> {
    let signalled = Arc::new(AtomicBool::new(false));
    let flag = signalled.clone();
    let member = member.to_string();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            tracing::warn!("member {member}: second signal: stopping without leaving");
            sub.stop_engine();
            return;
        }
        tracing::info!("member {member}: signal received: leaving the group");
        notify_service_manager("STOPPING=1");
        let (probe, sub, member) = (probe.clone(), sub.clone(), member.clone());
        let before = before_leave.clone();
        std::thread::spawn(move || {
            if let Some(f) = before.get() {
                f();
            }
            probe.direct(Directive::Leave);
            let start = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if probe.has_left() || probe.is_finished() {
                    return;
                }
                let live = probe.live();
                let why = if live.members.len() <= 1 && live.status == "serving" {
                    Some("alone in its view: there is no group to leave".to_string())
                } else if matches!(live.status, "minority" | "joining" | "excluded") {
                    Some(format!(
                        "{}: no view change can take its leave",
                        live.status
                    ))
                } else if start.elapsed() >= LEAVE_WAIT {
                    Some(format!("not let go within {}s", LEAVE_WAIT.as_secs()))
                } else {
                    None
                };
                if let Some(why) = why {
                    tracing::warn!("member {member}: stopping without leaving: {why}");
                    sub.stop_engine();
                    return;
                }
            }
        });
    })
    .context("installing the SIGTERM/SIGINT handler")?;
    Ok(signalled)
}

/// The group file is unusable (unreadable, invalid, or without this member): restarting
/// the member cannot help. `conveyor node` then exits with [`BadConfig::EXIT_CODE`]
/// (`EX_CONFIG`), which the systemd unit names in `RestartPreventExitStatus`.
#[derive(Debug)]
pub struct BadConfig(pub anyhow::Error);

impl BadConfig {
    pub const EXIT_CODE: u8 = 78;
}

impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for BadConfig {}

/// Tells the service manager (systemd's `Type=notify`, through `$NOTIFY_SOCKET`) how the
/// member stands: `READY=1` once it serves, `STOPPING=1` when it starts to leave. Without
/// the variable (not started by systemd) it does nothing.
pub fn notify_service_manager(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!("telling the service manager {state:?}: {e}");
    }
}

pub fn run(
    config: &Path,
    member: &str,
    workload: Option<&Path>,
    report: Option<&Path>,
    join_token: Option<String>,
) -> Result<()> {
    let cfg = GroupConfig::load(config).map_err(|e| BadConfig(e.into()))?;
    let idx = cfg.member_index(member).map_err(|e| BadConfig(e.into()))?;
    if cfg.shard_count() > 1 {
        return sharded::run(&cfg, idx, member, workload, report, join_token);
    }
    let me = &cfg.file.members[idx];
    let local = cfg.addresses[idx];
    let ecfg = cfg.engine_config(idx);
    let opened = conveyor_dataplane::transport::open(&cfg.transport_spec(idx))?;
    let (transport, mode) = (opened.transport, opened.description);
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
    let host = crate::executors::FunctionHost::for_engine(submitter.clone(), Clock::new());
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
    let before_leave: BeforeLeave = Arc::new(std::sync::OnceLock::new());
    let signalled = leave_on_signal(
        member,
        handle.probe(),
        handle.submitter(),
        before_leave.clone(),
    )?;
    let _reporter = crate::plane::start_reporter(&cfg, idx, handle.probe(), join_token);
    let _metrics = match &me.metrics_address {
        Some(a) => Some(crate::plane::serve_member_metrics(
            &cfg,
            idx,
            handle.probe(),
            a,
        )?),
        None => None,
    };
    tracing::info!(
        "member {member}: waiting for every member (timeout {}s)",
        startup.as_secs()
    );
    handle
        .wait_ready(startup)
        .map_err(|e| anyhow!("member {member}: {e}"))?;
    tracing::info!("member {member}: all members present");
    notify_service_manager("READY=1");
    match me.role {
        Role::Invoker => {
            let Some((app, report)) = invoker else {
                bail!("member {member}: invoker without its application");
            };
            let resp = start_resp(&cfg, idx, member, &[&handle], max_payload)?;
            let resp_hub = resp.as_ref().map(|r| r.hub.clone());
            tracing::info!(
                "member {member}: functions run {}",
                if inline {
                    "inline in the polling thread"
                } else {
                    "in an application thread"
                }
            );
            std::thread::scope(|sc| -> Result<()> {
                if let (Some(hub), None) = (&resp_hub, &app) {
                    // Functions inline: the ring carries only the Redis server's replies.
                    let handle = &handle;
                    sc.spawn(move || {
                        while !handle.is_finished() {
                            if let Some(ev) = handle.next_event(Duration::from_millis(200)) {
                                hub.on_effect(&ev.effect);
                            }
                        }
                    });
                }
                if let Some(app) = app {
                    let hub = resp_hub.clone();
                    let also = move |e: &Effect| hub.as_ref().is_some_and(|h| h.on_effect(e));
                    match run_invoker_with(&handle, app, also) {
                        Err(_) if signalled.load(Ordering::SeqCst) => {}
                        r => {
                            r?;
                        }
                    }
                }
                Ok(())
            })?;
            drop(resp);
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
            let s = rep.speculation;
            tracing::info!(
                "member {member}: speculation: started {}, confirmed {}, discarded {}, lead_us {}",
                s.started,
                s.confirmed,
                s.discarded,
                s.lead_us.checked_div(s.confirmed).unwrap_or(0)
            );
            if let Some(e) = rep.error {
                bail!("member {member}: {e}");
            }
            if signalled.load(Ordering::SeqCst) {
                tracing::info!("member {member}: stopped at the signal's request");
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
                let resp = start_resp(&cfg, idx, member, &[&handle], max_payload)?;
                let resp_hub = resp.as_ref().map(|r| r.hub.clone());
                if let Some(gw) = &me.gateway {
                    let handle = std::sync::Arc::new(handle);
                    let invokers = invoker_ids(&cfg);
                    let g = Gateway::start(
                        &gateway_config(&cfg, idx, gw, resp_hub.clone())?,
                        handle.clone(),
                        cfg.pipelines.clone(),
                        invokers,
                        max_payload,
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
                        Some(ev) if resp_hub.as_ref().is_some_and(|h| h.on_effect(&ev.effect)) => {}
                        _ if handle.is_finished() => {
                            if handle.has_left() || signalled.load(Ordering::SeqCst) {
                                break;
                            }
                            bail!("member {member}: {}", handle.status())
                        }
                        _ => {}
                    }
                }
                handle.join();
                return Ok(());
            };
            let (spec, pipeline) = load_workload(&cfg, wpath)?;
            let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
            let mut rep = run_trigger(&[&handle], &cfg.shard_map(), pipeline, &spec, &names)?;
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
            write_report(report, &rep)?;
        }
    }
    Ok(())
}

/// A trigger's workload file (JSON, see `WorkloadSpec`) and the group's pipeline it names.
fn load_workload<'a>(
    cfg: &'a GroupConfig,
    path: &Path,
) -> Result<(WorkloadSpec, &'a conveyor_core::pipeline::Pipeline)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let spec: WorkloadSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let pipeline = cfg
        .pipelines
        .iter()
        .find(|p| p.name == spec.pipeline)
        .ok_or_else(|| {
            anyhow!(
                "{}: no pipeline named {:?} in the group configuration",
                path.display(),
                spec.pipeline
            )
        })?;
    Ok((spec, pipeline))
}

/// A trigger's run report, as pretty JSON, to `report` or else to stdout.
fn write_report<T: serde::Serialize>(report: Option<&Path>, rep: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(rep)?;
    match report {
        Some(p) => std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

/// The transport's counters at the end, and the XDP program's if there is one.
fn log_transport(member: &str, t: &TransportStats) {
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
    if t.shared_overflow > 0 {
        tracing::warn!(
            "member {member}: {} frames dropped on the shared device: the shard's engine fell behind (the protocol retransmitted them)",
            t.shared_overflow
        );
    }
    if !t.device.is_empty() {
        let x: Vec<String> = t.device.iter().map(|(k, v)| format!("{k} {v}")).collect();
        tracing::info!("member {member}: device: {}", x.join(", "));
    }
    if !t.xdp.is_empty() {
        let x: Vec<String> = t.xdp.iter().map(|(k, v)| format!("{k} {v}")).collect();
        tracing::info!("member {member}: XDP: {}", x.join(", "));
    }
}

/// The gateway's settings from member `idx`'s `[member.gateway]`.
fn gateway_config(
    cfg: &GroupConfig,
    idx: usize,
    gw: &conveyor_config::GatewaySection,
    resp: Option<Arc<crate::resp::Hub>>,
) -> Result<GatewayConfig> {
    Ok(GatewayConfig {
        address: gw
            .address
            .parse()
            .map_err(|e| anyhow!("member[{idx}].gateway.address {:?}: {e}", gw.address))?,
        timeout: Duration::from_secs(gw.timeout_s),
        workers: gw.workers,
        control: cfg.file.control.as_ref().map(|c| ControlPlane {
            address: c.address.clone(),
            token: c.token.clone(),
        }),
        auth: basic_auth(cfg, idx, gw)?,
        write_timeout: Duration::from_secs(gw.write_timeout_s),
        read_timeout: Duration::from_secs(gw.read_timeout_s),
        resp,
    })
}

/// The member's invokers, by member id.
fn invoker_ids(cfg: &GroupConfig) -> Vec<MemberId> {
    cfg.file
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::Invoker)
        .map(|(i, _)| MemberId(i as u16))
        .collect()
}

/// The gateway's basic auth: the user, and the first line of its password file (relative to
/// the group file).
fn basic_auth(
    cfg: &GroupConfig,
    idx: usize,
    gw: &conveyor_config::GatewaySection,
) -> Result<Option<BasicAuth>> {
    let (Some(user), Some(file)) = (&gw.basic_auth_user, &gw.basic_auth_password_file) else {
        return Ok(None);
    };
    let path = cfg.path.parent().unwrap_or(Path::new(".")).join(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "member[{idx}].gateway.basic_auth_password_file: {}",
            path.display()
        )
    })?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        bail!(
            "member[{idx}].gateway.basic_auth_password_file: {} holds no password on its first line",
            path.display()
        );
    }
    Ok(Some(BasicAuth {
        user: user.clone(),
        password,
    }))
}

/// The member's Redis protocol server, if its section asks for one.
/// The member's Redis protocol server, if its `[member.resp]` asks for one: over its engine,
/// or with shards over its engine of each shard (`handles[s]`), a command ordered in the shard
/// owning its streams by the group file's map.
pub(super) fn start_resp(
    cfg: &GroupConfig,
    idx: usize,
    member: &str,
    handles: &[&EngineHandle],
    max_payload: usize,
) -> Result<Option<crate::resp::RespServer>> {
    let Some(r) = &cfg.file.members[idx].resp else {
        return Ok(None);
    };
    let Some(first) = handles.first() else {
        bail!("member {member}: the Redis protocol needs an engine");
    };
    let routing = crate::resp::Routing {
        submitters: handles.iter().map(|h| h.submitter()).collect(),
        map: cfg.shard_map(),
    };
    let server = crate::resp::RespServer::start(
        crate::resp::RespConfig {
            address: r
                .address
                .parse()
                .map_err(|e| anyhow!("member[{idx}].resp.address {:?}: {e}", r.address))?,
            token: r.token.clone(),
            max_payload,
            group: cfg.file.group.name.clone(),
            member: member.to_string(),
        },
        first.me(),
        routing,
    )?;
    tracing::info!(
        "member {member}: Redis protocol on {} (try: redis-cli -p {} XADD s '*' f v)",
        server.address,
        server.address.port()
    );
    Ok(Some(server))
}
