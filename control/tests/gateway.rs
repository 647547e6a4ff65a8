//! The trigger's OpenFaaS-compatible gateway, with real processes: a trigger serving the
//! gateway and two invokers (`conveyor node`), called with curl.

mod common;

use common::{callback_server, curl, curl_i, free_tcp, h, wait_for};
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const KEY: &str = "00000000000000000000000000000000000000000000000000000000000000bb";

const PIPELINES: &str = r#"{
  "name": "demo",
  "entry": "parse",
  "steps": {
    "parse":    {"function": "spin", "args": {"us": 20}, "next": [{"to": ["classify"]}]},
    "classify": {"function": "branch", "args": {"threshold": 48},
                 "next": [{"route": "big", "to": ["resize"]}, {"route": "small", "to": ["store"]}]},
    "resize":   {"function": "spin", "args": {"us": 20}},
    "store":    {"function": "echo"}
  }
}"#;

const ECHO2: &str = r#"{"name": "echo2", "entry": "first", "steps": {
  "first": {"function": "echo", "next": [{"to": ["second"]}]},
  "second": {"function": "echo"}}}"#;

struct Group {
    children: Vec<Child>,
    dir: std::path::PathBuf,
    gateway: String,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SLOW: &str = r#"{"name": "slow", "entry": "wait", "steps": {
  "wait": {"function": "spin", "args": {"us": 1500000}}}}"#;

fn start_group(tag: &str) -> Group {
    start_group_with(tag, 10)
}

/// A group whose gateway waits `timeout_s` for an output; its invokers run functions in a
/// thread of their own (the slow pipeline's 1.5 s must not hold their polling threads).
fn start_group_with(tag: &str, timeout_s: u64) -> Group {
    let dir = std::env::temp_dir().join(format!("conveyor-gw-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.json"), PIPELINES).unwrap();
    std::fs::write(dir.join("echo2.json"), ECHO2).unwrap();
    std::fs::write(dir.join("slow.json"), SLOW).unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let gw = format!("127.0.0.1:{}", free_tcp());
    let toml = format!(
        "[group]\nname = \"gw\"\nkey = \"{KEY}\"\npipelines = [\"demo.json\", \"echo2.json\", \"slow.json\"]\nstartup_timeout_s = 20\n\n[[member]]\nname = \"trigger\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n[member.gateway]\naddress = \"{gw}\"\ntimeout_s = {timeout_s}\n\n[[member]]\nname = \"invoker-0\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\nexecutor = \"thread\"\n\n[[member]]\nname = \"invoker-1\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\nexecutor = \"thread\"\n",
        ports[0], ports[1], ports[2]
    );
    std::fs::write(dir.join("conveyor.toml"), toml).unwrap();
    let mut children = Vec::new();
    for m in ["invoker-0", "invoker-1", "trigger"] {
        let log = std::fs::File::create(dir.join(format!("{m}.log"))).unwrap();
        children.push(
            Command::new(env!("CARGO_BIN_EXE_conveyor"))
                .args(["node", "--config"])
                .arg(dir.join("conveyor.toml"))
                .args(["--member", m])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let g = Group {
        children,
        dir,
        gateway: gw,
    };
    let url = format!("http://{}/healthz", g.gateway);
    wait_for("the gateway answers /healthz", 30, || {
        curl(&["-s", &url]).1 == "OK"
    });
    g
}

#[test]
fn openfaas_routes_answer_through_the_group() {
    let g = start_group("routes");
    let base = format!("http://{}", g.gateway);
    // Synchronous: the output of the last step, with OpenFaaS's headers.
    let (status, body, headers) =
        curl_i(&["-d", "hello conveyor", &format!("{base}/function/echo2")]);
    assert_eq!(
        (status, body.as_str()),
        (200, "hello conveyor"),
        "{headers:?}"
    );
    assert!(
        h(&headers, "X-Call-Id").is_some_and(|v| v.len() == 16),
        "{headers:?}"
    );
    assert!(
        h(&headers, "X-Duration-Seconds")
            .is_some_and(|v| v.parse::<f64>().is_ok_and(|s| s > 0.0 && s < 10.0)),
        "{headers:?}"
    );
    // Both branches of the demo pipeline, by its name and by its entry step's name.
    let big = "x".repeat(64);
    assert_eq!(
        curl_i(&["-d", &big, &format!("{base}/function/demo")]).1,
        big
    );
    assert_eq!(
        curl_i(&["-d", "small", &format!("{base}/function/parse")]).1,
        "small"
    );
    // Many callers at once each get their own output.
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let url = format!("{base}/function/echo2");
            std::thread::spawn(move || {
                let body = format!("caller-{i}");
                let (status, out, _) = curl_i(&["-d", &body, &url]);
                (status, out, body)
            })
        })
        .collect();
    for t in handles {
        let (status, out, body) = t.join().unwrap();
        assert_eq!((status, out), (200, body));
    }
    // Bad input: unknown function, a body too large for one request, wrong method, no route.
    assert_eq!(
        curl_i(&["-d", "x", &format!("{base}/function/nope")]).0,
        404
    );
    let body_of = |n: usize| {
        let f = g.dir.join(format!("body-{n}"));
        std::fs::write(&f, vec![b'a'; n]).unwrap();
        format!("@{}", f.display())
    };
    let echo2 = format!("{base}/function/echo2");
    let (status, msg, _) = curl_i(&["--data-binary", &body_of(100_000), &echo2]);
    assert_eq!(status, 413, "{msg}");
    // The limit it names is exact: a body of that size runs through, one more byte does not.
    let limit: usize = msg
        .split("larger than ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(limit > 1000, "{msg}");
    let (status, out, _) = curl_i(&["--data-binary", &body_of(limit), &echo2]);
    assert_eq!((status, out.len()), (200, limit));
    assert_eq!(
        curl_i(&["--data-binary", &body_of(limit + 1), &echo2]).0,
        413
    );
    assert_eq!(
        curl_i(&["-X", "OPTIONS", &format!("{base}/function/echo2")]).0,
        405
    );
    assert_eq!(curl_i(&[&format!("{base}/nowhere")]).0, 404);
    // The group kept serving after the bad calls.
    assert_eq!(
        curl_i(&["-d", "still", &format!("{base}/function/echo2")]).1,
        "still"
    );
    // The function list, OpenFaaS's shape, with the calls counted.
    let (status, list, _) = curl_i(&[&format!("{base}/system/functions")]);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let echo2 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "echo2")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(echo2["replicas"], 2, "{list}");
    assert_eq!(echo2["invocationCount"], 27, "{list}");
    assert!(v.as_array().unwrap().iter().any(|f| f["name"] == "demo"));
}

