//! `lambda`: the invoker serves the AWS Lambda Runtime API (2018-06-01) to a runtime process it
//! starts with `AWS_LAMBDA_RUNTIME_API` set, so that an unmodified custom runtime (a
//! `bootstrap`, or a runtime interface client) pulls its work from the queue:
//!
//! - `GET /2018-06-01/runtime/invocation/next` waits for a request and answers with its body
//!   and the `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//!   `Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id` headers;
//! - `POST /2018-06-01/runtime/invocation/{id}/response` gives its output (202);
//! - `POST /2018-06-01/runtime/invocation/{id}/error` fails it (202; the runtime's error
//!   document, or its text as `errorMessage` with `Lambda-Runtime-Function-Error-Type`);
//! - `POST /2018-06-01/runtime/init/error`: the runtime could not start.
//!
//! What the function is given and how its answer is taken follow the step's `event`
//! ([`LambdaEvent`]): `invoke` (the default) as AWS's `Invoke` API does (the body is the event,
//! `{}` when empty, 400 `InvalidRequestContentException` when not JSON; the output is an
//! `application/json` answer; a failure is 200 with `X-Amz-Function-Error: Unhandled` and the
//! error document), `apigateway-v2` as an API Gateway HTTP API does (a proxy event of payload
//! format 2.0 in, `{statusCode, headers, cookies, body}` out, a failure 500). Either way a
//! failure ends the run. An unknown request id is 400 (`InvalidRequestID`); an output larger
//! than one request can carry is 413 to the runtime and `Function.ResponseSizeTooLarge` to the
//! caller. Each worker has its own runtime process and its own API server (one invocation at
//! a time, as in a Lambda sandbox). Past `timeout_ms` the process is killed
//! (`Sandbox.Timedout`, "Task timed out after N seconds"); a runtime that exits fails its
//! request (`Runtime.ExitError`, "Runtime exited with error"). Either way the next request
//! starts a fresh one. A runtime that does not start at all is the platform's failure, not
//! the function's: 502.

use super::{read_limited, Pool, Proc, Warm};
use conveyor_core::pipeline::{LambdaEvent, Output};
use conveyor_core::queue::Http;
use conveyor_dataplane::invoker::{FunctionError, Job};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "/2018-06-01/runtime/";

/// How an invocation ended, as the runtime said.
enum Ended {
    /// `/response`: the function's output.
    Response(Vec<u8>),
    /// `/error`: the function failed (its error document, its error type).
    Error(Vec<u8>, Option<String>),
    /// The runtime's answer could not be taken (too large).
    TooLarge(String),
}

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
    result: Option<Ended>,
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
    server: crate::http::Server,
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
        self.server.stop();
    }
}

fn json_reply(status: u16, body: String) -> crate::http::Response {
    crate::http::Response::new(status, body).with_header("Content-Type", "application/json")
}

fn error_doc(kind: &str, message: &str) -> String {
    serde_json::json!({"errorMessage": message, "errorType": kind}).to_string()
}

