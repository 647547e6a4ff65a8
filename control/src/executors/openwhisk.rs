//! `openwhisk`: the OpenWhisk action protocol. Each worker starts an action process (an action
//! proxy, with `PORT` and `FLASK_PROXY_PORT`, which OpenWhisk's own runtimes read, set to a
//! free port), sends it `POST /init` once with the action's code and entry point, then
//! `POST /run` per request with `{"value": ..., "namespace", "action_name", "activation_id",
//! "transaction_id", "deadline", ...}` (the proxy exposes them to the action as `__OW_*`). The
//! value is the step's `args` overlaid with the input when that is a JSON object; other input
//! goes in `__ow_body`; a call through the gateway adds `__ow_method`, `__ow_headers`,
//! `__ow_path` and `__ow_query`, as web actions have them.
//!
//! The answer must be a JSON object; anything else fails the step with 502 and OpenWhisk's
//! messages ("The action did not return a dictionary."); an object with an `error` field is an
//! application error (502 with the object). Past `timeout_ms` the process is killed (502, as
//! OpenWhisk answers a web action past its limit: "The action exceeded its time limits of N
//! milliseconds.") and the next request starts a new one.
//!
//! A call through the gateway is a web action's: a result with `statusCode`, `headers` or
//! `body` is the HTTP response, as OpenWhisk's controller makes it ([`web_answer`]); any other
//! object is the JSON answer. A status of 400 or more ends the run with that answer.
//!
//! Requests go on one kept-alive connection per action process that acknowledges every
//! segment at once ([`quickack`](super::quickack)): OpenWhisk's Python runtime (Flask on
//! gevent's WSGI server) writes an answer's headers and body apart with Nagle's algorithm on,
//! so with Linux's delayed acknowledgement the body would wait 40 ms. The runtime also listens
//! on every interface (0.0.0.0), as it may in OpenWhisk's container: an invoker with
//! CAP_NET_ADMIN (root) and `nft` drops TCP to the action's port from any interface but
//! loopback (a table of its own per action process, made before the process starts and deleted
//! after it ends); without them, the log says the port is open, naming it.

use super::quickack::{Client, Error as HttpError};
use super::{free_port, wait_listening, Pool, Proc, Warm};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use conveyor_core::pipeline::Output;
use conveyor_core::queue::Http;
use conveyor_dataplane::invoker::{FunctionError, Job};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A started and initialised action process.
#[derive(Debug)]
pub struct Action {
    proc: Proc,
    client: Client,
    /// Dropped after the process: the rule goes once nothing listens.
    _firewall: Option<LoopbackOnly>,
}

/// An nftables table of its own that drops TCP to `port` arriving on any interface but
/// loopback; deleted when dropped. OpenWhisk's runtimes listen on every interface (in
/// OpenWhisk, a container's); this keeps an action process reachable only from its invoker.
///
/// The table is named after the port and the invoker's pid (`conveyor_action_{port}_{pid}`):
/// an invoker that was killed never deletes its tables, so each new one first deletes the
/// tables of invokers that are gone ([`stale_tables`]). Left behind, they would filter every
/// packet the host receives, for good (64 of them made loopback round trips 70% slower).
#[derive(Debug)]
struct LoopbackOnly {
    table: String,
}

const TABLE_PREFIX: &str = "conveyor_action_";

impl LoopbackOnly {
    /// Needs `nft` and CAP_NET_ADMIN (root); the error says why not.
    fn new(port: u16) -> Result<LoopbackOnly, String> {
        let table = format!("{TABLE_PREFIX}{port}_{}", std::process::id());
        let mut rules = String::new();
        if let Ok(listed) = nft_output(&["list", "tables"]) {
            for stale in stale_tables(&listed, pid_alive, port_free) {
                rules.push_str(&format!("delete table inet {stale}\n"));
            }
        }
        // Created empty and deleted first, so a table of the same name goes too; one
        // transaction.
        rules.push_str(&format!(
            "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n  \
             chain input {{\n    type filter hook input priority -10; policy accept;\n    \
             iifname != \"lo\" tcp dport {port} drop\n  }}\n}}\n"
        ));
        nft(&rules)?;
        Ok(LoopbackOnly { table })
    }
}

