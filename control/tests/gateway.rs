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
    /// The control plane's address, when the group has one.
    control: Option<String>,
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
        "[group]\nname = \"gw\"\nkey = \"{KEY}\"\npipelines = [\"demo.json\", \"echo2.json\", \"slow.json\"]\nstartup_timeout_s = 20\n\n[[member]]\nname = \"trigger\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n[member.gateway]\naddress = \"{gw}\"\ntimeout_s = {timeout_s}\nwrite_timeout_s = 1\nread_timeout_s = 1\n\n[[member]]\nname = \"invoker-0\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\nexecutor = \"thread\"\n\n[[member]]\nname = \"invoker-1\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\nexecutor = \"thread\"\n",
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
        control: None,
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
    let (status, _, headers) = curl_i(&[&format!("{base}/async-function/echo2")]);
    assert_eq!((status, h(&headers, "Allow")), (405, Some("POST")));
    // HEAD and OPTIONS: answered, with what is allowed.
    assert_eq!(curl_i(&["-I", &format!("{base}/healthz")]).0, 200);
    let (status, _, headers) = curl_i(&["-X", "OPTIONS", &format!("{base}/system/functions")]);
    assert_eq!(status, 204);
    assert_eq!(
        h(&headers, "Allow"),
        Some("GET, HEAD, POST, PUT, DELETE, OPTIONS")
    );
    assert_eq!(curl_i(&[&format!("{base}/nowhere")]).0, 404);
    // A client that stops half-way through its headers holds no worker: calls go on.
    let mut stalled = std::net::TcpStream::connect(&g.gateway).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"POST /function/echo2 HTTP/1.1\r\nHost: x\r\n",
    )
    .unwrap();
    // The group kept serving after the bad calls.
    assert_eq!(
        curl_i(&["-d", "still", &format!("{base}/function/echo2")]).1,
        "still"
    );
    // The stalled client loses its connection after read_timeout_s (1 s here), and so does one
    // that stalls in its body (408).
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut stalled, &mut rest);
    assert!(closed.is_ok(), "not closed by the gateway: {closed:?}");
    let mut slow_body = std::net::TcpStream::connect(&g.gateway).unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(
        &mut slow_body,
        b"POST /function/echo2 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut slow_body, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
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

/// A trigger with the gateway (with `auth`, basic auth on its `/system/` API), one invoker and
/// the control plane, for the OpenFaaS API that changes functions.
fn start_group_with_control(tag: &str, auth: bool) -> Group {
    let dir = std::env::temp_dir().join(format!("conveyor-gw-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("echo2.json"), ECHO2).unwrap();
    std::fs::write(dir.join("password"), "s3cret-pass\n").unwrap();
    let ports: Vec<u16> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    let gw = format!("127.0.0.1:{}", free_tcp());
    let control = format!("127.0.0.1:{}", free_tcp());
    let toml = format!(
        "[group]\nname = \"gw\"\nkey = \"{KEY}\"\npipelines = [\"echo2.json\"]\nstartup_timeout_s = 20\nfailure_timeout_ms = 1000\n\n[control]\naddress = \"{control}\"\ntoken = \"gateway-test-token-0123456\"\n\n[[member]]\nname = \"trigger\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n[member.gateway]\naddress = \"{gw}\"\n{}\n[[member]]\nname = \"invoker-0\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\n",
        ports[0],
        if auth {
            "basic_auth_user = \"admin\"\nbasic_auth_password_file = \"password\"\n"
        } else {
            ""
        },
        ports[1]
    );
    std::fs::write(dir.join("conveyor.toml"), toml).unwrap();
    let mut children = Vec::new();
    let cfg = dir.join("conveyor.toml");
    let run = |args: &[&str], log: &str| {
        let log = std::fs::File::create(dir.join(log)).unwrap();
        Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let c = cfg.to_str().unwrap();
    children.push(run(&["control", "--config", c], "control.log"));
    for m in ["invoker-0", "trigger"] {
        children.push(run(
            &["node", "--config", c, "--member", m],
            &format!("{m}.log"),
        ));
    }
    let g = Group {
        children,
        dir,
        gateway: gw,
        control: Some(control),
    };
    let url = format!("http://{}/healthz", g.gateway);
    wait_for("the gateway answers /healthz", 30, || {
        curl(&["-s", &url]).1 == "OK"
    });
    g
}

#[test]
fn openfaas_system_api_deploys_updates_scales_and_deletes_functions() {
    let g = start_group_with_control("system", true);
    let base = format!("http://{}", g.gateway);
    let auth = "admin:s3cret-pass";
    let sys = |args: &[&str]| {
        let mut all = vec!["-u", auth];
        all.extend_from_slice(args);
        curl_i(&all)
    };
    // Basic auth on /system/, as OpenFaaS's gateway with basic_auth on; not on calls.
    let (status, _, headers) = curl_i(&[&format!("{base}/system/info")]);
    assert_eq!(status, 401);
    assert_eq!(
        h(&headers, "WWW-Authenticate"),
        Some(r#"Basic realm="Restricted""#)
    );
    assert_eq!(
        curl_i(&["-u", "admin:wrong", &format!("{base}/system/functions")]).0,
        401
    );
    let (status, body, _) = sys(&[&format!("{base}/system/info")]);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["provider"]["provider"], "conveyor", "{info}");
    assert!(info["version"]["release"].is_string(), "{info}");
    let (status, body, _) = sys(&[&format!("{base}/system/namespaces")]);
    assert_eq!((status, body.as_str()), (200, r#"["conveyor"]"#));
    // One function's status; 404 is how clients learn that one does not exist.
    let (status, body, _) = sys(&[&format!("{base}/system/function/echo2")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&v["name"], &v["namespace"]),
        (&"echo2".into(), &"conveyor".into())
    );
    assert_eq!(v["replicas"], 1, "{v}");
    assert_eq!(sys(&[&format!("{base}/system/function/nope")]).0, 404);
    assert_eq!(
        sys(&[&format!(
            "{base}/system/function/echo2?namespace=openfaas-fn"
        )])
        .0,
        404
    );
    assert_eq!(
        sys(&[&format!("{base}/system/function/echo2?namespace=conveyor")]).0,
        200
    );
    let (status, _, headers) = sys(&["-X", "DELETE", &format!("{base}/system/info")]);
    assert_eq!(
        (status, h(&headers, "Allow")),
        (405, Some("GET, HEAD, OPTIONS"))
    );

    // Deploy as faas-cli does: PUT (an update) first, POST when that is 404.
    let functions = format!("{base}/system/functions");
    let hello = r#"{"service": "hello", "image": "ghcr.io/example/hello:latest",
        "envProcess": "tr a-z A-Z", "envVars": {"LANG": "C"}}"#;
    let (status, body, _) = sys(&["-X", "PUT", "-d", hello, &functions]);
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = sys(&["-X", "POST", "-d", hello, &functions]);
    assert_eq!(status, 202, "{body}");
    let call = |name: &str, body: &str| curl_i(&["-d", body, &format!("{base}/function/{name}")]);
    wait_for("the deployed function to answer", 30, || {
        call("hello", "hello").1 == "HELLO"
    });
    assert_eq!(call("hello.conveyor", "ns").1, "NS");
    assert_eq!(call("hello.openfaas-fn", "ns").0, 404);
    let (status, body, _) = sys(&["-X", "POST", "-d", hello, &functions]);
    assert_eq!(status, 409, "{body}");
    // An update applies to the next calls.
    let (status, body, _) = sys(&[
        "-X",
        "PUT",
        "-d",
        r#"{"service": "hello", "envProcess": "rev"}"#,
        &functions,
    ]);
    assert_eq!(status, 202, "{body}");
    wait_for("the updated function to answer", 30, || {
        call("hello", "hello").1.trim() == "olleh"
    });
    // A deployment that cannot run names what is missing.
    let (status, body, _) = sys(&["-X", "POST", "-d", r#"{"service": "x"}"#, &functions]);
    assert_eq!(status, 400);
    assert!(body.starts_with("envProcess: "), "{body}");
    // A form, as Apache Airflow's OpenFaaS hook posts its dict.
    let (status, body, _) = sys(&["-d", "service=formed", "-d", "envProcess=cat", &functions]);
    assert_eq!(status, 202, "{body}");
    wait_for("the form-deployed function to answer", 30, || {
        call("formed", "as is").1 == "as is"
    });
    // Scale: replicas are the view's invokers; zero is refused.
    let scale = format!("{base}/system/scale-function/hello");
    let (status, body, _) = sys(&["-d", r#"{"serviceName": "hello", "replicas": 3}"#, &scale]);
    assert_eq!(status, 202, "{body}");
    let (status, body, _) = sys(&["-d", r#"{"serviceName": "hello", "replicas": 0}"#, &scale]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        sys(&[
            "-d",
            r#"{"replicas": 1}"#,
            &format!("{base}/system/scale-function/nope")
        ])
        .0,
        404
    );
    // Delete.
    let (status, body, _) = sys(&[
        "-X",
        "DELETE",
        "-d",
        r#"{"functionName": "hello"}"#,
        &functions,
    ]);
    assert_eq!(status, 202, "{body}");
    wait_for("the deleted function to be gone", 30, || {
        call("hello", "x").0 == 404
    });
    assert_eq!(sys(&[&format!("{base}/system/function/hello")]).0, 404);
    let (status, _, _) = sys(&[
        "-X",
        "DELETE",
        "-d",
        r#"{"functionName": "hello"}"#,
        &functions,
    ]);
    assert_eq!(status, 404);
    // The gateway's metrics, as OpenFaaS's gateway names them, without auth.
    let (status, text, headers) = curl_i(&[&format!("{base}/metrics")]);
    assert_eq!(status, 200);
    assert!(
        h(&headers, "Content-Type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    for want in [
        r#"gateway_function_invocation_total{code="200",function_name="formed.conveyor"} "#,
        r#"gateway_function_invocation_started_total{function_name="formed.conveyor"} "#,
        r#"gateway_functions_seconds_bucket{code="200",function_name="formed.conveyor",le="#,
        r#"gateway_service_count{function_name="echo2.conveyor"} 1"#,
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // OpenFaaS named a gauge gateway_service_count; its clients read that name.
    common::promtool_check(&text, &["gateway_service_count non-histogram"]);
    assert!(
        text.contains(r#"conveyor_gateway_run_stage_seconds_count{stage="function"} "#),
        "{text}"
    );
    // Every series the Grafana dashboard queries is one the gateway or the control plane
    // serves.
    let control = g.control.as_ref().unwrap();
    let cp = format!("http://{control}/metrics");
    wait_for("the members' counters at the control plane", 20, || {
        curl(&["-s", &cp]).1.contains("conveyor_delivered_total{")
    });
    let served = format!("{text}{}", curl(&["-s", &cp]).1);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../testbed/grafana/conveyor.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                // Served only by members with an XDP filter (control/tests/xdp.rs reads it).
                let xdp = word == "conveyor_xdp_frames_total";
                if (word.starts_with("conveyor_") || word.starts_with("gateway_")) && !xdp {
                    queried += 1;
                    assert!(
                        served.contains(&format!("# TYPE {} ", word.trim_end_matches("_bucket"))),
                        "panel {:?} queries {word}, which nothing serves",
                        panel["title"]
                    );
                }
            }
        }
    }
    assert!(queried >= 15, "{queried}");
    // Calls of unknown functions are not counted (their names would grow the metrics).
    assert!(!text.contains("openfaas-fn"), "{text}");
}

#[test]
fn apache_airflows_openfaas_hook_deploys_and_calls_a_function() {
    let py =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-airflow/bin/python");
    assert!(
        py.exists(),
        "no {}: run CONVEYOR_SETUP_PY=1 bash testbed/setup.sh (Apache Airflow and its OpenFaaS \
         hook from PyPI)",
        py.display()
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions/airflow_openfaas.py");
    let g = start_group_with_control("airflow", false);
    let out = Command::new(&py)
        .arg(&script)
        .arg(format!("http://{}", g.gateway))
        .arg("airflowed")
        .env("AIRFLOW_HOME", g.dir.join("airflow"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("airflow hook: ok"), "{text}");
    // What the hook did reached the function: the update (rev) applies to the next call.
    let url = format!("http://{}/function/airflowed", g.gateway);
    wait_for("the updated function to answer", 30, || {
        curl_i(&["-d", "abc", &url]).1.trim() == "cba"
    });
}
