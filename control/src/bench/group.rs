//! Starting a whole group for one run: the group file written for it, one `conveyor node`
//! process per member (on loopback, or each in its network namespace host made by
//! `netns.sh`), the faults injected at their time, and the trigger's report collected.

use super::args::Hosts;
use super::progress::Progress;
use crate::config::fresh_key;
use crate::trigger::loadgen::{TriggerReport, WorkloadSpec};
use anyhow::{bail, Context, Result};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one run needs.
#[derive(Debug)]
pub struct GroupRun {
    pub invokers: usize,
    pub pipeline_json: String,
    pub spec: WorkloadSpec,
    pub keep: bool,
    pub idle: Option<(u64, u64, u64)>,
    pub credits: u32,
    pub executor: String,
    /// Pin invokers round-robin over the machine's cores.
    pub pin: bool,
    /// Confine each invoker process, all its threads, to its core (the balance workload: a
    /// core is a host, shared with the CPU hog).
    pub confine: bool,
    /// Where the members run.
    pub hosts: Hosts,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// `group.impair` for the run.
    pub impair: Option<String>,
    /// `group.speculate` for the run.
    pub speculate: bool,
    /// Loss and duplication made by the kernel on every namespace host's egress (netns hosts
    /// only), e.g. "loss=20%,dup=10%".
    pub netloss: Option<String>,
    /// (member name, seconds after the load starts): SIGKILL.
    pub kills: Vec<(String, f64)>,
    /// (member name, cut at, healed at), seconds after the load starts (netns hosts only).
    pub partitions: Vec<(String, f64, f64)>,
    /// (member name, seconds after the load starts): the member is not in the first view and
    /// is started then, joining the running group.
    pub joins: Vec<(String, f64)>,
    /// `group.transport`: udp, shm (local hosts), or afxdp / dpdk (netns hosts: each member
    /// drives its host's eth0 through an AF_XDP socket or DPDK's af_packet PMD).
    pub transport: String,
    /// Every member has a data directory (`data/NAME` in the run's directory; the pipeline's
    /// queues are durable when its document says so).
    pub durable: bool,
    /// Seconds after the load starts: every member SIGKILLed, then restarted from its data
    /// directory (the trigger picks the run up from its journal).
    pub kill_all: Vec<f64>,
    /// Members whose newest log file loses its last 3 bytes (the end of its last record)
    /// before each restart.
    pub tears: Vec<String>,
    /// Shards (1: a group without `[shards]`).
    pub shards: u16,
    /// Where the queues are placed (queue, shard) with shards.
    pub placement: Vec<(String, u16)>,
}

/// The invokers' speculated executions in a run (BENCH.md's `speculation`), from the lines
/// their members log at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Speculation {
    pub started: u64,
    pub confirmed: u64,
    pub discarded: u64,
}

impl Speculation {
    /// Adds what one member's log says (`member NAME: speculation: started N, confirmed N,
    /// discarded N`); a log without the line adds nothing.
    pub fn add_log(&mut self, log: &str) {
        let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains(": speculation: started "))
        else {
            return;
        };
        let rest = &line[line.find("speculation: ").map_or(0, |i| i + 13)..];
        for part in rest.split(", ") {
            let mut w = part.split_whitespace();
            let (Some(k), Some(v)) = (w.next(), w.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            match k {
                "started" => self.started += v,
                "confirmed" => self.confirmed += v,
                "discarded" => self.discarded += v,
                _ => {}
            }
        }
    }
}

/// What a run measured, with the faults it injected.
#[derive(Debug)]
pub struct GroupOutcome {
    pub report: TriggerReport,
    /// The invokers' speculated executions.
    pub speculation: Speculation,
    /// When each kill or cut was done (CLOCK_MONOTONIC us), by member name.
    pub killed_at_us: Vec<(String, u64)>,
    /// With `kill:all`: each time the whole group was killed (us), and how long until the
    /// first completion after it (BENCH.md's `recovery_ms`).
    pub recoveries_ms: Vec<f64>,
}