/// The action tables of `nft list tables`'s output whose invoker is gone: named with a pid
/// that is not `alive`, or (as earlier versions named them, without a pid) with a port that
/// nothing listens on (`free`).
fn stale_tables(
    listed: &str,
    alive: impl Fn(u32) -> bool,
    free: impl Fn(u16) -> bool,
) -> Vec<String> {
    listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|name| {
            let Some(rest) = name.strip_prefix(TABLE_PREFIX) else {
                return false;
            };
            match rest.split_once('_') {
                Some((port, pid)) => {
                    port.parse::<u16>().is_ok() && pid.parse::<u32>().is_ok_and(|p| !alive(p))
                }
                None => rest.parse::<u16>().is_ok_and(&free),
            }
        })
        .map(str::to_string)
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Nothing listens on TCP `port` (of any address).
fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

impl Drop for LoopbackOnly {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            tracing::warn!("nftables table {} not deleted: {e}", self.table);
        }
    }
}

/// Runs `nft ARGS` and returns what it printed.
fn nft_output(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nft")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft {}: {}", args.join(" "), out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft -f -` on `rules`.
fn nft(rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(rules.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn start(pool: &Pool) -> Result<Action, FunctionError> {
    let f = &pool.f;
    let started = Instant::now();
    let port = free_port().map_err(|e| FunctionError::new(500, format!("no free port: {e}")))?;
    // Before the process starts, so that its port is never open to other hosts.
    let firewall = LoopbackOnly::new(port)
        .map_err(|e| tracing::debug!("function {}: port {port} not firewalled: {e}", f.name))
        .ok();
    let mut proc = Proc::spawn(
        f,
        &[
            ("PORT".into(), port.to_string()),
            ("FLASK_PROXY_PORT".into(), port.to_string()),
        ],
        Stdio::null(),
        Stdio::inherit(),
        Stdio::inherit(),
    )
    .map_err(|e| FunctionError::new(500, e.to_string()))?;
    let fail = |e: String| {
        pool.stats.starts.fetch_add(1, Ordering::Relaxed);
        pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
        FunctionError::new(502, format!("the action {} did not start: {e}", f.name))
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, &mut proc, pool.start_timeout()).map_err(fail)?;
    match (listening_beyond_loopback(port), &firewall) {
        (Some(open), Some(fw)) => tracing::info!(
            "function {}: the action process listens on {open}; firewalled to loopback \
             (nftables table {})",
            f.name,
            fw.table
        ),
        (Some(open), None) => tracing::warn!(
            "function {}: the action process listens on {open}, reachable from other hosts: \
             firewall TCP port {port} or give the runtime a loopback address (the invoker \
             does it with nftables when it has CAP_NET_ADMIN)",
            f.name
        ),
        (None, _) => {}
    }
    let mut client = Client::new(addr, Duration::from_secs(2));
    let init = json!({"value": {
        "name": f.name,
        "main": f.executor.main.as_deref().unwrap_or("main"),
        "code": f.executor.code.as_deref().unwrap_or(""),
        "binary": false,
        "env": f.executor.env,
    }});
    let init = serde_json::to_vec(&init).unwrap_or_default();
    match client.post_json("/init", &init, pool.start_timeout(), 64 * 1024) {
        Ok(_) => {}
        Err(e @ HttpError::Status(..)) => return Err(fail(format!("/init {e}"))),
        Err(e) => return Err(fail(format!("/init: {e}"))),
    }
    pool.started(started.elapsed());
    Ok(Action {
        proc,
        client,
        _firewall: firewall,
    })
}

/// The action's input.
pub fn value(args: &Map<String, Value>, payload: &[u8], http: Option<&Http>) -> Value {
    let mut v = args.clone();
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(o)) => v.extend(o),
        _ if payload.is_empty() => {}
        _ => {
            let body = match std::str::from_utf8(payload) {
                Ok(s) => s.to_string(),
                Err(_) => B64.encode(payload),
            };
            v.insert("__ow_body".into(), Value::String(body));
        }
    }
    if let Some(h) = http {
        v.insert("__ow_method".into(), h.method.to_ascii_lowercase().into());
        let headers: Map<String, Value> = h
            .headers
            .iter()
            .map(|(k, x)| (k.to_ascii_lowercase(), Value::String(x.clone())))
            .collect();
        v.insert("__ow_headers".into(), Value::Object(headers));
        v.insert("__ow_path".into(), h.path.clone().into());
        v.insert("__ow_query".into(), h.query.clone().into());
    }
    Value::Object(v)
}

pub fn call(pool: &Pool, warm: &mut Warm, job: &Job) -> Result<Output, FunctionError> {
    let f = &pool.f;
    if let Warm::Openwhisk(a) = warm {
        if let Some(status) = a.proc.exited() {
            tracing::warn!("function {}: the action process exited ({status})", f.name);
            pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            *warm = Warm::None;
        }
    }
    if !matches!(warm, Warm::Openwhisk(_)) {
        *warm = Warm::Openwhisk(start(pool)?);
    }
    let Warm::Openwhisk(a) = warm else {
        return Err(FunctionError::new(500, "no action process"));
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let run = json!({
        "value": value(&f.args, &job.req.payload, job.req.http.as_deref()),
        "namespace": "conveyor",
        "action_name": format!("/conveyor/{}", f.name),
        "action_version": "0.0.1",
        "activation_id": format!("{:016x}{:016x}", job.req.id.0, job.req.instance),
        "transaction_id": format!("{:016x}", job.req.id.0),
        "deadline": (now_ms + f.executor.timeout_ms).to_string(),
        "api_host": "",
        "api_key": "",
    });
    let started = Instant::now();
    let run = serde_json::to_vec(&run).unwrap_or_default();
    let r = a
        .client
        .post_json("/run", &run, pool.timeout(), job.max_output());
    let body = match r {
        Ok(b) => b,
        Err(e @ HttpError::Status(..)) => {
            return Err(FunctionError::new(502, format!("the action {e}")));
        }
        Err(e @ HttpError::TooLarge(_)) => {
            return Err(FunctionError::new(502, format!("the action's answer: {e}")));
        }
        Err(HttpError::Io(e)) => {
            let timed_out = started.elapsed() >= pool.timeout();
            let exited = a.proc.exited();
            *warm = Warm::None; // killed: a fresh process for the next request
            if timed_out {
                return Err(FunctionError::new(
                    502,
                    format!(
                        "The action exceeded its time limits of {} milliseconds.",
                        f.executor.timeout_ms
                    ),
                ));
            }
            if exited.is_some() {
                pool.stats.crashes.fetch_add(1, Ordering::Relaxed);
            }
            return Err(FunctionError::new(
                502,
                format!(
                    "The action did not produce a valid response and exited unexpectedly. ({e})"
                ),
            ));
        }
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) if o.contains_key("error") => Err(FunctionError::new(
            502,
            format!("the action failed: {}", Value::Object(o)),
        )),
        Ok(Value::Object(o))
            if job.req.http.is_some()
                && ["statusCode", "headers", "body"]
                    .iter()
                    .any(|k| o.contains_key(*k)) =>
        {
            web_answer(&o).map_err(|e| FunctionError::new(502, e))
        }
        Ok(Value::Object(o)) => Ok(Output {
            payload: serde_json::to_vec(&o).unwrap_or_default(),
            route: None,
            http: Some(Box::new(Http {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                ..Http::default()
            })),
            failed: false,
        }),
        _ => Err(FunctionError::new(
            502,
            "The action did not return a dictionary.",
        )),
    }
}

/// A web action's HTTP response from its result, as OpenWhisk's controller builds it:
/// `statusCode` (200, or 204 without a body), `headers` (a value may be a string, number,
/// boolean, or an array of them for a header given several times), and `body`: without a
/// declared `Content-Type`, a string is `text/html` and any other value JSON
/// (`application/json`); with one, a string body of a binary type (not text, JSON, XML,
/// JavaScript or a form) is base64 that is decoded.
pub fn web_answer(o: &Map<String, Value>) -> Result<Output, String> {
    let mut headers: Vec<(String, String)> = Vec::new();
    match o.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let values = match v {
                    Value::Array(vs) => vs.iter().collect(),
                    v => vec![v],
                };
                for v in values {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(_) | Value::Bool(_) => v.to_string(),
                        _ => return Err(format!("Invalid header value for {k}: {v}")),
                    };
                    headers.push((k.clone(), v));
                }
            }
        }
        Some(h) => return Err(format!("The action's headers are not an object: {h}")),
    }
    let ctype = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let body: Vec<u8> = match (o.get("body"), &ctype) {
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(Value::String(s)), None) => {
            headers.push(("Content-Type".into(), "text/html; charset=UTF-8".into()));
            s.clone().into_bytes()
        }
        (Some(Value::String(s)), Some(t)) if binary(t) => B64
            .decode(s.trim())
            .map_err(|e| format!("The action's body is not valid base64 for {t}: {e}"))?,
        (Some(Value::String(s)), Some(_)) => s.clone().into_bytes(),
        (Some(v), c) => {
            if c.is_none() {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            serde_json::to_vec(v).unwrap_or_default()
        }
    };
    let status = match o.get("statusCode") {
        None | Some(Value::Null) if body.is_empty() => 204,
        None | Some(Value::Null) => 200,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("Invalid HTTP status code: {v}"))? as u16,
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

/// Whether OpenWhisk takes a body of this content type for binary (sent base64).
fn binary(ctype: &str) -> bool {
    let t = ctype.split(';').next().unwrap_or("").trim();
    !(t.starts_with("text/")
        || t == "application/json"
        || t.ends_with("+json")
        || t == "application/xml"
        || t.ends_with("+xml")
        || t == "application/javascript"
        || t == "application/x-www-form-urlencoded")
}

/// The address a process listens on at `port` when it is not a loopback one (from
/// `/proc/net/tcp` and `tcp6`), for a warning.
fn listening_beyond_loopback(port: u16) -> Option<String> {
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local address (hex ip:port) and state (0A: LISTEN).
            let (Some(local), Some(&"0A")) = (cols.get(1), cols.get(3)) else {
                continue;
            };
            let Some((ip, p)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            let loopback = if v6 {
                ip == "00000000000000000000000001000000"
                    || ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F")
            } else {
                ip.ends_with("7F")
            };
            if !loopback {
                let any = ip.chars().all(|c| c == '0');
                return Some(match (any, v6) {
                    (true, false) => format!("0.0.0.0:{port}"),
                    (true, true) => format!("[::]:{port}"),
                    _ => format!("a non-loopback address, port {port}"),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_overlays_args_and_carries_other_bodies() {
        let mut args = Map::new();
        args.insert("greeting".into(), "hello".into());
        args.insert("n".into(), 1.into());
        let v = value(&args, br#"{"n": 2}"#, None);
        assert_eq!(v, json!({"greeting": "hello", "n": 2}));
        let v = value(&Map::new(), b"plain", None);
        assert_eq!(v, json!({"__ow_body": "plain"}));
        let v = value(&Map::new(), &[0xff, 0, 1], None);
        assert_eq!(v, json!({"__ow_body": "/wAB"}));
        let h = Http {
            method: "POST".into(),
            path: "/x".into(),
            query: "a=1".into(),
            headers: vec![("X-Thing".into(), "y".into())],
            status: 0,
        };
        let v = value(&Map::new(), b"[1]", Some(&h));
        assert_eq!(
            v,
            json!({"__ow_body": "[1]", "__ow_method": "post", "__ow_headers": {"x-thing": "y"},
                   "__ow_path": "/x", "__ow_query": "a=1"})
        );
    }

    #[test]
    fn tables_of_invokers_that_are_gone_are_stale() {
        let listed = "table inet filter\n\
                      table inet conveyor_action_4000_10\n\
                      table inet conveyor_action_4001_11\n\
                      table inet conveyor_action_4002\n\
                      table inet conveyor_action_4003\n\
                      table ip conveyor_action_4004_12\n\
                      table inet conveyor_action_x_13\n";
        let stale = stale_tables(listed, |pid| pid == 11, |port| port == 4003);
        assert_eq!(stale, ["conveyor_action_4000_10", "conveyor_action_4003"]);
        // This process is alive: its own tables are never stale.
        let own = format!("table inet conveyor_action_1_{}\n", std::process::id());
        assert!(stale_tables(&own, pid_alive, |_| true).is_empty());
        assert!(
            !stale_tables("table inet conveyor_action_1_4294967295", pid_alive, |_| {
                true
            })
            .is_empty()
        );
    }

    type Answer = (u16, Vec<(String, String)>, Vec<u8>);

    fn web(v: Value) -> Result<Answer, String> {
        let Value::Object(o) = v else { unreachable!() };
        web_answer(&o).map(|out| {
            let h = out.http.unwrap();
            (h.status, h.headers, out.payload)
        })
    }

    #[test]
    fn web_action_results_become_responses_as_openwhisk_makes_them() {
        let ct = |v: &str| ("Content-Type".to_string(), v.to_string());
        // A string body without a type is HTML; the status defaults to 200.
        assert_eq!(
            web(json!({"body": "<p>hi</p>"})).unwrap(),
            (
                200,
                vec![ct("text/html; charset=UTF-8")],
                b"<p>hi</p>".to_vec()
            )
        );
        // An object body is JSON; headers with several values give one line each.
        let (st, h, b) = web(json!({"statusCode": 201, "body": {"a": 1},
            "headers": {"Set-Cookie": ["a=1", "b=2"], "X-N": 3}}))
        .unwrap();
        assert_eq!(st, 201);
        assert_eq!(b, br#"{"a":1}"#);
        assert_eq!(
            h,
            vec![
                ("Set-Cookie".into(), "a=1".into()),
                ("Set-Cookie".into(), "b=2".into()),
                ("X-N".into(), "3".into()),
                ct("application/json"),
            ]
        );
        // A binary type's body is base64, decoded; a text type's is kept as it is.
        let (_, _, b) = web(json!({"headers": {"Content-Type": "image/png"},
            "body": "iVBORw=="}))
        .unwrap();
        assert_eq!(b, [0x89, b'P', b'N', b'G']);
        let (_, _, b) = web(json!({"headers": {"content-type": "text/plain"},
            "body": "iVBORw=="}))
        .unwrap();
        assert_eq!(b, b"iVBORw==");
        // No body: 204; a redirect or an error status passes through.
        assert_eq!(web(json!({"headers": {}})).unwrap().0, 204);
        let (st, h, _) = web(json!({"statusCode": "302",
            "headers": {"location": "/x"}}))
        .unwrap();
        assert_eq!((st, h), (302, vec![("location".into(), "/x".into())]));
        // What OpenWhisk refuses, refused with the reason.
        assert!(web(json!({"statusCode": 42}))
            .unwrap_err()
            .contains("status code"));
        assert!(
            web(json!({"headers": {"Content-Type": "image/png"}, "body": "%%"}))
                .unwrap_err()
                .contains("base64")
        );
        assert!(web(json!({"headers": "x"})).is_err());
    }

    #[test]
    fn a_loopback_listener_is_not_reported_and_an_open_one_is() {
        let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            listening_beyond_loopback(lo.local_addr().unwrap().port()),
            None
        );
        let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port();
        assert_eq!(
            listening_beyond_loopback(port),
            Some(format!("0.0.0.0:{port}"))
        );
    }
}
