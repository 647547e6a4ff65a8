//! OpenFaaS's gateway API beyond calls, for the clients that use it (faas-cli, Apache
//! Airflow's OpenFaaS hook, the OpenFaaS UI):
//!
//! - `GET /system/functions` (the list), `GET /system/function/{name}` (one; 404 when there is
//!   none, which is how clients ask whether a function exists), `GET /system/info`,
//!   `GET /system/namespaces` (Conveyor's one namespace, `conveyor`);
//! - `POST /system/functions` deploys a function, `PUT /system/functions` updates one (404 if
//!   there is none, as faas-cli expects before it POSTs), `DELETE /system/functions` (with
//!   `{"functionName": ...}`) removes one: each a one-step pipeline named after the function,
//!   changed through the group's control plane like any pipeline (so every member applies it
//!   at the same point of the order). No containers here: the function's command is
//!   OpenFaaS's `fprocess` (`envProcess`, run by the classic watchdog's `exec` executor, with
//!   `envVars` in its environment), or the executor document in the annotation
//!   `com.conveyor.executor` (any executor: `http`, `openwhisk`, `lambda`). The `image` is kept
//!   nowhere;
//! - `POST /system/scale-function/{name}`: every invoker of the view serves every function, so
//!   the replicas are the view's invokers; a request for one or more is accepted (202) and
//!   changes nothing, a request for zero is refused (Conveyor does not scale a function to zero:
//!   remove it);
//! - `GET /metrics`: `gateway_function_invocation_total{function_name, code}`,
//!   `gateway_function_invocation_started_total{function_name}`,
//!   `gateway_functions_seconds{function_name, code}` (a histogram) and
//!   `gateway_service_count{function_name}` as OpenFaaS's gateway names them (`function_name`
//!   is `NAME.conveyor`), and Conveyor's `conveyor_gateway_run_stage_seconds{stage}`
//!   (ordering, handoff, function), in Prometheus' text format (the `prometheus` crate);
//! - with `basic_auth_user` and `basic_auth_password_file` in the gateway's settings, every
//!   `/system/` route needs HTTP basic auth (401 with `WWW-Authenticate: Basic
//!   realm="Restricted"` otherwise), as OpenFaaS's gateway with `basic_auth` on; calls,
//!   `/healthz` and `/metrics` do not.
//!
//! Functions are called as `/function/NAME` or `/function/NAME.conveyor`.

use super::{find, reply, request_header, Reply, Shared};
use crate::http;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Conveyor's one namespace, as OpenFaaS names namespaces.
pub const NAMESPACE: &str = "conveyor";

/// Where the group's control plane is, to change pipelines.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pub address: String,
    pub token: String,
}

