//! The control plane with real member processes: its API, persistence, token, metrics, and a
//! group that keeps serving while it is down.

mod common;
use common::wait_for;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns the status and the body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const TOKEN: &str = "test-token-0123456789";

#[test]
fn control_plane_api_persistence_metrics_and_outage() {
    let dir = std::env::temp_dir().join(format!("conveyor-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = free_ports(3);
    let cport = free_tcp_port();
    let mport = free_tcp_port();
    std::fs::write(
        dir.join("p.json"),
        r#"{"name":"p","entry":"a","steps":{"a":{"function":"echo"}}}"#,
    )
    .unwrap();
    let mut toml = format!("[group]\nname = \"g\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000003\"\npipelines = [\"p.json\"]\nstartup_timeout_s = 10\n\n[control]\naddress = \"127.0.0.1:{cport}\"\ntoken = \"{TOKEN}\"\n");
    for (i, (name, role)) in [
        ("trigger", "trigger"),
        ("invoker-0", "invoker"),
        ("invoker-1", "invoker"),
    ]
    .iter()
    .enumerate()
    {
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\nrole = \"{role}\"\n",
            ports[i]
        ));
        if *name == "invoker-0" {
            toml.push_str(&format!("metrics_address = \"127.0.0.1:{mport}\"\n"));
        }
    }
    let cfg = dir.join("group.toml");
    std::fs::write(&cfg, toml).unwrap();
    let exe = env!("CARGO_BIN_EXE_conveyor");
    let spawn = |args: &[&str]| {
        Command::new(exe)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let cfg_s = cfg.to_str().unwrap().to_string();
    let control = || spawn(&["control", "--config", &cfg_s]);
    let mut procs = Procs(vec![control()]);
    for m in ["invoker-0", "invoker-1", "trigger"] {
        procs
            .0
            .push(spawn(&["node", "--config", &cfg_s, "--member", m]));
    }
    // Every member reports; the view is the first one, with all three.
    wait_for("three members reporting", 15, || {
        let (st, b) = http(cport, "GET", "/health", None, "");
        st == 200 && serde_json::from_str::<Value>(&b).unwrap()["members_reporting"] == 3
    });
    wait_for("view 1 with three members", 10, || {
        let (st, b) = http(cport, "GET", "/v1/view", None, "");
        let v: Value = serde_json::from_str(&b).unwrap_or_default();
        st == 200 && v["view"] == 1 && v["members"].as_array().map(|a| a.len()) == Some(3)
    });
    // Pipelines: reads open; changes need the token; bad input named; unknown names 404.
    let (st, b) = http(cport, "GET", "/v1/pipelines/p", None, "");
    assert_eq!(st, 200, "{b}");
    let q = r#"{"name":"q","entry":"x","steps":{"x":{"function":"echo"}}}"#;
    assert_eq!(http(cport, "PUT", "/v1/pipelines/q", None, q).0, 401);
    assert_eq!(
        http(
            cport,
            "PUT",
            "/v1/pipelines/q",
            Some("wrong-token-xxxxxxx"),
            q
        )
        .0,
        401
    );
    let (st, b) = http(
        cport,
        "PUT",
        "/v1/pipelines/q",
        Some(TOKEN),
        r#"{"name":"q","entry":"x","steps":{"x":{"function":7}}}"#,
    );
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("steps.x.function"), "{b}");
    let (st, b) = http(cport, "PUT", "/v1/pipelines/q", Some(TOKEN), "{not json");
    assert_eq!(st, 400, "{b}");
    let (st, b) = http(cport, "PUT", "/v1/pipelines/other", Some(TOKEN), q);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("name"), "{b}");
    assert_eq!(http(cport, "PUT", "/v1/pipelines/q", Some(TOKEN), q).0, 201);
    // A function's environment (secrets, often) is shown only with the token.
    let s = r#"{"name":"s","entry":"x","steps":{"x":{"function":"f","executor":
        {"kind":"exec","command":["cat"],"env":{"API_KEY":"hunter2"}}}}}"#;
    assert_eq!(http(cport, "PUT", "/v1/pipelines/s", Some(TOKEN), s).0, 201);
    for path in ["/v1/pipelines/s", "/v1/pipelines"] {
        let (st, b) = http(cport, "GET", path, None, "");
        assert_eq!(st, 200, "{b}");
        assert!(!b.contains("hunter2") && b.contains("API_KEY"), "{b}");
        let (st, b) = http(cport, "GET", path, Some(TOKEN), "");
        assert_eq!(st, 200, "{b}");
        assert!(b.contains("hunter2"), "{b}");
    }
    assert_eq!(
        http(cport, "DELETE", "/v1/pipelines/s", Some(TOKEN), "").0,
        200
    );
    // 401 says how to authenticate, 405 what is allowed.
    let (st, _, headers) = common::curl_i(&[
        "-X",
        "PUT",
        "-d",
        q,
        &format!("http://127.0.0.1:{cport}/v1/pipelines/q"),
    ]);
    assert_eq!(st, 401);
    assert_eq!(
        common::h(&headers, "WWW-Authenticate"),
        Some(r#"Bearer realm="conveyor control""#)
    );
    let (st, _, headers) = common::curl_i(&[
        "-X",
        "PATCH",
        &format!("http://127.0.0.1:{cport}/v1/pipelines/q"),
    ]);
    assert_eq!(
        (st, common::h(&headers, "Allow")),
        (405, Some("GET, PUT, DELETE"))
    );
    assert_eq!(http(cport, "GET", "/v1/pipelines/nope", None, "").0, 404);
    assert_eq!(
        http(cport, "DELETE", "/v1/pipelines/nope", Some(TOKEN), "").0,
        404
    );
    assert_eq!(http(cport, "GET", "/v1/nothing", None, "").0, 404);
    let (st, b) = http(
        cport,
        "POST",
        "/v1/report",
        Some(TOKEN),
        r#"{"member":"x","status":5}"#,
    );
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("status"), "{b}");
    // Metrics in Prometheus text (queue depths once the queues exist and a report came).
    wait_for("queue depths in /metrics", 10, || {
        http(cport, "GET", "/metrics", None, "")
            .1
            .contains("conveyor_queue_depth{member=\"trigger\",queue=")
    });
    let (st, m) = http(cport, "GET", "/metrics", None, "");
    assert_eq!(st, 200);
    assert!(m.contains("# TYPE conveyor_delivered_total counter"), "{m}");
    assert!(
        m.contains("conveyor_delivered_total{member=\"trigger\"}"),
        "{m}"
    );
    assert!(
        m.contains("conveyor_frames_dropped_total{member=\"invoker-0\",reason=\"bad_mac\"}"),
        "{m}"
    );
    assert!(
        m.contains("conveyor_queue_depth{member=\"trigger\",queue="),
        "{m}"
    );
    // Sent and received are series of their own; every member of the file has its up.
    for name in [
        "conveyor_transport_frames_sent_total{member=\"trigger\"}",
        "conveyor_transport_frames_received_total{member=\"trigger\"}",
        "conveyor_requeued_requests_total{member=\"trigger\"}",
        "conveyor_member_up{member=\"invoker-1\"}",
    ] {
        assert!(m.contains(name), "{name} not in {m}");
    }
    common::promtool_check(&m, &[]);
    // A member's own /metrics: its series, read from its engine at each scrape.
    let (st, own) = http(mport, "GET", "/metrics", None, "");
    assert_eq!(st, 200, "{own}");
    assert!(
        own.contains("conveyor_delivered_total{member=\"invoker-0\"}"),
        "{own}"
    );
    assert!(
        own.contains("conveyor_view{member=\"invoker-0\"} 1"),
        "{own}"
    );
    assert!(!own.contains("member=\"trigger\""), "{own}");
    common::promtool_check(&own, &[]);
    // The control plane goes down; the group goes on (an invoker is killed meanwhile and the
    // others change view without it). Restarted, the control plane has its pipelines back
    // and sees the new view.
    let mut c = procs.0.remove(0);
    c.kill().unwrap();
    c.wait().unwrap();
    let mut inv1 = procs.0.remove(1);
    inv1.kill().unwrap();
    inv1.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    procs.0.push(control());
    wait_for("the restarted control plane answering", 10, || {
        TcpStream::connect(("127.0.0.1", cport)).is_ok()
    });
    let (st, b) = http(cport, "GET", "/v1/pipelines", None, "");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!(
        v["pipelines"]["q"].is_object(),
        "pipelines not persisted: {v}"
    );
    wait_for("the view without invoker-1", 15, || {
        let (_, b) = http(cport, "GET", "/v1/view", None, "");
        let v: Value = serde_json::from_str(&b).unwrap_or_default();
        v["view"].as_u64().unwrap_or(0) >= 2 && v["members"].as_array().map(|a| a.len()) == Some(2)
    });
    // The view may come from one member's report; the trigger's follows within 500 ms (at
    // least one change: on a loaded machine a late heartbeat can cost another).
    wait_for("the trigger's view change in /metrics", 10, || {
        http(cport, "GET", "/metrics", None, "")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("conveyor_view_changes_total{member=\"trigger\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|v| v >= 1)
    });
    // The command-line client.
    let out = Command::new(exe)
        .args(["ctl", "--config", &cfg_s, "pipelines", "delete", "q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(exe)
        .args([
            "ctl",
            "--control",
            &format!("127.0.0.1:{cport}"),
            "pipelines",
            "delete",
            "p",
        ])
        .env_remove("CONVEYOR_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

const JOIN_TOKEN: &str = "join-token-abcdefghijkl";

/// Members named by `GET /v1/view`.
fn view_members(cport: u16) -> Vec<String> {
    let (_, b) = http(cport, "GET", "/v1/view", None, "");
    let v: Value = serde_json::from_str(&b).unwrap_or_default();
    let mut m: Vec<String> = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

#[test]
fn admission_leave_and_pipeline_changes_through_the_control_plane() {
    let dir = std::env::temp_dir().join(format!("conveyor-admit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = free_ports(4);
    let cport = free_tcp_port();
    std::fs::write(
        dir.join("p.json"),
        r#"{"name":"p","entry":"a","steps":{"a":{"function":"echo"}}}"#,
    )
    .unwrap();
    let mut toml = format!("[group]\nname = \"g\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000004\"\npipelines = [\"p.json\"]\nstartup_timeout_s = 30\n\n[control]\naddress = \"127.0.0.1:{cport}\"\ntoken = \"{TOKEN}\"\nadmission = \"control\"\nadmit = [\"trigger\", \"invoker-0\"]\njoin_token = \"{JOIN_TOKEN}\"\n");
    for (i, (name, role, join)) in [
        ("trigger", "trigger", false),
        ("invoker-0", "invoker", false),
        ("invoker-1", "invoker", true),
        ("invoker-2", "invoker", true),
    ]
    .iter()
    .enumerate()
    {
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\nrole = \"{role}\"\njoin = {join}\n",
            ports[i]
        ));
    }
    let cfg = dir.join("group.toml");
    std::fs::write(&cfg, toml).unwrap();
    let cfg_s = cfg.to_str().unwrap().to_string();
    let exe = env!("CARGO_BIN_EXE_conveyor");
    let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let spawn = |args: &[&str], name: &str, env: Option<&str>| {
        let mut c = Command::new(exe);
        c.args(args)
            .env("RUST_LOG", "info")
            .env_remove("CONVEYOR_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log(name));
        if let Some(t) = env {
            c.env("CONVEYOR_JOIN_TOKEN", t);
        }
        c.spawn().unwrap()
    };
    let node =
        |m: &str, env: Option<&str>| spawn(&["node", "--config", &cfg_s, "--member", m], m, env);
    let mut procs = Procs(vec![spawn(
        &["control", "--config", &cfg_s],
        "control",
        None,
    )]);
    procs.0.push(node("trigger", None));
    procs.0.push(node("invoker-0", None));
    wait_for("view 1 with trigger and invoker-0", 15, || {
        view_members(cport) == ["invoker-0", "trigger"]
    });
    // invoker-1 is not on the allowlist and has no token: refused, logged, the group unchanged.
    procs.0.push(node("invoker-1", None));
    wait_for("the refused join counted in /metrics", 15, || {
        let (_, m) = http(cport, "GET", "/metrics", None, "");
        m.lines().any(|l| {
            l.starts_with("conveyor_joins_refused_total{")
                && l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) > Some(0)
        })
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(view_members(cport), ["invoker-0", "trigger"]);
    let logs = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
    assert!(
        logs("trigger").contains("the last from invoker-1: not admitted")
            || logs("invoker-0").contains("the last from invoker-1: not admitted"),
        "the refusal is not logged"
    );
    // invoker-2 puts itself on the allowlist with the join token, and joins.
    procs.0.push(node("invoker-2", Some(JOIN_TOKEN)));
    wait_for("invoker-2 admitted by token and in the view", 20, || {
        view_members(cport) == ["invoker-0", "invoker-2", "trigger"]
    });
    // The join token does not open anything else; unknown names are 404.
    assert_eq!(
        http(
            cport,
            "PUT",
            "/v1/admissions/invoker-1",
            Some("not-the-join-token"),
            ""
        )
        .0,
        401
    );
    let q = r#"{"name":"q","entry":"x","steps":{"x":{"function":"echo"}}}"#;
    assert_eq!(
        http(cport, "PUT", "/v1/pipelines/q", Some(JOIN_TOKEN), q).0,
        401
    );
    assert_eq!(
        http(cport, "PUT", "/v1/admissions/nobody", Some(TOKEN), "").0,
        404
    );
    assert_eq!(
        http(cport, "POST", "/v1/members/nobody/leave", Some(TOKEN), "").0,
        404
    );
    // The operator admits invoker-1 (command-line client): it gets in.
    let out = Command::new(exe)
        .args(["ctl", "--config", &cfg_s, "admit", "invoker-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("invoker-1 in the view once admitted", 20, || {
        view_members(cport) == ["invoker-0", "invoker-1", "invoker-2", "trigger"]
    });
    let (_, b) = http(cport, "GET", "/v1/admissions", None, "");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["admitted"],
        serde_json::json!(["invoker-0", "invoker-1", "invoker-2", "trigger"])
    );
    // A new pipeline: every member runs version 1, its queue exists at the replicas, and the
    // invokers subscribed to it (logged), without a restart.
    let q = r#"{"name":"q","entry":"x","steps":{"x":{"function":"echo","queue_options":{"capacity":77}}}}"#;
    assert_eq!(http(cport, "PUT", "/v1/pipelines/q", Some(TOKEN), q).0, 201);
    wait_for("pipelines version 1 at every member", 15, || {
        let (_, m) = http(cport, "GET", "/metrics", None, "");
        ["trigger", "invoker-0", "invoker-1", "invoker-2"]
            .iter()
            .all(|n| m.contains(&format!("conveyor_pipelines_version{{member=\"{n}\"}} 1")))
    });
    wait_for("the new pipeline's queue at the replicas", 10, || {
        let (_, b) = http(cport, "GET", "/v1/queues", None, "");
        b.contains("\"q.x\"")
    });
    wait_for("invokers logged the change", 10, || {
        ["invoker-0", "invoker-1", "invoker-2"]
            .iter()
            .all(|n| logs(n).contains("pipelines updated"))
    });
    // A queue two pipelines share must have one spec: refused, naming both.
    let r = r#"{"name":"r","entry":"y","steps":{"y":{"function":"echo","queue":"q.x","queue_options":{"capacity":5}}}}"#;
    let (st, b) = http(cport, "PUT", "/v1/pipelines/r", Some(TOKEN), r);
    assert_eq!(st, 409, "{b}");
    let e: Value = serde_json::from_str(&b).unwrap();
    let e = e["error"].as_str().unwrap();
    assert!(e.contains("\"q.x\"") && e.contains("pipeline \"q\""), "{e}");
    // The operator asks invoker-1 to leave: it leaves the view and exits cleanly (no rejoin).
    let out = Command::new(exe)
        .args(["ctl", "--config", &cfg_s, "leave", "invoker-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the view without invoker-1", 15, || {
        view_members(cport) == ["invoker-0", "invoker-2", "trigger"]
    });
    let inv1 = &mut procs.0[3];
    let mut exited = None;
    wait_for("invoker-1 exits", 10, || {
        exited = inv1.try_wait().unwrap();
        exited.is_some()
    });
    assert!(exited.unwrap().success(), "{}", logs("invoker-1"));
    assert!(logs("invoker-1").contains("left the group at its request"));
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