impl Api {
    fn serve(self: &Arc<Self>, mut rq: crate::http::Request) {
        let url = rq.url().to_string();
        let method = rq.method().to_string();
        let Some(path) = url.strip_prefix(PREFIX) else {
            rq.respond(json_reply(404, error_doc("NotFound", "no such route")));
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
                    rq.respond(json_reply(
                        400,
                        error_doc("InvalidRequestID", &format!("no invocation {id} in flight")),
                    ));
                    return;
                }
                st.in_flight = None;
                let error_type = rq
                    .header("Lambda-Runtime-Function-Error-Type")
                    .map(str::to_string);
                let (status, reply, result) = match (body, *what) {
                    (Err(e), _) => (
                        413,
                        error_doc("RequestEntityTooLarge", &e.to_string()),
                        Ended::TooLarge(e.to_string()),
                    ),
                    (Ok(b), "response") => (202, r#"{"status":"OK"}"#.into(), Ended::Response(b)),
                    (Ok(b), _) => (
                        202,
                        r#"{"status":"OK"}"#.into(),
                        Ended::Error(b, error_type),
                    ),
                };
                st.result = Some(result);
                drop(st);
                self.changed.notify_all();
                rq.respond(json_reply(status, reply));
            }
            ("POST", ["init", "error"]) => {
                let b = read_limited(rq.as_reader(), 4096).unwrap_or_default();
                if let Ok(mut st) = self.state.lock() {
                    st.init_error = Some(String::from_utf8_lossy(&b).trim().to_string());
                }
                self.changed.notify_all();
                rq.respond(json_reply(202, r#"{"status":"OK"}"#.into()));
            }
            _ => {
                rq.respond(json_reply(
                    404,
                    error_doc("NotFound", &format!("no route {method} {url}")),
                ));
            }
        }
    }

    /// Long poll: waits for an invocation (or for the runtime to be stopped).
    fn next(&self, rq: crate::http::Request) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.asked = true;
        self.changed.notify_all();
        let inv = loop {
            if st.closed {
                drop(st);
                rq.respond(json_reply(
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
        let mut r = crate::http::Response::new(200, inv.payload);
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
            r.add_header(k, v);
        }
        // A runtime that died meanwhile does not get it; the worker sees the exit.
        rq.respond(r);
    }
}

fn start(pool: &Pool, max_output: usize) -> Result<Runtime, FunctionError> {
    let f = &pool.f;
    let started = Instant::now();
    let api = Arc::new(Api {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        function: f.name.clone(),
        max_output,
    });
    // The runtime's own connection, on loopback: `next` is a long poll (it holds a worker), and
    // the connection stays idle while the function runs, however long that is.
    let opts = crate::http::Options {
        read_timeout: Duration::from_secs(24 * 3600),
        ..crate::http::Options::new(4)
    };
    let a = api.clone();
    let server = crate::http::Server::start(
        "127.0.0.1:0",
        &format!("conveyor-lambda-{}", f.name),
        opts,
        move |rq| a.serve(rq),
    )
    .map_err(|e| FunctionError::new(500, format!("the Runtime API cannot listen: {e}")))?;
    let addr = server.address();
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
    let mut rt = Runtime { proc, api, server };
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
    let mode = f.executor.event.unwrap_or_default();
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
    let payload = match mode {
        LambdaEvent::Invoke => match invoke_event(&job.req.payload) {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        },
        LambdaEvent::ApiGatewayV2 => {
            apigateway_event(job.req.http.as_deref(), &job.req.payload, &id, now_ms)
        }
    };
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
    {
        let Ok(mut st) = rt.api.state.lock() else {
            return Err(FunctionError::new(500, "poisoned"));
        };
        st.result = None;
        st.pending = Some(Invocation {
            id: id.clone(),
            payload,
            deadline_ms: now_ms + f.executor.timeout_ms,
        });
    }
    rt.api.changed.notify_all();
    let deadline = Instant::now() + pool.timeout();
    // A runtime that failed to start, exited or overran is not used again.
    let mut discard = false;
    let ended = loop {
        {
            let Ok(mut st) = rt.api.state.lock() else {
                return Err(FunctionError::new(500, "poisoned"));
            };
            if let Some(r) = st.result.take() {
                break r;
            }
            if let Some(e) = st.init_error.take() {
                discard = true;
                let doc = error_doc("Runtime.InitError", &format!("RequestId: {id} Error: {e}"));
                break Ended::Error(doc.into_bytes(), None);
            }
            let _ = rt.api.changed.wait_timeout(st, Duration::from_millis(20));
        }
        if let Some(status) = rt.proc.exited() {
            pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            discard = true;
            let message = format!("RequestId: {id} Error: Runtime exited with error: {status}");
            break Ended::Error(error_doc("Runtime.ExitError", &message).into_bytes(), None);
        }
        if Instant::now() >= deadline {
            discard = true;
            let message = format!(
                "RequestId: {id} Error: Task timed out after {:.2} seconds",
                f.executor.timeout_ms as f64 / 1000.0
            );
            break Ended::Error(error_doc("Sandbox.Timedout", &message).into_bytes(), None);
        }
    };
    if discard {
        *warm = Warm::None;
    }
    let (doc, error_type) = match ended {
        Ended::Response(out) => {
            return match mode {
                LambdaEvent::Invoke => Ok(answer(200, out, Vec::new(), false)),
                LambdaEvent::ApiGatewayV2 => apigateway_answer(&out).map_err(|e| {
                    // API Gateway answers 502 to a malformed Lambda response.
                    FunctionError::new(
                        502,
                        format!("{}: not an API Gateway (2.0) response: {e}", f.name),
                    )
                }),
            };
        }
        Ended::Error(doc, kind) => (doc, kind),
        Ended::TooLarge(e) => {
            let message = format!(
                "Response payload size exceeded maximum allowed payload size ({} bytes, group.max_payload): {e}",
                job.max_output()
            );
            let doc = error_doc("Function.ResponseSizeTooLarge", &message);
            (doc.into_bytes(), None)
        }
    };
    // The error document as AWS gives it: the runtime's when it is JSON, else its text.
    let doc = match serde_json::from_slice::<serde_json::Value>(&doc) {
        Ok(serde_json::Value::Object(_)) => doc,
        _ => error_doc(
            error_type.as_deref().unwrap_or("Unhandled"),
            String::from_utf8_lossy(&doc).trim(),
        )
        .into_bytes(),
    };
    tracing::warn!(
        "function {} failed (request {id}): {}",
        f.name,
        String::from_utf8_lossy(&doc)
    );
    Ok(match mode {
        LambdaEvent::Invoke => answer(
            200,
            doc,
            vec![("X-Amz-Function-Error".into(), "Unhandled".into())],
            true,
        ),
        LambdaEvent::ApiGatewayV2 => answer(
            500,
            br#"{"message":"Internal Server Error"}"#.to_vec(),
            Vec::new(),
            true,
        ),
    })
}

/// A JSON answer with `status` and `headers`.
fn answer(
    status: u16,
    payload: Vec<u8>,
    mut headers: Vec<(String, String)>,
    failed: bool,
) -> Output {
    headers.insert(0, ("Content-Type".into(), "application/json".into()));
    Output {
        payload,
        route: None,
        http: Some(Box::new(Http {
            status,
            headers,
            ..Http::default()
        })),
        failed,
    }
}

/// The event of an `invoke` call: the body when it is JSON, `{}` when it is empty; else the
/// 400 AWS answers (`InvalidRequestContentException`).
fn invoke_event(body: &[u8]) -> Result<Vec<u8>, Output> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(b"{}".to_vec());
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Ok(_) => Ok(body.to_vec()),
        Err(e) => {
            let doc = serde_json::json!({
                "Type": "User",
                "message": format!("Could not parse request body into json: {e}"),
            });
            Err(answer(
                400,
                doc.to_string().into_bytes(),
                vec![(
                    "x-amzn-ErrorType".into(),
                    "InvalidRequestContentException".into(),
                )],
                true,
            ))
        }
    }
}

/// The API Gateway HTTP API proxy event (payload format 2.0) of a call: what the gateway got
/// (a call from an earlier step of a pipeline is a `POST /` with its output as the body).
fn apigateway_event(h: Option<&Http>, body: &[u8], id: &str, now_ms: u64) -> Vec<u8> {
    use serde_json::{json, Map, Value};
    let method = h.map(|h| h.method.as_str()).filter(|m| !m.is_empty());
    let path = h.map(|h| h.path.as_str()).filter(|p| !p.is_empty());
    let query = h.map(|h| h.query.as_str()).unwrap_or("");
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (k, v) in h.map(|h| h.headers.as_slice()).unwrap_or_default() {
        let k = k.to_ascii_lowercase();
        if k == "cookie" {
            cookies.extend(
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| Value::from(c.to_string())),
            );
            continue;
        }
        match headers.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(v);
            }
            _ => {
                headers.insert(k, Value::from(v.clone()));
            }
        }
    }
    let header = |k: &str| headers.get(k).and_then(Value::as_str).unwrap_or("");
    // The caller's address: the last hop that X-Forwarded-For names (the gateway adds it).
    let source_ip = header("x-forwarded-for")
        .rsplit(',')
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("127.0.0.1")
        .to_string();
    let host = header("host").to_string();
    let user_agent = header("user-agent").to_string();
    let mut params: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match params.get_mut(k.as_ref()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                params.insert(k.into_owned(), Value::from(v.into_owned()));
            }
        }
    }
    let time = chrono::DateTime::from_timestamp_millis(now_ms as i64)
        .map(|t| t.format("%d/%b/%Y:%H:%M:%S +0000").to_string())
        .unwrap_or_default();
    let method = method.unwrap_or("POST");
    let path = path.unwrap_or("/");
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "conveyor",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": user_agent,
            },
            "requestId": id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time,
            "timeEpoch": now_ms,
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = Value::from(cookies);
    }
    if !params.is_empty() {
        event["queryStringParameters"] = Value::from(params);
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) => event["body"] = Value::from(text),
            Err(_) => {
                use base64::Engine;
                event["body"] = base64::engine::general_purpose::STANDARD
                    .encode(body)
                    .into();
                event["isBase64Encoded"] = true.into();
            }
        }
    }
    event.to_string().into_bytes()
}

