//! Sharded groups end to end (`[shards]` in the group file; `conveyor bench --shards N`): every
//! member process runs a member of each shard, the pipeline's steps alternate shards, and each
//! run's continuations cross between shards through the forwarders. Lost and duplicated runs
//! are counted by the trigger from the ends it is told.

mod common;
use common::{conveyor, report, require_root};

fn bench(extra: &[&str]) -> serde_json::Value {
    report(&run(extra))
}

/// `conveyor bench` of a burst of 1500 requests with `extra`, its JSON report on stdout.
fn run(extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "bench",
        "--workload",
        "burst",
        "--requests",
        "1500",
        "--fn-us",
        "40",
        "--json",
        "-",
    ];
    args.extend_from_slice(extra);
    conveyor(&args)
}

/// Three invokers in two shards, a chain of 3; invoker-1 killed at 0.1 s and the second
/// step's queue moved to the other shard at 0.2 s.
const KILL_AND_MOVE: [&str; 12] = [
    "--shards",
    "2",
    "--chain",
    "3",
    "--invokers",
    "3",
    "--fault",
    "kill:invoker-1@0.1",
    "--fault",
    "move:bench.f1@0.2",
    "--hosts",
    "netns",
];

fn exactly_once(r: &serde_json::Value, sent: u64) {
    assert_eq!(r["sent"], sent, "{r}");
    assert_eq!(r["completed"], sent, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn two_shards_on_loopback_with_a_queue_moved_mid_run() {
    let r = bench(&[
        "--chain",
        "3",
        "--shards",
        "2",
        "--fault",
        "move:bench.f1@0.05",
    ]);
    exactly_once(&r, 1500);
    assert_eq!(r["shards"], 2, "{r}");
    // bench.f1 started on shard 1 (step 1 of 2 shards) and went to the next one.
    assert_eq!(
        r["shard_moves"],
        serde_json::json!([{"queue": "bench.f1", "to": 0, "at_s": 0.05}]),
        "{r}"
    );
}

#[test]
fn an_invoker_joins_every_shard_mid_run_and_works_in_them() {
    let r = bench(&[
        "--chain",
        "3",
        "--shards",
        "2",
        "--invokers",
        "3",
        "--fault",
        "join:invoker-2@0.05",
    ]);
    exactly_once(&r, 1500);
    // What it says it executed, over both shards (the bench reads the invokers' logs).
    assert!(
        r["per_invoker"]["invoker-2"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
}

/// Durable shards and the whole deployment SIGKILLed mid-run, twice, after the entry queue
/// moved from shard 0 to shard 1 (so the trigger has runs begun in each shard when it is
/// killed), one member's logs torn in every shard: every member restarts each shard from its
/// data directory, the forwarders start from the recovered outboxes, the trigger picks the run
/// up from its journal (each shard told where its answers stopped and which of the requests
/// sent there are unanswered), and every request completes exactly once.
#[test]
fn a_sharded_deployment_killed_whole_twice_loses_and_doubles_nothing() {
    let out = conveyor(&[
        "bench",
        "--workload",
        "constant",
        "--rate",
        "1500",
        "--duration",
        "2",
        "--chain",
        "3",
        "--fn-us",
        "40",
        "--shards",
        "2",
        "--durable",
        "--fault",
        "move:bench.f0@0.3",
        "--fault",
        "kill:all@0.8",
        "--fault",
        "kill:all@1.4",
        "--fault",
        "tear:invoker-0",
        "--json",
        "-",
    ]);
    let r = report(&out);
    exactly_once(&r, 3000);
    assert_eq!(r["shards"], 2, "{r}");
    assert_eq!(
        r["recoveries_ms"].as_array().map(|a| a.len()),
        Some(2),
        "{r}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the trigger restarted 2 times"), "{stderr}");
    // Torn in each shard's own log.
    assert!(
        stderr.contains("invoker-0's log torn") && stderr.contains("/shard-1/log-"),
        "{stderr}"
    );
}

#[test]
fn bad_shard_options_are_refused_before_anything_runs() {
    for (args, says) in [
        (vec!["--shards", "0"], "--shards"),
        (vec!["--shards", "65"], "--shards"),
        (
            vec!["--shards", "2", "--backend", "conveyor,redis"],
            "Conveyor only",
        ),
        (vec!["--shards", "2", "--fault", "move:nope@1"], "bench.f0"),
        (
            vec!["--shards", "2", "--fault", "move:bench.f1=5@1"],
            "not a shard",
        ),
        (vec!["--fault", "move:bench.f1@1"], "--shards 2"),
        (
            vec!["--shards", "2", "--fault", "kill:all@1"],
            "needs --durable",
        ),
    ] {
        let mut all = vec!["bench", "--duration", "1"];
        all.extend(args.iter().copied());
        let out = conveyor(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn check_shows_each_shard_and_where_each_queue_is_ordered() {
    let dir = std::env::temp_dir().join(format!("conveyor-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.json"),
        r#"{"name": "p", "entry": "a", "steps": {
            "a": {"function": "echo", "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#,
    )
    .unwrap();
    let cfg = dir.join("conveyor.toml");
    std::fs::write(
        &cfg,
        r#"[group]
name = "g"
key = "0000000000000000000000000000000000000000000000000000000000000001"
pipelines = ["p.json"]

[shards]
count = 3
port_stride = 10
place = { "p.b" = 2 }

[[member]]
name = "t"
address = "127.0.0.1:7000"
role = "trigger"

[[member]]
name = "i"
address = "127.0.0.1:7001"
role = "invoker"
"#,
    )
    .unwrap();
    let out = conveyor(&["check", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("shard 2: group \"g#2\", ports 7020 7021"),
        "{text}"
    );
    assert!(text.contains("queue p.b on shard 2 (placed)"), "{text}");
    assert!(text.contains("queue p.a on shard "), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root"]
fn two_shards_on_namespace_hosts_with_an_invoker_killed_and_a_queue_moved() {
    require_root();
    let r = bench(&KILL_AND_MOVE);
    exactly_once(&r, 1500);
    // The killed invoker's member of each shard was removed: a view change in each.
    assert!(r["view_changes"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["shard_moves"].as_array().map(Vec::len), Some(1), "{r}");
}

#[test]
#[ignore = "needs root"]
fn four_shards_on_namespace_hosts_with_an_invoker_killed_and_a_queue_moved() {
    require_root();
    let r = bench(&[
        "--hosts",
        "netns",
        "--shards",
        "4",
        "--chain",
        "4",
        "--invokers",
        "3",
        "--fault",
        "kill:invoker-2@0.1",
        "--fault",
        "move:bench.f3=1@0.15",
    ]);
    exactly_once(&r, 1500);
    assert_eq!(r["shards"], 4, "{r}");
    assert!(r["view_changes"].as_u64().unwrap() >= 4, "{r}");
}

/// The transports that own a device per process with shards: each namespace host's process
/// drives its veth through one DPDK port (af_packet PMD), or one AF_XDP socket and one XDP
/// program (its member filter judging by every shard's view), shared by its two shards, each
/// shard on its own UDP port; an invoker killed and a queue moved mid-run, as over udp above.
fn two_shards_share_each_hosts_device(transport: &str, says: &str) {
    require_root();
    let mut args = KILL_AND_MOVE.to_vec();
    args.extend(["--transport", transport, "--keep"]);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let r = report(&out);
    exactly_once(&r, 1500);
    assert_eq!(r["transport"], transport, "{r}");
    assert!(r["view_changes"].as_u64().unwrap() >= 2, "{r}");
    let dir = stderr
        .lines()
        .find_map(|l| l.split("run directory kept: ").nth(1).map(str::trim))
        .unwrap_or_else(|| panic!("--keep printed no directory: {stderr}"));
    let log = std::fs::read_to_string(format!("{dir}/invoker-0.log")).unwrap();
    for (s, port) in [(0, 7400), (1, 7401)] {
        assert!(
            log.contains(&format!(
                "shard {s} of 2 (group {:?}): transport {says}",
                if s == 0 { "bench" } else { "bench#1" }
            )) && log.contains(&format!("shared by 2 shards (this one on port {port})")),
            "{log}"
        );
    }
    if transport == "afxdp" {
        // Both shards' frames took the socket: the program admitted shard 1's group and its
        // member filter both shards' members, before and after the views changed.
        let xdp = log
            .lines()
            .find(|l| l.contains("(shard 0): XDP: "))
            .unwrap_or_else(|| panic!("{log}"));
        let count = |k: &str| -> u64 {
            xdp.split(&format!(" {k} "))
                .nth(1)
                .and_then(|t| t.split(',').next())
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("{k}: {xdp}"))
        };
        assert_eq!(count("other_group"), 0, "{xdp}");
        // What the two shards' engines received through the socket (not by the kernel's
        // path) is what the program redirected to it.
        let mut by_socket = 0;
        for s in 0..2 {
            let data = log
                .lines()
                .find(|l| l.contains(&format!("(shard {s}): transport sent")))
                .unwrap_or_else(|| panic!("{log}"));
            // "... received R (K by the kernel's path); ..."
            let number_after = |at: &str| -> u64 {
                data.split(at)
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{at}: {data}"))
            };
            let received = number_after("received ");
            let by_kernel = number_after(&format!("received {received} ("));
            assert!(received > by_kernel, "{data}");
            by_socket += received - by_kernel;
        }
        let redirected = count("redirected");
        assert!(
            redirected > 1_000 && redirected * 10 >= by_socket * 9,
            "redirected {redirected}, received through the socket {by_socket}: {log}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
#[ignore = "needs root"]
fn two_shards_share_each_hosts_dpdk_port() {
    two_shards_share_each_hosts_device("dpdk", "dpdk (port net_af_packet0");
}

#[test]
#[ignore = "needs root"]
fn two_shards_share_each_hosts_afxdp_socket_and_xdp_program() {
    two_shards_share_each_hosts_device(
        "afxdp",
        "afxdp (copy mode, eth0 queue 0), XDP member filter",
    );
}

/// A trigger serving the gateway and two invokers, as `conveyor node` processes, in two
/// shards: the pipeline's entry step on shard 1, its second step on shard 0. Each call goes to
/// shard 1 (where its entry queue is), crosses to shard 0 and back, and its output is answered
/// to its caller; then the entry queue moves to shard 0 through the control plane
/// (`conveyor ctl shard move`), every shard applies the new map, and calls go on.
#[test]
fn a_gateway_over_two_shards_routes_each_call_and_answers_it() {
    let dir = std::env::temp_dir().join(format!("conveyor-shards-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("echo2.json"),
        r#"{"name": "echo2", "entry": "first", "steps": {
            "first": {"function": "echo", "next": [{"to": ["second"]}]},
            "second": {"function": "spin", "args": {"us": 50}}}}"#,
    )
    .unwrap();
    let base = common::free_udp_block(6);
    let gw = format!("127.0.0.1:{}", common::free_tcp());
    let control = format!("127.0.0.1:{}", common::free_tcp());
    let metrics = format!("127.0.0.1:{}", common::free_tcp());
    let toml = format!(
        r#"[group]
name = "sgw"
key = "00000000000000000000000000000000000000000000000000000000000000cc"
pipelines = ["echo2.json"]
startup_timeout_s = 20

[shards]
count = 2
port_stride = 3
place = {{ "echo2.first" = 1, "echo2.second" = 0 }}

[control]
address = "{control}"
token = "a-control-token-for-the-shards-test"

[[member]]
name = "trigger"
address = "127.0.0.1:{}"
role = "trigger"
metrics_address = "{metrics}"
[member.gateway]
address = "{gw}"

[[member]]
name = "invoker-0"
address = "127.0.0.1:{}"
role = "invoker"

[[member]]
name = "invoker-1"
address = "127.0.0.1:{}"
role = "invoker"
"#,
        base,
        base + 1,
        base + 2
    );
    std::fs::write(dir.join("conveyor.toml"), toml).unwrap();
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut children = Kill(Vec::new());
    let cfg = dir.join("conveyor.toml");
    let cfg = cfg.to_str().unwrap();
    children.0.push(
        std::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args(["control", "--config", cfg])
            .stdout(std::fs::File::create(dir.join("control.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("control.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    for m in ["invoker-0", "invoker-1", "trigger"] {
        let log = std::fs::File::create(dir.join(format!("{m}.log"))).unwrap();
        children.0.push(
            std::process::Command::new(env!("CARGO_BIN_EXE_conveyor"))
                .args(["node", "--config"])
                .arg(dir.join("conveyor.toml"))
                .args(["--member", m])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let url = format!("http://{gw}/healthz");
    common::wait_for("the gateway answers /healthz", 30, || {
        common::curl(&["-s", &url]).1 == "OK"
    });
    let call = |i: usize| {
        let body = format!("call {i} through two shards");
        let (status, out, headers) =
            common::curl_i(&["-d", &body, &format!("http://{gw}/function/echo2")]);
        let log = std::fs::read_to_string(dir.join("trigger.log")).unwrap_or_default();
        assert_eq!(
            (status, out.as_str()),
            (200, body.as_str()),
            "{headers:?}\n{log}"
        );
    };
    for i in 0..40 {
        call(i);
    }
    // The control plane shows both shards, each having applied the file's map.
    let shards = |what: &str, want: u64| {
        common::wait_for(what, 20, || {
            let out = conveyor(&["ctl", "--config", cfg, "shards"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["shards"].as_array().is_some_and(|s| {
                s.len() == 2
                    && s.iter().all(|x| {
                        x["map_version"] == want && x["members"].as_array().map(Vec::len) == Some(3)
                    })
            })
        })
    };
    shards("both shards report map version 1", 1);
    // Moved through the control plane: the entry queue goes to shard 0, each member's reporter
    // submits the new map to its shard, and calls go on (now crossing no shard).
    let out = conveyor(&["ctl", "--config", cfg, "shard", "move", "echo2.first", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shards("both shards apply map version 2", 2);
    for i in 40..60 {
        call(i);
    }
    // The member's own /metrics has each shard's series, labelled by shard.
    let (ok, text) = common::curl(&["-s", &format!("http://{metrics}/metrics")]);
    assert!(ok, "{text}");
    for shard in ["0", "1"] {
        let line = format!(r#"conveyor_view_members{{member="trigger",shard="{shard}"}} 3"#);
        assert!(text.contains(&line), "{line} not in:\n{text}");
    }
    // Every call crossed twice (shard 1 to 0 and back): the forwarders say so when the
    // members stop (SIGTERM: each leaves its shards).
    for c in children.0.iter().skip(1).rev() {
        sigterm(c.id());
    }
    for c in children.0.iter_mut().skip(1) {
        let _ = c.wait();
    }
    let logs: String = ["trigger", "invoker-0", "invoker-1"]
        .iter()
        .map(|m| std::fs::read_to_string(dir.join(format!("{m}.log"))).unwrap_or_default())
        .collect();
    let sent: u64 = logs
        .lines()
        .filter_map(|l| l.split("forwarders sent ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(sent >= 80, "forwarded {sent} entries:\n{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM to `pid` through kill(1) (no unsafe code in the tests).
fn sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
