//! The trigger gateway: OpenFaaS's HTTP routes in front of the group, so that clients of an
//! OpenFaaS deployment can call a Conveyor pipeline unchanged.
//!
//! - `POST /function/{name}[/path][?query]` (or GET, PUT, PATCH, DELETE) runs the pipeline
//!   named `{name}` (or, failing that, the one whose entry step is `{name}`) with the request
//!   body as the entry payload, and answers with the run's output: the last function's status
//!   and headers when it gave them, else 200 and the request's content type; a failed step's
//!   status (500 crash, 502 bad output, 504 past the function's timeout) and the error; a
//!   function's own error answer (an http function's or a web action's 4xx/5xx) as it gave it; 504 when no output came within the gateway's timeout. The call's
//!   method, path, query and headers travel with every step's request ([`Http`]), for the
//!   functions that read them; headers taking more than a quarter of `max_payload` are 431.
//! - `POST /async-function/{name}` answers 202 at once with `X-Call-Id`; with `X-Callback-Url`,
//!   the output is then POSTed there with OpenFaaS's `X-Function-Status`, `X-Duration-Seconds`,
//!   `X-Function-Name` and `X-Call-Id` headers.
//! - `GET /healthz`; OpenFaaS's `/system/` API (the function list, one entry per pipeline with
//!   its invocation count and the invokers in the view as replicas; one function; info;
//!   namespaces; deploy, update and delete through the control plane; scale) and `/metrics`:
//!   see [`system`].
//! - An unknown function is 404, a body larger than one request can carry is 413 (the limit
//!   leaves room for the completions that carry it on, once per branch where a step fans out;
//!   a function whose output outgrows it fails the call with 500).
//!
//! A run whose pipeline fans out ends in several branches; the answer is the first branch's
//! output to reach the trigger (the others are counted, not returned).
//!
//! The gateway is part of a trigger member: its worker threads submit pushes through the
//! member's engine, and one dispatcher thread reads the engine's events and hands each of this
//! trigger's completions to the request waiting for it (registered before the push is
//! submitted, so no completion can come first). Pipelines changed through the control plane
//! apply to the next call.

use crate::http;
use anyhow::{anyhow, Result};
use conveyor_core::pipeline::Pipeline;
use conveyor_core::queue::{Effect, Http, Meta, Op};
use conveyor_core::shard::ShardMap;
use conveyor_core::types::{MemberId, RequestId};
use conveyor_dataplane::engine::{EngineHandle, Event};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod system;
pub use system::{BasicAuth, ControlPlane, NAMESPACE};

/// Settings of a trigger's gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub address: SocketAddr,
    /// How long a synchronous call waits for its output.
    pub timeout: Duration,
    /// HTTP worker threads (each holds one synchronous call at a time).
    pub workers: usize,
    /// The group's control plane, through which `/system/functions` changes pipelines.
    pub control: Option<ControlPlane>,
    /// Basic auth of the `/system/` routes.
    pub auth: Option<BasicAuth>,
    /// A client that does not read its answer for this long loses its connection.
    pub write_timeout: Duration,
    /// A client that takes longer to send a request's head, or pauses longer inside its body,
    /// loses its connection (408 for a body).
    pub read_timeout: Duration,
    /// The member's Redis protocol server, if any: its replies and stream news come through
    /// the events this gateway reads.
    pub resp: Option<Arc<crate::resp::Hub>>,
}

/// How a call ended.
#[derive(Clone, Debug)]
enum Outcome {
    /// The output, with the function's status and headers when it gave them.
    Done(Vec<u8>, Option<Box<Http>>),
    /// The status (500 crash, 502 bad output, 504 timeout) and why.
    Failed(u16, String),
}

/// Headers that belong to one HTTP connection, not to the call: not passed on.
const HOP_BY_HOP: [&str; 8] = [
    "Connection",
    "Keep-Alive",
    "Transfer-Encoding",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
    "Content-Length",
];

