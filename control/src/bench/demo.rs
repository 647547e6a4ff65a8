//! `conveyor demo`: a trigger and two invokers as separate processes (loopback, shared memory,
//! or namespace hosts), a 3-function pipeline at 1000 requests/s for 5 s, and what happened;
//! and `conveyor demo --serve`: the demo group kept running with the trigger's
//! OpenFaaS-compatible gateway, until interrupted, so a newcomer can call the pipeline with
//! curl.

use super::args::Hosts;
use super::group::{effective_uid, run_local_group, GroupRun};
use super::group::{free_udp_ports, node_command, Members};
use crate::trigger::loadgen::WorkloadSpec;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo's pipeline: three functions per request, the second choosing the third by the
/// size of its input.
pub const DEMO_PIPELINE: &str = r#"{
  "name": "demo",
  "entry": "parse",
  "steps": {
    "parse":    {"function": "spin", "args": {"us": 60},
                 "next": [{"to": ["classify"]}]},
    "classify": {"function": "branch", "args": {"threshold": 48},
                 "next": [{"route": "big", "to": ["resize"]}, {"route": "small", "to": ["store"]}]},
    "resize":   {"function": "spin", "args": {"us": 60}},
    "store":    {"function": "echo"}
  }
}"#;

pub fn demo(transport: &str) -> Result<()> {
    if let Some(feature) = conveyor_dataplane::transport::open::missing_feature(transport) {
        bail!("conveyor demo --transport {transport}: not built into this binary (it needs the cargo feature `{feature}`); nothing was run");
    }
    let hosts = match transport {
        "udp" => {
            println!("Conveyor demo: a trigger and two invokers, each its own process, on 127.0.0.1 over udp.");
            Hosts::Local
        }
        "shm" => {
            println!("Conveyor demo: a trigger and two invokers, each its own process, on this host over shared-memory rings (shm).");
            Hosts::Local
        }
        "afxdp" => {
            if effective_uid() != 0 {
                bail!("conveyor demo --transport afxdp needs root: it makes three network namespace hosts on a bridge (veth) and attaches XDP programs and AF_XDP sockets; nothing was run");
            }
            println!("Conveyor demo: a trigger and two invokers, each its own process in its own network namespace host (veth on a bridge), over AF_XDP sockets steered by XDP.");
            Hosts::Netns
        }
        "dpdk" => {
            if effective_uid() != 0 {
                bail!("conveyor demo --transport dpdk needs root: it makes three network namespace hosts on a bridge (veth) and drives each host's veth through DPDK's af_packet PMD; nothing was run");
            }
            println!("Conveyor demo: a trigger and two invokers, each its own process in its own network namespace host (veth on a bridge), each driving its veth through DPDK (af_packet PMD).");
            Hosts::Netns
        }
        other => bail!(
            "--transport {other}: the demo runs over udp (one machine, loopback), shm (one machine, shared memory), afxdp or dpdk (namespace hosts; root)"
        ),
    };
    println!("Pipeline 'demo': parse (spin 60us) -> classify (branch on size) -> resize (spin 60us) | store (echo)");
    println!(
        "Sending 1000 requests/s for 5 s (payloads of 64 and 32 bytes, so both branches run)..."
    );
    let run = GroupRun {
        invokers: 2,
        pipeline_json: DEMO_PIPELINE.into(),
        spec: WorkloadSpec {
            workload: "constant".into(),
            pipeline: "demo".into(),
            rate: 1000.0,
            duration_s: 5.0,
            requests: 0,
            payload: 64,
            vary_payload: true,
            grace_s: 5.0,
            start_file: None,
            hlog: None,
            progress_file: None,
            journal: None,
            kills_file: None,
            moves: Vec::new(),
        },
        keep: false,
        idle: None,
        credits: conveyor_config::DEFAULT_CREDITS,
        executor: "inline".into(),
        pin: true,
        confine: false,
        progress: true,
        hosts,
        impair: None,
        speculate: true,
        netloss: None,
        kills: Vec::new(),
        partitions: Vec::new(),
        joins: Vec::new(),
        durable: false,
        kill_all: Vec::new(),
        tears: Vec::new(),
        shards: 1,
        placement: Vec::new(),
        transport: transport.to_string(),
    };
    let r = run_local_group(&run)?;
    let l = r.latency_us;
    println!();
    println!(
        "requests      sent {}, completed {}, lost {}, duplicated {}, errors {}",
        r.sent, r.completed, r.lost, r.duplicates, r.errors
    );
    println!("throughput    {:.1} requests/s", r.throughput_rps);
    println!(
        "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    println!(
        "overhead (us) p50 {}  p99 {}   (latency minus the functions' own run time)",
        r.overhead_us.p50, r.overhead_us.p99
    );
    let total: u64 = r.per_invoker.values().sum();
    for (n, c) in &r.per_invoker {
        println!(
            "share         {n}: {c} function runs ({:.1}%)",
            100.0 * *c as f64 / total.max(1) as f64
        );
    }
    if r.lost > 0 || r.duplicates > 0 {
        bail!(
            "the demo lost {} and duplicated {} requests",
            r.lost,
            r.duplicates
        );
    }
    Ok(())
}

