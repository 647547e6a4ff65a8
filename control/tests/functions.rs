//! Unmodified functions behind the gateway, with real processes: a trigger with the gateway, an
//! invoker running functions inline and one in a thread, a control plane, and the functions of
//! `testbed/functions` under each executor: a Python classic-watchdog function (`exec`), a
//! Python HTTP server (`http`), an OpenWhisk action behind a small action proxy (`openwhisk`)
//! and a shell `bootstrap` custom runtime with curl (`lambda`). Called with curl.

mod common;

use common::{callback_server, curl_i, free_tcp, h, wait_for};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const KEY: &str = "00000000000000000000000000000000000000000000000000000000000000cc";
const TOKEN: &str = "functions-test-token-0123";

/// The tests of this file start dozens of Python processes each: one at a time on 2 cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The OpenWhisk action's code, sent with /init.
const ACTION: &str = r#"import os, time
def main(args):
    text = args.get("text", "")
    if text == "notjson":
        return "no dict"
    if text == "hang":
        time.sleep(600)
    if text == "crash":
        os._exit(1)
    if "web" in args: return args["web"]
    return {"text": text, "summary": " ".join(text.split()[:2]) + " ...",
            "greeting": args.get("greeting"), "pid": os.getpid(),
            "activation": os.environ.get("__OW_ACTIVATION_ID", ""),
            "deadline": os.environ.get("__OW_DEADLINE", ""),
            "method": args.get("__ow_method", "")}
"#;

struct Group {
    children: Vec<Child>,
    dir: PathBuf,
    gateway: String,
    config: PathBuf,
    tag: String,
}

impl Group {
    fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pids: Vec<u32> = self.children.iter().map(|c| c.id()).collect();
        common::delete_action_tables_of(&pids);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("the members' logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions")
        .canonicalize()
        .unwrap()
}

/// The executors of the four functions, each process marked with `tag` in its environment.
fn executors(tag: &str) -> (Value, Value, Value, Value) {
    let fns = functions_dir();
    let f = |n: &str| fns.join(n).to_str().unwrap().to_string();
    let env = json!({ "CONVEYOR_TEST_TAG": tag });
    (
        json!({"kind": "exec", "command": ["python3", f("classify.py")], "env": env,
               "timeout_ms": 4000, "concurrency": 2}),
        json!({"kind": "http", "command": ["python3", f("shout.py")], "env": env,
               "timeout_ms": 4000, "concurrency": 2, "keep_warm_ms": 1000}),
        json!({"kind": "openwhisk", "command": ["python3", f("ow_proxy.py")], "env": env,
               "code": ACTION, "timeout_ms": 4000, "concurrency": 2, "keep_warm_ms": 1000}),
        json!({"kind": "lambda", "command": [f("bootstrap")], "handler": "tag.handler",
               "env": env, "timeout_ms": 4000, "concurrency": 2, "keep_warm_ms": 1000}),
    )
}

/// classify (exec) branches on its JSON output: long texts to summarize (openwhisk), others to
/// shout (http); both go on to tag (lambda).
fn mixed(tag: &str, long_to: &str) -> Value {
    let (ex, ht, ow, la) = executors(tag);
    json!({"name": "mixed", "entry": "classify", "steps": {
        "classify": {"function": "classify", "executor": ex,
            "next": [{"when": {"pointer": "/kind", "equals": "long"}, "to": [long_to]},
                     {"to": ["shout"]}]},
        "summarize": {"function": "summarize", "args": {"greeting": "hi"}, "executor": ow,
                      "next": [{"to": ["tag"]}]},
        "shout": {"function": "shout", "executor": ht, "next": [{"to": ["tag"]}]},
        "tag": {"function": "tag", "executor": la}}})
}

