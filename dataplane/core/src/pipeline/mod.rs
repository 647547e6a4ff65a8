//! Pipelines: association rules kept outside the functions (DIFFUSE section 4.1), as JSON.
//!
//! ```json
//! {
//!   "name": "demo",
//!   "entry": "a",
//!   "queue_defaults": {"capacity": 65536, "order": "fifo", "on_full": "block"},
//!   "steps": {
//!     "a": {"function": "branch", "args": {"threshold": 32},
//!           "next": [{"route": "big", "to": ["b"]}, {"to": ["c"]}]},
//!     "b": {"function": "spin", "args": {"us": 60}, "next": [{"to": ["c"]}]},
//!     "c": {"function": "echo"}
//!   }
//! }
//! ```
//!
//! Each step names its function, optionally its input queue (default `<pipeline>.<step>`) and
//! queue options (`capacity`, `order`, `on_full`, and `durability`: `"memory"` or `"log"`, see
//! [`Pipeline::from_json_in_group`] for where it comes from when absent), and its continuations:
//! rules tried in order; the first whose `route` equals
//! the route the function's output chose (a rule without `route` matches any output) sends the
//! output to every step in `to` (fan-out). No matching rule, or no `next`: the run ends there.
//! Cycles are refused. Errors name the offending field (`steps.a.next[0].to[1]`).
//!
//! A rule may also look at the output itself: `"when": {"pointer": "/kind", "equals": "image"}`
//! matches when the output is JSON and the value at that JSON pointer equals the given value, so
//! an unmodified function's output picks the continuation (DIFFUSE fig. 3). An HTTP function
//! may also name its route in an `X-Conveyor-Route` response header.
//!
//! A step without `executor` runs a built-in function (`spin`, `echo`, `branch`). With one, the
//! step's `function` is the name of an external function, run by the invoker as the executor
//! says ([`ExecutorDoc`]):
//!
//! ```json
//! "resize": {"function": "resize",
//!            "executor": {"kind": "http", "command": ["python3", "server.py"],
//!                         "timeout_ms": 2000, "concurrency": 4}}
//! ```

use crate::queue::{Durability, Http, Meta, OnFull, Order, QueueSpec, Request};
use crate::types::RequestId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct PipelineError {
    /// Path of the offending field, e.g. `steps.a.next[0].to[1]`.
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PipelineError {
    PipelineError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOptions {
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub on_full: OnFull,
    /// `"memory"` (the default) or `"log"` (see [`Durability`]).
    #[serde(default)]
    pub durability: Durability,
}

fn default_capacity() -> u32 {
    65_536
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            capacity: default_capacity(),
            order: Order::Fifo,
            on_full: OnFull::Block,
            durability: Durability::Memory,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Matches the route chosen by the function's output; absent: matches any output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Matches outputs that are JSON with `equals` at `pointer`; absent: matches any output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    pub to: Vec<String>,
}

/// A condition on a JSON output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// A JSON pointer (RFC 6901), e.g. `/kind` or `/items/0/size`.
    pub pointer: String,
    pub equals: serde_json::Value,
}

/// How an external function runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// One process per request: the body on stdin, the output from stdout, the request's
    /// details in `Http_*` environment variables (OpenFaaS's classic watchdog).
    Exec,
    /// A warm HTTP server, started once, sent each request (of-watchdog's http mode).
    Http,
    /// The OpenWhisk action protocol: `POST /init` once per process, `POST /run` per request.
    Openwhisk,
    /// The AWS Lambda Runtime API, served by the invoker to a runtime process it starts.
    Lambda,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Exec => "exec",
            ExecutorKind::Http => "http",
            ExecutorKind::Openwhisk => "openwhisk",
            ExecutorKind::Lambda => "lambda",
        }
    }
}

