//! The control plane: a small HTTP/JSON daemon beside the group, never on the per-message path.
//!
//! Members report to it (`POST /v1/report`, every 500 ms: status, view, counters, queue
//! depths); it serves what they report (`/v1/view`, `/v1/queues`, `/health`, `/metrics` in
//! Prometheus text format) and keeps the pipelines (`/v1/pipelines`: list, get, put, delete;
//! validated, errors naming the field) in a state file that survives restarts. Members keep
//! serving while it is down: a failed report is logged once and retried.
//!
//! Reads are open; changes (`PUT`, `DELETE`, reports) need the group's control token
//! (`Authorization: Bearer TOKEN`): 401 without it.

use crate::config::GroupConfig;
use anyhow::{bail, Context, Result};
use conveyor_core::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a member tells the control plane.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberReport {
    pub member: String,
    pub status: String,
    pub view: u32,
    pub members: Vec<String>,
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub view_changes: u64,
    /// Requests re-queued after their invoker was removed.
    pub requeued: u64,
    pub rejoins: u64,
    /// Join requests this member refused (not admitted).
    #[serde(default)]
    pub joins_refused: u64,
    /// Version of the pipelines the group runs (0: the group file's).
    #[serde(default)]
    pub pipelines_version: u64,
    /// Frames dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub queues: BTreeMap<String, u64>,
    /// The transport's counters: frames sent and received, and the path they took.
    #[serde(default)]
    pub transport: BTreeMap<String, u64>,
    /// The XDP program's counters on the member's interface, by verdict (empty without one).
    #[serde(default)]
    pub xdp: BTreeMap<String, u64>,
}

/// What the control plane answers a member's report: what the member should follow.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReportAnswer {
    /// Version of the pipelines (0: the group file's).
    pub version: u64,
    /// The allowlist, by name (followed by members when `control.admission = "control"`).
    pub admitted: Vec<String>,
    /// The operator asked this member to leave the group.
    pub leave: bool,
}

/// The persisted part: pipelines by name, a version bumped on every change of them, and the
/// allowlist of members that may join.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    version: u64,
    pipelines: BTreeMap<String, serde_json::Value>,
    /// Absent in state files written before admission existed: then the configured list.
    #[serde(default)]
    admitted: Option<BTreeSet<String>>,
}

struct State {
    persisted: Persisted,
    path: PathBuf,
    reports: BTreeMap<String, (Instant, MemberReport)>,
    /// Members of the group file, by name.
    names: Vec<String>,
    join_token: Option<String>,
    max_payload: usize,
    /// Leaves asked for and not yet passed on to the member.
    leave: BTreeSet<String>,
}

impl State {
    fn admitted(&self) -> Vec<String> {
        self.persisted.admitted.iter().flatten().cloned().collect()
    }
}

/// The operation that hands pipelines to the group: their queues (a queue two pipelines name
/// must have one spec) and compact documents, checked against the group's `max_payload`.
pub fn pipelines_op(
    by: conveyor_core::types::MemberId,
    version: u64,
    docs: &BTreeMap<String, serde_json::Value>,
    max_payload: usize,
) -> Result<conveyor_core::queue::Op, String> {
    let mut queues: BTreeMap<String, (String, conveyor_core::queue::QueueSpec)> = BTreeMap::new();
    let mut texts = Vec::new();
    for (name, v) in docs {
        let text = v.to_string();
        let p = Pipeline::from_json(&text).map_err(|e| format!("pipeline {name:?}: {e}"))?;
        for q in p.queue_specs() {
            match queues.get(&q.name) {
                Some((other, spec)) if *spec != q => {
                    return Err(format!(
                        "pipeline {name:?}: queue {:?} is also used by pipeline {other:?} with other options (capacity, order, on_full must match)",
                        q.name
                    ))
                }
                Some(_) => {}
                None => {
                    queues.insert(q.name.clone(), (name.clone(), q));
                }
            }
        }
        texts.push(text);
    }
    let op = conveyor_core::queue::Op::Pipelines {
        by,
        version,
        queues: queues.into_values().map(|(_, q)| q).collect(),
        docs: texts,
    };
    let size = op.encode().len();
    if size > max_payload {
        return Err(format!(
            "the pipelines make a group operation of {size} bytes, above group.max_payload {max_payload}"
        ));
    }
    Ok(op)
}

impl State {
    fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.persisted)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        Ok(())
    }
}