pub(crate) fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Who waits for a run's first output.
enum Waiter {
    Sync(mpsc::Sender<Outcome>),
    Async {
        callback: Option<String>,
        function: String,
        call_id: String,
        started: Instant,
    },
}

/// What the threads share.
struct Shared {
    /// Shard 0's member (the only one without shards): whose id names the calls, whose views
    /// count the invokers and whose pipelines are followed.
    handle: Arc<EngineHandle>,
    /// This process's member of each shard, by shard: a call is pushed to the shard owning
    /// its pipeline's entry queue, and its output comes back there.
    shards: Vec<Arc<EngineHandle>>,
    /// The shard map calls are routed by, and when it was last read from the members.
    map: Mutex<(u64, ShardMap)>,
    /// With shards: the shard each waiting call was pushed into (a member back in one shard's
    /// group after a removal answers for that shard's calls only).
    pushed_to: Mutex<HashMap<RequestId, usize>>,
    /// The pipelines served, each with its body limit (computed when they are installed).
    pipelines: RwLock<Vec<(Arc<Pipeline>, usize)>>,
    pending: Mutex<HashMap<RequestId, Waiter>>,
    next_id: AtomicU64,
    /// Invocations per pipeline, for /system/functions.
    calls: Mutex<BTreeMap<String, u64>>,
    /// Invokers in the current view, for /system/functions' replicas.
    invokers: AtomicU64,
    invoker_ids: Vec<MemberId>,
    max_payload: usize,
    callbacks: mpsc::Sender<Callback>,
    stop: Arc<AtomicBool>,
    /// The member is stopping: new calls are refused (503) while the pending ones finish.
    draining: AtomicBool,
    /// OpenFaaS's `/system/` API and the metrics.
    system: system::System,
    /// The member's Redis protocol server's replies and news.
    resp: Option<Arc<crate::resp::Hub>>,
}

/// A result to POST to a caller's callback URL.
struct Callback {
    url: String,
    function: String,
    call_id: String,
    status: u16,
    seconds: f64,
    body: Vec<u8>,
}

/// A running gateway; [`Gateway::wait`] returns when the member is shut down.
pub struct Gateway {
    threads: Vec<JoinHandle<()>>,
    callbacks: JoinHandle<()>,
    server: Arc<http::Server>,
    pub address: SocketAddr,
    shared: Arc<Shared>,
}

/// Lets the calls a gateway is serving finish before its member stops (see
/// [`Gateway::drainer`]).
/// Holds the gateway weakly: its callbacks thread ends once every strong holder is gone.
#[derive(Clone)]
pub struct Drainer(std::sync::Weak<Shared>);

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer").finish_non_exhaustive()
    }
}