/// The answer API Gateway makes of a function's output (payload format 2.0): an object with
/// `statusCode` is the response; any other JSON is a 200 `application/json` body as it is.
fn apigateway_answer(out: &[u8]) -> Result<Output, String> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(out).map_err(|e| format!("not JSON: {e}"))?;
    let Some(o) = v.as_object().filter(|o| o.contains_key("statusCode")) else {
        return Ok(answer(200, out.to_vec(), Vec::new(), false));
    };
    let status = o["statusCode"]
        .as_u64()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("statusCode {} is not an HTTP status", o["statusCode"]))?
        as u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(hs) = o.get("headers").and_then(Value::as_object) {
        for (k, v) in hs {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            headers.push((k.clone(), v));
        }
    }
    if let Some(cs) = o.get("cookies").and_then(Value::as_array) {
        for c in cs.iter().filter_map(Value::as_str) {
            headers.push(("Set-Cookie".into(), c.to_string()));
        }
    }
    let body = match o.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if o.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| format!("isBase64Encoded, but the body is not base64: {e}"))?
        }
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(Output {
        payload: body,
        route: None,
        http: Some(Box::new(Http {
            status,
            headers,
            ..Http::default()
        })),
        failed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn an_invoke_event_is_json_and_an_empty_body_is_an_empty_object() {
        assert_eq!(invoke_event(b"").unwrap(), b"{}");
        assert_eq!(invoke_event(b" \n").unwrap(), b"{}");
        assert_eq!(invoke_event(b"[1, 2]").unwrap(), b"[1, 2]");
        assert_eq!(invoke_event(b"\"text\"").unwrap(), b"\"text\"");
        let refused = invoke_event(b"text=1").unwrap_err();
        assert!(refused.ends_the_run());
        let http = refused.http.unwrap();
        assert_eq!(http.status, 400);
        assert_eq!(
            http.header("x-amzn-errortype"),
            Some("InvalidRequestContentException")
        );
        let doc: Value = serde_json::from_slice(&refused.payload).unwrap();
        assert_eq!(doc["Type"], "User");
        assert!(doc["message"]
            .as_str()
            .unwrap()
            .starts_with("Could not parse request body into json"));
    }

    #[test]
    fn a_call_becomes_an_api_gateway_v2_event() {
        let h = Http {
            method: "PUT".into(),
            path: "/items/7".into(),
            query: "a=1&b=x%20y&a=2".into(),
            headers: vec![
                ("Host".into(), "fn.example.org".into()),
                ("Accept".into(), "text/html".into()),
                ("accept".into(), "application/json".into()),
                ("Cookie".into(), "s=1; t=2".into()),
                ("User-Agent".into(), "curl/7.88".into()),
                ("X-Forwarded-For".into(), "10.0.0.1, 192.0.2.9".into()),
            ],
            status: 0,
        };
        let e: Value =
            serde_json::from_slice(&apigateway_event(Some(&h), b"{\"k\":1}", "rid", 0)).unwrap();
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "$default");
        assert_eq!(e["rawPath"], "/items/7");
        assert_eq!(e["rawQueryString"], "a=1&b=x%20y&a=2");
        assert_eq!(e["queryStringParameters"], json!({"a": "1,2", "b": "x y"}));
        assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(e["headers"]["accept"], "text/html,application/json");
        assert!(e["headers"].get("cookie").is_none(), "{e}");
        let ctx = &e["requestContext"];
        assert_eq!(ctx["http"]["method"], "PUT");
        assert_eq!(ctx["http"]["path"], "/items/7");
        assert_eq!(ctx["http"]["sourceIp"], "192.0.2.9");
        assert_eq!(ctx["http"]["userAgent"], "curl/7.88");
        assert_eq!(ctx["domainName"], "fn.example.org");
        assert_eq!(ctx["domainPrefix"], "fn");
        assert_eq!(ctx["requestId"], "rid");
        assert_eq!(ctx["time"], "01/Jan/1970:00:00:00 +0000");
        assert_eq!(e["body"], "{\"k\":1}");
        assert_eq!(e["isBase64Encoded"], false);
        // A binary body is base64; no body, no "body"; a call from an earlier step is POST /.
        let e: Value =
            serde_json::from_slice(&apigateway_event(None, &[0xff, 0, 1], "r", 0)).unwrap();
        assert_eq!(
            (&e["body"], &e["isBase64Encoded"]),
            (&json!("/wAB"), &json!(true))
        );
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["rawPath"], "/");
        let e: Value = serde_json::from_slice(&apigateway_event(None, b"", "r", 0)).unwrap();
        assert!(e.get("body").is_none(), "{e}");
    }

    #[test]
    fn an_api_gateway_v2_answer_becomes_the_response() {
        let out = apigateway_answer(
            br#"{"statusCode": 201, "headers": {"content-type": "text/plain", "x-n": 3},
                "cookies": ["a=1; Path=/", "b=2"], "body": "made"}"#,
        )
        .unwrap();
        let http = out.http.as_ref().unwrap();
        assert_eq!(http.status, 201);
        assert_eq!(out.payload, b"made");
        assert_eq!(http.header("content-type"), Some("text/plain"));
        assert_eq!(http.header("x-n"), Some("3"));
        let cookies: Vec<&str> = http
            .headers
            .iter()
            .filter(|(k, _)| k == "Set-Cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
        assert!(!out.ends_the_run());
        let out =
            apigateway_answer(br#"{"statusCode": 404, "body": "AQI=", "isBase64Encoded": true}"#)
                .unwrap();
        assert_eq!(
            (out.http.as_ref().unwrap().status, &out.payload[..]),
            (404, &[1u8, 2][..])
        );
        assert!(out.ends_the_run());
        // Any other JSON is a 200 application/json answer, as it is.
        let out = apigateway_answer(br#"{"made": true}"#).unwrap();
        let http = out.http.as_ref().unwrap();
        assert_eq!(
            (http.status, &out.payload[..]),
            (200, &br#"{"made": true}"#[..])
        );
        assert_eq!(http.header("Content-Type"), Some("application/json"));
        assert!(apigateway_answer(br#"{"statusCode": 99}"#).is_err());
        assert!(apigateway_answer(b"not json").is_err());
        assert!(
            apigateway_answer(br#"{"statusCode": 200, "body": "!", "isBase64Encoded": true}"#)
                .is_err()
        );
    }
}