/// What a `lambda` function is given, and how its answer is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LambdaEvent {
    /// As AWS's `Invoke` does: the body is the event (JSON; an empty body is `{}`, anything
    /// else not JSON is a 400 `InvalidRequestContentException`); the answer is the function's
    /// output as `application/json`, an error is 200 with `X-Amz-Function-Error: Unhandled` and
    /// the error document.
    #[default]
    #[serde(rename = "invoke")]
    Invoke,
    /// As an API Gateway HTTP API's proxy integration (payload format 2.0) does: the call
    /// becomes an event with its method, path, query, headers, cookies and body (what ASGI and
    /// WSGI adapters such as Mangum read); the function's `{statusCode, headers, cookies, body,
    /// isBase64Encoded}` becomes the answer (any other JSON: 200 `application/json`); an error
    /// is 500 `{"message":"Internal Server Error"}`.
    #[serde(rename = "apigateway-v2")]
    ApiGatewayV2,
}

/// The `executor` of a step that runs an external function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorDoc {
    pub kind: ExecutorKind,
    /// The program and its arguments (exec: run per request; http, openwhisk: the server;
    /// lambda: the runtime, e.g. a `bootstrap`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Extra environment variables for the process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The process's working directory (default: the invoker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// http: where the server listens, e.g. `http://127.0.0.1:5000` (of-watchdog's
    /// `upstream_url`). Without it the server is given a free port in `PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_url: Option<String>,
    /// openwhisk: the action's code, sent with `/init` (absent: the process has it built in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// openwhisk: the action's entry point (default `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// lambda: the handler, given to the runtime as `_HANDLER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// lambda: the event the function gets, and how its answer becomes the call's (default
    /// `invoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<LambdaEvent>,
    /// exec: the output's Content-Type (default: the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A request that has not finished after this long fails with 504 (exec, openwhisk and
    /// lambda processes are killed).
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// How many requests of this function run at once on one invoker (processes for exec,
    /// openwhisk and lambda; requests in flight for http). More wait at the invoker.
    #[serde(default = "d_concurrency")]
    pub concurrency: u32,
    /// How long a process may take to start listening (http, openwhisk) or to ask for work
    /// (lambda).
    #[serde(default = "d_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// A warm process idle for longer than its start-up plus its mean execution time is
    /// stopped (DIFFUSE's policy: keeping it is worth it only while requests come faster);
    /// this raises that bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_warm_ms: u64,
}

fn d_timeout_ms() -> u64 {
    30_000
}
fn d_concurrency() -> u32 {
    4
}
fn d_start_timeout_ms() -> u64 {
    10_000
}
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An external function of one step, as its executor runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// The function's name (the step's `function`).
    pub name: String,
    /// Default parameters (openwhisk: merged under the request's).
    pub args: serde_json::Map<String, serde_json::Value>,
    pub executor: ExecutorDoc,
}

