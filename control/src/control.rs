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
use conveyor_dataplane::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Frames dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub queues: BTreeMap<String, u64>,
}

/// The persisted part: pipelines by name, and a version bumped on every change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    version: u64,
    pipelines: BTreeMap<String, serde_json::Value>,
}

struct State {
    persisted: Persisted,
    path: PathBuf,
    reports: BTreeMap<String, (Instant, MemberReport)>,
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
    let state = Arc::new(Mutex::new(State {
        persisted,
        path: state_path.to_path_buf(),
        reports: BTreeMap::new(),
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
    if writes && !token_ok(token, auth) {
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
                st.persisted.pipelines.insert(name.to_string(), value);
                st.persisted.version += 1;
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
                Ok(r) => {
                    st.reports.insert(r.member.clone(), (Instant::now(), r));
                    json(200, serde_json::json!({ "version": st.persisted.version }))
                }
            }
        }
        ("GET", ["metrics"]) => Answer {
            status: 200,
            body: metrics(&st),
            text: true,
        },
        (_, ["health"] | ["metrics"] | ["v1", "view" | "queues" | "pipelines" | "report"])
        | (_, ["v1", "pipelines", _]) => error(405, format!("{method} is not allowed on {path}")),
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

/// A counter of `/metrics`: name, help, and how to read it from a report.
type Counter = (&'static str, &'static str, fn(&MemberReport) -> u64);

fn metrics(st: &State) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let counters: [Counter; 5] = [
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
        "# HELP conveyor_member_up Reported within the last 3 s\n# TYPE conveyor_member_up gauge"
    );
    for (m, (t, _)) in &st.reports {
        let up = u8::from(t.elapsed() < Duration::from_secs(3));
        let _ = writeln!(out, "conveyor_member_up{{member=\"{m}\"}} {up}");
    }
    out
}

/// Sends this member's state to the control plane every 500 ms, on a thread of its own; a
/// control plane that is down costs nothing but a log line.
pub fn start_reporter(
    cfg: &GroupConfig,
    me: usize,
    handle: conveyor_dataplane::engine::Probe,
) -> Option<std::thread::JoinHandle<()>> {
    let c = cfg.file.control.clone()?;
    let names: Vec<String> = cfg.file.members.iter().map(|m| m.name.clone()).collect();
    let url = format!("http://{}/v1/report", c.address);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(300))
        .build();
    std::thread::Builder::new()
        .name("conveyor-report".into())
        .spawn(move || {
            let mut down_said = false;
            while !handle.is_finished() {
                let live = handle.live();
                let report = MemberReport {
                    member: names.get(me).cloned().unwrap_or_default(),
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
                    dropped: conveyor_dataplane::wire::WireError::ALL
                        .iter()
                        .map(|e| (e.label().to_string(), live.proto.dropped(*e)))
                        .chain(
                            conveyor_dataplane::proto::ProtoDrop::ALL
                                .iter()
                                .map(|d| (d.label().to_string(), live.proto.dropped_by(*d))),
                        )
                        .collect(),
                    queues: live.queues.iter().map(|(q, d)| (q.clone(), *d as u64)).collect(),
                };
                let r = agent
                    .post(&url)
                    .set("Authorization", &format!("Bearer {}", c.token))
                    .send_json(&report);
                match r {
                    Ok(_) => down_said = false,
                    Err(e) if !down_said => {
                        down_said = true;
                        tracing::warn!("the control plane at {url} does not answer ({e}); serving on, retrying");
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .ok()
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
        _ => bail!("usage: conveyor ctl [--control ADDR] [--token T] health | view | queues | metrics | pipelines [list | get NAME | put FILE | delete NAME]"),
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