/// An HTTP answer: status and JSON (or text) body.
struct Answer {
    status: u16,
    body: String,
    text: bool,
}

fn json(status: u16, v: serde_json::Value) -> Answer {
    Answer {
        status,
        body: v.to_string(),
        text: false,
    }
}

fn error(status: u16, msg: impl Into<String>) -> Answer {
    json(status, serde_json::json!({ "error": msg.into() }))
}

/// Constant-time comparison of the presented token with the configured one.
fn token_ok(expected: &str, header: Option<&str>) -> bool {
    let Some(got) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (expected.as_bytes(), got.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the control plane listens and its token, from the group file's `[control]`.
pub fn settings(cfg: &GroupConfig) -> Result<(String, String)> {
    let Some(c) = &cfg.file.control else {
        bail!("the group file has no [control] section (address and token)");
    };
    Ok((c.address.clone(), c.token.clone()))
}

/// Runs the control plane until the process is stopped.
pub fn serve(cfg: &GroupConfig, state_path: &Path, listen: Option<&str>) -> Result<()> {
    let (address, token) = settings(cfg)?;
    let address = listen.map(str::to_string).unwrap_or(address);
    let persisted = match std::fs::read(state_path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("reading the control state {}", state_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // First start: the group file's pipelines.
            let mut p = Persisted::default();
            for pl in &cfg.pipelines {
                p.pipelines
                    .insert(pl.name.clone(), serde_json::from_str(&pl.to_json())?);
            }
            p
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
    };
    let mut persisted = persisted;
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let ctl = cfg.file.control.clone();
    if persisted.admitted.is_none() {
        persisted.admitted = Some(match ctl.as_ref().and_then(|c| c.admit.clone()) {
            Some(list) => list.into_iter().collect(),
            None => names.iter().cloned().collect(),
        });
    }
    let state = Arc::new(Mutex::new(State {
        persisted,
        path: state_path.to_path_buf(),
        reports: BTreeMap::new(),
        names,
        join_token: ctl.and_then(|c| c.join_token),
        max_payload: cfg.file.group.max_payload,
        leave: BTreeSet::new(),
    }));
    if let Ok(s) = state.lock() {
        s.save()?;
    }
    let server = tiny_http::Server::http(&address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(
        "control plane of group {:?} on http://{address}, state in {}",
        cfg.file.group.name,
        state_path.display()
    );
    for mut req in server.incoming_requests() {
        let method = req.method().as_str().to_string();
        let url = req.url().to_string();
        let auth = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        let mut body = String::new();
        let answer = if req
            .as_reader()
            .take(1 << 20)
            .read_to_string(&mut body)
            .is_err()
        {
            error(400, "the body is not UTF-8 text")
        } else {
            route(&state, &token, &method, &url, auth.as_deref(), &body)
        };
        let ctype = if answer.text {
            "text/plain; version=0.0.4"
        } else {
            "application/json"
        };
        let resp = tiny_http::Response::from_string(answer.body)
            .with_status_code(answer.status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", ctype)
                    .map_err(|_| anyhow::anyhow!("bad header"))?,
            );
        if let Err(e) = req.respond(resp) {
            tracing::debug!("answering {method} {url}: {e}");
        }
    }
    Ok(())
}

fn route(
    state: &Mutex<State>,
    token: &str,
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: &str,
) -> Answer {
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Ok(mut st) = state.lock() else {
        return error(500, "state lock poisoned");
    };
    let writes = matches!(method, "PUT" | "POST" | "DELETE");
    // A member may put itself on the allowlist with the join token.
    let self_admission = method == "PUT"
        && matches!(parts.as_slice(), ["v1", "admissions", _])
        && st.join_token.as_deref().is_some_and(|t| token_ok(t, auth));
    if writes && !self_admission && !token_ok(token, auth) {
        return error(
            401,
            "this change needs the control token (Authorization: Bearer TOKEN)",
        );
    }
    match (method, parts.as_slice()) {
        ("GET", ["health"]) => json(
            200,
            serde_json::json!({
                "ok": true,
                "version": st.persisted.version,
                "members_reporting": fresh(&st).len(),
            }),
        ),
        ("GET", ["v1", "view"]) => {
            let reports = fresh(&st);
            let latest = reports.iter().map(|r| r.1.view).max().unwrap_or(0);
            let members = reports
                .iter()
                .find(|r| r.1.view == latest)
                .map(|r| r.1.members.clone())
                .unwrap_or_default();
            let by: BTreeMap<&str, serde_json::Value> = st
                .reports
                .iter()
                .map(|(n, (t, r))| {
                    (
                        n.as_str(),
                        serde_json::json!({
                            "status": r.status,
                            "view": r.view,
                            "age_ms": t.elapsed().as_millis() as u64,
                        }),
                    )
                })
                .collect();
            json(
                200,
                serde_json::json!({ "view": latest, "members": members, "reports": by }),
            )
        }
        ("GET", ["v1", "queues"]) => {
            let freshest = st
                .reports
                .values()
                .filter(|(_, r)| r.status == "serving")
                .max_by_key(|(t, r)| (r.view, *t))
                .map(|(_, r)| r.queues.clone())
                .unwrap_or_default();
            json(200, serde_json::json!({ "queues": freshest }))
        }
        ("GET", ["v1", "pipelines"]) => json(
            200,
            serde_json::json!({
                "version": st.persisted.version,
                "pipelines": st.persisted.pipelines,
            }),
        ),
        ("GET", ["v1", "pipelines", name]) => match st.persisted.pipelines.get(*name) {
            Some(p) => json(200, p.clone()),
            None => error(404, format!("no pipeline named {name:?}")),
        },
        ("PUT", ["v1", "pipelines", name]) => match Pipeline::from_json(body) {
            Err(e) => error(400, e.to_string()),
            Ok(p) if p.name != *name => error(
                400,
                format!("name: the document names {:?}, the URL {name:?}", p.name),
            ),
            Ok(p) => {
                let created = !st.persisted.pipelines.contains_key(*name);
                let value = serde_json::from_str(&p.to_json()).unwrap_or_default();
                let mut next = st.persisted.pipelines.clone();
                next.insert(name.to_string(), value);
                let v = st.persisted.version + 1;
                if let Err(e) = pipelines_op(
                    conveyor_core::types::MemberId(u16::MAX),
                    v,
                    &next,
                    st.max_payload,
                ) {
                    return error(409, e);
                }
                st.persisted.pipelines = next;
                st.persisted.version = v;
                match st.save() {
                    Ok(()) => json(
                        if created { 201 } else { 200 },
                        serde_json::json!({ "version": st.persisted.version }),
                    ),
                    Err(e) => error(500, format!("{e:#}")),
                }
            }
        },
        ("DELETE", ["v1", "pipelines", name]) => {
            if st.persisted.pipelines.remove(*name).is_none() {
                return error(404, format!("no pipeline named {name:?}"));
            }
            st.persisted.version += 1;
            match st.save() {
                Ok(()) => json(200, serde_json::json!({ "version": st.persisted.version })),
                Err(e) => error(500, format!("{e:#}")),
            }
        }
        ("POST", ["v1", "report"]) => {
            let de = &mut serde_json::Deserializer::from_str(body);
            match serde_path_to_error::deserialize::<_, MemberReport>(de) {
                Err(e) => error(400, format!("{}: {}", e.path(), e.inner())),
                Ok(r) if !st.names.contains(&r.member) => error(
                    404,
                    format!("member: {:?} is not a member of the group file", r.member),
                ),
                Ok(r) => {
                    let leave = st.leave.remove(&r.member);
                    st.reports.insert(r.member.clone(), (Instant::now(), r));
                    let answer = ReportAnswer {
                        version: st.persisted.version,
                        admitted: st.admitted(),
                        leave,
                    };
                    json(200, serde_json::to_value(answer).unwrap_or_default())
                }
            }
        }
        ("GET", ["v1", "admissions"]) => json(
            200,
            serde_json::json!({ "admitted": st.admitted(), "join_token": st.join_token.is_some() }),
        ),
        ("PUT" | "DELETE", ["v1", "admissions", name]) => {
            if !st.names.iter().any(|n| n == name) {
                return error(404, format!("{name:?} is not a member of the group file"));
            }
            let set = st.persisted.admitted.get_or_insert_with(BTreeSet::new);
            let changed = if method == "PUT" {
                set.insert(name.to_string())
            } else {
                set.remove(*name)
            };
            if changed {
                tracing::info!(
                    "{name} {} the allowlist",
                    if method == "PUT" {
                        "added to"
                    } else {
                        "removed from"
                    }
                );
                if let Err(e) = st.save() {
                    return error(500, format!("{e:#}"));
                }
            }
            json(200, serde_json::json!({ "admitted": st.admitted() }))
        }
        ("POST", ["v1", "members", name, "leave"]) => {
            if !st.names.iter().any(|n| n == name) {
                return error(404, format!("{name:?} is not a member of the group file"));
            }
            st.leave.insert(name.to_string());
            tracing::info!("{name} asked to leave the group (passed on at its next report)");
            json(202, serde_json::json!({ "leaving": name }))
        }
        ("GET", ["metrics"]) => Answer {
            status: 200,
            body: metrics(&st),
            text: true,
        },
        (
            _,
            ["health"]
            | ["metrics"]
            | ["v1", "view" | "queues" | "pipelines" | "report" | "admissions"],
        )
        | (_, ["v1", "pipelines" | "admissions", _])
        | (_, ["v1", "members", _, "leave"]) => {
            error(405, format!("{method} is not allowed on {path}"))
        }
        _ => error(404, format!("no such resource: {path}")),
    }
}

/// Reports younger than 3 s.
fn fresh(st: &State) -> Vec<(&String, &MemberReport)> {
    st.reports
        .iter()
        .filter(|(_, (t, _))| t.elapsed() < Duration::from_secs(3))
        .map(|(n, (_, r))| (n, r))
        .collect()
}

/// The transport counters a member reports, by name.
fn transport_counters(t: &conveyor_dataplane::transport::TransportStats) -> BTreeMap<String, u64> {
    [
        ("frames_sent", t.frames_sent),
        ("frames_received", t.frames_received),
        ("send_errors", t.send_errors),
        ("unknown_source", t.unknown_source),
        ("oversized", t.oversized),
        ("malformed", t.malformed),
        ("kernel_path_sent", t.kernel_path_sent),
        ("kernel_path_received", t.kernel_path_received),
        ("not_for_us", t.not_for_us),
        ("unresolved", t.unresolved),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(t.device.iter().map(|(k, v)| (format!("device_{k}"), *v)))
    .collect()
}

/// A counter of `/metrics`: name, help, and how to read it from a report.
type Counter = (&'static str, &'static str, fn(&MemberReport) -> u64);

fn metrics(st: &State) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let counters: [Counter; 6] = [
        (
            "conveyor_delivered_total",
            "Messages delivered in total order",
            |r| r.delivered,
        ),
        (
            "conveyor_retransmitted_slots_total",
            "Slots retransmitted",
            |r| r.retransmitted_slots,
        ),
        (
            "conveyor_view_changes_total",
            "Views installed after the first",
            |r| r.view_changes,
        ),
        (
            "conveyor_failovers_total",
            "Requests re-queued after their invoker was removed",
            |r| r.requeued,
        ),
        (
            "conveyor_rejoins_total",
            "Times a member came back as a new member",
            |r| r.rejoins,
        ),
        (
            "conveyor_joins_refused_total",
            "Join requests refused (not admitted)",
            |r| r.joins_refused,
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (m, (_, r)) in &st.reports {
            let _ = writeln!(out, "{name}{{member=\"{m}\"}} {}", f(r));
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_frames_dropped_total Frames dropped, by reason\n# TYPE conveyor_frames_dropped_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (reason, v) in &r.dropped {
            let _ = writeln!(
                out,
                "conveyor_frames_dropped_total{{member=\"{m}\",reason=\"{reason}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_transport_frames_total The transport's frame counters (kernel_path_*: frames of the afxdp transport that took the kernel's UDP path; device_*: the dpdk port's own counters)\n# TYPE conveyor_transport_frames_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (c, v) in &r.transport {
            let _ = writeln!(
                out,
                "conveyor_transport_frames_total{{member=\"{m}\",counter=\"{c}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_xdp_frames_total Frames seen by the XDP program on the member's interface, by verdict (not_member, not_in_view: dropped)\n# TYPE conveyor_xdp_frames_total counter"
    );
    for (m, (_, r)) in &st.reports {
        for (verdict, v) in &r.xdp {
            let _ = writeln!(
                out,
                "conveyor_xdp_frames_total{{member=\"{m}\",verdict=\"{verdict}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_queue_depth Requests waiting, by queue\n# TYPE conveyor_queue_depth gauge"
    );
    for (m, (_, r)) in &st.reports {
        for (q, v) in &r.queues {
            let _ = writeln!(
                out,
                "conveyor_queue_depth{{member=\"{m}\",queue=\"{q}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_view Installed view id\n# TYPE conveyor_view gauge"
    );
    for (m, (_, r)) in &st.reports {
        let _ = writeln!(out, "conveyor_view{{member=\"{m}\"}} {}", r.view);
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_pipelines_version Version of the pipelines the member runs (0: the group file's)\n# TYPE conveyor_pipelines_version gauge"
    );
    for (m, (_, r)) in &st.reports {
        let _ = writeln!(
            out,
            "conveyor_pipelines_version{{member=\"{m}\"}} {}",
            r.pipelines_version
        );
    }
    let _ = writeln!(
        out,
        "# HELP conveyor_member_up Reported within the last 3 s\n# TYPE conveyor_member_up gauge"
    );
    for (m, (t, _)) in &st.reports {
        let up = u8::from(t.elapsed() < Duration::from_secs(3));
        let _ = writeln!(out, "conveyor_member_up{{member=\"{m}\"}} {up}");
    }
    out
}

/// The member's agent of the control plane, on a thread of its own: every 500 ms it sends the
/// member's state, and follows the answer: the allowlist (with `control.admission =
/// "control"`), a newer version of the pipelines (fetched and submitted to the group, where
/// the replicas apply it once, in order), a leave. A joiner holding the join token puts itself
/// on the allowlist. A control plane that is down costs nothing but a log line: the member
/// serves on with what it last heard.
pub fn start_reporter(
    cfg: &GroupConfig,
    me: usize,
    handle: conveyor_dataplane::engine::Probe,
    join_token: Option<String>,
) -> Option<std::thread::JoinHandle<()>> {
    use conveyor_core::proto::Admission;
    use conveyor_core::types::MemberId;
    use conveyor_dataplane::engine::Directive;
    let c = cfg.file.control.clone()?;
    let by_control = c.admission == crate::config::AdmissionMode::Control;
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let my_name = names.get(me).cloned().unwrap_or_default();
    let max_payload = cfg.file.group.max_payload;
    let base = format!("http://{}", c.address);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(300))
        .build();
    std::thread::Builder::new()
        .name("conveyor-report".into())
        .spawn(move || {
            let mut down_said = false;
            // The pipelines version last submitted, and when (a lost submission is retried).
            let mut submitted: Option<(u64, Instant)> = None;
            let mut version_said = 0u64;
            while !handle.is_finished() {
                let live = handle.live();
                if live.status == "joining" && by_control {
                    if let Some(t) = &join_token {
                        let r = agent
                            .put(&format!("{base}/v1/admissions/{my_name}"))
                            .set("Authorization", &format!("Bearer {t}"))
                            .call();
                        if let Err(e) = r {
                            tracing::warn!("asking the control plane to admit {my_name}: {e}");
                        }
                    }
                }
                let report = MemberReport {
                    member: my_name.clone(),
                    status: live.status.to_string(),
                    view: live.view,
                    members: live
                        .members
                        .iter()
                        .map(|m| names.get(m.0 as usize).cloned().unwrap_or_default())
                        .collect(),
                    delivered: live.proto.delivered,
                    retransmitted_slots: live.proto.retransmitted_slots,
                    view_changes: live.proto.view_changes,
                    requeued: live.requeued,
                    rejoins: live.rejoins,
                    joins_refused: live.proto.joins_refused,
                    pipelines_version: live.pipelines_version,
                    dropped: conveyor_core::wire::WireError::ALL
                        .iter()
                        .map(|e| (e.label().to_string(), live.proto.dropped(*e)))
                        .chain(
                            conveyor_core::proto::ProtoDrop::ALL
                                .iter()
                                .map(|d| (d.label().to_string(), live.proto.dropped_by(*d))),
                        )
                        .collect(),
                    queues: live.queues.iter().map(|(q, d)| (q.clone(), *d as u64)).collect(),
                    transport: transport_counters(&live.transport),
                    xdp: live
                        .transport
                        .xdp
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                };
                let r = agent
                    .post(&format!("{base}/v1/report"))
                    .set("Authorization", &format!("Bearer {}", c.token))
                    .send_json(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.into_json::<ReportAnswer>().map_err(|e| e.to_string()));
                let answer = match r {
                    Ok(a) => {
                        down_said = false;
                        a
                    }
                    Err(e) => {
                        if !down_said {
                            down_said = true;
                            tracing::warn!("the control plane at {base} does not answer ({e}); serving on, retrying");
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                };
                if by_control {
                    let ids = answer
                        .admitted
                        .iter()
                        .filter_map(|n| names.iter().position(|m| m == n))
                        .map(|i| MemberId(i as u16))
                        .collect();
                    handle.direct(Directive::Admit(Admission::Listed(ids)));
                }
                if answer.leave {
                    handle.direct(Directive::Leave);
                }
                let retry = submitted
                    .is_none_or(|(v, t)| v != answer.version || t.elapsed() > Duration::from_secs(2));
                if answer.version > live.pipelines_version && live.status == "serving" && retry {
                    match fetch_pipelines(&agent, &base, answer.version)
                        .and_then(|docs| {
                            pipelines_op(MemberId(me as u16), answer.version, &docs, max_payload)
                        }) {
                        Ok(op) => {
                            tracing::info!(
                                version = answer.version,
                                "passing the control plane's pipelines on to the group"
                            );
                            handle.direct(Directive::Submit(op));
                            submitted = Some((answer.version, Instant::now()));
                        }
                        Err(e) if version_said != answer.version => {
                            version_said = answer.version;
                            tracing::error!(version = answer.version, "cannot pass the control plane's pipelines on: {e}");
                        }
                        Err(_) => {}
                    }
                } else if answer.version < live.pipelines_version
                    && version_said != answer.version
                {
                    version_said = answer.version;
                    tracing::warn!(
                        "the control plane's pipelines (version {}) are older than the group's (version {}): was its state file replaced? the group keeps its own",
                        answer.version,
                        live.pipelines_version
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .ok()
}

/// The control plane's pipelines, if still at `version` (else the next round gets the newer).
fn fetch_pipelines(
    agent: &ureq::Agent,
    base: &str,
    version: u64,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    #[derive(Deserialize)]
    struct All {
        version: u64,
        pipelines: BTreeMap<String, serde_json::Value>,
    }
    let all: All = agent
        .get(&format!("{base}/v1/pipelines"))
        .call()
        .map_err(|e| e.to_string())?
        .into_json()
        .map_err(|e| e.to_string())?;
    if all.version != version {
        return Err(format!("changed meanwhile (now version {})", all.version));
    }
    Ok(all.pipelines)
}

/// `conveyor ctl`: a client of the control plane.
pub fn ctl(address: &str, token: Option<&str>, args: &[String]) -> Result<()> {
    let base = if address.starts_with("http") {
        address.trim_end_matches('/').to_string()
    } else {
        format!("http://{address}")
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let auth = |r: ureq::Request| match token {
        Some(t) => r.set("Authorization", &format!("Bearer {t}")),
        None => r,
    };
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let resp = match a.as_slice() {
        ["health"] => agent.get(&format!("{base}/health")).call(),
        ["view"] => agent.get(&format!("{base}/v1/view")).call(),
        ["queues"] => agent.get(&format!("{base}/v1/queues")).call(),
        ["metrics"] => agent.get(&format!("{base}/metrics")).call(),
        ["pipelines"] | ["pipelines", "list"] => agent.get(&format!("{base}/v1/pipelines")).call(),
        ["pipelines", "get", name] => agent.get(&format!("{base}/v1/pipelines/{name}")).call(),
        ["pipelines", "put", file] => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let p = Pipeline::from_json(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            auth(agent.put(&format!("{base}/v1/pipelines/{}", p.name))).send_string(&text)
        }
        ["pipelines", "delete", name] => {
            auth(agent.delete(&format!("{base}/v1/pipelines/{name}"))).call()
        }
        ["admissions"] => agent.get(&format!("{base}/v1/admissions")).call(),
        ["admit", name] => auth(agent.put(&format!("{base}/v1/admissions/{name}"))).call(),
        ["revoke", name] => auth(agent.delete(&format!("{base}/v1/admissions/{name}"))).call(),
        ["leave", name] => auth(agent.post(&format!("{base}/v1/members/{name}/leave"))).call(),
        _ => bail!("usage: conveyor ctl [--control ADDR] [--token T] health | view | queues | metrics | pipelines [list | get NAME | put FILE | delete NAME] | admissions | admit NAME | revoke NAME | leave NAME"),
    };
    match resp {
        Ok(r) => {
            println!("{}", r.into_string()?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            bail!("the control plane answered {code}: {body}")
        }
        Err(e) => bail!("cannot reach the control plane at {base}: {e}"),
    }
}
