//! `openwhisk`: the OpenWhisk action protocol. Each worker starts an action process (an action
//! proxy, with `PORT` set to a free port), sends it `POST /init` once with the action's code and
//! entry point, then `POST /run` per request with `{"value": ..., "namespace", "action_name",
//! "activation_id", "transaction_id", "deadline", ...}` (the proxy exposes them to the action as
//! `__OW_*`). The value is the step's `args` overlaid with the input when that is a JSON object;
//! other input goes in `__ow_body`; a call through the gateway adds `__ow_method`,
//! `__ow_headers`, `__ow_path` and `__ow_query`, as web actions have them.
//!
//! The answer must be a JSON object; anything else fails the step with 502 and OpenWhisk's
//! messages ("The action did not return a dictionary."); an object with an `error` field is an
//! application error (502 with the object). Past `timeout_ms` the process is killed (504, "The
//! action exceeded its time limits of N milliseconds.") and the next request starts a new one.

use super::{free_port, read_limited, wait_listening, Pool, Proc, Warm};
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
    base: String,
    agent: ureq::Agent,
}

fn start(pool: &Pool) -> Result<Action, FunctionError> {
    let f = &pool.f;
    let started = Instant::now();
    let port = free_port().map_err(|e| FunctionError::new(500, format!("no free port: {e}")))?;
    let mut proc = Proc::spawn(
        f,
        &[("PORT".into(), port.to_string())],
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
    let base = format!("http://{addr}");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .build();
    let init = json!({"value": {
        "name": f.name,
        "main": f.executor.main.as_deref().unwrap_or("main"),
        "code": f.executor.code.as_deref().unwrap_or(""),
        "binary": false,
        "env": f.executor.env,
    }});
    match agent
        .post(&format!("{base}/init"))
        .timeout(pool.start_timeout())
        .send_json(init)
    {
        Ok(_) => {}
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            return Err(fail(format!("/init answered {code}: {}", body.trim())));
        }
        Err(e) => return Err(fail(format!("/init: {e}"))),
    }
    pool.started(started.elapsed());
    Ok(Action { proc, base, agent })
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
                Err(_) => base64(payload),
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

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
    let r = a
        .agent
        .post(&format!("{}/run", a.base))
        .timeout(pool.timeout())
        .send_json(run);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = read_limited(r.into_reader(), 4096).unwrap_or_default();
            return Err(FunctionError::new(
                502,
                format!(
                    "the action answered {code}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
            ));
        }
        Err(e) => {
            let timed_out = started.elapsed() >= pool.timeout();
            let exited = a.proc.exited();
            *warm = Warm::None; // killed: a fresh process for the next request
            if timed_out {
                return Err(FunctionError::new(
                    504,
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
    let body = read_limited(resp.into_reader(), job.max_output())
        .map_err(|e| FunctionError::new(502, format!("the action's answer: {e}")))?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) if o.contains_key("error") => Err(FunctionError::new(
            502,
            format!("the action failed: {}", Value::Object(o)),
        )),
        Ok(Value::Object(o)) => Ok(Output {
            payload: serde_json::to_vec(&o).unwrap_or_default(),
            route: None,
            http: Some(Box::new(Http {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                ..Http::default()
            })),
        }),
        _ => Err(FunctionError::new(
            502,
            "The action did not return a dictionary.",
        )),
    }
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
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
    }
}