fn start_group(name: &str) -> Group {
    let tag = format!("{name}-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("conveyor-fn-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ex, ht, ow, la) = executors(&tag);
    let one = |pipeline: &str, function: &str, ex: &Value, args: Value| {
        let mut step = json!({"function": function, "executor": ex});
        if args != json!({}) {
            step["args"] = args;
        }
        json!({"name": pipeline, "entry": "only", "steps": {"only": step}})
    };
    let docs = [
        ("mixed", mixed(&tag, "summarize")),
        ("exec1", one("exec1", "classify", &ex, json!({}))),
        ("http1", one("http1", "shout", &ht, json!({}))),
        (
            "ow1",
            one("ow1", "summarize", &ow, json!({"greeting": "hi"})),
        ),
        ("lambda1", one("lambda1", "tag", &la, json!({}))),
        // One second, then the pid of the invoker that ran it.
        (
            "slow1",
            one(
                "slow1",
                "slow",
                &json!({"kind": "exec", "command": ["sh", "-c", "sleep 1; echo $PPID"],
                        "env": {"CONVEYOR_TEST_TAG": tag}, "concurrency": 2}),
                json!({}),
            ),
        ),
    ];
    for (n, d) in &docs {
        std::fs::write(dir.join(format!("{n}.json")), d.to_string()).unwrap();
    }
    let ports: Vec<u16> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let gw = format!("127.0.0.1:{}", free_tcp());
    let control = format!("127.0.0.1:{}", free_tcp());
    let toml = format!(
        r#"[group]
name = "fx"
key = "{KEY}"
pipelines = ["mixed.json", "exec1.json", "http1.json", "ow1.json", "lambda1.json", "slow1.json"]
startup_timeout_s = 20
# The pipelines name their scripts by absolute path (the checkout's, as long as CI makes
# it): above the 4096 default once the path is long, so room is made for them.
max_payload = 7168
# Dozens of Python processes start at once on 2 cores and starve the members' polling
# threads for longer than the default 30 ms: a member must not be suspected for that.
failure_timeout_ms = 1000

[control]
address = "{control}"
token = "{TOKEN}"

[[member]]
name = "trigger"
address = "127.0.0.1:{}"
role = "trigger"
[member.gateway]
address = "{gw}"
timeout_s = 20
workers = 64

[[member]]
name = "invoker-0"
address = "127.0.0.1:{}"
role = "invoker"
credits = 16

[[member]]
name = "invoker-1"
address = "127.0.0.1:{}"
role = "invoker"
executor = "thread"
credits = 16
"#,
        ports[0], ports[1], ports[2]
    );
    let config = dir.join("conveyor.toml");
    std::fs::write(&config, toml).unwrap();
    let mut children = Vec::new();
    let run = |args: &[&str], log: &str| {
        let log = std::fs::File::create(dir.join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let cfg = config.to_str().unwrap();
    children.push(run(&["control", "--config", cfg], "control.log"));
    for m in ["invoker-0", "invoker-1", "trigger"] {
        children.push(run(
            &["node", "--config", cfg, "--member", m],
            &format!("{m}.log"),
        ));
    }
    let g = Group {
        children,
        dir,
        gateway: gw,
        config,
        tag,
    };
    let url = format!("http://{}/healthz", g.gateway);
    wait_for("the gateway answers /healthz", 30, || {
        curl_i(&[&url]).1 == "OK"
    });
    g
}

/// Processes that carry `tag` in their environment (the functions' and what they started).
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("CONVEYOR_TEST_TAG={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A zombie has no environment left; it holds nothing.
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn call(g: &Group, path: &str, body: &str) -> (u16, Value, Vec<(String, String)>) {
    let (status, out, headers) = curl_i(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &format!("http://{}{path}", g.gateway),
    ]);
    let v = serde_json::from_str(&out).unwrap_or(Value::String(out));
    (status, v, headers)
}

#[test]
fn each_executor_answers_sync_async_and_in_a_mixed_branching_pipeline() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let g = start_group("ok");
    // exec: the classic watchdog's variables.
    let (st, v, hd) = call(
        &g,
        "/function/exec1/sub/path?x=1",
        r#"{"text":"hello there"}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            &v["text"],
            &v["kind"],
            &v["method"],
            &v["path"],
            &v["query"]
        ),
        (
            &json!("hello there"),
            &json!("short"),
            &json!("POST"),
            &json!("/sub/path"),
            &json!("x=1")
        ),
        "{v}"
    );
    assert_eq!(v["content_type"], "application/json", "{v}");
    assert_eq!(h(&hd, "Content-Type"), Some("application/json"));
    // http: the server's status, headers and body; one warm server per invoker serves all.
    let mut servers = BTreeSet::new();
    for i in 0..6 {
        let (st, v, hd) = call(
            &g,
            "/function/http1/p",
            &format!(r#"{{"text":"call {i}"}}"#),
        );
        assert_eq!((st, &v["text"]), (200, &json!(format!("CALL {i}"))), "{v}");
        assert_eq!(v["path"], "/p");
        assert_eq!(h(&hd, "X-Shouted"), Some("yes"), "{hd:?}");
        servers.insert(v["served_by"].as_u64().unwrap());
    }
    assert!(
        servers.len() <= 2,
        "warm servers, one per invoker: {servers:?}"
    );
    // openwhisk: args as default parameters, the __OW_* fields, a warm action process.
    let mut actions = BTreeSet::new();
    for i in 0..4 {
        let (st, v, _) = call(&g, "/function/ow1", &format!(r#"{{"text":"a b c {i}"}}"#));
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            (&v["greeting"], &v["method"]),
            (&json!("hi"), &json!("post"))
        );
        assert_eq!(v["summary"], "a b ...");
        assert_eq!(v["activation"].as_str().unwrap().len(), 32, "{v}");
        assert!(
            v["deadline"].as_str().unwrap().parse::<u64>().is_ok(),
            "{v}"
        );
        actions.insert(v["pid"].as_u64().unwrap());
    }
    assert!(actions.len() <= 2, "warm actions: {actions:?}");
    // lambda: the Runtime API's event, with the function's name, handler and deadline.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (st, v, hd) = call(&g, "/function/lambda1", r#"{"text":"λ"}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["event"], json!({"text": "λ"}));
    assert_eq!(common::h(&hd, "Content-Type"), Some("application/json"));
    assert_eq!(
        (&v["function"], &v["handler"]),
        (&json!("tag"), &json!("tag.handler"))
    );
    let deadline = v["deadline_ms"].as_u64().unwrap();
    assert!(deadline > now_ms && deadline < now_ms + 60_000, "{v}");
    // As AWS's Invoke: an empty body is the event {}, a body that is not JSON a 400.
    let (st, v, _) = call(&g, "/function/lambda1", "");
    assert_eq!((st, &v["event"]), (200, &json!({})), "{v}");
    let (st, v, hd) = call(&g, "/function/lambda1", "not json");
    assert_eq!(st, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Could not parse request body into json"),
        "{v}"
    );
    assert_eq!(
        common::h(&hd, "x-amzn-ErrorType"),
        Some("InvalidRequestContentException")
    );

    // The mixed pipeline: the branch follows classify's output.
    let (st, v, _) = call(
        &g,
        "/function/mixed",
        r#"{"text":"one two three four five"}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["by"], "lambda");
    assert_eq!(
        v["event"]["summary"], "one two ...",
        "the openwhisk branch: {v}"
    );
    let (st, v, _) = call(&g, "/function/mixed", r#"{"text":"short one"}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["event"]["text"], "SHORT ONE", "the http branch: {v}");

    // Asynchronous calls of each, with a callback.
    let (url, rx) = callback_server(5);
    let mut ids = BTreeSet::new();
    for p in ["exec1", "http1", "ow1", "lambda1", "mixed"] {
        let (st, _, hd) = curl_i(&[
            "-H",
            &format!("X-Callback-Url: {url}"),
            "-d",
            r#"{"text":"later one two three"}"#,
            &format!("http://{}/async-function/{p}", g.gateway),
        ]);
        assert_eq!(st, 202);
        ids.insert((p.to_string(), h(&hd, "X-Call-Id").unwrap().to_string()));
    }
    let mut got = BTreeSet::new();
    for _ in 0..5 {
        let (hd, body) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(h(&hd, "X-Function-Status"), Some("200"), "{hd:?}");
        let name = h(&hd, "X-Function-Name").unwrap().to_string();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let expect = match name.as_str() {
            "exec1" => v["kind"] == "long",
            "http1" => v["text"] == "LATER ONE TWO THREE",
            "ow1" => v["summary"] == "later one ...",
            "lambda1" => v["event"]["text"] == "later one two three",
            "mixed" => v["event"]["summary"] == "later one ...",
            _ => false,
        };
        assert!(expect, "{name}: {v}");
        got.insert((name, h(&hd, "X-Call-Id").unwrap().to_string()));
    }
    assert_eq!(got, ids);

    // The pipeline changes at run time through the control plane: long texts now go to shout.
    let newer = g.dir.join("mixed-v2.json");
    std::fs::write(&newer, mixed(&g.tag, "shout").to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "ctl",
            "--config",
            g.config.to_str().unwrap(),
            "pipelines",
            "put",
        ])
        .arg(&newer)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("long texts take the new branch", 15, || {
        let (_, v, _) = call(
            &g,
            "/function/mixed",
            r#"{"text":"one two three four five"}"#,
        );
        v["event"]["text"] == "ONE TWO THREE FOUR FIVE"
    });

    // Idle warm processes are reclaimed while the group runs; a call after starts them again.
    wait_for("idle processes reclaimed", 15, || tagged(&g.tag).is_empty());
    let (st, v, _) = call(&g, "/function/http1", r#"{"text":"again"}"#);
    assert_eq!((st, &v["text"]), (200, &json!("AGAIN")), "{v}");
}

#[test]
fn bad_functions_fail_their_call_and_nothing_else_is_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = start_group("bad");
    let base = format!("http://{}", g.gateway);
    let calls = |url: &str, text: &str| {
        // Dozens of Python processes start at once on 2 cores: a generous bound.
        curl_i(&[
            "--max-time",
            "60",
            "-d",
            &format!(r#"{{"text":"{text}"}}"#),
            url,
        ])
    };
    // An http function's server is shared by the requests in flight on it: its crash fails
    // them all with 502 (as under of-watchdog), so it is tested alone; the next request gets a
    // new server.
    let (st, out, _) = calls(&format!("{base}/function/http1"), "crash");
    assert_eq!(st, 502, "{out}");
    assert!(out.contains("no valid HTTP answer"), "{out}");
    let (st, out, _) = calls(&format!("{base}/function/http1"), "fine");
    assert_eq!(st, 200, "{out}");
    // (pipeline, text, status, part of the error)
    let bad = [
        ("exec1", "crash", 500, "exit status: 3"),
        ("exec1", "hang", 504, "timeout of 4000 ms"),
        ("http1", "hang", 504, "did not answer within"),
        ("http1", "garbage", 502, "no valid HTTP answer"),
        // An error answer is the function's, as it gave it (not the step's error text).
        ("http1", "teapot", 418, r#""text": "TEAPOT""#),
        ("ow1", "notjson", 502, "did not return a dictionary"),
        ("ow1", "crash", 502, "exited unexpectedly"),
        (
            "ow1",
            "hang",
            502,
            "exceeded its time limits of 4000 milliseconds",
        ),
        // A Lambda function's errors are AWS Invoke's: 200, X-Amz-Function-Error (checked
        // below) and the error document.
        (
            "lambda1",
            "crash",
            200,
            r#""errorType":"Runtime.ExitError""#,
        ),
        ("lambda1", "fail", 200, r#""errorMessage":"asked to fail""#),
        ("lambda1", "hang", 200, "Task timed out after 4.00 seconds"),
    ];
    let mut threads = Vec::new();
    for (p, text, status, part) in bad {
        let url = format!("{base}/function/{p}");
        threads.push(std::thread::spawn(move || {
            let (st, out, _) = calls(&url, text);
            assert_eq!(st, status, "{p} {text}: {out}");
            assert!(out.contains(part), "{p} {text}: {out}");
        }));
    }
    // Good calls at the same time, on every function: each gets its own output.
    for i in 0..15 {
        let p = ["exec1", "http1", "ow1", "lambda1", "mixed"][i % 5];
        let url = format!("{base}/function/{p}");
        threads.push(std::thread::spawn(move || {
            let text = format!("good call {i}");
            let (st, out, _) = calls(&url, &text);
            assert_eq!(st, 200, "{p}: {out}");
            let v: Value = serde_json::from_str(&out).unwrap();
            let seen = [
                &v["text"],
                &v["event"]["text"],
                &v["event"]["event"]["text"],
            ]
            .iter()
            .any(|t| t.as_str().is_some_and(|t| t.eq_ignore_ascii_case(&text)));
            assert!(seen, "{p}: {out}");
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    // The invokers kept serving.
    for p in ["exec1", "http1", "ow1", "lambda1"] {
        let (st, v, _) = call(&g, &format!("/function/{p}"), r#"{"text":"after"}"#);
        assert_eq!(st, 200, "{p}: {v}");
    }
    // A web action's result is the HTTP response (called through the gateway), every header
    // value included; an http function's error answer keeps its own headers.
    let web = |result: Value| {
        curl_i(&[
            "--max-time",
            "60",
            "-d",
            &json!({ "web": result }).to_string(),
            &format!("{base}/function/ow1"),
        ])
    };
    let (st, out, headers) = web(
        json!({"statusCode": 201, "body": {"made": "by a web action"},
        "headers": {"X-Web": "yes", "Set-Cookie": ["a=1", "b=2"]}}),
    );
    assert_eq!(st, 201, "{out}");
    assert_eq!(out, r#"{"made":"by a web action"}"#);
    assert_eq!(common::h(&headers, "X-Web"), Some("yes"), "{headers:?}");
    assert_eq!(
        common::h(&headers, "Content-Type"),
        Some("application/json"),
        "{headers:?}"
    );
    let cookies = headers.iter().filter(|(k, _)| k == "set-cookie").count();
    assert_eq!(cookies, 2, "{headers:?}");
    let (st, out, headers) = web(json!({"statusCode": 422, "body": "{\"detail\": \"no\"}",
        "headers": {"Content-Type": "application/problem+json"}}));
    assert_eq!((st, out.as_str()), (422, r#"{"detail": "no"}"#));
    assert_eq!(
        common::h(&headers, "Content-Type"),
        Some("application/problem+json")
    );
    let (st, _, headers) = calls(&format!("{base}/function/http1"), "teapot");
    assert_eq!(st, 418);
    assert_eq!(common::h(&headers, "X-Shouted"), Some("yes"), "{headers:?}");
    let (st, out, headers) = calls(&format!("{base}/function/lambda1"), "fail");
    assert_eq!(st, 200, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc,
        json!({"errorMessage": "asked to fail", "errorType": "HandlerError"})
    );
    assert_eq!(
        common::h(&headers, "X-Amz-Function-Error"),
        Some("Unhandled"),
        "{headers:?}"
    );
    // Killed with their invokers, the functions' processes do not outlive them.
    assert!(
        !tagged(&g.tag).is_empty(),
        "warm processes right after calls"
    );
    g.kill();
    wait_for("no function process left", 10, || tagged(&g.tag).is_empty());
}

#[test]
fn an_invoker_takes_no_more_of_a_function_than_it_can_start() {
    // Two invokers with 16 credits each, a function with concurrency 2: six calls at once are
    // shared (each invoker starts two, the other two wait in the group's queue for the first
    // slot freed), not all taken by the invoker that announced its credits first and queued
    // behind its two slots while the other idles.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let g = start_group("spread");
    let url = format!("http://{}/function/slow1", g.gateway);
    wait_for("the function to answer", 30, || {
        curl_i(&["--max-time", "20", "-d", "x", &url]).0 == 200
    });
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || curl_i(&["--max-time", "30", "-d", "x", &url]))
        })
        .collect();
    let mut by = BTreeMap::<String, u32>::new();
    for c in calls {
        let (st, out, _) = c.join().unwrap();
        assert_eq!(st, 200, "{out}");
        *by.entry(out.trim().to_string()).or_default() += 1;
    }
    assert_eq!(by.len(), 2, "both invokers ran some: {by:?}");
    assert!(
        by.values().all(|&n| n >= 2),
        "each took what it could start: {by:?}"
    );
}