impl External {
    fn from_doc(step: &str, doc: &StepDoc, ex: &ExecutorDoc) -> Result<External, PipelineError> {
        let field = |k: &str| format!("steps.{step}.executor.{k}");
        if !valid_name(&doc.function) {
            return Err(err(
                format!("steps.{step}.function"),
                "function names are 1 to 64 characters of [A-Za-z0-9._-]",
            ));
        }
        if !doc.args.is_empty() && ex.kind != ExecutorKind::Openwhisk {
            return Err(err(
                format!("steps.{step}.args"),
                format!(
                    "args are default parameters of built-in and openwhisk functions; {} \
                     functions take theirs from env",
                    ex.kind.name()
                ),
            ));
        }
        let needs_command = ex.kind != ExecutorKind::Http || ex.upstream_url.is_none();
        if needs_command && ex.command.first().is_none_or(|c| c.is_empty()) {
            return Err(err(
                field("command"),
                match ex.kind {
                    ExecutorKind::Http => {
                        "a program to start, or an upstream_url of a server already running"
                    }
                    _ => "a program to run is needed, e.g. [\"python3\", \"handler.py\"]",
                },
            ));
        }
        if let Some(u) = &ex.upstream_url {
            if ex.kind != ExecutorKind::Http {
                return Err(err(field("upstream_url"), "only the http executor has one"));
            }
            let rest = u.strip_prefix("http://").ok_or_else(|| {
                err(
                    field("upstream_url"),
                    "expected http://HOST:PORT (TLS is not spoken to a local function)",
                )
            })?;
            let host = rest.split('/').next().unwrap_or("");
            if host.is_empty() {
                return Err(err(field("upstream_url"), "expected http://HOST:PORT"));
            }
        }
        let only = |k: &str, v: bool, kind: ExecutorKind| -> Result<(), PipelineError> {
            if v && ex.kind != kind {
                return Err(err(
                    field(k),
                    format!("only the {} executor has one", kind.name()),
                ));
            }
            Ok(())
        };
        only("code", ex.code.is_some(), ExecutorKind::Openwhisk)?;
        only("main", ex.main.is_some(), ExecutorKind::Openwhisk)?;
        only("handler", ex.handler.is_some(), ExecutorKind::Lambda)?;
        only("event", ex.event.is_some(), ExecutorKind::Lambda)?;
        only(
            "content_type",
            ex.content_type.is_some(),
            ExecutorKind::Exec,
        )?;
        if !(1..=3_600_000).contains(&ex.timeout_ms) {
            return Err(err(field("timeout_ms"), "1 to 3600000 (one hour)"));
        }
        if !(1..=1024).contains(&ex.concurrency) {
            return Err(err(field("concurrency"), "1 to 1024"));
        }
        if !(1..=600_000).contains(&ex.start_timeout_ms) {
            return Err(err(field("start_timeout_ms"), "1 to 600000 (ten minutes)"));
        }
        if let Some(k) = ex
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(err(
                field(&format!("env.{k}")),
                "not a valid environment variable name",
            ));
        }
        Ok(External {
            name: doc.function.clone(),
            args: doc.args.clone(),
            executor: ex.clone(),
        })
    }
}

/// What a step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Function {
    Builtin(Builtin),
    /// Run by one of the invoker's executors; shared with the executor's workers.
    External(std::sync::Arc<External>),
}

