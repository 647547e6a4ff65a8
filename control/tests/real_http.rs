//! The `http` executor and the gateway against a real framework no one here wrote (Flask, from
//! Debian's python3-flask): what the function answers reaches its caller as it is.

mod common;
use common::{curl_i, free_tcp, wait_for};

use std::process::{Child, Command, Stdio};

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            common::stop(c);
        }
    }
}

/// A trigger with its gateway and one invoker running `pipelines` (JSON documents) from
/// `dir`; their logs are `trigger.log` and `invoker-0.log` there. Returns the gateway's port.
fn start_group(dir: &std::path::Path, pipelines: &[String]) -> (Procs, u16) {
    start_group_in(dir, pipelines, None)
}

/// [`start_group`] in network namespace `netns` (its gateway then listens on every address).
fn start_group_in(
    dir: &std::path::Path,
    pipelines: &[String],
    netns: Option<&str>,
) -> (Procs, u16) {
    let mut files = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        std::fs::write(dir.join(format!("p{i}.json")), p).unwrap();
        files.push(format!("\"p{i}.json\""));
    }
    let udp: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = udp.iter().map(|s| s.local_addr().unwrap().port()).collect();
    drop(udp);
    let gw = free_tcp();
    let toml = format!(
        "[group]\nname = \"f\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000009\"\npipelines = [{}]\nstartup_timeout_s = 20\nmax_payload = 7168\n\n[[member]]\nname = \"trigger\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n[member.gateway]\naddress = \"{}:{gw}\"\n\n[[member]]\nname = \"invoker-0\"\naddress = \"127.0.0.1:{}\"\nrole = \"invoker\"\n",
        files.join(", "),
        ports[0],
        if netns.is_some() { "0.0.0.0" } else { "127.0.0.1" },
        ports[1]
    );
    let cfg = dir.join("group.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut procs = Procs(Vec::new());
    for name in ["invoker-0", "trigger"] {
        procs.0.push(
            in_netns(netns, env!("CARGO_BIN_EXE_conveyor"))
                .args(["node", "--config", cfg.to_str().unwrap(), "--member", name])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
    }
    (procs, gw)
}

/// `program`, in network namespace `netns` when there is one.
fn in_netns(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

#[test]
fn a_flask_functions_cookies_and_redirects_reach_the_caller_as_they_are() {
    let dir = std::env::temp_dir().join(format!("conveyor-flask-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions/flask_app.py")
        .canonicalize()
        .unwrap();
    let pipeline = format!(
        r#"{{"name":"f","entry":"a","steps":{{"a":{{"function":"flask","executor":
            {{"kind":"http","command":["python3","{}"],"timeout_ms":5000}}}}}}}}"#,
        app.display()
    );
    let (procs, gw) = start_group(&dir, &[pipeline]);
    let base = format!("http://127.0.0.1:{gw}/function/f");
    wait_for(
        "the Flask function to answer through the gateway",
        30,
        || curl_i(&["-d", "x", &base]).0 == 200,
    );
    // Two cookies are two Set-Cookie headers, each with its own value; the body and the
    // function's own header come back too.
    let (status, body, headers) = curl_i(&["-H", "X-Test: seen", "-d", "hello", &base]);
    assert_eq!(status, 200);
    assert_eq!(body, "hello");
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies.len(), 2, "{headers:?}");
    assert!(cookies[0].starts_with("a=1"), "{cookies:?}");
    assert!(cookies[1].starts_with("b=2"), "{cookies:?}");
    assert_eq!(common::h(&headers, "X-Seen"), Some("seen"), "{headers:?}");
    // A redirect is the function's answer: the caller gets the 302 and its Location.
    let (status, body, headers) = curl_i(&["-d", "x", &format!("{base}/go")]);
    assert_eq!(status, 302, "{body}");
    assert!(
        common::h(&headers, "Location").is_some_and(|l| l.ends_with("/elsewhere")),
        "{headers:?}"
    );
    assert!(!body.contains("followed"), "{body}");
    // Behind the gateway, the function learns who called, as behind OpenFaaS's.
    let (status, body, headers) = curl_i(&[
        "-H",
        "X-Forwarded-For: 10.1.2.3",
        "-d",
        "x",
        &format!("{base}/headers"),
    ]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["X-Forwarded-For"], "10.1.2.3, 127.0.0.1", "{seen}");
    assert_eq!(
        seen["X-Forwarded-Host"],
        format!("127.0.0.1:{gw}"),
        "{seen}"
    );
    assert_eq!(seen["X-Forwarded-Proto"], "http", "{seen}");
    let cid = common::h(&headers, "X-Call-Id").expect("the call's id");
    assert_eq!(seen["X-Call-Id"], cid, "{seen}");
    // An error answer is the function's, as it gave it: status, type, headers and body.
    let (status, body, headers) = curl_i(&["-d", "x", &format!("{base}/invalid")]);
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body,
        "{\"detail\":[{\"loc\":[\"body\",\"n\"],\"msg\":\"field required\"}]}\n"
    );
    assert_eq!(
        common::h(&headers, "Content-Type"),
        Some("application/json"),
        "{headers:?}"
    );
    assert_eq!(common::h(&headers, "X-Validation"), Some("failed"));
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python interpreter with gevent and Flask (testbed/setup.sh installs Debian's): the one on
/// PATH, or Debian's own when PATH's is another (pyenv).
fn python_with_gevent() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import gevent, flask"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_string();
        }
    }
    panic!("no python3 with gevent and Flask: run testbed/setup.sh (python3-gevent)");
}