impl GroupOutcome {
    /// BENCH.md's `failover_ms`: from the first kill to the first completion of a re-queued
    /// request, or to the new view, whichever is later (not for a whole group killed: see
    /// `recoveries_ms`).
    pub fn failover_ms(&self) -> Option<f64> {
        if !self.recoveries_ms.is_empty() {
            return None;
        }
        let kill = self.killed_at_us.iter().map(|k| k.1).min()?;
        let view = self.report.views.iter().map(|v| v.1).find(|&t| t >= kill)?;
        let done = self.report.first_requeued_done_us.unwrap_or(view);
        Some((done.max(view).saturating_sub(kill)) as f64 / 1000.0)
    }
}

/// The test bed script, embedded so that an installed binary needs no source tree.
const NETNS_SH: &str = include_str!("netns.sh");

/// Network namespaces made for one run; removed when dropped, whatever happened.
pub(super) struct NetnsHosts {
    prefix: String,
    /// Kernel-made loss rules are on (their counters are printed when the hosts go).
    netloss: bool,
}

/// Runs the embedded test bed script with `args`.
fn netns_sh(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("bash")
        .args(["-c", NETNS_SH, "netns.sh"])
        .args(args)
        .output()
}

/// The prefixes of the namespace hosts this process has up: removed on SIGINT or SIGTERM too
/// (a bench stopped by hand or by a timeout left `cvbPID-*` namespaces behind, with their
/// members still running, and the next run's tests failed on them).
static LIVE_PREFIXES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Installs, once, the handler that removes the live namespace hosts and exits on SIGINT or
/// SIGTERM.
fn remove_hosts_on_signal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            let prefixes = LIVE_PREFIXES.lock().map(|l| l.clone()).unwrap_or_default();
            eprintln!(
                "conveyor bench: interrupted; removing the namespace hosts {}",
                prefixes.join(", ")
            );
            for p in &prefixes {
                let _ = netns_sh(&["down", "--prefix", p]);
            }
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!("warning: namespace hosts will stay if this bench is interrupted: {e}");
        }
    });
}