#[test]
fn async_calls_answer_at_once_and_post_the_result_to_the_callback() {
    let g = start_group("async");
    let base = format!("http://{}", g.gateway);
    let (url, rx) = callback_server(1);
    let (status, body, headers) = curl_i(&[
        "-d",
        "later please",
        "-H",
        &format!("X-Callback-Url: {url}"),
        &format!("{base}/async-function/echo2"),
    ]);
    assert_eq!(status, 202, "{body} {headers:?}");
    let id = h(&headers, "X-Call-Id").expect("X-Call-Id").to_string();
    let (cb, out) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the callback came");
    assert_eq!(out, b"later please");
    assert_eq!(h(&cb, "X-Function-Status"), Some("200"), "{cb:?}");
    assert_eq!(h(&cb, "X-Function-Name"), Some("echo2"), "{cb:?}");
    assert_eq!(h(&cb, "X-Call-Id"), Some(id.as_str()), "{cb:?}");
    assert!(h(&cb, "X-Duration-Seconds").is_some_and(|v| v.parse::<f64>().is_ok()));
    // Without a callback the call is accepted all the same.
    assert_eq!(
        curl_i(&["-d", "x", &format!("{base}/async-function/echo2")]).0,
        202
    );
}

/// `conveyor demo --serve`: the demo group with the gateway until interrupted.
#[test]
fn demo_serve_answers_curl_until_interrupted() {
    let port = free_tcp();
    let addr = format!("127.0.0.1:{port}");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["demo", "--serve", "--address", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("Ctrl-C stops the group") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            demo.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("demo --serve ended: {seen}{err}");
        }
        seen.push_str(&line);
    }
    assert!(
        seen.contains(&format!(
            "curl -d 'hello conveyor' http://{addr}/function/demo"
        )),
        "{seen}"
    );
    let (status, body, _) = curl_i(&[
        "-d",
        "hello conveyor",
        &format!("http://{addr}/function/demo"),
    ]);
    assert_eq!((status, body.as_str()), (200, "hello conveyor"));
    // SIGINT to the demo process only (as Ctrl-C would, its members are in their own group).
    assert!(Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = demo.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("Stopped."), "{rest}");
    // The members went with it: nothing answers on the gateway's port.
    wait_for("the gateway's port is free", 10, || {
        TcpListener::bind(&addr).is_ok()
    });
}

/// A run that outlasts the gateway's timeout answers 504; the group keeps serving, and the late
/// output is dropped when it comes.
#[test]
fn a_call_past_the_timeout_answers_504_and_the_group_keeps_serving() {
    let g = start_group_with("timeout", 1);
    let base = format!("http://{}", g.gateway);
    let (status, body, headers) = curl_i(&["-d", "x", &format!("{base}/function/slow")]);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no output within 1 s"), "{body}");
    assert!(h(&headers, "X-Call-Id").is_some());
    // The group keeps serving: a later call answers (the slow run may still hold an
    // invoker for its 1.5 s, longer on a loaded machine, and a call it delays times out).
    let start = std::time::Instant::now();
    loop {
        let (status, body, _) = curl_i(&["-d", "after", &format!("{base}/function/echo2")]);
        if status == 200 {
            assert_eq!(body, "after");
            break;
        }
        assert_eq!(status, 504, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no answer in 15 s"
        );
    }
}
