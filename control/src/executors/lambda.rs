//! `lambda`: the invoker serves the AWS Lambda Runtime API (2018-06-01) to a runtime process it
//! starts with `AWS_LAMBDA_RUNTIME_API` set, so that an unmodified custom runtime (a
//! `bootstrap`, or a runtime interface client) pulls its work from the queue:
//!
//! - `GET /2018-06-01/runtime/invocation/next` waits for a request and answers with its body
//!   and the `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//!   `Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id` headers;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` gives its output (202);
//! - `POST /2018-06-01/runtime/invocation/{id}/error` fails it (202; the step fails with 500 and
//!   the runtime's error document);
//! - `POST /2018-06-01/runtime/init/error`: the runtime could not start (502).
//!
//! An unknown request id is 400 (`InvalidRequestID`), an output larger than one request can
//! carry 413 and the step fails. Each worker has its own runtime process and its own API
//! server (one invocation at a time, as in a Lambda sandbox). Past `timeout_ms` the process is
//! killed ("Task timed out after N seconds", 504); a runtime that exits fails its request with
//! "Runtime exited with error" (502). Either way the next request starts a fresh one.

use super::{read_limited, Pool, Proc, Warm};
use conveyor_core::pipeline::Output;
use conveyor_dataplane::invoker::{FunctionError, Job};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "/2018-06-01/runtime/";

struct Invocation {
    id: String,
    payload: Vec<u8>,
    deadline_ms: u64,
}

#[derive(Default)]
struct State {
    /// A runtime asked for work (it is up).
    asked: bool,
    pending: Option<Invocation>,
    in_flight: Option<String>,
    result: Option<Result<Vec<u8>, FunctionError>>,
    init_error: Option<String>,
    closed: bool,
}

struct Api {
    state: Mutex<State>,
    changed: Condvar,
    function: String,
    max_output: usize,
}

/// A runtime process and the API server it talks to.
pub struct Runtime {
    proc: Proc,
    api: Arc<Api>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("proc", &self.proc).finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.proc.kill();
        if let Ok(mut st) = self.api.state.lock() {
            st.closed = true;
        }
        self.api.changed.notify_all();
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json_reply(status: u16, body: String) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut r = tiny_http::Response::from_data(body.into_bytes()).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        r.add_header(h);
    }
    r
}

fn error_doc(kind: &str, message: &str) -> String {
    serde_json::json!({"errorMessage": message, "errorType": kind}).to_string()
}

impl Api {
    fn serve(self: &Arc<Self>, mut rq: tiny_http::Request) {
        let url = rq.url().to_string();
        let method = rq.method().as_str().to_string();
        let Some(path) = url.strip_prefix(PREFIX) else {
            let _ = rq.respond(json_reply(404, error_doc("NotFound", "no such route")));
            return;
        };
        let parts: Vec<&str> = path.split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["invocation", "next"]) => self.next(rq),
            ("POST", ["invocation", id, what @ ("response" | "error")]) => {
                let body = read_limited(rq.as_reader(), self.max_output);
                let mut st = match self.state.lock() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                if st.in_flight.as_deref() != Some(*id) {
                    drop(st);
                    let _ = rq.respond(json_reply(
                        400,
                        error_doc("InvalidRequestID", &format!("no invocation {id} in flight")),
                    ));
                    return;
                }
                st.in_flight = None;
                let (status, reply, result) = match (body, *what) {
                    (Err(e), _) => (
                        413,
                        error_doc("RequestEntityTooLarge", &e.to_string()),
                        Err(FunctionError::new(
                            502,
                            format!("{}: the runtime's {what}: {e}", self.function),
                        )),
                    ),
                    (Ok(b), "response") => (202, r#"{"status":"OK"}"#.into(), Ok(b)),
                    (Ok(b), _) => (
                        202,
                        r#"{"status":"OK"}"#.into(),
                        Err(FunctionError::new(
                            500,
                            format!(
                                "{} failed: {}",
                                self.function,
                                String::from_utf8_lossy(&b).trim()
                            ),
                        )),
                    ),
                };
                st.result = Some(result);
                drop(st);
                self.changed.notify_all();
                let _ = rq.respond(json_reply(status, reply));
            }
            ("POST", ["init", "error"]) => {
                let b = read_limited(rq.as_reader(), 4096).unwrap_or_default();
                if let Ok(mut st) = self.state.lock() {
                    st.init_error = Some(String::from_utf8_lossy(&b).trim().to_string());
                }
                self.changed.notify_all();
                let _ = rq.respond(json_reply(202, r#"{"status":"OK"}"#.into()));
            }
            _ => {
                let _ = rq.respond(json_reply(
                    404,
                    error_doc("NotFound", &format!("no route {method} {url}")),
                ));
            }
        }
    }

    /// Long poll: waits for an invocation (or for the runtime to be stopped).
    fn next(&self, rq: tiny_http::Request) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.asked = true;
        self.changed.notify_all();
        let inv = loop {
            if st.closed {
                drop(st);
                let _ = rq.respond(json_reply(
                    500,
                    error_doc("ServiceStopping", "the invoker stopped this runtime"),
                ));
                return;
            }
            if let Some(inv) = st.pending.take() {
                st.in_flight = Some(inv.id.clone());
                break inv;
            }
            st = match self.changed.wait(st) {
                Ok(s) => s,
                Err(_) => return,
            };
        };
        drop(st);
        let mut r = tiny_http::Response::from_data(inv.payload).with_status_code(200);
        let arn = format!(
            "arn:aws:lambda:local:000000000000:function:{}",
            self.function
        );
        let trace = format!("Root=1-{:08x}-{}", inv.deadline_ms / 1000, inv.id);
        for (k, v) in [
            ("Lambda-Runtime-Aws-Request-Id", inv.id.as_str()),
            ("Lambda-Runtime-Deadline-Ms", &inv.deadline_ms.to_string()),
            ("Lambda-Runtime-Invoked-Function-Arn", &arn),
            ("Lambda-Runtime-Trace-Id", &trace),
            ("Content-Type", "application/json"),
        ] {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                r.add_header(h);
            }
        }
        // A runtime that died meanwhile does not get it; the worker sees the exit.
        let _ = rq.respond(r);
    }
}

