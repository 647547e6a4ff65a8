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
//!
//! Parts: [`api`] (the routes), [`metrics`] (Prometheus text), [`agent`] (the member's side:
//! reports and following the answers), [`ctl`] (`conveyor ctl`, the client).

pub mod agent;
mod api;
pub mod ctl;
mod metrics;

pub use agent::{serve_member_metrics, serve_shard_metrics, start_reporter, start_shard_reporter};
pub use ctl::ctl;

use api::{error, route};

use crate::config::GroupConfig;
use anyhow::{bail, Context, Result};
use conveyor_core::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a member tells the control plane.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberReport {
    pub member: String,
    /// The shard this report is of (a sharded group: one report per shard and member).
    #[serde(default)]
    pub shard: u16,
    /// The version of the shard map the member's shard applied (0: none).
    #[serde(default)]
    pub shard_map_version: u64,
    pub status: String,
    pub view: u32,
    pub members: Vec<String>,
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub view_changes: u64,
    /// Requests re-queued after their invoker was removed.
    pub requeued: u64,
    /// Requests this member started before their assignment was delivered (speculation),
    /// and of those, confirmed by the delivered order or discarded (their result dropped).
    #[serde(default)]
    pub speculated: u64,
    #[serde(default)]
    pub speculations_confirmed: u64,
    #[serde(default)]
    pub speculations_discarded: u64,
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
    /// The durable log (a member with a data directory): `persisted` (position on disk),
    /// `held_for_disks`, `refused_for_disks`, `disk_full` (0 or 1), `failed_writes`,
    /// `records`, `bytes`, `snapshots`. Empty without one.
    #[serde(default)]
    pub log: BTreeMap<String, u64>,
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
    /// The control plane's shard map (a sharded group): a member whose shard applied an older
    /// one submits it to its shard, again until the shard applies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_map: Option<conveyor_core::shard::ShardMap>,
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
    /// A sharded group's map (from the group file at the first start; changed by
    /// `PUT /v1/shards/queues/QUEUE`, each change a new version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard_map: Option<conveyor_core::shard::ShardMap>,
}

struct State {
    persisted: Persisted,
    path: PathBuf,
    /// The members' latest reports, by member and shard (0 without shards).
    reports: BTreeMap<(String, u16), (Instant, MemberReport)>,
    /// Shards of the group (1 without `[shards]`).
    shards: u16,
    /// Members of the group file, by name.
    names: Vec<String>,
    join_token: Option<String>,
    max_payload: usize,
    /// `[group] durability`: written into the pipelines put through the API (see
    /// `conveyor_core::pipeline::settle_durability`).
    durability: conveyor_core::queue::Durability,
    /// Leaves asked for and not yet passed on to the member's member of a shard.
    leave: BTreeSet<(String, u16)>,
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
    if cfg.shard_count() > 1 && persisted.shard_map.is_none() {
        persisted.shard_map = Some(cfg.shard_map());
    }
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
        shards: cfg.shard_count(),
        names,
        join_token: ctl.and_then(|c| c.join_token),
        max_payload: cfg.file.group.max_payload,
        durability: cfg.file.group.durability,
        leave: BTreeSet::new(),
    }));
    if let Ok(s) = state.lock() {
        s.save()?;
    }
    // Several workers: a client slow in its body holds one of them (at most READ_TIMEOUT
    // per pause), not the members' reports; one slow in its head holds none.
    let opts = crate::http::Options {
        read_timeout: READ_TIMEOUT,
        write_timeout: WRITE_TIMEOUT,
        ..crate::http::Options::new(WORKERS)
    };
    let server = crate::http::Server::start(&address, "conveyor-control", opts, move |req| {
        answer(&state, &token, req)
    })
    .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(
        "control plane of group {:?} on http://{address}, state in {}",
        cfg.file.group.name,
        state_path.display()
    );
    server.wait();
    Ok(())
}

/// HTTP workers of the control plane.
const WORKERS: usize = 8;
/// A client that does not read its answer for this long loses its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that takes longer to send a request's head, or pauses longer in its body, loses
/// its connection (408 for a body).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body the control plane reads (a pipeline document, a report).
const MAX_BODY: usize = 1 << 20;

fn answer(state: &Mutex<State>, token: &str, mut req: crate::http::Request) {
    let method = req.method().to_string();
    let url = req.url().to_string();
    let auth = req.header("Authorization").map(str::to_string);
    let answer = match req.read_body(MAX_BODY) {
        Err(None) => error(413, format!("the body is larger than {MAX_BODY} bytes")),
        Err(Some(e)) if e.kind() == std::io::ErrorKind::TimedOut => error(408, e.to_string()),
        Err(Some(e)) => error(400, format!("the body could not be read: {e}")),
        Ok(body) => match String::from_utf8(body) {
            Err(_) => error(400, "the body is not UTF-8 text"),
            Ok(body) => route(state, token, &method, &url, auth.as_deref(), &body),
        },
    };
    let ctype = if answer.text {
        "text/plain; version=0.0.4"
    } else {
        "application/json"
    };
    let mut resp = crate::http::Response::new(answer.status, answer.body);
    let allow = api::allowed(url.split('?').next().unwrap_or(""));
    let headers = [
        Some(("Content-Type", ctype)),
        (answer.status == 401)
            .then_some(("WWW-Authenticate", r#"Bearer realm="conveyor control""#)),
        (answer.status == 405).then_some(("Allow", allow)),
    ];
    for (k, v) in headers.into_iter().flatten() {
        resp.add_header(k, v);
    }
    req.respond(resp);
}

/// Shard 0's reports younger than 3 s.
fn fresh(st: &State) -> Vec<(&String, &MemberReport)> {
    fresh_of(st, 0)
}

/// Shard `shard`'s reports younger than 3 s.
fn fresh_of(st: &State, shard: u16) -> Vec<(&String, &MemberReport)> {
    st.reports
        .iter()
        .filter(|((_, s), (t, _))| *s == shard && t.elapsed() < Duration::from_secs(3))
        .map(|((n, _), (_, r))| (n, r))
        .collect()
}
