//! `conveyor demo --serve`: the demo group (a trigger and two invokers, each its own process on
//! this host) kept running with the trigger's OpenFaaS-compatible gateway, until interrupted,
//! so a newcomer can call the pipeline with curl.

use crate::bench::{free_udp_ports, node_command, Members, DEMO_PIPELINE};
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn demo_serve(transport: &str, address: &str) -> Result<()> {
    if !matches!(transport, "udp" | "shm") {
        bail!("conveyor demo --serve runs on this host over udp or shm, not {transport:?}; nothing was run");
    }
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|e| anyhow!("--address {address:?}: {e}"))?;
    if std::net::TcpListener::bind(addr).is_err() {
        bail!("--address {address}: the port is taken (another gateway or program); choose another with --address; nothing was run");
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
            toml.push_str(&format!("[member.gateway]\naddress = \"{addr}\"\n"));
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