/// HTTP basic auth of the `/system/` routes.
#[derive(Clone)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The gateway's metrics, as OpenFaaS's gateway names them.
pub(super) struct Metrics {
    registry: Registry,
    invocations: IntCounterVec,
    started: IntCounterVec,
    seconds: HistogramVec,
    replicas: IntGaugeVec,
    stages: HistogramVec,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let registry = Registry::new();
        let call = ["function_name", "code"];
        let invocations = IntCounterVec::new(
            Opts::new(
                "gateway_function_invocation_total",
                "Calls of each function, by the HTTP status they answered",
            ),
            &call,
        )
        .expect("a valid metric");
        let started = IntCounterVec::new(
            Opts::new(
                "gateway_function_invocation_started_total",
                "Calls of each function started",
            ),
            &["function_name"],
        )
        .expect("a valid metric");
        // 0.5 ms to about 16 s.
        let buckets = prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets");
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "gateway_functions_seconds",
                "How long each function's calls took, seconds",
            )
            .buckets(buckets),
            &call,
        )
        .expect("a valid metric");
        let replicas = IntGaugeVec::new(
            Opts::new(
                "gateway_service_count",
                "Replicas of each function: the invokers in the view",
            ),
            &["function_name"],
        )
        .expect("a valid metric");
        // 10 us to about 5 s.
        let fine = prometheus::exponential_buckets(0.00001, 2.0, 20).expect("valid buckets");
        let stages = HistogramVec::new(
            HistogramOpts::new(
                "conveyor_gateway_run_stage_seconds",
                "Time of each completed call by stage, summed over its steps: ordering (a \
                 request's submission to its assignment's delivery; comparable across hosts only \
                 with synchronised clocks), handoff (delivery to the function's start), function \
                 (the functions' own time)",
            )
            .buckets(fine),
            &["stage"],
        )
        .expect("a valid metric");
        for m in [
            Box::new(invocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(started.clone()),
            Box::new(seconds.clone()),
            Box::new(replicas.clone()),
            Box::new(stages.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Metrics {
            registry,
            invocations,
            started,
            seconds,
            replicas,
            stages,
        }
    }

    /// A completed call's time by stage.
    pub(super) fn stages(&self, m: &conveyor_core::queue::Meta) {
        for (stage, us) in [
            ("ordering", m.order_us),
            ("handoff", m.handoff_us),
            ("function", m.exec_us),
        ] {
            self.stages
                .with_label_values(&[stage])
                .observe(us as f64 / 1e6);
        }
    }

    pub(super) fn started(&self, function: &str) {
        let name = format!("{function}.{NAMESPACE}");
        self.started.with_label_values(&[name.as_str()]).inc();
    }

    pub(super) fn finished(&self, function: &str, code: u16, took: Duration) {
        let name = format!("{function}.{NAMESPACE}");
        let code = code.to_string();
        let labels = [name.as_str(), code.as_str()];
        self.invocations.with_label_values(&labels).inc();
        self.seconds
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text format (0.0.4).
    fn text(&self) -> Result<String, String> {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// The function a call's path names, if the group serves it (calls of unknown functions are
/// not counted: their names would grow the metrics without bound).
pub(super) fn called(s: &Shared, path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/function/")
        .or_else(|| path.strip_prefix("/async-function/"))?;
    let name = rest.split('/').next().unwrap_or(rest);
    find(s, name).map(|(p, _)| p.name.clone())
}

fn json_reply(status: u16, v: &Value) -> Reply {
    reply(
        status,
        serde_json::to_vec(v).unwrap_or_default(),
        &[("Content-Type", "application/json".into())],
    )
}

/// Whether the call carries the basic auth the gateway asks for (constant-time).
fn authorized(auth: &BasicAuth, header: Option<&str>) -> bool {
    use base64::Engine;
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(got) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let want = format!("{}:{}", auth.user, auth.password).into_bytes();
    want.len() == got.len() && want.iter().zip(&got).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

/// The status of one function, as OpenFaaS lists it.
pub(super) fn status(s: &Shared, name: &str) -> Option<Value> {
    let (p, _) = find(s, name)?;
    let calls = s
        .calls
        .lock()
        .map(|c| c.get(&p.name).copied().unwrap_or(0))
        .unwrap_or(0);
    let replicas = s.invokers.load(Ordering::Relaxed);
    Some(json!({
        "name": p.name,
        "image": "conveyor/pipeline",
        "namespace": NAMESPACE,
        "invocationCount": calls,
        "replicas": replicas,
        "availableReplicas": replicas,
        "labels": {"conveyor.entry": p.entry, "conveyor.steps": p.steps.len().to_string()},
        "annotations": {},
    }))
}

/// The `/system/` routes and `/metrics`; `None` for any other path.
pub(super) fn route(
    s: &Shared,
    req: &mut http::Request,
    method: &str,
    path: &str,
) -> Option<Reply> {
    if path == "/metrics" {
        return Some(match method {
            "GET" | "HEAD" => metrics(s),
            "OPTIONS" => options("GET, HEAD, OPTIONS"),
            _ => not_allowed("GET, HEAD, OPTIONS"),
        });
    }
    let rest = path.strip_prefix("/system/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let allow = match parts.as_slice() {
        ["functions"] => "GET, HEAD, POST, PUT, DELETE, OPTIONS",
        ["function", _] | ["info"] | ["namespaces"] => "GET, HEAD, OPTIONS",
        ["scale-function", _] => "POST, OPTIONS",
        _ => return Some(reply(404, format!("no route {path}\n"), &[])),
    };
    if method == "OPTIONS" {
        return Some(options(allow));
    }
    if !allow.split(", ").any(|m| m == method) {
        return Some(not_allowed(allow));
    }
    if let Some(auth) = &s.system.auth {
        if !authorized(auth, request_header(req, "Authorization").as_deref()) {
            return Some(reply(
                401,
                "unauthorized: this gateway's /system/ API needs HTTP basic auth\n",
                &[("WWW-Authenticate", r#"Basic realm="Restricted""#.into())],
            ));
        }
    }
    if let Some(ns) = query(req, "namespace") {
        if !ns.is_empty() && ns != NAMESPACE {
            return Some(reply(
                404,
                format!("namespace {ns:?} not found: this gateway has one, {NAMESPACE:?}\n"),
                &[],
            ));
        }
    }
    let get = matches!(method, "GET" | "HEAD");
    Some(match (parts.as_slice(), get) {
        (["functions"], true) => super::functions(s),
        (["functions"], false) => change(s, req, method),
        (["function", name], _) => match status(s, strip_namespace(name)) {
            Some(v) => json_reply(200, &v),
            None => reply(404, format!("function {name:?} not found\n"), &[]),
        },
        (["info"], _) => {
            let version = json!({"sha": "", "release": env!("CARGO_PKG_VERSION"),
                "commit_message": ""});
            json_reply(
                200,
                &json!({
                    "provider": {"provider": "conveyor", "orchestration": "conveyor",
                                 "version": version},
                    "version": version,
                    "arch": std::env::consts::ARCH,
                }),
            )
        }
        (["namespaces"], _) => json_reply(200, &json!([NAMESPACE])),
        (["scale-function", name], _) => scale(s, req, strip_namespace(name)),
        _ => reply(404, format!("no route {path}\n"), &[]),
    })
}

/// `NAME.conveyor` is `NAME`.
pub(super) fn strip_namespace(name: &str) -> &str {
    name.strip_suffix(".conveyor").unwrap_or(name)
}

fn query(req: &http::Request, key: &str) -> Option<String> {
    form_urlencoded::parse(req.query().as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn options(allow: &str) -> Reply {
    reply(204, Vec::new(), &[("Allow", allow.into())])
}

pub(super) fn not_allowed(allow: &str) -> Reply {
    reply(
        405,
        format!("method not allowed (allowed: {allow})\n"),
        &[("Allow", allow.into())],
    )
}

fn metrics(s: &Shared) -> Reply {
    let m = &s.system.metrics;
    let replicas = s.invokers.load(Ordering::Relaxed) as i64;
    // Only the functions served now (a removed one's series goes).
    m.replicas.reset();
    if let Ok(ps) = s.pipelines.read() {
        for (p, _) in ps.iter() {
            let name = format!("{}.{NAMESPACE}", p.name);
            m.replicas.with_label_values(&[name.as_str()]).set(replicas);
        }
    }
    match m.text() {
        Ok(text) => reply(
            200,
            text,
            &[("Content-Type", prometheus::TEXT_FORMAT.into())],
        ),
        Err(e) => reply(500, format!("the metrics could not be encoded: {e}\n"), &[]),
    }
}

/// A body of at most 64 KiB: a JSON document, or a form (Airflow's hook posts its dict as
/// one).
fn body(req: &mut http::Request) -> Result<Value, Reply> {
    let form = request_header(req, "Content-Type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let raw = match req.read_body(64 * 1024) {
        Ok(b) => b,
        Err(None) => return Err(reply(413, "the body is larger than 64 KiB\n", &[])),
        Err(Some(e)) => return Err(http::unreadable(&e)),
    };
    // A JSON document, whatever its Content-Type says (curl's -d says a form).
    let json = raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if form && !json {
        let m: serde_json::Map<String, Value> = form_urlencoded::parse(&raw)
            .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
            .collect();
        return Ok(Value::Object(m));
    }
    serde_json::from_slice(&raw)
        .map_err(|e| reply(400, format!("the body is not a JSON document: {e}\n"), &[]))
}

fn bad(field: &str, why: impl std::fmt::Display) -> Reply {
    reply(400, format!("{field}: {why}\n"), &[])
}

/// The one-step pipeline an OpenFaaS function deployment makes.
pub(super) fn pipeline_of(d: &Value) -> Result<(String, Value), Reply> {
    let service = d["service"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("service", "the function's name is needed"))?;
    if let Some(ns) = d["namespace"].as_str() {
        if !ns.is_empty() && ns != NAMESPACE {
            return Err(bad(
                "namespace",
                format!("{ns:?}: this gateway has one namespace, {NAMESPACE:?}"),
            ));
        }
    }
    let mut env = serde_json::Map::new();
    match &d["envVars"] {
        Value::Null => {}
        Value::Object(vars) => {
            for (k, v) in vars {
                let v = v
                    .as_str()
                    .ok_or_else(|| bad(&format!("envVars.{k}"), "a string is needed"))?;
                env.insert(k.clone(), v.into());
            }
        }
        _ => return Err(bad("envVars", "an object of strings is needed")),
    }
    let annotation = d["annotations"]["com.conveyor.executor"].as_str();
    let mut executor =
        match (annotation, d["envProcess"].as_str()) {
            (Some(doc), _) => serde_json::from_str::<Value>(doc)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    bad(
                        "annotations.com.conveyor.executor",
                        "an executor document (JSON object) is needed",
                    )
                })?,
            (None, Some(cmd)) if !cmd.trim().is_empty() => {
                json!({"kind": "exec", "command": ["sh", "-c", cmd]})
            }
            _ => return Err(bad(
                "envProcess",
                "the command that runs the function is needed (OpenFaaS's fprocess; there are no \
                 container images here), or an executor document in the annotation \
                 com.conveyor.executor",
            )),
        };
    if !env.is_empty() && executor.get("env").is_none() {
        executor["env"] = Value::Object(env);
    }
    let step = json!({"function": service, "executor": executor});
    let doc = json!({"name": service, "entry": service, "steps": {service: step}});
    Ok((service.to_string(), doc))
}

/// Asks the control plane; its answer's status and body.
fn control(
    cp: &ControlPlane,
    method: &str,
    name: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    let url = format!("http://{}/v1/pipelines/{name}", cp.address);
    let rq = ureq::request(method, &url)
        .timeout(Duration::from_secs(10))
        .set("Authorization", &format!("Bearer {}", cp.token));
    let res = match body {
        Some(b) => rq.send_string(&b.to_string()),
        None => rq.call(),
    };
    match res {
        Ok(r) => {
            let status = r.status();
            Ok((status, r.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(status, r)) => Ok((status, r.into_string().unwrap_or_default())),
        Err(e) => Err(format!(
            "the control plane at {} did not answer: {e}",
            cp.address
        )),
    }
}

/// The control plane's error message, from its JSON answer.
fn why(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Deploy (POST), update (PUT) or delete (DELETE) a function.
fn change(s: &Shared, req: &mut http::Request, method: &str) -> Reply {
    let Some(cp) = &s.system.control else {
        return reply(
            501,
            "this group has no control plane ([control] in the group file): its pipelines are \
             the group file's, changed there\n",
            &[],
        );
    };
    let d = match body(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if method == "DELETE" {
        let Some(name) = d["functionName"].as_str().filter(|n| !n.is_empty()) else {
            return bad("functionName", "the function to delete is needed");
        };
        let name = strip_namespace(name);
        return match control(cp, "DELETE", name, None) {
            Ok((200, _)) => reply(202, Vec::new(), &[]),
            Ok((404, _)) => reply(404, format!("function {name:?} not found\n"), &[]),
            Ok((st, b)) => reply(st, format!("{}\n", why(&b)), &[]),
            Err(e) => reply(502, format!("{e}\n"), &[]),
        };
    }
    let (name, doc) = match pipeline_of(&d) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let exists = match control(cp, "GET", &name, None) {
        Ok((200, _)) => true,
        Ok((404, _)) => false,
        Ok((st, b)) => {
            return reply(
                502,
                format!("the control plane answered {st}: {}\n", why(&b)),
                &[],
            )
        }
        Err(e) => return reply(502, format!("{e}\n"), &[]),
    };
    match (method, exists) {
        ("POST", true) => {
            return reply(
                409,
                format!("function {name:?} exists: update it with PUT\n"),
                &[],
            )
        }
        ("PUT", false) => {
            return reply(
                404,
                format!("function {name:?} not found: deploy it with POST\n"),
                &[],
            )
        }
        _ => {}
    }
    match control(cp, "PUT", &name, Some(&doc)) {
        Ok((200 | 201, _)) => {
            tracing::info!(
                "function {name} {} through the gateway",
                if exists { "updated" } else { "deployed" }
            );
            reply(202, Vec::new(), &[])
        }
        Ok((st, b)) => reply(
            if st == 409 || st == 400 { 400 } else { st },
            format!("{}\n", why(&b)),
            &[],
        ),
        Err(e) => reply(502, format!("{e}\n"), &[]),
    }
}

fn scale(s: &Shared, req: &mut http::Request, name: &str) -> Reply {
    if find(s, name).is_none() {
        return reply(404, format!("function {name:?} not found\n"), &[]);
    }
    let d = match body(req) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match d["replicas"].as_u64() {
        None => bad("replicas", "a whole number is needed"),
        Some(0) => reply(
            400,
            "replicas: Conveyor does not scale a function to zero (every invoker of the view \
             serves it); remove it with DELETE /system/functions\n",
            &[],
        ),
        Some(_) => reply(202, Vec::new(), &[]),
    }
}

/// The `/system/` API's state.
pub(super) struct System {
    pub(super) control: Option<ControlPlane>,
    pub(super) auth: Option<BasicAuth>,
    pub(super) metrics: Metrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_is_a_one_step_pipeline() {
        let (name, doc) = pipeline_of(&json!({"service": "hello", "image": "ignored:latest",
            "envProcess": "python3 handler.py", "envVars": {"MODE": "fast"}}))
        .unwrap_or_else(|_| panic!("refused"));
        assert_eq!(name, "hello");
        let p = conveyor_core::pipeline::Pipeline::from_json(&doc.to_string()).unwrap();
        assert_eq!((p.name.as_str(), p.entry.as_str()), ("hello", "hello"));
        assert_eq!(
            doc["steps"]["hello"]["executor"],
            json!({"kind": "exec", "command": ["sh", "-c", "python3 handler.py"],
                   "env": {"MODE": "fast"}})
        );
        let (_, doc) = pipeline_of(&json!({"service": "w", "annotations": {
            "com.conveyor.executor": r#"{"kind": "http", "upstream_url": "http://127.0.0.1:9"}"#}}))
        .unwrap_or_else(|_| panic!("refused"));
        assert_eq!(doc["steps"]["w"]["executor"]["kind"], "http");
        for (bad_doc, field) in [
            (json!({"image": "x"}), "service"),
            (json!({"service": "x"}), "envProcess"),
            (
                json!({"service": "x", "envProcess": "true", "namespace": "openfaas-fn"}),
                "namespace",
            ),
            (
                json!({"service": "x", "envProcess": "true", "envVars": {"A": 1}}),
                "envVars.A",
            ),
            (
                json!({"service": "x", "annotations": {"com.conveyor.executor": "[]"}}),
                "annotations.com.conveyor.executor",
            ),
        ] {
            let Err(r) = pipeline_of(&bad_doc) else {
                panic!("{bad_doc} was accepted");
            };
            assert_eq!(r.status(), 400);
            let text = String::from_utf8_lossy(r.body());
            assert!(text.starts_with(&format!("{field}: ")), "{text}");
        }
    }

    #[test]
    fn basic_auth_is_checked_whole() {
        use base64::Engine;
        let auth = BasicAuth {
            user: "admin".into(),
            password: "s3cret".into(),
        };
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(authorized(&auth, Some(&b("admin:s3cret"))));
        assert!(!authorized(&auth, Some(&b("admin:s3cre"))));
        assert!(!authorized(&auth, Some(&b("admin:s3cretx"))));
        assert!(!authorized(&auth, Some(&b("root:s3cret"))));
        assert!(!authorized(&auth, Some("Bearer s3cret")));
        assert!(!authorized(&auth, None));
    }

    #[test]
    fn metrics_are_named_as_openfaas_names_them() {
        let m = Metrics::new();
        m.started("hello");
        m.finished("hello", 200, Duration::from_millis(3));
        m.finished("hello", 500, Duration::from_millis(1));
        let text = m.text().unwrap();
        for want in [
            r#"gateway_function_invocation_total{code="200",function_name="hello.conveyor"} 1"#,
            r#"gateway_function_invocation_total{code="500",function_name="hello.conveyor"} 1"#,
            r#"gateway_function_invocation_started_total{function_name="hello.conveyor"} 1"#,
            r#"gateway_functions_seconds_count{code="200",function_name="hello.conveyor"} 1"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
    }
}