impl NetnsHosts {
    /// Cuts (or restores) every link of host `i`: its port on the hub's bridge.
    pub(super) fn set_link(&self, i: usize, up: bool) -> Result<()> {
        let port = format!("{}h{i}", self.prefix);
        let out = Command::new("ip")
            .args(["-n", &format!("{}-hub", self.prefix), "link", "set", &port])
            .arg(if up { "up" } else { "down" })
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "setting {port} {}: {}",
                if up { "up" } else { "down" },
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `n` namespace hosts; with `netloss` ("loss=20%,dup=10%"), the kernel drops and
    /// duplicates at random every IP packet leaving each host (nftables, see `netns.sh`).
    pub(super) fn up(n: usize, netloss: Option<&str>) -> Result<NetnsHosts> {
        // Namespaces need root (or CAP_SYS_ADMIN).
        if effective_uid() != 0 {
            bail!(
                "--hosts netns needs root: it creates network namespaces, veth pairs and a bridge"
            );
        }
        let prefix = format!("cvb{}", std::process::id() % 100_000);
        let count = n.to_string();
        let mut argv = vec!["up", count.as_str(), "--prefix", prefix.as_str()];
        if let Some(spec) = netloss {
            argv.extend(["--netloss", spec]);
        }
        let out = netns_sh(&argv)
            .context("running bash for the namespace test bed (is iproute2 installed?)")?;
        remove_hosts_on_signal();
        if let Ok(mut live) = LIVE_PREFIXES.lock() {
            live.push(prefix.clone());
        }
        let hosts = NetnsHosts {
            prefix,
            netloss: netloss.is_some(),
        };
        if !out.status.success() {
            bail!(
                "creating {n} network namespaces failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(hosts)
    }
    pub(super) fn namespace(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        if self.netloss {
            // What the kernel's rules did, summed over the hosts.
            if let Ok(out) = netns_sh(&["netloss-counters", "--prefix", &self.prefix]) {
                let text = String::from_utf8_lossy(&out.stdout);
                let sum = |key: &str| -> u64 {
                    text.split_whitespace()
                        .filter_map(|w| w.strip_prefix(key))
                        .filter_map(|v| v.parse::<u64>().ok())
                        .sum()
                };
                eprintln!(
                    "netloss: the kernel dropped {} and duplicated {} packets on the hosts' egress",
                    sum("dropped="),
                    sum("duplicated=")
                );
            }
        }
        let _ = netns_sh(&["down", "--prefix", &self.prefix]);
        if let Ok(mut live) = LIVE_PREFIXES.lock() {
            live.retain(|p| p != &self.prefix);
        }
    }
}

pub(super) fn effective_uid() -> u32 {
    // /proc/self/status has "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

pub(crate) fn free_udp_ports(n: usize) -> Result<Vec<u16>> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("finding free UDP ports on 127.0.0.1")?;
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// Ports for `members` members of `shards` shards on loopback: member `i` of shard `s` on
/// `base + i + s * members`, every one of them free when looked at. Returns shard 0's; the
/// group file's `port_stride` is `members`.
fn free_port_block(members: usize, shards: u16) -> Result<Vec<u16>> {
    let n = members * usize::from(shards);
    for _ in 0..200 {
        // A base from a free port the kernel hands out (in its ephemeral range).
        let base = free_udp_ports(1)?[0];
        if usize::from(base) + n > 65_535 {
            continue;
        }
        let socks: std::io::Result<Vec<UdpSocket>> = (0..n)
            .map(|k| UdpSocket::bind(("127.0.0.1", base + k as u16)))
            .collect();
        if socks.is_ok() {
            return Ok((0..members).map(|i| base + i as u16).collect());
        }
    }
    bail!("no block of {n} free UDP ports on 127.0.0.1 found")
}

fn run_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("conveyor-run-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes `cmd` (the conveyor binary, behind any prefix) run member `name` of the group file in
/// `dir`, its output going to `dir/NAME.log`.
pub(crate) fn node_command(cmd: &mut Command, dir: &Path, name: &str) -> Result<()> {
    // Appended to: a member restarted in the run (kill:all) goes on in the same log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    cmd.arg("node")
        .arg("--config")
        .arg(dir.join("conveyor.toml"))
        .arg("--member")
        .arg(name)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(())
}

pub(crate) struct Members {
    pub(crate) children: Vec<(String, Child)>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// The progress bar of a run of `spec` (drawn only on a terminal, for runs of some length).
pub(super) fn progress_for(label: &str, spec: &WorkloadSpec) -> Progress {
    let n: u64 = crate::trigger::loadgen::plan(spec)
        .map(|p| p.iter().map(|s| s.1).sum())
        .unwrap_or(0);
    let expected = match spec.workload.as_str() {
        "constant" => Some(spec.duration_s),
        _ => None,
    };
    Progress::new(label, n, expected)
}

/// Starts a local group (one trigger, `invokers` invokers, each its own process on loopback),
/// runs the workload and returns the trigger's report.
pub fn run_local_group(run: &GroupRun) -> Result<TriggerReport> {
    Ok(run_group(run)?.report)
}

/// Starts a group as `run` says (local or namespace hosts), runs the workload with its faults,
/// and returns what it measured.
pub fn run_group(run: &GroupRun) -> Result<GroupOutcome> {
    let dir = run_dir()?;
    let names: Vec<String> = std::iter::once("trigger".to_string())
        .chain((0..run.invokers).map(|i| format!("invoker-{i}")))
        .collect();
    let netns = match run.hosts {
        Hosts::Local => None,
        Hosts::Netns => Some(NetnsHosts::up(names.len(), run.netloss.as_deref())?),
    };
    let addresses: Vec<String> = match &netns {
        None if run.shards > 1 => free_port_block(names.len(), run.shards)?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
        None => free_udp_ports(names.len())?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
        Some(_) => (0..names.len())
            .map(|i| format!("10.77.0.{}:7400", i + 1))
            .collect(),
    };
    if matches!(run.transport.as_str(), "afxdp" | "dpdk") && netns.is_none() {
        bail!("--transport {} needs --hosts netns: it drives a network interface (each namespace host's eth0), not loopback", run.transport);
    }
    if !run.partitions.is_empty() && netns.is_none() {
        bail!("--fault partition: needs --hosts netns (it cuts the member's links on the namespace bridge)");
    }
    std::fs::write(
        dir.join("conveyor.toml"),
        group_file(run, &names, &addresses)?,
    )?;
    std::fs::write(dir.join("pipeline.json"), &run.pipeline_json)?;
    let mut spec = run.spec.clone();
    spec.start_file = Some(dir.join("started").display().to_string());
    spec.progress_file = Some(dir.join("progress").display().to_string());
    if !run.kill_all.is_empty() {
        spec.journal = Some(dir.join("trigger.journal").display().to_string());
        spec.kills_file = Some(dir.join("kills").display().to_string());
    }
    std::fs::write(
        dir.join("workload.json"),
        serde_json::to_string_pretty(&spec)?,
    )?;
    let launcher = Launcher {
        run,
        names: &names,
        netns: netns.as_ref(),
        dir: &dir,
        exe: std::env::current_exe().context("locating the conveyor binary")?,
    };
    let mut members = Members {
        children: Vec::new(),
    };
    // Invokers first, the trigger last: the start-up barrier makes the order irrelevant for
    // correctness, but it keeps the trigger's clock start close to the real start.
    for name in names.iter().skip(1).chain(std::iter::once(&names[0])) {
        if run.joins.iter().any(|j| &j.0 == name) {
            continue;
        }
        let child = launcher.spawn(name)?;
        members.children.push((name.clone(), child));
    }
    let bar = run.progress.then(|| progress_for("conveyor", &run.spec));
    let (status, killed_at_us) = supervise(&launcher, &mut members, bar.as_ref())?;
    if !status.success() {
        let t = tail(&dir.join("trigger.log"), 30);
        bail!("the trigger failed ({status}); its log:\n{t}");
    }
    // Invokers leave after the shutdown the trigger ordered.
    let wait_from = Instant::now();
    for (name, c) in &mut members.children {
        if run.kills.iter().any(|k| &k.0 == name) {
            continue;
        }
        while matches!(c.try_wait(), Ok(None)) && wait_from.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(Some(s)) = c.try_wait() {
            if !s.success() {
                tracing::warn!(
                    "member {name} exited with {s}: {}",
                    tail(&dir.join(format!("{name}.log")), 5)
                );
            }
        }
    }
    drop(members);
    drop(bar);
    let report: TriggerReport = serde_json::from_str(
        &std::fs::read_to_string(dir.join("report.json"))
            .context("reading the trigger's report")?,
    )?;
    // A trigger cut off past the failure timeout comes back: say so, with what it pushed again.
    if let Ok(log) = std::fs::read_to_string(dir.join(format!("{}.log", names[0]))) {
        for line in log
            .lines()
            .filter(|l| l.contains("back in the group after a removal"))
        {
            eprintln!("{}: {}", names[0], without_colours(line));
        }
    }
    let mut speculation = Speculation::default();
    let mut report = report;
    for name in names.iter().skip(1) {
        if let Ok(log) = std::fs::read_to_string(dir.join(format!("{name}.log"))) {
            speculation.add_log(&log);
            // With shards the trigger is told the completions of its own shards' steps only:
            // the invokers' own counts, over every shard, say what each ran.
            if run.shards > 1 {
                if let Some(n) = executed_in_shards(&log) {
                    report.per_invoker.insert(name.clone(), n);
                }
            }
        }
    }
    if run.keep {
        eprintln!("run directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let recoveries_ms = report
        .recoveries_us
        .iter()
        .map(|us| (*us as f64 / 100.0).round() / 10.0)
        .collect();
    Ok(GroupOutcome {
        report,
        speculation,
        killed_at_us,
        recoveries_ms,
    })
}

/// What a sharded invoker's log says it executed, over its shards (`member NAME, shard S:
/// executed N requests`); none without such a line (a member killed before it could say).
fn executed_in_shards(log: &str) -> Option<u64> {
    let counts: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(", shard ") && l.contains(": executed "))
        .filter_map(|l| {
            l.split(": executed ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// `line` without its terminal colour sequences (ESC [ ... m).
fn without_colours(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The run's group file: its members on `addresses`, the transport's settings, the faults'
/// late joiners.
fn group_file(run: &GroupRun, names: &[String], addresses: &[String]) -> Result<String> {
    let afxdp = run.transport == "afxdp";
    let dpdk = run.transport == "dpdk";
    let mut toml = format!(
        "# Written by conveyor for one run.\n[group]\nname = \"bench\"\nkey = \"{}\"\ntransport = \"{}\"\npipelines = [\"pipeline.json\"]\nstartup_timeout_s = 20\n",
        fresh_key()?,
        run.transport
    );
    if afxdp || dpdk {
        // One Ethernet frame on the hosts' 1500-byte MTU.
        let max_frame = 1472;
        toml.push_str(&format!(
            "max_frame = {max_frame}\nmax_payload = {}\n",
            conveyor_core::wire::max_payload_for(max_frame, names.len())
        ));
    }
    if let Some(spec) = &run.impair {
        toml.push_str(&format!("impair = \"{spec}\"\n"));
    }
    if !run.speculate {
        toml.push_str("speculate = false\n");
    }
    if let Some((spin, yld, slice)) = run.idle {
        toml.push_str(&format!(
            "\n[idle]\nspin_us = {spin}\nyield_us = {yld}\nslice_us = {slice}\n"
        ));
    }
    if run.shards > 1 {
        // Loopback: shard s of member i at base + i + s * members (free_port_block); a
        // namespace host has its own ports: 7400 + s.
        let stride = if addresses.iter().all(|a| a.starts_with("127.")) {
            names.len()
        } else {
            1
        };
        toml.push_str(&format!(
            "\n[shards]\ncount = {}\nport_stride = {stride}\n\n[shards.place]\n",
            run.shards
        ));
        for (q, s) in &run.placement {
            toml.push_str(&format!("{q:?} = {s}\n"));
        }
    }
    for (name, address) in names.iter().zip(addresses) {
        let role = if name == "trigger" {
            "trigger"
        } else {
            "invoker"
        };
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\naddress = \"{address}\"\nrole = \"{role}\"\n"
        ));
        if afxdp {
            toml.push_str("interface = \"eth0\"\n");
        }
        if role == "invoker" && run.pin {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let i: usize = name.trim_start_matches("invoker-").parse().unwrap_or(0);
            toml.push_str(&format!("core = {}\n", i % cores));
        }
        if role == "invoker" {
            toml.push_str(&format!(
                "credits = {}\nexecutor = \"{}\"\n",
                run.credits, run.executor
            ));
        }
        if run.joins.iter().any(|j| &j.0 == name) {
            toml.push_str("join = true\n");
        }
        if run.durable {
            toml.push_str(&format!("data_dir = \"data/{name}\"\n"));
        }
        if dpdk {
            // DPDK's af_packet PMD on the namespace host's veth, on ordinary memory (the
            // hosts share the machine's hugepages, if it has any). Last: a table ends the
            // member's keys.
            toml.push_str("[member.dpdk]\nvdevs = [\"net_af_packet0,iface=eth0,qpairs=1\"]\nhugepages = false\nmemory_mb = 256\n");
        }
    }
    Ok(toml)
}

/// Starts the run's members as `conveyor node` processes (in their namespace host, confined
/// to a core for the balance workload).
struct Launcher<'a> {
    run: &'a GroupRun,
    names: &'a [String],
    netns: Option<&'a NetnsHosts>,
    dir: &'a Path,
    exe: PathBuf,
}

impl Launcher<'_> {
    fn spawn(&self, name: &String) -> Result<Child> {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(h) = self.netns {
            let i = self.names.iter().position(|x| x == name).unwrap_or(0);
            argv.extend([
                "ip".into(),
                "netns".into(),
                "exec".into(),
                h.namespace(i).into(),
            ]);
        }
        if self.run.confine {
            if let Some(i) = name
                .strip_prefix("invoker-")
                .and_then(|i| i.parse::<usize>().ok())
            {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                argv.extend([
                    "taskset".into(),
                    "-c".into(),
                    (i % cores).to_string().into(),
                ]);
            }
        }
        argv.push(self.exe.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        node_command(&mut cmd, self.dir, name)?;
        if name == "trigger" {
            cmd.arg("--workload")
                .arg(self.dir.join("workload.json"))
                .arg("--report")
                .arg(self.dir.join("report.json"));
        }
        cmd.spawn()
            .with_context(|| format!("starting member {name}"))
    }
}

/// `kill:all`: every member SIGKILLed at once (the time is written to the run's `kills`
/// file for the trigger's report), the logs of `tears` torn, every member started again from
/// its data directory. Returns when the kill was done (CLOCK_MONOTONIC us).
fn kill_all_and_restart(l: &Launcher<'_>, members: &mut Members) -> Result<u64> {
    for (_, c) in &mut members.children {
        let _ = c.kill();
    }
    let at = conveyor_dataplane::sys::monotonic_us();
    for (_, c) in &mut members.children {
        let _ = c.wait();
    }
    tracing::info!("fault: killed every member (SIGKILL)");
    eprintln!("kill:all: every member killed; starting them again from their data directories");
    let mut kills = std::fs::read_to_string(l.dir.join("kills")).unwrap_or_default();
    kills.push_str(&format!("{at}\n"));
    std::fs::write(l.dir.join("kills"), kills)?;
    for name in &l.run.tears {
        // Every shard's log (shard s > 0 keeps its own in data/NAME/shard-s).
        for s in 0..l.run.shards.max(1) {
            let mut dir = l.dir.join("data").join(name);
            if s > 0 {
                dir = dir.join(format!("shard-{s}"));
            }
            let torn = tear_log(&dir)?;
            eprintln!("kill:all: {name}'s log torn: {}", torn.display());
        }
    }
    let names: Vec<String> = members.children.drain(..).map(|(n, _)| n).collect();
    // Invokers first, the trigger last (as at the start).
    let mut order: Vec<&String> = names.iter().filter(|n| *n != "trigger").collect();
    order.extend(names.iter().filter(|n| *n == "trigger"));
    for name in order {
        let child = l.spawn(name)?;
        members.children.push((name.clone(), child));
    }
    Ok(at)
}

/// Cuts the last 3 bytes of the newest log file in `data_dir` (the end of its last record,
/// as a crash in the middle of a write leaves it); returns the file.
fn tear_log(data_dir: &Path) -> Result<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .with_context(|| format!("reading {}", data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cvl"))
        .collect();
    // log-<generation>-<first>.cvl: the newest generation's, then the latest start.
    logs.sort_by_key(|p| {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut parts = name
            .split('-')
            .skip(1)
            .map(|x| x.parse::<u64>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    });
    let Some(newest) = logs.pop() else {
        bail!("tear: no log file in {}", data_dir.display());
    };
    let len = std::fs::metadata(&newest)?.len();
    let f = std::fs::OpenOptions::new().write(true).open(&newest)?;
    f.set_len(len.saturating_sub(3))?;
    f.sync_all()?;
    Ok(newest)
}

/// Watches the members until the trigger ends: the progress bar, the faults at their time
/// (cuts and heals, late joins, kills), a member failing, the time budget. Returns the
/// trigger's exit status and when each kill or cut was done.
fn supervise(
    l: &Launcher<'_>,
    members: &mut Members,
    bar: Option<&Progress>,
) -> Result<(std::process::ExitStatus, Vec<(String, u64)>)> {
    let run = l.run;
    let start_file = l.dir.join("started");
    let progress_file = l.dir.join("progress");
    let budget = Duration::from_secs_f64(
        30.0 + 30.0 * run.kill_all.len() as f64
            + run.spec.grace_s
            + if run.spec.workload == "burst" {
                run.spec.requests as f64 / 500.0
            } else {
                run.spec.duration_s
            },
    );
    let start = Instant::now();
    let mut bar_read = Instant::now();
    let mut trigger_idx = members.children.len() - 1;
    let mut killed_all = 0;
    let mut killed_at_us: Vec<(String, u64)> = Vec::new();
    let mut healed: Vec<String> = Vec::new();
    let mut load_start_us: Option<u64> = None;
    let status = loop {
        if let Some(s) = members.children[trigger_idx].1.try_wait()? {
            break s;
        }
        if let Some(b) = bar.filter(|b| b.shown()) {
            if bar_read.elapsed() > Duration::from_millis(250) {
                bar_read = Instant::now();
                if let Some(done) = std::fs::read_to_string(&progress_file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                {
                    b.set(done);
                }
            }
        }
        if load_start_us.is_none() {
            load_start_us = std::fs::read_to_string(&start_file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
        }
        if let Some(t0) = load_start_us {
            let now = conveyor_dataplane::sys::monotonic_us();
            for (name, at, heal) in &run.partitions {
                let i = l.names.iter().position(|x| x == name).unwrap_or(0);
                let cut = killed_at_us.iter().any(|k| &k.0 == name);
                if !cut && now >= t0 + (at * 1e6) as u64 {
                    if let Some(h) = l.netns {
                        h.set_link(i, false)?;
                        killed_at_us.push((name.clone(), conveyor_dataplane::sys::monotonic_us()));
                        tracing::info!("fault: cut {name}'s links");
                    }
                }
                if cut && !healed.contains(name) && now >= t0 + (heal * 1e6) as u64 {
                    if let Some(h) = l.netns {
                        h.set_link(i, true)?;
                        healed.push(name.clone());
                        tracing::info!("fault: healed {name}'s links");
                    }
                }
            }
            for (name, at) in &run.joins {
                if !members.children.iter().any(|(n, _)| n == name) && now >= t0 + (at * 1e6) as u64
                {
                    let child = l.spawn(name)?;
                    members.children.push((name.clone(), child));
                    tracing::info!("fault: started {name}, which joins the running group");
                }
            }
            if let Some(&at) = run.kill_all.get(killed_all) {
                if now >= t0 + (at * 1e6) as u64 {
                    let t = kill_all_and_restart(l, members)?;
                    killed_at_us.push(("all".into(), t));
                    killed_all += 1;
                    trigger_idx = members
                        .children
                        .iter()
                        .position(|(n, _)| n == "trigger")
                        .unwrap_or(0);
                }
            }
            for (name, at) in &run.kills {
                if killed_at_us.iter().any(|k| &k.0 == name) || now < t0 + (at * 1e6) as u64 {
                    continue;
                }
                if let Some((_, c)) = members.children.iter_mut().find(|(n, _)| n == name) {
                    let _ = c.kill();
                    killed_at_us.push((name.clone(), conveyor_dataplane::sys::monotonic_us()));
                    tracing::info!("fault: killed {name} (SIGKILL)");
                }
            }
        }
        for (name, c) in &mut members.children {
            if run.kills.iter().any(|k| &k.0 == name) && killed_at_us.iter().any(|k| &k.0 == name) {
                continue;
            }
            if let Some(s) = c.try_wait()? {
                if !s.success() {
                    let t = tail(&l.dir.join(format!("{name}.log")), 20);
                    bail!(
                        "member {name} failed ({s}); its log ({}):\n{t}",
                        l.dir.join(format!("{name}.log")).display()
                    );
                }
            }
        }
        if start.elapsed() > budget {
            bail!(
                "the run did not finish within {}s; logs in {}",
                budget.as_secs(),
                l.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(if run.kills.is_empty() {
            20
        } else {
            1
        }));
    };
    Ok((status, killed_at_us))
}

#[cfg(test)]
mod tests {
    use super::Speculation;

    #[test]
    fn a_sharded_invokers_executions_add_up_over_its_shards() {
        let log = "x INFO member invoker-0, shard 0: executed 1496 requests, 0 failed; retransmitted 29 slots\n\
                   y INFO member invoker-0 (shard 1): transport sent 17566 frames\n\
                   z INFO member invoker-0, shard 1: executed 745 requests, 0 failed; retransmitted 22 slots\n";
        assert_eq!(super::executed_in_shards(log), Some(2241));
        assert_eq!(
            super::executed_in_shards("killed before it could say"),
            None
        );
    }

    #[test]
    fn speculation_counts_add_up_from_the_invokers_logs() {
        let mut s = Speculation::default();
        s.add_log("x\n\u{1b}[2m2026\u{1b}[0m INFO conveyor_control::member: member invoker-0: speculation: started 10, confirmed 9, discarded 1, lead_us 80\n");
        s.add_log("member invoker-1: speculation: started 5, confirmed 5, discarded 0, lead_us 70");
        s.add_log("an invoker killed before it could say");
        assert_eq!(
            s,
            Speculation {
                started: 15,
                confirmed: 14,
                discarded: 1
            }
        );
    }
}