const ACTION: &str = r#"
def main(args):
    text = args.get("text", "")
    if text == "web":
        return {"statusCode": 201, "headers": {"X-Web": "yes"}, "body": {"made": "here"}}
    if text == "list":
        return ["not", "a", "dictionary"]
    return {"text": text.upper(), "method": args.get("__ow_method")}
"#;

#[test]
fn openwhisks_python_runtime_on_gevent_answers_plain_and_web_actions() {
    let dir = std::env::temp_dir().join(format!("conveyor-owgevent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions/ow_actionproxy.py")
        .canonicalize()
        .unwrap();
    let step = serde_json::json!({"function": "ow", "executor": {
        "kind": "openwhisk", "command": [python_with_gevent(), proxy], "code": ACTION,
        "timeout_ms": 5000}});
    let pipeline = serde_json::json!({"name": "f", "entry": "a", "steps": {"a": step}});
    let (procs, gw) = start_group(&dir, &[pipeline.to_string()]);
    let base = format!("http://127.0.0.1:{gw}/function/f");
    wait_for("the action to answer through the gateway", 30, || {
        curl_i(&["-d", "{}", &base]).0 == 200
    });
    // Warm calls on the kept server (it reads FLASK_PROXY_PORT, not PORT).
    for _ in 0..3 {
        let (status, body, _) = curl_i(&["-d", r#"{"text":"hi"}"#, &base]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, r#"{"method":"post","text":"HI"}"#);
    }
    let (status, body, headers) = curl_i(&["-d", r#"{"text":"web"}"#, &base]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, r#"{"made":"here"}"#);
    assert_eq!(common::h(&headers, "X-Web"), Some("yes"), "{headers:?}");
    let (status, body, _) = curl_i(&["-d", r#"{"text":"list"}"#, &base]);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("did not return a dictionary"), "{body}");
    drop(procs);
    // The runtime listens on every interface: the invoker said so, naming the port, and
    // firewalled it when it could (root).
    let log = std::fs::read_to_string(dir.join("invoker-0.log")).unwrap();
    assert!(log.contains("listens on 0.0.0.0:"), "{log}");
    assert_eq!(
        log.contains("firewalled to loopback"),
        common::is_root(),
        "{log}"
    );
    if common::is_root() {
        // Stopped, the invoker took its action's table away (left, it would filter every
        // packet this host receives).
        let port = log
            .split("listens on 0.0.0.0:")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap();
        let out = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        let tables = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !tables.contains(&format!("conveyor_action_{port}_")),
            "{tables}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// curl in `ns`: the status, 0 when nothing answered within 2 s.
fn status_in(ns: &str, method_args: &[&str], url: &str) -> u16 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-o", "/dev/null"])
        .args(["-w", "%{http_code}", "--max-time", "2"])
        .args(method_args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn an_openwhisk_runtimes_port_is_reachable_from_its_invoker_only() {
    common::require_root();
    let netns = format!("{}/../testbed/netns.sh", env!("CARGO_MANIFEST_DIR"));
    let bed = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&netns)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    bed(&["up", "2", "--prefix", "cvfw"]);
    struct Down(Box<dyn Fn()>);
    impl Drop for Down {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(Box::new(move || {
        let _ = Command::new("bash")
            .args([&netns, "down", "--prefix", "cvfw"])
            .output();
    }));
    let dir = std::env::temp_dir().join(format!("conveyor-owfw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions/ow_actionproxy.py")
        .canonicalize()
        .unwrap();
    // Kept warm through the checks (idle, it would be stopped after its start-up time).
    let step = serde_json::json!({"function": "ow", "executor": {
        "kind": "openwhisk", "command": [python_with_gevent(), proxy], "code": ACTION,
        "timeout_ms": 5000, "keep_warm_ms": 60000}});
    let pipeline = serde_json::json!({"name": "f", "entry": "a", "steps": {"a": step}});
    // A table as a killed invoker leaves it (its pid gone, here the largest pid there is): the
    // next invoker's action start deletes it.
    let stale = "conveyor_action_1_4194304";
    let made = Command::new("ip")
        .args([
            "netns", "exec", "cvfw-h0", "nft", "add", "table", "inet", stale,
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let (mut procs, gw) = start_group_in(&dir, &[pipeline.to_string()], Some("cvfw-h0"));
    let call = ["-d", "{}"];
    wait_for("the action to answer through the gateway", 30, || {
        status_in(
            "cvfw-h0",
            &call,
            &format!("http://127.0.0.1:{gw}/function/f"),
        ) == 200
    });
    let log = std::fs::read_to_string(dir.join("invoker-0.log")).unwrap();
    let port: u16 = log
        .split("listens on 0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no firewalled port in the log: {log}"));
    // Host h1 reaches h0's gateway (0.0.0.0) but not the action's port; h0 itself does.
    let h0 = "10.77.0.1";
    assert_eq!(
        status_in("cvfw-h1", &call, &format!("http://{h0}:{gw}/function/f")),
        200
    );
    assert_eq!(
        status_in("cvfw-h1", &[], &format!("http://{h0}:{port}/")),
        0
    );
    assert_ne!(
        status_in("cvfw-h0", &[], &format!("http://127.0.0.1:{port}/")),
        0
    );
    // A member stopped cleanly takes its table away with its action process.
    let tables = || {
        let out = Command::new("ip")
            .args(["netns", "exec", "cvfw-h0", "nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        tables().contains(&format!("conveyor_action_{port}_")),
        "{}",
        tables()
    );
    assert!(!tables().contains(stale), "{}", tables());
    let mut invoker = procs.0.remove(0);
    common::stop(&mut invoker);
    assert!(!tables().contains("conveyor_action_"), "{}", tables());
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The venv of real function runtimes from PyPI (testbed/functions/requirements.txt), made by
/// `CONVEYOR_SETUP_PY=1 bash testbed/setup.sh` (the README's test command does it).
fn python_from_pypi() -> std::path::PathBuf {
    let py =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-functions/bin/python");
    assert!(
        py.exists(),
        "no {}: run CONVEYOR_SETUP_PY=1 bash testbed/setup.sh (awslambdaric, Mangum, FastAPI, \
         uvicorn from PyPI)",
        py.display()
    );
    py
}

#[test]
fn awss_runtime_client_runs_a_fastapi_app_through_mangum_and_a_plain_handler_as_aws_does() {
    let dir = std::env::temp_dir().join(format!("conveyor-awslambdaric-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let py = python_from_pypi();
    let functions = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/functions")
        .canonicalize()
        .unwrap();
    let lambda = |name: &str, handler: &str, event: Option<&str>| {
        let mut ex = serde_json::json!({"kind": "lambda", "dir": functions,
            "command": [py, "-m", "awslambdaric", handler], "timeout_ms": 10000});
        if let Some(e) = event {
            ex["event"] = e.into();
        }
        serde_json::json!({"name": name, "entry": "a", "steps": {"a": {"function": name,
            "executor": ex}}})
        .to_string()
    };
    let uvicorn = serde_json::json!({"name": "uv", "entry": "a", "steps": {"a": {"function": "uv",
        "executor": {"kind": "http", "dir": functions, "command": [py, "fastapi_app.py"],
        "timeout_ms": 10000}}}});
    let (procs, gw) = start_group(
        &dir,
        &[
            lambda("api", "fastapi_app.handler", Some("apigateway-v2")),
            lambda("plain", "fastapi_app.plain", None),
            lambda("broken", "fastapi_app.broken", Some("apigateway-v2")),
            uvicorn.to_string(),
        ],
    );
    let base = format!("http://127.0.0.1:{gw}/function");
    wait_for("the FastAPI app behind Mangum to answer", 60, || {
        curl_i(&[&format!("{base}/api/hello/x")]).0 == 200
    });
    // API Gateway's event, through Mangum to FastAPI: method, path, query, cookies and the
    // caller's address in; status, headers, every cookie and the body out.
    let item = r#"{"name":"box","count":2}"#;
    for app in ["api", "uv"] {
        let (status, body, headers) = curl_i(&[
            "-H",
            "Content-Type: application/json",
            "-H",
            "Cookie: session=abc; theme=dark",
            "-d",
            item,
            &format!("{base}/{app}/items?color=red&size=L"),
        ]);
        assert_eq!(status, 201, "{app}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&v["name"], &v["count"]),
            (&"box".into(), &2.into()),
            "{app}: {v}"
        );
        assert_eq!(
            v["query"],
            serde_json::json!({"color": "red", "size": "L"}),
            "{app}: {v}"
        );
        assert_eq!(
            (&v["path"], &v["method"]),
            (&"/items".into(), &"POST".into()),
            "{app}: {v}"
        );
        assert_eq!(
            v["cookies"],
            serde_json::json!({"session": "abc", "theme": "dark"}),
            "{app}: {v}"
        );
        assert_eq!(
            common::h(&headers, "X-Count"),
            Some("2"),
            "{app}: {headers:?}"
        );
        assert_eq!(
            common::h(&headers, "Content-Type"),
            Some("application/json")
        );
        let cookies: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies.len(), 2, "{app}: {headers:?}");
        assert!(cookies[0].starts_with("made=box"), "{app}: {cookies:?}");
        assert!(cookies[1].starts_with("count=2"), "{app}: {cookies:?}");
        // FastAPI's validation error: 422, its JSON and its type, as the app gave them.
        let (status, body, headers) = curl_i(&[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"name":"box"}"#,
            &format!("{base}/{app}/items"),
        ]);
        assert_eq!(status, 422, "{app}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["detail"][0]["loc"],
            serde_json::json!(["body", "count"]),
            "{v}"
        );
        assert_eq!(
            common::h(&headers, "Content-Type"),
            Some("application/json")
        );
        let (status, body, _) = curl_i(&[&format!("{base}/{app}/hello/ann")]);
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"hello":"ann"}"#),
            "{app}"
        );
    }
    // The caller's address reaches the app as API Gateway's sourceIp.
    let (_, body, _) = curl_i(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        item,
        &format!("{base}/api/items"),
    ]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["client"], "127.0.0.1", "{v}");
    // An exception in the app is Starlette's own 500, passed on as the app gave it; a handler
    // that fails is API Gateway's 500.
    let (status, body, headers) = curl_i(&[&format!("{base}/api/fail")]);
    assert_eq!((status, body.as_str()), (500, "Internal Server Error"));
    assert!(
        common::h(&headers, "Content-Type").is_some_and(|t| t.starts_with("text/plain")),
        "{headers:?}"
    );
    let (status, body, _) = curl_i(&[&format!("{base}/broken")]);
    assert_eq!(
        (status, body.as_str()),
        (500, r#"{"message":"Internal Server Error"}"#)
    );

    // A plain handler, invoked as AWS's Invoke does: the body is the event.
    let (status, body, headers) = curl_i(&["-d", r#"{"k":[1,2]}"#, &format!("{base}/plain")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], serde_json::json!({"k": [1, 2]}), "{v}");
    assert_eq!(v["function"], "plain", "{v}");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36, "{v}");
    assert_eq!(
        common::h(&headers, "Content-Type"),
        Some("application/json")
    );
    // An empty body is the event {}; a body that is not JSON is AWS's 400, and the runtime
    // never sees it.
    let (status, body, _) = curl_i(&["-X", "POST", &format!("{base}/plain")]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["event"], serde_json::json!({}), "{v}");
    let (status, body, headers) = curl_i(&["-d", "k=1", &format!("{base}/plain")]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        common::h(&headers, "x-amzn-ErrorType"),
        Some("InvalidRequestContentException")
    );
    // The handler's exception: 200, X-Amz-Function-Error and awslambdaric's own error
    // document (its errorType is the exception's class).
    let (status, body, headers) = curl_i(&["-d", r#"{"fail":"no box"}"#, &format!("{base}/plain")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        common::h(&headers, "X-Amz-Function-Error"),
        Some("Unhandled")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&v["errorType"], &v["errorMessage"]),
        (&"ValueError".into(), &"no box".into()),
        "{v}"
    );
    assert!(v["stackTrace"].is_array(), "{v}");
    // The runtime kept serving.
    let (status, _, _) = curl_i(&["-d", "{}", &format!("{base}/plain")]);
    assert_eq!(status, 200);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