fn start(pool: &Pool, max_output: usize) -> Result<Runtime, FunctionError> {
    let f = &pool.f;
    let started = Instant::now();
    let server = Arc::new(
        tiny_http::Server::http("127.0.0.1:0")
            .map_err(|e| FunctionError::new(500, format!("the Runtime API cannot listen: {e}")))?,
    );
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| FunctionError::new(500, "the Runtime API has no IP address"))?;
    let api = Arc::new(Api {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        function: f.name.clone(),
        max_output,
    });
    let (srv, a) = (server.clone(), api.clone());
    let thread = std::thread::Builder::new()
        .name(format!("conveyor-lambda-{}", f.name))
        .spawn(move || {
            for rq in srv.incoming_requests() {
                let a = a.clone();
                // One thread per request: `next` is a long poll.
                let _ = std::thread::Builder::new()
                    .name("conveyor-lambda-rq".into())
                    .spawn(move || a.serve(rq));
            }
        })
        .map_err(|e| FunctionError::new(500, format!("cannot start a thread: {e}")))?;
    let dir = f.executor.dir.clone().unwrap_or_else(|| ".".into());
    let env = vec![
        ("AWS_LAMBDA_RUNTIME_API".to_string(), addr.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), f.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "128".into()),
        (
            "_HANDLER".into(),
            f.executor.handler.clone().unwrap_or_default(),
        ),
        ("LAMBDA_TASK_ROOT".into(), dir),
        ("AWS_REGION".into(), "local".into()),
        ("AWS_DEFAULT_REGION".into(), "local".into()),
    ];
    let proc = Proc::spawn(f, &env, Stdio::null(), Stdio::inherit(), Stdio::inherit())
        .map_err(|e| FunctionError::new(500, e.to_string()))?;
    let mut rt = Runtime {
        proc,
        api,
        server,
        thread: Some(thread),
    };
    // Up when it first asks for work.
    let deadline = Instant::now() + pool.start_timeout();
    let fail = |e: String| {
        pool.stats.starts.fetch_add(1, Ordering::Relaxed);
        pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
        FunctionError::new(502, format!("the runtime of {} did not start: {e}", f.name))
    };
    loop {
        {
            let st = rt
                .api
                .state
                .lock()
                .map_err(|_| FunctionError::new(500, "poisoned"))?;
            if let Some(e) = &st.init_error {
                return Err(fail(format!("init error: {e}")));
            }
            if st.asked {
                break;
            }
            let _ = rt.api.changed.wait_timeout(st, Duration::from_millis(20));
        }
        if let Some(status) = rt.proc.exited() {
            return Err(fail(format!("Runtime exited with error: {status}")));
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "it did not ask for work within {} ms (start_timeout_ms)",
                f.executor.start_timeout_ms
            )));
        }
    }
    pool.started(started.elapsed());
    Ok(rt)
}

pub fn call(pool: &Pool, warm: &mut Warm, job: &Job) -> Result<Output, FunctionError> {
    let f = &pool.f;
    if let Warm::Lambda(rt) = warm {
        if let Some(status) = rt.proc.exited() {
            tracing::warn!("function {}: the runtime exited ({status})", f.name);
            pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            *warm = Warm::None;
        }
    }
    if !matches!(warm, Warm::Lambda(_)) {
        *warm = Warm::Lambda(start(pool, job.max_output())?);
    }
    let Warm::Lambda(rt) = warm else {
        return Err(FunctionError::new(500, "no runtime"));
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (job.req.id.0 >> 32) as u32,
        (job.req.id.0 >> 16) as u16,
        job.req.id.0 as u16,
        (job.req.instance >> 48) as u16,
        job.req.instance & 0xffff_ffff_ffff
    );
    {
        let Ok(mut st) = rt.api.state.lock() else {
            return Err(FunctionError::new(500, "poisoned"));
        };
        st.result = None;
        st.pending = Some(Invocation {
            id,
            payload: job.req.payload.clone(),
            deadline_ms: now_ms + f.executor.timeout_ms,
        });
    }
    rt.api.changed.notify_all();
    let deadline = Instant::now() + pool.timeout();
    let outcome = loop {
        {
            let Ok(mut st) = rt.api.state.lock() else {
                return Err(FunctionError::new(500, "poisoned"));
            };
            if let Some(r) = st.result.take() {
                break Some(r);
            }
            if let Some(e) = st.init_error.take() {
                break Some(Err(FunctionError::new(502, format!("init error: {e}"))));
            }
            let _ = rt.api.changed.wait_timeout(st, Duration::from_millis(20));
        }
        if let Some(status) = rt.proc.exited() {
            pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            break Some(Err(FunctionError::new(
                502,
                format!("Runtime exited with error: {status}"),
            )));
        }
        if Instant::now() >= deadline {
            break None;
        }
    };
    match outcome {
        Some(Ok(payload)) => Ok(Output {
            payload,
            route: None,
            http: None,
        }),
        Some(Err(e)) => {
            if e.status == 502 {
                *warm = Warm::None;
            }
            Err(e)
        }
        None => {
            *warm = Warm::None;
            Err(FunctionError::new(
                504,
                format!(
                    "Task timed out after {:.2} seconds",
                    f.executor.timeout_ms as f64 / 1000.0
                ),
            ))
        }
    }
}