impl Function {
    /// The built-in function, if this is one.
    pub fn builtin(&self) -> Option<&Builtin> {
        match self {
            Function::Builtin(b) => Some(b),
            Function::External(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDoc {
    pub function: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub args: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_options: Option<QueueOptions>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<Rule>,
    /// How an external function runs; absent: `function` is a built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorDoc>,
}

/// The JSON document as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDoc {
    pub name: String,
    pub entry: String,
    #[serde(default)]
    pub queue_defaults: QueueOptions,
    pub steps: BTreeMap<String, StepDoc>,
}

/// A built-in function, for studies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// Busy work of `us` microseconds; the output is the input.
    Spin { us: u64 },
    /// The output is the input.
    Echo,
    /// Routes `big` when the input has at least `threshold` bytes, `small` otherwise; the output
    /// is the input.
    Branch { threshold: usize },
}

/// What a function returned.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Output {
    pub payload: Vec<u8>,
    /// The continuation the output chose (matched against rules' `route`).
    pub route: Option<String>,
    /// The function's HTTP status and headers (external functions).
    pub http: Option<Box<Http>>,
    /// The function failed and this is its error answer, as the platform it stands in for
    /// gives it (a Lambda function's: 200 with `X-Amz-Function-Error` and the error document).
    /// Like an HTTP status of 400 or more, it ends the run: no continuation.
    pub failed: bool,
}

impl Output {
    /// An error answer: it ends the run ([`Output::failed`], or an HTTP status of 400 or more).
    pub fn ends_the_run(&self) -> bool {
        self.failed || self.http.as_ref().is_some_and(|h| h.status >= 400)
    }
}

impl Builtin {
    pub const NAMES: [&'static str; 3] = ["spin", "echo", "branch"];

    fn from_doc(step: &str, doc: &StepDoc) -> Result<Builtin, PipelineError> {
        let field = |k: &str| format!("steps.{step}.args.{k}");
        let allowed: &[&str] = match doc.function.as_str() {
            "spin" => &["us"],
            "echo" => &[],
            "branch" => &["threshold"],
            other => {
                return Err(err(
                    format!("steps.{step}.function"),
                    format!(
                        "unknown function {other:?}; built-in functions are {}",
                        Builtin::NAMES.join(", ")
                    ),
                ))
            }
        };
        if let Some(k) = doc.args.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(err(
                field(k),
                format!("{} takes no argument {k:?}", doc.function),
            ));
        }
        let uint = |k: &str, default: u64| -> Result<u64, PipelineError> {
            match doc.args.get(k) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| err(field(k), "expected a non-negative integer")),
            }
        };
        Ok(match doc.function.as_str() {
            "spin" => {
                let us = uint("us", 60)?;
                if us > 60_000_000 {
                    return Err(err(field("us"), "at most 60000000 (one minute)"));
                }
                Builtin::Spin { us }
            }
            "branch" => Builtin::Branch {
                threshold: uint("threshold", 64)? as usize,
            },
            _ => Builtin::Echo,
        })
    }

    /// The CPU time the function spends on any input (what its host must burn before the
    /// output counts: `spin`'s busy work). The rules never burn it themselves: the core reads
    /// no clock.
    pub fn cpu_time(&self) -> Option<core::time::Duration> {
        match self {
            Builtin::Spin { us } => Some(core::time::Duration::from_micros(*us)),
            Builtin::Echo | Builtin::Branch { .. } => None,
        }
    }

    /// The function's output for `input` (its [`Builtin::cpu_time`] is the host's to spend).
    pub fn output(&self, input: &[u8]) -> Output {
        match self {
            Builtin::Spin { .. } | Builtin::Echo => Output {
                payload: input.to_vec(),
                ..Output::default()
            },
            Builtin::Branch { threshold } => Output {
                payload: input.to_vec(),
                route: Some(
                    if input.len() >= *threshold {
                        "big"
                    } else {
                        "small"
                    }
                    .into(),
                ),
                ..Output::default()
            },
        }
    }
}

/// One validated step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub function: Function,
    pub queue: QueueSpec,
    pub next: Vec<Rule>,
}

/// A validated pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub name: String,
    pub entry: String,
    pub steps: BTreeMap<String, Step>,
    pub doc: PipelineDoc,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Writes the durability every queue of a pipeline document gets into the document itself, so
/// that what the group orders says it (and every member reads the same, whatever its group
/// file says): the pipeline's `queue_defaults.durability`, or `group` (the group file's
/// `[group] durability`) when absent; and a step's `queue_options` without a durability takes
/// that one (its other options do not inherit: a step's `queue_options` replace the defaults).
/// A document of the wrong shape is left as it is (parsing it says what is wrong).
pub fn settle_durability(doc: &mut serde_json::Value, group: Durability) {
    let Some(obj) = doc.as_object_mut() else {
        return;
    };
    let group = serde_json::to_value(group).unwrap_or_default();
    let defaults = obj
        .entry("queue_defaults")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(defaults) = defaults.as_object_mut() else {
        return;
    };
    let d = defaults.entry("durability").or_insert(group).clone();
    if let Some(steps) = obj.get_mut("steps").and_then(|s| s.as_object_mut()) {
        for step in steps.values_mut() {
            if let Some(q) = step
                .get_mut("queue_options")
                .and_then(|q| q.as_object_mut())
            {
                q.entry("durability").or_insert_with(|| d.clone());
            }
        }
    }
}

