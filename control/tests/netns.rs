//! The network-namespace test bed (`testbed/netns.sh`) and `conveyor bench --hosts netns`.
//! These need root; without it each test says that it did not run. CI runs as root.

mod common;
use common::is_root;

use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> String {
    format!("{}/../testbed/netns.sh", env!("CARGO_MANIFEST_DIR"))
}

fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

macro_rules! needs_root {
    ($name:literal) => {
        if !is_root() {
            eprintln!("NOT RUN: {} needs root (network namespaces)", $name);
            return;
        }
    };
}

#[test]
fn hosts_come_up_addressed_and_go_away() {
    needs_root!("hosts_come_up_addressed_and_go_away");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = Command::new("bash")
        .args([&script(), "up", "3", "--prefix", "cvtst"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let mut ns = namespaces("cvtst-");
    ns.sort();
    assert_eq!(ns, vec!["cvtst-h0", "cvtst-h1", "cvtst-h2", "cvtst-hub"]);
    for i in 0..3 {
        let a = Command::new("ip")
            .args([
                "-n",
                &format!("cvtst-h{i}"),
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&a.stdout);
        assert!(text.contains(&format!("10.77.0.{}/24", i + 1)), "{text}");
        assert!(text.contains("UP"), "{text}");
    }
    let down = Command::new("bash")
        .args([&script(), "down", "--prefix", "cvtst"])
        .output()
        .unwrap();
    assert!(down.status.success());
    assert!(namespaces("cvtst-").is_empty());
}

#[test]
fn netem_is_applied_or_its_absence_is_explained() {
    needs_root!("netem_is_applied_or_its_absence_is_explained");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let up = Command::new("bash")
        .args([
            &script(),
            "up",
            "2",
            "--prefix",
            "cvtne",
            "--netem",
            "delay 1ms",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&up.stderr);
    if up.status.success() {
        let q = Command::new("ip")
            .args([
                "netns", "exec", "cvtne-h0", "tc", "qdisc", "show", "dev", "eth0",
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&q.stdout).contains("netem"));
        Command::new("bash")
            .args([&script(), "down", "--prefix", "cvtne"])
            .output()
            .unwrap();
    } else {
        assert!(err.contains("netem"), "{err}");
    }
    assert!(namespaces("cvtne-").is_empty(), "namespaces left behind");
}

#[test]
fn bench_runs_each_member_in_its_own_namespace() {
    needs_root!("bench_runs_each_member_in_its_own_namespace");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "bench",
            "--hosts",
            "netns",
            "--workload",
            "constant",
            "--rate",
            "500",
            "--duration",
            "1.5",
            "--chain",
            "2",
            "--fn-us",
            "30",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["hosts"], "netns");
    assert_eq!(r["completed"], 750);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
    assert!(
        namespaces("cvb").is_empty(),
        "the bench left namespaces behind"
    );
}

#[test]
fn killing_an_invoker_across_namespaces_loses_nothing() {
    needs_root!("killing_an_invoker_across_namespaces_loses_nothing");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "bench",
            "--hosts",
            "netns",
            "--workload",
            "burst",
            "--requests",
            "3000",
            "--chain",
            "3",
            "--fn-us",
            "40",
            "--fault",
            "kill:invoker-1@0.2",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["completed"], 3000, "{r}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
    assert!(r["failover_ms"].as_f64().is_some(), "{r}");
    assert!(namespaces("cvb").is_empty());
}

#[test]
fn a_partitioned_invoker_is_removed_then_rejoins_and_works_again() {
    needs_root!("a_partitioned_invoker_is_removed_then_rejoins_and_works_again");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "bench",
            "--hosts",
            "netns",
            "--invokers",
            "3",
            "--workload",
            "constant",
            "--rate",
            "600",
            "--duration",
            "3",
            "--chain",
            "2",
            "--fn-us",
            "40",
            "--fault",
            "partition:invoker-2@0.5-1.5",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    // The others kept serving: nothing lost or doubled.
    assert_eq!(r["completed"], 1800, "{r}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
    assert!(r["failover_ms"].as_f64().is_some(), "{r}");
    // The isolated one said why it stopped, and after the heal came back and took work.
    assert!(
        stderr.contains("invoker-2 joined during the run (as a new member) and then ran"),
        "{stderr}"
    );
    assert!(namespaces("cvb").is_empty());
}

#[test]
fn baselines_run_inside_namespace_hosts_and_leave_none_behind() {
    needs_root!("baselines_run_inside_namespace_hosts_and_leave_none_behind");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let child = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "bench",
            "--hosts",
            "netns",
            "--backend",
            "redis",
            "--workload",
            "constant",
            "--rate",
            "500",
            "--duration",
            "1",
            "--chain",
            "2",
            "--fn-us",
            "30",
            "--json",
            "-",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("cvb{}-", child.id() % 100_000);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v[0];
    assert_eq!(e["backend"], "redis");
    assert_eq!(e["hosts"], "netns");
    assert_eq!(e["completed"], 500, "{e}");
    assert_eq!(e["lost"], 0);
    // The server listened on the broker host's address (10.77.0.4 for 2 invokers), which only
    // the namespace hosts can reach: the run could not have completed from the root namespace.
    assert!(
        Command::new("bash")
            .args(["-c", "ip -o addr | grep -q '10\\.77\\.0\\.'"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true),
        "the root namespace has a 10.77.0.0/24 address"
    );
    assert!(namespaces(&prefix).is_empty(), "namespaces left behind");
}

/// The `afxdp` transport under the bench, both workloads the issue names: each member's AF_XDP
/// socket on its namespace host's eth0, the XDP program steering to it. Lost 0, duplicates 0,
/// and the report says which transport ran.
#[test]
fn bench_over_afxdp_loses_and_doubles_nothing() {
    needs_root!("bench_over_afxdp_loses_and_doubles_nothing");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (workload, extra, expect) in [
        ("constant", ["--rate", "500", "--duration", "2"], 1000),
        ("burst", ["--requests", "3000", "--chain", "3"], 3000),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args([
                "bench",
                "--transport",
                "afxdp",
                "--hosts",
                "netns",
                "--workload",
                workload,
                "--fn-us",
                "30",
                "--json",
                "-",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{workload}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = &v[0];
        assert_eq!(r["transport"], "afxdp", "{r}");
        assert_eq!(r["completed"], expect, "{workload}: {r}");
        assert_eq!(r["lost"], 0, "{workload}: {r}");
        assert_eq!(r["duplicates"], 0, "{workload}: {r}");
        assert!(namespaces("cvb").is_empty());
    }
}

/// `conveyor demo --transport afxdp`: the demo over namespace hosts and AF_XDP sockets.
#[test]
fn the_demo_runs_over_afxdp() {
    needs_root!("the_demo_runs_over_afxdp");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["demo", "--transport", "afxdp"])
        .env("CONVEYOR_NO_PROGRESS", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over AF_XDP sockets"), "{text}");
    assert!(
        text.contains("sent 5000, completed 5000, lost 0, duplicated 0"),
        "{text}"
    );
    assert!(namespaces("cvb").is_empty());
}