pub fn demo_serve(transport: &str, address: &str, resp_address: &str) -> Result<()> {
    if !matches!(transport, "udp" | "shm") {
        bail!("conveyor demo --serve runs on this host over udp or shm, not {transport:?}; nothing was run");
    }
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|e| anyhow!("--address {address:?}: {e}"))?;
    if std::net::TcpListener::bind(addr).is_err() {
        bail!("--address {address}: the port is taken (another gateway or program); choose another with --address; nothing was run");
    }
    let resp: std::net::SocketAddr = resp_address
        .parse()
        .map_err(|e| anyhow!("--resp-address {resp_address:?}: {e}"))?;
    if !resp.ip().is_loopback() {
        bail!("--resp-address {resp_address}: the demo serves the Redis protocol without AUTH, so only on a loopback address; nothing was run");
    }
    if std::net::TcpListener::bind(resp).is_err() {
        bail!("--resp-address {resp_address}: the port is taken (a redis-server?); choose another with --resp-address; nothing was run");
    }
    let dir = std::env::temp_dir().join(format!("conveyor-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ports = free_udp_ports(3)?;
    let names = ["trigger", "invoker-0", "invoker-1"];
    let mut toml = format!(
        "# Written by conveyor demo --serve.\n[group]\nname = \"demo\"\nkey = \"{}\"\ntransport = \"{transport}\"\npipelines = [\"pipeline.json\"]\nstartup_timeout_s = 20\n",
        crate::config::fresh_key()?
    );
    for (name, port) in names.iter().zip(&ports) {
        let role = if *name == "trigger" {
            "trigger"
        } else {
            "invoker"
        };
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nrole = \"{role}\"\n"
        ));
        if role == "trigger" {
            toml.push_str(&format!(
                "[member.gateway]\naddress = \"{addr}\"\n[member.resp]\naddress = \"{resp}\"\n"
            ));
        }
    }
    std::fs::write(dir.join("conveyor.toml"), toml)?;
    std::fs::write(dir.join("pipeline.json"), DEMO_PIPELINE)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
        .context("installing the interrupt handler")?;
    let exe = std::env::current_exe().context("locating the conveyor binary")?;
    let mut members = Members {
        children: Vec::new(),
    };
    for name in names.iter().skip(1).chain(std::iter::once(&names[0])) {
        let mut cmd = Command::new(&exe);
        node_command(&mut cmd, &dir, name)?;
        let child = cmd
            // Not in the terminal's process group: Ctrl-C reaches this process only, which
            // stops the members itself.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting member {name}"))?;
        members.children.push((name.to_string(), child));
    }
    let health = format!("http://{addr}/healthz");
    let start = Instant::now();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(500))
        .build();
    loop {
        check_members(&mut members, &dir)?;
        if agent.get(&health).call().is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) || stop.load(Ordering::SeqCst) {
            bail!(
                "the demo group did not start serving; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("Conveyor demo: a trigger and two invokers, each its own process on this host over {transport}, serving OpenFaaS's routes.");
    println!("Pipeline 'demo': parse (spin 60us) -> classify (branch on size) -> resize (spin 60us) | store (echo)");
    println!();
    println!("  curl -d 'hello conveyor' http://{addr}/function/demo");
    println!("  curl -i -d 'hello' -H 'X-Callback-Url: http://127.0.0.1:9000/' http://{addr}/async-function/demo");
    println!("  curl http://{addr}/system/functions");
    println!();
    println!("Redis Streams on the group's replicated state (the Redis protocol, on {resp}):");
    println!();
    println!("  redis-cli -p {} XADD jobs '*' task resize", resp.port());
    println!(
        "  redis-cli -p {} XGROUP CREATE jobs workers 0",
        resp.port()
    );
    println!(
        "  redis-cli -p {} XREADGROUP GROUP workers w1 COUNT 1 STREAMS jobs '>'",
        resp.port()
    );
    println!();
    println!("Members' logs: {}. Ctrl-C stops the group.", dir.display());
    while !stop.load(Ordering::SeqCst) {
        check_members(&mut members, &dir)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(members);
    let _ = std::fs::remove_dir_all(&dir);
    println!("Stopped.");
    Ok(())
}

/// Fails if a member ended, with its log.
fn check_members(members: &mut Members, dir: &std::path::Path) -> Result<()> {
    for (name, c) in &mut members.children {
        if let Some(status) = c.try_wait()? {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "member {name} ended ({status}); its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(())
}