impl Pipeline {
    /// Parses and validates a JSON document as the group installs it: with every queue's
    /// durability written into the document ([`settle_durability`]; the group's default is
    /// `group`). [`Pipeline::to_json`] then gives the settled document.
    pub fn from_json_in_group(text: &str, group: Durability) -> Result<Pipeline, PipelineError> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(mut v) => {
                settle_durability(&mut v, group);
                Pipeline::from_json(&v.to_string())
            }
            Err(_) => Pipeline::from_json(text),
        }
    }

    /// Parses and validates a JSON document.
    pub fn from_json(text: &str) -> Result<Pipeline, PipelineError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let doc: PipelineDoc = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "(document)".to_string()
            } else {
                path
            };
            err(field, e.into_inner().to_string())
        })?;
        Pipeline::from_doc(doc)
    }

    pub fn from_doc(doc: PipelineDoc) -> Result<Pipeline, PipelineError> {
        if !valid_name(&doc.name) {
            return Err(err("name", "expected 1 to 64 characters of [A-Za-z0-9._-]"));
        }
        if doc.steps.is_empty() {
            return Err(err("steps", "a pipeline needs at least one step"));
        }
        if !doc.steps.contains_key(&doc.entry) {
            return Err(err("entry", format!("no step named {:?}", doc.entry)));
        }
        let mut steps = BTreeMap::new();
        for (name, s) in &doc.steps {
            if !valid_name(name) {
                return Err(err(
                    format!("steps.{name}"),
                    "step names are 1 to 64 characters of [A-Za-z0-9._-]",
                ));
            }
            let function = match &s.executor {
                None => Function::Builtin(Builtin::from_doc(name, s)?),
                Some(ex) => {
                    Function::External(std::sync::Arc::new(External::from_doc(name, s, ex)?))
                }
            };
            for (i, rule) in s.next.iter().enumerate() {
                if let Some(w) = &rule.when {
                    if !(w.pointer.is_empty() || w.pointer.starts_with('/')) {
                        return Err(err(
                            format!("steps.{name}.next[{i}].when.pointer"),
                            "a JSON pointer is empty or starts with '/', e.g. \"/kind\"",
                        ));
                    }
                }
                if rule.to.is_empty() {
                    return Err(err(
                        format!("steps.{name}.next[{i}].to"),
                        "a rule must name at least one step",
                    ));
                }
                for (j, t) in rule.to.iter().enumerate() {
                    if !doc.steps.contains_key(t) {
                        return Err(err(
                            format!("steps.{name}.next[{i}].to[{j}]"),
                            format!("no step named {t:?}"),
                        ));
                    }
                }
            }
            let queue_name = s
                .queue
                .clone()
                .unwrap_or_else(|| format!("{}.{}", doc.name, name));
            if !valid_name(&queue_name) {
                return Err(err(
                    format!("steps.{name}.queue"),
                    "queue names are 1 to 64 characters of [A-Za-z0-9._-]",
                ));
            }
            let opts = s
                .queue_options
                .clone()
                .unwrap_or(doc.queue_defaults.clone());
            steps.insert(
                name.clone(),
                Step {
                    name: name.clone(),
                    function,
                    queue: QueueSpec {
                        name: queue_name,
                        capacity: opts.capacity,
                        order: opts.order,
                        on_full: opts.on_full,
                        durability: opts.durability,
                    },
                    next: s.next.clone(),
                },
            );
        }
        let p = Pipeline {
            name: doc.name.clone(),
            entry: doc.entry.clone(),
            steps,
            doc,
        };
        p.check_acyclic()?;
        // Two steps may share a queue only with identical queue settings.
        let mut seen: BTreeMap<&str, (&str, &QueueSpec)> = BTreeMap::new();
        for s in p.steps.values() {
            if let Some((other, spec)) = seen.insert(&s.queue.name, (&s.name, &s.queue)) {
                if *spec != s.queue {
                    return Err(err(
                        format!("steps.{}.queue_options", s.name),
                        format!(
                            "queue {:?} is shared with step {other:?} with other options",
                            s.queue.name
                        ),
                    ));
                }
            }
        }
        Ok(p)
    }

    fn check_acyclic(&self) -> Result<(), PipelineError> {
        // Depth-first search with colours: 0 new, 1 on the stack, 2 done.
        fn visit<'a>(
            p: &'a Pipeline,
            s: &'a str,
            colour: &mut BTreeMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), PipelineError> {
            match colour.get(s) {
                Some(2) => return Ok(()),
                Some(1) => {
                    let start = path.iter().position(|x| *x == s).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].to_vec();
                    cycle.push(s);
                    return Err(err(
                        format!("steps.{}.next", path.last().copied().unwrap_or(s)),
                        format!("cycle {}", cycle.join(" -> ")),
                    ));
                }
                _ => {}
            }
            colour.insert(s, 1);
            path.push(s);
            if let Some(step) = p.steps.get(s) {
                for rule in &step.next {
                    for t in &rule.to {
                        visit(p, t, colour, path)?;
                    }
                }
            }
            path.pop();
            colour.insert(s, 2);
            Ok(())
        }
        let mut colour = BTreeMap::new();
        for name in self.steps.keys() {
            visit(self, name, &mut colour, &mut Vec::new())?;
        }
        Ok(())
    }

    /// A linear chain of `len` spin functions of `us` microseconds each (the benchmarks').
    pub fn chain(name: &str, len: usize, us: u64) -> Pipeline {
        let mut steps = BTreeMap::new();
        for i in 0..len.max(1) {
            let mut args = serde_json::Map::new();
            args.insert("us".into(), us.into());
            let next = if i + 1 < len {
                vec![Rule {
                    route: None,
                    when: None,
                    to: vec![format!("f{}", i + 1)],
                }]
            } else {
                Vec::new()
            };
            steps.insert(
                format!("f{i}"),
                StepDoc {
                    function: "spin".into(),
                    args,
                    queue: None,
                    queue_options: None,
                    next,
                    executor: None,
                },
            );
        }
        Pipeline::from_doc(PipelineDoc {
            name: name.into(),
            entry: "f0".into(),
            queue_defaults: QueueOptions::default(),
            steps,
        })
        .expect("a generated chain is valid")
    }

    pub fn queue_specs(&self) -> Vec<QueueSpec> {
        let mut out: Vec<QueueSpec> = Vec::new();
        for s in self.steps.values() {
            if !out.iter().any(|q| q.name == s.queue.name) {
                out.push(s.queue.clone());
            }
        }
        out
    }

    /// The first request of a run.
    pub fn entry_request(&self, id: RequestId, payload: Vec<u8>, meta: Meta) -> Request {
        let step = &self.steps[&self.entry];
        Request {
            id,
            instance: 0,
            step: step.name.clone(),
            queue: step.queue.name.clone(),
            payload,
            meta,
            http: None,
        }
    }

    /// The requests that continue the run after `step` produced `out`.
    pub fn continuations(&self, req: &Request, out: &Output, meta: Meta) -> Vec<Request> {
        let Some(step) = self.steps.get(&req.step) else {
            return Vec::new();
        };
        // The output as JSON, parsed once if a rule looks into it.
        let mut json: Option<Option<serde_json::Value>> = None;
        let rule = step.next.iter().find(|r| {
            if r.route.is_some() && r.route != out.route {
                return false;
            }
            let Some(w) = &r.when else {
                return true;
            };
            let v = json.get_or_insert_with(|| serde_json::from_slice(&out.payload).ok());
            v.as_ref().and_then(|v| v.pointer(&w.pointer)) == Some(&w.equals)
        });
        let Some(rule) = rule else {
            return Vec::new();
        };
        // The next functions see the call's details, with the content type of this output.
        let http = req.http.as_ref().map(|h| {
            let mut h = h.clone();
            if let Some(ct) = out.http.as_ref().and_then(|o| o.header("Content-Type")) {
                h.set_header("Content-Type", ct);
            }
            h
        });
        rule.to
            .iter()
            .filter_map(|t| self.steps.get(t))
            .map(|t| Request {
                id: req.id,
                instance: 0,
                step: t.name.clone(),
                queue: t.queue.name.clone(),
                payload: out.payload.clone(),
                meta,
                http: http.clone(),
            })
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.doc).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