impl Drainer {
    /// Refuses new calls from now on (503) and waits, at most `max`, until no caller waits
    /// for an output (synchronous calls, and asynchronous ones with a callback). Returns how
    /// many still wait.
    pub fn drain(&self, max: Duration) -> usize {
        let Some(s) = self.0.upgrade() else {
            return 0;
        };
        s.draining.store(true, Ordering::SeqCst);
        let start = Instant::now();
        loop {
            let waiting = s
                .pending
                .lock()
                .map(|p| {
                    p.values()
                        .filter(|w| {
                            matches!(
                                w,
                                Waiter::Sync(_)
                                    | Waiter::Async {
                                        callback: Some(_),
                                        ..
                                    }
                            )
                        })
                        .count()
                })
                .unwrap_or(0);
            if waiting == 0 || start.elapsed() >= max || s.handle.is_finished() {
                return waiting;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("address", &self.address)
            .finish()
    }
}

fn call_id(id: RequestId) -> String {
    format!("{:016x}", id.0)
}

impl Gateway {
    /// Starts serving on `cfg.address`; `invokers` are the group's members that run
    /// functions.
    pub fn start(
        cfg: &GatewayConfig,
        handle: Arc<EngineHandle>,
        pipelines: Vec<Pipeline>,
        invokers: Vec<MemberId>,
        max_payload: usize,
    ) -> Result<Gateway> {
        Self::start_sharded(
            cfg,
            vec![handle],
            ShardMap::default(),
            pipelines,
            invokers,
            max_payload,
        )
    }

    /// [`Gateway::start`] for a sharded group: `shards` holds this process's member of each
    /// shard (by shard), `map` the map to route by until the members show a newer one that
    /// every shard applied.
    pub fn start_sharded(
        cfg: &GatewayConfig,
        shards: Vec<Arc<EngineHandle>>,
        map: ShardMap,
        pipelines: Vec<Pipeline>,
        invokers: Vec<MemberId>,
        max_payload: usize,
    ) -> Result<Gateway> {
        let handle = shards
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("a gateway needs a member"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (cb_tx, cb_rx) = mpsc::channel::<Callback>();
        // Request ids stay unique across restarts of this trigger: the counter starts at the
        // wall clock's microseconds.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let me = handle.me();
        let shared = Arc::new(Shared {
            handle,
            shards,
            map: Mutex::new((0, map)),
            pushed_to: Mutex::new(HashMap::new()),
            pipelines: RwLock::new(served(me, max_payload, pipelines)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(start),
            calls: Mutex::new(BTreeMap::new()),
            invokers: AtomicU64::new(invokers.len() as u64),
            invoker_ids: invokers,
            max_payload,
            callbacks: cb_tx,
            stop: stop.clone(),
            draining: AtomicBool::new(false),
            system: system::System {
                control: cfg.control.clone(),
                auth: cfg.auth.clone(),
                metrics: system::Metrics::new(),
            },
            resp: cfg.resp.clone(),
        });
        let opts = http::Options {
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            ..http::Options::new(cfg.workers)
        };
        let (s, timeout) = (shared.clone(), cfg.timeout);
        let server = Arc::new(
            http::Server::start(&cfg.address.to_string(), "conveyor-gw", opts, move |rq| {
                serve(&s, rq, timeout)
            })
            .map_err(|e| anyhow!("the gateway cannot listen on {}: {e}", cfg.address))?,
        );
        let address = server.address();
        let (s, srv) = (shared.clone(), server.clone());
        let threads = vec![std::thread::Builder::new()
            .name("conveyor-gw-events".into())
            .spawn(move || {
                // One reader per shard; when one ends (its shard shut down, its member
                // stopped) the others follow.
                std::thread::scope(|sc| {
                    for k in 1..s.shards.len() {
                        let s = &s;
                        sc.spawn(move || {
                            dispatcher(s, k);
                            s.stop.store(true, Ordering::SeqCst);
                        });
                    }
                    dispatcher(&s, 0);
                    s.stop.store(true, Ordering::SeqCst);
                });
                answer_the_rest(&s);
                srv.stop();
            })?];
        let callbacks = std::thread::Builder::new()
            .name("conveyor-gw-callbacks".into())
            .spawn(move || callbacks(cb_rx))?;
        Ok(Gateway {
            threads,
            callbacks,
            server,
            address,
            shared,
        })
    }

    /// What lets this gateway's calls finish before its member stops.
    pub fn drainer(&self) -> Drainer {
        Drainer(Arc::downgrade(&self.shared))
    }

    /// Waits until the member is shut down.
    pub fn wait(self) {
        let Gateway {
            threads,
            callbacks,
            server,
            shared,
            ..
        } = self;
        // Ours must go first: the callbacks thread ends when the last holder of the shared
        // state (and so of its channel) is gone: the dispatcher, then the server's handler
        // (the dispatcher stops the server when it ends).
        drop(shared);
        for t in threads {
            let _ = t.join();
        }
        drop(server);
        let _ = callbacks.join();
    }
}

/// The body limit: what one push can carry once the request's own fields are encoded, and what
/// a completion carrying the same bytes as output (a continuation or the result) can, so that
/// an accepted body never makes a completion too large on the way.
fn body_limit(me: MemberId, max_payload: usize, p: &Pipeline, http: Option<&Http>) -> usize {
    let big = Meta {
        sent_us: u64::MAX,
        exec_us: u64::MAX,
        hops: u16::MAX,
        submitted_us: u64::MAX,
        order_us: u64::MAX,
        handoff_us: u64::MAX,
        origin_shard: Some(conveyor_core::shard::ShardId(u16::MAX)),
    };
    let mut entry = p.entry_request(RequestId(u64::MAX), Vec::new(), big);
    entry.http = http.map(|h| Box::new(h.clone()));
    let push = Op::Push {
        pusher: me,
        req: entry.clone(),
    };
    // The longest step name stands for any continuation's.
    let longest = p
        .steps
        .keys()
        .max_by_key(|k| k.len())
        .cloned()
        .unwrap_or_default();
    let mut next = entry.clone();
    next.step = longest.clone();
    next.queue = format!("{}.{longest}", p.name);
    next.instance = u64::MAX;
    let complete = |outputs: Vec<conveyor_core::queue::Request>, result| Op::Complete {
        consumer: me,
        id: RequestId(u64::MAX),
        instance: u64::MAX,
        step: longest.clone(),
        outputs,
        result,
        reply: None,
        meta: big,
        credits: u32::MAX,
    };
    // A step that fans out carries its output once per continuation.
    let fan = p
        .steps
        .values()
        .map(|st| st.next.iter().map(|r| r.to.len()).sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    let overhead = [
        push.encode().len(),
        complete(vec![next; fan], None).encode().len(),
        complete(Vec::new(), Some(Vec::new())).encode().len(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    max_payload.saturating_sub(overhead + 16) / fan
}

/// What a 413 says: the limit, and the setting that makes it.
fn too_large(limit: usize, max_payload: usize) -> String {
    format!(
        "the body is larger than {limit} bytes, what one request carries (group.max_payload is \
         {max_payload}: raise it in the group file, with group.max_frame, up to 65000 bytes a \
         frame; the transports that write Ethernet frames carry at most one MTU)\n"
    )
}

/// The pipelines to serve, each with its body limit.
fn served(me: MemberId, max_payload: usize, ps: Vec<Pipeline>) -> Vec<(Arc<Pipeline>, usize)> {
    ps.into_iter()
        .map(|p| {
            let limit = body_limit(me, max_payload, &p, None);
            (Arc::new(p), limit)
        })
        .collect()
}

/// The pipeline named `name` (or whose entry step is), with its body limit; `NAME.conveyor`
/// (OpenFaaS's `NAME.NAMESPACE`) is `NAME`.
fn find(s: &Shared, name: &str) -> Option<(Arc<Pipeline>, usize)> {
    let ps = s.pipelines.read().ok()?;
    let by = |name: &str| {
        ps.iter()
            .find(|(p, _)| p.name == name)
            .or_else(|| ps.iter().find(|(p, _)| p.entry == name))
            .cloned()
    };
    by(name).or_else(|| by(system::strip_namespace(name)).filter(|_| name.contains('.')))
}

type Reply = http::Response;

fn reply(status: u16, body: impl Into<Vec<u8>>, headers: &[(&str, String)]) -> Reply {
    let mut r = http::Response::new(status, body);
    for (k, v) in headers {
        r.add_header(k, v.clone());
    }
    r
}

/// One call, on one of the server's worker threads.
fn serve(s: &Shared, mut req: http::Request, timeout: Duration) {
    let function = system::called(s, req.path());
    if let Some(f) = &function {
        s.system.metrics.started(f);
    }
    let t0 = Instant::now();
    let answer = route(s, &mut req, timeout);
    if let Some(f) = &function {
        s.system.metrics.finished(f, answer.status(), t0.elapsed());
    }
    req.respond(answer);
}

fn route(s: &Shared, req: &mut http::Request, timeout: Duration) -> Reply {
    let method = req.method().to_string();
    let path = req.path().to_string();
    if let Some(r) = system::route(s, req, &method, &path) {
        return r;
    }
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/healthz") => reply(200, "OK", &[]),
        ("OPTIONS", "/healthz") => {
            reply(204, Vec::new(), &[("Allow", "GET, HEAD, OPTIONS".into())])
        }
        (_, "/healthz") => system::not_allowed("GET, HEAD, OPTIONS"),
        ("POST", p) if p.starts_with("/async-function/") => {
            call(s, req, &p["/async-function/".len()..], true, timeout)
        }
        (_, p) if p.starts_with("/async-function/") => system::not_allowed("POST"),
        // OpenFaaS passes any method to a function: the call's method travels with it.
        (_, p) if p.starts_with("/function/") => {
            call(s, req, &p["/function/".len()..], false, timeout)
        }
        _ => reply(404, format!("no route {path}\n"), &[]),
    }
}

fn functions(s: &Shared) -> Reply {
    let calls = s.calls.lock().map(|c| c.clone()).unwrap_or_default();
    let replicas = s.invokers.load(Ordering::Relaxed);
    let list: Vec<serde_json::Value> = s
        .pipelines
        .read()
        .map(|ps| {
            ps.iter()
                .map(|(p, _)| {
                    serde_json::json!({
                        "name": p.name,
                        "image": "conveyor/pipeline",
                        "namespace": "conveyor",
                        "invocationCount": calls.get(&p.name).copied().unwrap_or(0),
                        "replicas": replicas,
                        "availableReplicas": replicas,
                        "labels": {"conveyor.entry": p.entry, "conveyor.steps": p.steps.len().to_string()},
                        "annotations": {},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    reply(
        200,
        serde_json::to_vec(&list).unwrap_or_default(),
        &[("Content-Type", "application/json".into())],
    )
}

fn request_header(req: &http::Request, name: &str) -> Option<String> {
    req.header(name).map(str::to_string)
}

/// What a function behind a proxy expects to learn of its caller, as OpenFaaS's gateway
/// passes it on: `X-Forwarded-For` (the caller's address, after any the call already carries),
/// `X-Forwarded-Host` (the Host it called), `X-Forwarded-Proto`, and the call's `X-Call-Id`.
fn forwarded(headers: &mut Vec<(String, String)>, req: &http::Request, cid: &str) {
    let mut set = |name: &str, value: String| {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value));
    };
    let ip = req.remote_addr().ip().to_string();
    let before = request_header(req, "X-Forwarded-For");
    set(
        "X-Forwarded-For",
        match before {
            Some(b) if !b.trim().is_empty() => format!("{}, {ip}", b.trim()),
            _ => ip,
        },
    );
    if let Some(host) = request_header(req, "Host") {
        set("X-Forwarded-Host", host);
    }
    if request_header(req, "X-Forwarded-Proto").is_none() {
        set("X-Forwarded-Proto", "http".to_string());
    }
    set("X-Call-Id", cid.to_string());
}

fn call(
    s: &Shared,
    req: &mut http::Request,
    name: &str,
    asynchronous: bool,
    timeout: Duration,
) -> Reply {
    // `/function/NAME/rest?query`: the function sees `/rest` and the query (OpenFaaS's).
    let (name, sub) = match name.find('/') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, "/"),
    };
    let Some((p, _)) = find(s, name) else {
        return reply(404, format!("function {name:?} not found\n"), &[]);
    };
    let me = s.handle.me();
    let id = RequestId::new(me, s.next_id.fetch_add(1, Ordering::Relaxed));
    let cid = call_id(id);
    let mut http = Http {
        method: req.method().to_string(),
        path: sub.to_string(),
        query: req.query().to_string(),
        headers: req
            .headers()
            .iter()
            .filter(|(k, _)| !hop_by_hop(k))
            .cloned()
            .collect(),
        status: 0,
    };
    forwarded(&mut http.headers, req, &cid);
    // The call's details travel with every step's request: they count against what one
    // request carries, and may not take more than a quarter of it.
    let http_size = serde_json::to_vec(&http).map(|v| v.len()).unwrap_or(0);
    if http_size > s.max_payload / 4 {
        return reply(
            431,
            format!(
                "the request's headers take {http_size} bytes, more than the {} one call may carry\n",
                s.max_payload / 4
            ),
            &[],
        );
    }
    let limit = body_limit(s.handle.me(), s.max_payload, &p, Some(&http));
    let body = match req.read_body(limit) {
        Ok(b) => b,
        Err(None) => return reply(413, too_large(limit, s.max_payload), &[]),
        Err(Some(e)) => return http::unreadable(&e),
    };
    if s.draining.load(Ordering::SeqCst) {
        return reply(
            503,
            "this gateway's member is stopping (it leaves the group): call another gateway of the group, or again once it is back\n",
            &[("Retry-After", "1".to_string())],
        );
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let waiter = if asynchronous {
        Waiter::Async {
            callback: request_header(req, "X-Callback-Url"),
            function: p.name.clone(),
            call_id: cid.clone(),
            started,
        }
    } else {
        Waiter::Sync(tx)
    };
    let meta = Meta {
        sent_us: s.handle.clock().now_us(),
        submitted_us: s.handle.clock().now_us(),
        ..Meta::default()
    };
    let mut entry = p.entry_request(id, body, meta);
    entry.http = Some(Box::new(http));
    if let Ok(mut pending) = s.pending.lock() {
        pending.insert(id, waiter);
    }
    let queue = entry.queue.clone();
    let op = Op::Push {
        pusher: me,
        req: entry,
    };
    let (k, target) = owner(s, &queue);
    if s.shards.len() > 1 {
        if let Ok(mut p) = s.pushed_to.lock() {
            p.insert(id, k);
        }
    }
    if let Err(e) = target.submit(&op) {
        forget(s, id);
        return reply(
            503,
            format!("the member cannot take requests now: {e}\n"),
            &[],
        );
    }
    if let Ok(mut c) = s.calls.lock() {
        *c.entry(p.name.clone()).or_default() += 1;
    }
    let ctype = request_header(req, "Content-Type");
    if asynchronous {
        return reply(
            202,
            Vec::new(),
            &[("X-Call-Id", cid), ("X-Function-Name", p.name.clone())],
        );
    }
    let outcome = rx.recv_timeout(timeout);
    let secs = format!("{:.6}", started.elapsed().as_secs_f64());
    let headers = vec![
        ("X-Call-Id", cid),
        ("X-Duration-Seconds", secs),
        ("X-Function-Name", p.name.clone()),
    ];
    match outcome {
        Ok(Outcome::Done(out, from)) => {
            // The function's status and headers when it gave them (http, openwhisk, exec's
            // content type), else 200 and the request's content type.
            let mut status = 200;
            let mut own: Vec<(String, String)> = Vec::new();
            if let Some(h) = from {
                if (100..=599).contains(&h.status) {
                    status = h.status;
                }
                own = h
                    .headers
                    .into_iter()
                    .filter(|(k, _)| !hop_by_hop(k))
                    .collect();
            }
            if !own
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
            {
                own.push((
                    "Content-Type".into(),
                    ctype.unwrap_or_else(|| "application/octet-stream".into()),
                ));
            }
            let mut r = reply(status, out, &headers);
            for (k, v) in own {
                r.add_header(&k, v);
            }
            r
        }
        Ok(Outcome::Failed(status, e)) => reply(status, format!("{e}\n"), &headers),
        Err(_) => {
            forget(s, id);
            reply(
                504,
                format!("no output within {} s\n", timeout.as_secs_f64()),
                &headers,
            )
        }
    }
}

/// Reads the member's events: hands this trigger's outputs to their callers, follows pipeline
/// changes and the view's invokers. Returns at shutdown.
fn dispatcher(s: &Shared, shard: usize) {
    let me = s.handle.me();
    let handle = &s.shards[shard];
    while !s.stop.load(Ordering::SeqCst) {
        let Some(Event { effect, .. }) = handle.next_event(Duration::from_millis(100)) else {
            if handle.is_finished() {
                break;
            }
            continue;
        };
        if shard > 0
            && matches!(
                effect,
                Effect::Pipelines { .. } | Effect::ViewInstalled { .. }
            )
        {
            // Shard 0's pipelines and invokers are the ones shown.
            continue;
        }
        if s.resp.as_ref().is_some_and(|h| h.on_effect(&effect)) {
            continue;
        }
        let (id, outcome) = match effect {
            Effect::Completed {
                id,
                terminal: true,
                result,
                reply,
                meta,
                ..
            } if id.origin() == me => {
                s.system.metrics.stages(&meta);
                (id, Outcome::Done(result.unwrap_or_default(), reply))
            }
            Effect::Failed {
                id,
                error,
                step,
                status,
                ..
            } if id.origin() == me => (
                id,
                Outcome::Failed(
                    if (400..=599).contains(&status) {
                        status
                    } else {
                        500
                    },
                    format!("step {step:?} failed: {error}"),
                ),
            ),
            Effect::Rejected {
                id, queue, reason, ..
            } if id.origin() == me => (
                id,
                Outcome::Failed(
                    503,
                    format!("queue {queue:?} refused the request ({reason}): try again later"),
                ),
            ),
            Effect::Overwritten { id, queue, .. } if id.origin() == me => (
                id,
                Outcome::Failed(
                    503,
                    format!(
                        "queue {queue:?} was full and dropped this request for a newer one \
                         (its policy is to overwrite)"
                    ),
                ),
            ),
            Effect::Rejoined {
                pending,
                outcomes_dropped,
                ..
            } => {
                rejoined(s, shard, &pending, outcomes_dropped);
                continue;
            }
            Effect::Pipelines { docs, .. } => {
                let parsed: Result<Vec<Pipeline>, _> =
                    docs.iter().map(|d| Pipeline::from_json(d)).collect();
                if let Ok(ps) = parsed {
                    let ps = served(me, s.max_payload, ps);
                    if let Ok(mut cur) = s.pipelines.write() {
                        *cur = ps;
                    }
                }
                continue;
            }
            Effect::ViewInstalled { members, .. } => {
                let n = members.iter().filter(|m| s.invoker_ids.contains(m)).count();
                s.invokers.store(n as u64, Ordering::Relaxed);
                continue;
            }
            Effect::Shutdown { .. } => break,
            _ => continue,
        };
        let waiter = forget(s, id);
        match waiter {
            Some(Waiter::Sync(tx)) => {
                let _ = tx.send(outcome);
            }
            Some(Waiter::Async {
                callback: Some(url),
                function,
                call_id,
                started,
            }) => {
                let (status, body) = match outcome {
                    Outcome::Done(b, h) => (
                        h.map(|h| h.status)
                            .filter(|s| (100..=599).contains(s))
                            .unwrap_or(200),
                        b,
                    ),
                    Outcome::Failed(status, e) => (status, e.into_bytes()),
                };
                let _ = s.callbacks.send(Callback {
                    url,
                    function,
                    call_id,
                    status,
                    seconds: started.elapsed().as_secs_f64(),
                    body,
                });
            }
            // An asynchronous call without a callback, or a later branch of a fan-out.
            _ => {}
        }
    }
}

/// Where a call into `queue` goes: the member of the shard owning it, by the newest map every
/// shard applied (read from the members at most a hundred times a second). A push into a
/// shard that no longer owns the queue is forwarded by it: a stale map costs a hop, never the
/// call.
fn owner<'a>(s: &'a Shared, queue: &str) -> (usize, &'a EngineHandle) {
    if s.shards.len() < 2 {
        return (0, &s.handle);
    }
    let Ok(mut m) = s.map.lock() else {
        return (0, &s.handle);
    };
    let now = s.handle.clock().now_us();
    if now >= m.0 + 10_000 {
        m.0 = now;
        if let Some(newer) =
            conveyor_dataplane::shard::applied_map(s.shards.iter().map(|h| h.probe()))
                .filter(|x| x.version > m.1.version)
        {
            m.1 = newer;
        }
    }
    let k = usize::from(m.1.owner(queue).0).min(s.shards.len() - 1);
    (k, &s.shards[k])
}

/// Takes call `id`'s waiter away (its answer given, or given up), with the shard it went to.
fn forget(s: &Shared, id: RequestId) -> Option<Waiter> {
    if let Ok(mut p) = s.pushed_to.lock() {
        p.remove(&id);
    }
    s.pending.lock().ok().and_then(|mut p| p.remove(&id))
}

/// Whoever still waits when the gateway's member stops gets a clear answer, not a dropped
/// connection or a timeout.
fn answer_the_rest(s: &Shared) {
    let why = if s.handle.has_left() {
        "this gateway's member left the group before the output arrived"
    } else {
        "this gateway's member stopped before the output arrived"
    };
    let left: Vec<Waiter> = s
        .pending
        .lock()
        .map(|mut p| p.drain().map(|(_, w)| w).collect())
        .unwrap_or_default();
    for w in left {
        let msg = format!("{why} (the request may still run in the group; its output is lost)");
        fail(s, w, msg);
    }
    s.stop.store(true, Ordering::SeqCst);
}

/// Answers a waiting call 503 with `msg` (an asynchronous one through its callback, if any).
fn fail(s: &Shared, w: Waiter, msg: String) {
    match w {
        Waiter::Sync(tx) => {
            let _ = tx.send(Outcome::Failed(503, msg));
        }
        Waiter::Async {
            callback: Some(url),
            function,
            call_id,
            started,
        } => {
            let _ = s.callbacks.send(Callback {
                url,
                function,
                call_id,
                status: 503,
                seconds: started.elapsed().as_secs_f64(),
                body: msg.into_bytes(),
            });
        }
        Waiter::Async { .. } => {}
    }
}

/// This trigger came back after a view change removed it (its links went dark past the failure
/// timeout) and was told the outcomes it missed, handed to their callers like any other; its
/// engine pushed again what the group never ordered. `pending` names every request of this
/// trigger the group holds or was given again. If the group dropped outcomes while this trigger
/// was out (more than it keeps), a call waiting for a request not in `pending` cannot be told
/// apart from a finished one: it fails with 503 saying so.
fn rejoined(s: &Shared, shard: usize, pending: &[RequestId], outcomes_dropped: bool) {
    let sharded = s.shards.len() > 1;
    let pushed_to = s.pushed_to.lock().map(|p| p.clone()).unwrap_or_default();
    let unknown: Vec<RequestId> = if outcomes_dropped {
        s.pending
            .lock()
            .map(|p| {
                p.keys()
                    .filter(|id| pending.binary_search(id).is_err())
                    // With shards, only the calls pushed into the shard it is back in.
                    .filter(|id| !sharded || pushed_to.get(id) == Some(&shard))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    tracing::warn!(
        "gateway: back in the group after a removal; {} of its calls failed (outcome unknown)",
        unknown.len()
    );
    for id in unknown {
        let waiter = forget(s, id);
        let msg = format!(
            "this gateway's member was out of the group, and the group no longer holds what \
             became of this call (it keeps the last {} outcomes of each member's calls): \
             whether it ran is unknown",
            conveyor_core::queue::KEPT_OUTCOMES
        );
        if let Some(w) = waiter {
            fail(s, w, msg);
        }
    }
}

/// POSTs asynchronous results to their callback URLs, one at a time, in order.
fn callbacks(rx: mpsc::Receiver<Callback>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    for c in rx {
        let r = agent
            .post(&c.url)
            .set("X-Function-Status", &c.status.to_string())
            .set("X-Duration-Seconds", &format!("{:.6}", c.seconds))
            .set("X-Function-Name", &c.function)
            .set("X-Call-Id", &c.call_id)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(&c.body);
        if let Err(e) = r {
            tracing::warn!("gateway: callback of call {} to {}: {e}", c.call_id, c.url);
        }
    }
}
