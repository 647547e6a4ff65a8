//! `http`: a warm HTTP server, started once and sent each request, as of-watchdog's http mode
//! runs a function: the call's method, path, query, headers and body are passed on; the
//! server's status, headers and body come back. The server is started with `PORT` set to a
//! free port (or reached at `upstream_url`), is ready when it accepts connections, and serves
//! up to `concurrency` requests of this invoker at once. A status of 400 or more ends the run
//! with the function's answer as it is (status, headers, body), as OpenFaaS's gateway passes
//! it on; no later step runs. A server that exits is counted as a crash, its request answers 502, and
//! the next request starts it again. An `X-Conveyor-Route` response header names the route for
//! the pipeline's rules.

use super::{free_port, read_limited, wait_listening, Pool, Proc};
use crate::trigger::gateway::hop_by_hop;
use conveyor_core::pipeline::{External, Output};
use conveyor_core::queue::Http;
use conveyor_dataplane::invoker::{FunctionError, Job};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

/// The response header a function names its route with.
pub const ROUTE_HEADER: &str = "X-Conveyor-Route";

struct State {
    proc: Option<Proc>,
    /// `http://host:port` of the running (or external) server.
    base: Option<String>,
    in_flight: u32,
    last_used: Instant,
}

/// The pool's server.
pub struct Shared {
    state: Mutex<State>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(f: &External) -> Shared {
        Shared {
            state: Mutex::new(State {
                proc: None,
                base: None,
                in_flight: 0,
                last_used: Instant::now(),
            }),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(std::time::Duration::from_secs(2))
                // A function's redirect is its answer, for its caller to follow or not.
                .redirects(0)
                .max_idle_connections_per_host(f.executor.concurrency as usize)
                .build(),
        }
    }

    /// The server's base URL, starting it if it is not running.
    fn ensure(&self, pool: &Pool, st: &mut State) -> Result<String, FunctionError> {
        let f = &pool.f;
        if f.executor.command.is_empty() {
            // A server run by someone else.
            return Ok(f
                .executor
                .upstream_url
                .clone()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string());
        }
        if let Some(p) = st.proc.as_mut() {
            match p.exited() {
                None => return Ok(st.base.clone().unwrap_or_default()),
                Some(status) => {
                    tracing::warn!("function {}: the server exited ({status})", f.name);
                    pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
                    st.proc = None;
                }
            }
        }
        let started = Instant::now();
        let (base, env) = match &f.executor.upstream_url {
            Some(u) => (u.trim_end_matches('/').to_string(), Vec::new()),
            None => {
                let port = free_port().map_err(|e| {
                    FunctionError::new(500, format!("no free port for {}: {e}", f.name))
                })?;
                (
                    format!("http://127.0.0.1:{port}"),
                    vec![("PORT".to_string(), port.to_string())],
                )
            }
        };
        let addr = address(&base).ok_or_else(|| {
            FunctionError::new(500, format!("{base} does not name a reachable address"))
        })?;
        let mut p = Proc::spawn(f, &env, Stdio::null(), Stdio::inherit(), Stdio::inherit())
            .map_err(|e| FunctionError::new(500, e.to_string()))?;
        if let Err(e) = wait_listening(addr, &mut p, pool.start_timeout()) {
            pool.stats.starts.fetch_add(1, Ordering::Relaxed);
            pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            return Err(FunctionError::new(
                502,
                format!("the server of {} did not start: {e}", f.name),
            ));
        }
        pool.started(started.elapsed());
        tracing::debug!(
            "function {}: server ready on {base} in {} ms",
            f.name,
            started.elapsed().as_millis()
        );
        st.proc = Some(p);
        st.base = Some(base.clone());
        Ok(base)
    }

    pub fn call(&self, pool: &Pool, job: &Job) -> Result<Output, FunctionError> {
        let f = &pool.f;
        let base = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| FunctionError::new(500, "executor state poisoned"))?;
            let base = self.ensure(pool, &mut st)?;
            st.in_flight += 1;
            base
        };
        let r = self.send(pool, job, &base);
        if let Ok(mut st) = self.state.lock() {
            st.in_flight -= 1;
            st.last_used = Instant::now();
            if let Err(e) = &r {
                // A server that died answers nothing: counted, and started again next time.
                if e.status == 502 {
                    if let Some(status) = st.proc.as_mut().and_then(|p| p.exited()) {
                        tracing::warn!("function {}: the server exited ({status})", f.name);
                        pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
                        st.proc = None;
                    }
                }
            }
        }
        r
    }

    fn send(&self, pool: &Pool, job: &Job, base: &str) -> Result<Output, FunctionError> {
        let f = &pool.f;
        let h = job.req.http.as_deref();
        let method = h.map(|h| h.method.as_str()).unwrap_or("POST");
        let mut url = format!("{base}{}", h.map(|h| h.path.as_str()).unwrap_or("/"));
        if let Some(q) = h.map(|h| h.query.as_str()).filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let mut rq = self.agent.request(method, &url).timeout(pool.timeout());
        for (k, v) in h.map(|h| h.headers.as_slice()).unwrap_or(&[]) {
            if !hop_by_hop(k) && !k.eq_ignore_ascii_case("Host") {
                rq = rq.set(k, v);
            }
        }
        let started = Instant::now();
        let resp = match rq.send_bytes(&job.req.payload) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                if started.elapsed() >= pool.timeout() {
                    return Err(FunctionError::new(
                        504,
                        format!(
                            "{} did not answer within its timeout of {} ms",
                            f.name, f.executor.timeout_ms
                        ),
                    ));
                }
                return Err(FunctionError::new(
                    502,
                    format!("{} gave no valid HTTP answer: {t}", f.name),
                ));
            }
        };
        let status = resp.status();
        let mut headers = Vec::new();
        let mut route = None;
        // Every value of a repeated header (two `Set-Cookie`s are two cookies): the names
        // come once per line, `all` gives every line's value.
        let mut names = resp.headers_names();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        for name in names {
            for v in resp.all(&name) {
                if name.eq_ignore_ascii_case(ROUTE_HEADER) {
                    route = Some(v.to_string());
                } else if !hop_by_hop(&name) && !name.eq_ignore_ascii_case("Date") {
                    headers.push((super::canonical_header(&name), v.to_string()));
                }
            }
        }
        let body = read_limited(resp.into_reader(), job.max_output()).map_err(|e| {
            if started.elapsed() >= pool.timeout() {
                FunctionError::new(504, format!("{}: the answer timed out: {e}", f.name))
            } else {
                FunctionError::new(502, format!("{}: {e}", f.name))
            }
        })?;
        Ok(Output {
            payload: body,
            route,
            http: Some(Box::new(Http {
                status,
                headers,
                ..Http::default()
            })),
            failed: false,
        })
    }

    /// Stops the server if it has been idle past the pool's bound; says whether it did.
    pub fn reclaim(&self, pool: &Pool) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        if st.proc.is_some()
            && st.in_flight == 0
            && st.last_used.elapsed() >= pool.reclaim_after()
            && pool.jobs.lock().map(|q| q.is_empty()).unwrap_or(false)
        {
            tracing::debug!("function {}: server idle, reclaimed", pool.f.name);
            st.proc = None;
            return true;
        }
        false
    }

    pub fn stop(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.proc = None;
        }
    }
}

/// The socket address of `http://host:port/...`.
fn address(base: &str) -> Option<SocketAddr> {
    let rest = base.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    hostport.to_socket_addrs().ok()?.next()
}
