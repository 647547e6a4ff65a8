//! `conveyor bench` (the contract is `BENCH.md`) and `conveyor demo`: both start a whole group
//! as separate processes (`conveyor node`), one trigger and N invokers, run one workload from the
//! trigger and report.

use crate::config::fresh_key;
use crate::loadgen::{Percentiles, TriggerReport, WorkloadSpec};
use anyhow::{bail, Context, Result};
use conveyor_core::pipeline::Pipeline;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// constant | ramp | burst | balance
    #[arg(long, default_value = "constant")]
    pub workload: String,
    /// Comma list of backends, run one after the other in this invocation: conveyor, redis
    /// (Redis Streams; the bench starts redis-server itself), kafka (the Kafka protocol through
    /// librdkafka, to a tansu broker the bench starts itself: tansu, not Apache Kafka).
    #[arg(long, default_value = "conveyor")]
    pub backend: String,
    /// Port of the redis-server the bench starts (0: a free one).
    #[arg(long = "redis-port", default_value_t = 0)]
    pub redis_port: u16,
    /// Port of the tansu broker the bench starts for --backend kafka (0: a free one).
    #[arg(long = "kafka-port", default_value_t = 0)]
    pub kafka_port: u16,
    /// The Kafka consumers' fetch.wait.max.ms: how long the broker may hold a fetch that found
    /// nothing (tansu answers a held fetch only when it expires, so this bounds each hop).
    #[arg(long = "kafka-fetch-wait-ms", default_value_t = 5)]
    pub kafka_fetch_wait_ms: u32,
    /// Conveyor's transport.
    #[arg(long, default_value = "udp")]
    pub transport: String,
    /// local (all members on loopback) | netns.
    #[arg(long, default_value = "local")]
    pub hosts: String,
    /// Invoker members (the trigger is one more).
    #[arg(long, default_value_t = 2)]
    pub invokers: usize,
    /// Functions in the linear pipeline.
    #[arg(long, default_value_t = 3)]
    pub chain: usize,
    /// Busy-work time of each function, microseconds.
    #[arg(long = "fn-us", default_value_t = 60)]
    pub fn_us: u64,
    /// Request payload, bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Requests per second (constant).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds (constant).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Requests (burst).
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// kill:MEMBER@S or partition:MEMBER@S (repeatable).
    #[arg(long)]
    pub fault: Vec<String>,
    /// tc netem spec for every link (with --hosts netns).
    #[arg(long)]
    pub netem: Option<String>,
    /// Write the JSON report here (- for stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Directory for HdrHistogram interval logs.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Write a plot of the run.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seconds to wait for outstanding requests after the last send before counting them lost.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Keep the run's directory (configuration and member logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Idle policy of every member: spin, yield, park (see the sample configuration).
    #[arg(long = "spin-us")]
    pub spin_us: Option<u64>,
    #[arg(long = "yield-us")]
    pub yield_us: Option<u64>,
    #[arg(long = "slice-us")]
    pub slice_us: Option<u64>,
    /// Requests each invoker may hold at once (the next one is assigned while it runs one).
    #[arg(long, default_value_t = 2)]
    pub credits: u32,
    /// Inject loss, duplication and delay on every member's sends, e.g.
    /// "loss=5%,dup=1%,delay=100us,jitter=50us" (works where the kernel has no netem).
    #[arg(long)]
    pub impair: Option<String>,
    /// Where invokers run functions: inline (in the polling thread), thread (behind rings), or
    /// auto: inline for functions under 1 ms, thread for longer ones (a long function inline
    /// keeps its member from acknowledging, and total order waits for every member).
    #[arg(long, default_value = "auto")]
    pub executor: String,
    /// Core pinning of the members' polling threads: auto (invokers round-robin over the cores,
    /// the trigger left to the scheduler) or none.
    #[arg(long, default_value = "auto")]
    pub pin: String,
}

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
}

/// What a run measured, with the faults it injected.
#[derive(Debug)]
pub struct GroupOutcome {
    pub report: TriggerReport,
    /// When each kill or cut was done (CLOCK_MONOTONIC us), by member name.
    pub killed_at_us: Vec<(String, u64)>,
}

impl GroupOutcome {
    /// BENCH.md's `failover_ms`: from the first kill to the first completion of a re-queued
    /// request, or to the new view, whichever is later.
    pub fn failover_ms(&self) -> Option<f64> {
        let kill = self.killed_at_us.iter().map(|k| k.1).min()?;
        let view = self.report.views.iter().map(|v| v.1).find(|&t| t >= kill)?;
        let done = self.report.first_requeued_done_us.unwrap_or(view);
        Some((done.max(view).saturating_sub(kill)) as f64 / 1000.0)
    }
}

/// A run's faults: kills, partitions (member, cut at, healed at), and late joins.
pub type Faults = (
    Vec<(String, f64)>,
    Vec<(String, f64, f64)>,
    Vec<(String, f64)>,
);

/// Parses `--fault` specs against the run's member names. A partition heals 1 s after it
/// starts, or at `E` with `partition:MEMBER@S-E`.
pub fn parse_faults(specs: &[String], invokers: usize) -> Result<Faults> {
    let mut kills = Vec::new();
    let mut parts = Vec::new();
    let mut joins = Vec::new();
    for spec in specs {
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            anyhow::anyhow!(
                "--fault {spec:?}: expected kill:MEMBER@SECONDS or partition:MEMBER@SECONDS"
            )
        })?;
        let (member, at) = rest.split_once('@').ok_or_else(|| {
            anyhow::anyhow!("--fault {spec:?}: expected MEMBER@SECONDS after {kind}:")
        })?;
        let (at, heal) = match at.split_once('-') {
            Some((a, e)) if kind == "partition" => (a, Some(e)),
            _ => (at, None),
        };
        let heal: Option<f64> =
            match heal {
                Some(e) => Some(e.parse().ok().filter(|e: &f64| e.is_finite()).ok_or_else(
                    || anyhow::anyhow!("--fault {spec:?}: {e:?} is not a number of seconds"),
                )?),
                None => None,
            };
        let at: f64 = at
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                anyhow::anyhow!("--fault {spec:?}: {at:?} is not a number of seconds")
            })?;
        let known = (0..invokers).any(|i| member == format!("invoker-{i}"));
        if member == "trigger" {
            bail!("--fault {spec:?}: the trigger measures the run and cannot be the one that fails; name an invoker (invoker-0 .. invoker-{})", invokers.saturating_sub(1));
        }
        if !known {
            bail!("--fault {spec:?}: no member {member:?}; the members are trigger and invoker-0 .. invoker-{}", invokers.saturating_sub(1));
        }
        match kind {
            "kill" => kills.push((member.to_string(), at)),
            "join" => joins.push((member.to_string(), at)),
            "partition" => {
                let heal = heal.unwrap_or(at + 1.0);
                if heal <= at {
                    bail!("--fault {spec:?}: the partition must heal after it starts");
                }
                parts.push((member.to_string(), at, heal));
            }
            other => {
                bail!("--fault {spec:?}: unknown fault {other:?}; known: kill, partition, join")
            }
        }
    }
    let total = invokers + 1;
    if (kills.len() + parts.len()) * 2 >= total {
        bail!("--fault: {} kills leave no majority of the {total} members; the group would stop (by design)", kills.len());
    }
    Ok((kills, parts, joins))
}

/// Where a run's members live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// All on 127.0.0.1.
    Local,
    /// Each in its own network namespace, joined by veth and a bridge (`testbed/netns.sh`).
    Netns,
}

/// The test bed script, embedded so that an installed binary needs no source tree.
const NETNS_SH: &str = include_str!("../../testbed/netns.sh");

/// Network namespaces made for one run; removed when dropped, whatever happened.
struct NetnsHosts {
    prefix: String,
}

/// Runs the embedded test bed script with `args`.
fn netns_sh(args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("bash")
        .args(["-c", NETNS_SH, "netns.sh"])
        .args(args)
        .output()
}

impl NetnsHosts {
    /// Cuts (or restores) every link of host `i`: its port on the hub's bridge.
    fn set_link(&self, i: usize, up: bool) -> Result<()> {
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

    fn up(n: usize) -> Result<NetnsHosts> {
        // Namespaces need root (or CAP_SYS_ADMIN).
        if effective_uid() != 0 {
            bail!(
                "--hosts netns needs root: it creates network namespaces, veth pairs and a bridge"
            );
        }
        let prefix = format!("cvb{}", std::process::id() % 100_000);
        let out = netns_sh(&["up", &n.to_string(), "--prefix", &prefix])
            .context("running bash for the namespace test bed (is iproute2 installed?)")?;
        let hosts = NetnsHosts { prefix };
        if !out.status.success() {
            bail!(
                "creating {n} network namespaces failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(hosts)
    }
    fn namespace(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = netns_sh(&["down", "--prefix", &self.prefix]);
    }
}

fn effective_uid() -> u32 {
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

fn run_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("conveyor-run-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes `cmd` (the conveyor binary, behind any prefix) run member `name` of the group file in
/// `dir`, its output going to `dir/NAME.log`.
pub(crate) fn node_command(cmd: &mut Command, dir: &Path, name: &str) -> Result<()> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
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
fn progress_for(label: &str, spec: &WorkloadSpec) -> crate::progress::Progress {
    let n: u64 = crate::loadgen::plan(spec)
        .map(|p| p.iter().map(|s| s.1).sum())
        .unwrap_or(0);
    let expected = match spec.workload.as_str() {
        "constant" => Some(spec.duration_s),
        _ => None,
    };
    crate::progress::Progress::new(label, n, expected)
}

/// Starts a local group (one trigger, `invokers` invokers, each its own process on loopback),
/// runs the workload and returns the trigger's report.
pub fn run_local_group(run: &GroupRun) -> Result<TriggerReport> {
    Ok(run_group(run)?.report)
}

/// Starts a local group, runs the workload with the faults of `run`, and returns what it
/// measured.
pub fn run_group(run: &GroupRun) -> Result<GroupOutcome> {
    let dir = run_dir()?;
    let names: Vec<String> = std::iter::once("trigger".to_string())
        .chain((0..run.invokers).map(|i| format!("invoker-{i}")))
        .collect();
    let netns = match run.hosts {
        Hosts::Local => None,
        Hosts::Netns => Some(NetnsHosts::up(names.len())?),
    };
    let addresses: Vec<String> = match &netns {
        None => free_udp_ports(names.len())?
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect(),
        Some(_) => (0..names.len())
            .map(|i| format!("10.77.0.{}:7400", i + 1))
            .collect(),
    };
    let afxdp = run.transport == "afxdp";
    let dpdk = run.transport == "dpdk";
    if (afxdp || dpdk) && netns.is_none() {
        bail!("--transport {} needs --hosts netns: it drives a network interface (each namespace host's eth0), not loopback", run.transport);
    }
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
    if let Some((spin, yld, slice)) = run.idle {
        toml.push_str(&format!(
            "\n[idle]\nspin_us = {spin}\nyield_us = {yld}\nslice_us = {slice}\n"
        ));
    }
    for (name, address) in names.iter().zip(&addresses) {
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
        if dpdk {
            // DPDK's af_packet PMD on the namespace host's veth, on ordinary memory (the
            // hosts share the machine's hugepages, if it has any). Last: a table ends the
            // member's keys.
            toml.push_str("[member.dpdk]\nvdevs = [\"net_af_packet0,iface=eth0,qpairs=1\"]\nhugepages = false\nmemory_mb = 256\n");
        }
    }
    std::fs::write(dir.join("conveyor.toml"), toml)?;
    std::fs::write(dir.join("pipeline.json"), &run.pipeline_json)?;
    let start_file = dir.join("started");
    let progress_file = dir.join("progress");
    let mut spec = run.spec.clone();
    spec.start_file = Some(start_file.display().to_string());
    spec.progress_file = Some(progress_file.display().to_string());
    let bar = run.progress.then(|| progress_for("conveyor", &run.spec));
    let mut bar_read = Instant::now();
    std::fs::write(
        dir.join("workload.json"),
        serde_json::to_string_pretty(&spec)?,
    )?;
    let exe = std::env::current_exe().context("locating the conveyor binary")?;
    let mut members = Members {
        children: Vec::new(),
    };
    // Invokers first, the trigger last: the start-up barrier makes the order irrelevant for
    // correctness, but it keeps the trigger's clock start close to the real start.
    let spawn = |name: &String| -> Result<Child> {
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(h) = &netns {
            let i = names.iter().position(|x| x == name).unwrap_or(0);
            argv.extend([
                "ip".into(),
                "netns".into(),
                "exec".into(),
                h.namespace(i).into(),
            ]);
        }
        if run.confine {
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
        argv.push(exe.clone().into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        node_command(&mut cmd, &dir, name)?;
        if name == "trigger" {
            cmd.arg("--workload")
                .arg(dir.join("workload.json"))
                .arg("--report")
                .arg(dir.join("report.json"));
        }
        cmd.spawn()
            .with_context(|| format!("starting member {name}"))
    };
    for name in names.iter().skip(1).chain(std::iter::once(&names[0])) {
        if run.joins.iter().any(|j| &j.0 == name) {
            continue;
        }
        let child = spawn(name)?;
        members.children.push((name.clone(), child));
    }
    let budget = Duration::from_secs_f64(
        30.0 + run.spec.grace_s
            + if run.spec.workload == "burst" {
                run.spec.requests as f64 / 500.0
            } else {
                run.spec.duration_s
            },
    );
    let start = Instant::now();
    let trigger_idx = members.children.len() - 1;
    let mut killed_at_us: Vec<(String, u64)> = Vec::new();
    let mut healed: Vec<String> = Vec::new();
    if !run.partitions.is_empty() && netns.is_none() {
        bail!("--fault partition: needs --hosts netns (it cuts the member's links on the namespace bridge)");
    }
    let mut load_start_us: Option<u64> = None;
    let status = loop {
        if let Some(s) = members.children[trigger_idx].1.try_wait()? {
            break s;
        }
        if let Some(b) = bar.as_ref().filter(|b| b.shown()) {
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
                let i = names.iter().position(|x| x == name).unwrap_or(0);
                let cut = killed_at_us.iter().any(|k| &k.0 == name);
                if !cut && now >= t0 + (at * 1e6) as u64 {
                    if let Some(h) = &netns {
                        h.set_link(i, false)?;
                        killed_at_us.push((name.clone(), conveyor_dataplane::sys::monotonic_us()));
                        tracing::info!("fault: cut {name}'s links");
                    }
                }
                if cut && !healed.contains(name) && now >= t0 + (heal * 1e6) as u64 {
                    if let Some(h) = &netns {
                        h.set_link(i, true)?;
                        healed.push(name.clone());
                        tracing::info!("fault: healed {name}'s links");
                    }
                }
            }
            for (name, at) in &run.joins {
                if !members.children.iter().any(|(n, _)| n == name) && now >= t0 + (at * 1e6) as u64
                {
                    let child = spawn(name)?;
                    members.children.push((name.clone(), child));
                    tracing::info!("fault: started {name}, which joins the running group");
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
                    let t = tail(&dir.join(format!("{name}.log")), 20);
                    bail!(
                        "member {name} failed ({s}); its log ({}):\n{t}",
                        dir.join(format!("{name}.log")).display()
                    );
                }
            }
        }
        if start.elapsed() > budget {
            bail!(
                "the run did not finish within {}s; logs in {}",
                budget.as_secs(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(if run.kills.is_empty() {
            20
        } else {
            1
        }));
    };
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
    if run.keep {
        eprintln!("run directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(GroupOutcome {
        report,
        killed_at_us,
    })
}

#[derive(Serialize)]
struct Machine {
    cores: usize,
    kernel: String,
    commit: String,
}

fn machine() -> Machine {
    Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        commit: env!("CONVEYOR_COMMIT").to_string(),
    }
}

/// A baseline measured in the same run, so that figures can be compared across runs of a
/// shared, noisy machine as ratios: a blocking UDP round trip on loopback between two threads
/// (the kernel path every hop of the udp transport takes), 2000 times.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Baseline {
    pub udp_rtt_us: Percentiles,
    /// overhead p50 / baseline round trip p50.
    pub overhead_p50_per_rtt: f64,
}

pub fn udp_rtt_baseline() -> Result<Percentiles> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    let (saddr, caddr) = (server.local_addr()?, client.local_addr()?);
    server.set_read_timeout(Some(Duration::from_secs(2)))?;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let rounds = 2000;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..rounds {
            match server.recv(&mut buf) {
                Ok(n) => {
                    let _ = server.send_to(&buf[..n], caddr);
                }
                Err(_) => break,
            }
        }
    });
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut buf = [0u8; 64];
    for i in 0..rounds {
        let t = Instant::now();
        client.send_to(&(i as u64).to_le_bytes(), saddr)?;
        client
            .recv(&mut buf)
            .context("baseline round trip timed out")?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    let _ = echo.join();
    Ok(Percentiles::of(&h))
}

#[derive(Serialize)]
struct Overhead {
    p50: u64,
    p99: u64,
}

/// One element of the JSON report (`BENCH.md`).
#[derive(Serialize)]
struct ReportEntry {
    schema: &'static str,
    workload: String,
    backend: String,
    transport: String,
    hosts: String,
    invokers: usize,
    chain: usize,
    fn_us: u64,
    payload: usize,
    rate: f64,
    sent: u64,
    completed: u64,
    lost: u64,
    duplicates: u64,
    errors: u64,
    duration_s: f64,
    throughput_rps: f64,
    latency_us: Percentiles,
    overhead_us: Overhead,
    breakdown_us: crate::loadgen::Breakdown,
    per_invoker: BTreeMap<String, u64>,
    drain_s: Option<f64>,
    drain_floor_s: Option<f64>,
    critical_rate_rps: Option<f64>,
    steps: Option<Vec<serde_json::Value>>,
    failover_ms: Option<f64>,
    cdf: Vec<(f64, u64)>,
    retransmitted_slots: u64,
    max_batch: u64,
    baseline: Baseline,
    machine: Machine,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let mut backends: Vec<&str> = Vec::new();
    for b in args.backend.split(',').map(str::trim) {
        match b {
            "conveyor" | "redis" | "kafka" => {
                if !backends.contains(&b) {
                    backends.push(b);
                }
            }
            other => bail!("--backend: unknown backend {other:?}; known: conveyor, redis, kafka"),
        }
    }
    let baselines: Vec<&str> = backends
        .iter()
        .copied()
        .filter(|b| *b != "conveyor")
        .collect();
    if !baselines.is_empty() {
        // Options that only mean something for Conveyor's own members would make the
        // comparison unequal: refused by name.
        let which = baselines.join(",");
        if !args.fault.is_empty() {
            bail!("--fault applies to Conveyor's members only, not to --backend {which}; run it with --backend conveyor");
        }
        if args.impair.is_some() {
            bail!("--impair applies to Conveyor's transport only, not to --backend {which}; run it with --backend conveyor");
        }
    }
    if !backends.contains(&"redis") && args.redis_port != 0 {
        bail!("--redis-port: only with --backend redis");
    }
    if !backends.contains(&"kafka") && args.kafka_port != 0 {
        bail!("--kafka-port: only with --backend kafka");
    }
    if args.transport == "shm" && args.hosts != "local" {
        bail!("--transport shm joins the members of one host through shared memory: use --hosts local; nothing was run");
    }
    if args.hosts == "netns" && effective_uid() != 0 {
        bail!("--hosts netns needs root: it creates network namespaces, veth pairs and a bridge; nothing was run");
    }
    // A port in use on loopback is found before anything runs (in a namespace host of its
    // own, nothing else can hold it).
    if args.hosts == "local" {
        for (b, port, option) in [
            ("redis", args.redis_port, "--redis-port"),
            ("kafka", args.kafka_port, "--kafka-port"),
        ] {
            if backends.contains(&b) && port != 0 {
                crate::middleware::Place::loopback().port(port, option)?;
            }
        }
    }
    let redis_server = if backends.contains(&"redis") {
        Some(crate::redis_backend::find_server()?)
    } else {
        None
    };
    let kafka_broker = if backends.contains(&"kafka") {
        Some(crate::kafka_backend::find_broker()?)
    } else {
        None
    };
    if let Some(plot) = &args.plot {
        crate::plot::check_path(plot)?;
    }
    match args.workload.as_str() {
        "constant" | "burst" => {}
        "balance" => {
            if args.pin != "auto" {
                bail!("--workload balance needs --pin auto: the CPU hog shares invoker-0's core");
            }
            if args.invokers < 2 {
                bail!("--workload balance needs at least 2 invokers (one hogged, one idle)");
            }
        }
        "ramp" => {}
        other => {
            bail!("--workload: unknown workload {other:?}; known: constant, ramp, burst, balance")
        }
    }
    if !crate::config::TRANSPORTS.contains(&args.transport.as_str()) {
        bail!(
            "--transport {}: not available in this build; available: {}",
            args.transport,
            crate::config::TRANSPORTS.join(", ")
        );
    }
    if args.transport == "afxdp" && args.hosts != "netns" {
        bail!("--transport afxdp needs --hosts netns: an AF_XDP socket binds a network interface (each namespace host's eth0), not loopback; nothing was run");
    }
    if args.transport == "dpdk" && args.hosts != "netns" {
        bail!("--transport dpdk needs --hosts netns: each member drives its namespace host's eth0 through DPDK's af_packet PMD (a ConnectX port on a testbed); nothing was run");
    }
    let hosts = match args.hosts.as_str() {
        "local" => Hosts::Local,
        "netns" => Hosts::Netns,
        other => bail!("--hosts: expected local or netns, found {other:?}"),
    };
    let (kills, partitions, joins) = parse_faults(&args.fault, args.invokers)?;
    if !partitions.is_empty() && hosts != Hosts::Netns {
        bail!("--fault partition: needs --hosts netns (it cuts the member's links on the namespace bridge)");
    }
    if args.netem.is_some() {
        bail!("--netem: not available in this version (the kernel of the development machines has no netem); use --impair \"loss=5%,delay=50us\" to inject loss, duplication and delay in Conveyor's transport");
    }
    // One interval log per backend: DIR/BACKEND.hlog (end-to-end latency, microseconds).
    let hlog_dir = match &args.hlog {
        None => None,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--hlog: cannot create {}", dir.display()))?;
            Some(
                dir.canonicalize()
                    .with_context(|| format!("--hlog: {}", dir.display()))?,
            )
        }
    };
    let hlog_for = |backend: &str| {
        hlog_dir.as_ref().map(|d| {
            d.join(format!("{backend}.hlog"))
                .to_string_lossy()
                .into_owned()
        })
    };
    if let Some(spec) = &args.impair {
        spec.parse::<conveyor_dataplane::transport::impair::ImpairSpec>()
            .map_err(|e| anyhow::anyhow!("--impair: {e}"))?;
    }
    if !matches!(args.pin.as_str(), "auto" | "none") {
        bail!("--pin: expected auto or none, found {:?}", args.pin);
    }
    if !matches!(args.executor.as_str(), "inline" | "thread" | "auto") {
        bail!(
            "--executor: expected inline, thread or auto, found {:?}",
            args.executor
        );
    }
    if args.invokers == 0 || args.chain == 0 {
        bail!("--invokers and --chain must be at least 1");
    }
    if args.workload == "constant" && (args.rate <= 0.0 || args.duration <= 0.0) {
        bail!("--rate and --duration must be positive");
    }
    let pipeline = Pipeline::chain("bench", args.chain, args.fn_us);
    let run = GroupRun {
        invokers: args.invokers,
        pipeline_json: pipeline.to_json(),
        spec: WorkloadSpec {
            // Balance is a constant load while a hog shares invoker-0's core.
            workload: if args.workload == "balance" {
                "constant".into()
            } else {
                args.workload.clone()
            },
            pipeline: "bench".into(),
            rate: args.rate,
            duration_s: args.duration,
            requests: args.requests,
            payload: args.payload,
            vary_payload: false,
            grace_s: args.grace,
            start_file: None,
            hlog: hlog_for("conveyor"),
            progress_file: None,
        },
        keep: args.keep,
        credits: args.credits,
        executor: match args.executor.as_str() {
            "auto" if args.fn_us >= 1000 => "thread".into(),
            "auto" => "inline".into(),
            e => e.into(),
        },
        pin: args.pin == "auto",
        confine: args.workload == "balance",
        hosts: hosts.clone(),
        progress: true,
        impair: args.impair.clone(),
        kills,
        partitions,
        joins,
        transport: args.transport.clone(),
        idle: match (args.spin_us, args.yield_us, args.slice_us) {
            (None, None, None) => None,
            (s, y, l) => {
                let d = conveyor_dataplane::engine::IdlePolicy::SHARED;
                Some((
                    s.unwrap_or(d.spin_us),
                    y.unwrap_or(d.yield_us),
                    l.unwrap_or(d.slice_us),
                ))
            }
        },
    };
    let rtt = udp_rtt_baseline().context("measuring the baseline")?;
    let burst = args.workload == "burst";
    let mut entries = Vec::new();
    for backend in &backends {
        eprintln!(
            "conveyor bench: {} workload, backend {backend}, transport {}, hosts {}, {} invokers, chain {} x {} us",
            args.workload,
            match *backend {
                "conveyor" => args.transport.as_str(),
                "redis" => "tcp (redis protocol)",
                _ => "tcp (kafka protocol, tansu broker)",
            },
            args.hosts,
            args.invokers,
            args.chain,
            args.fn_us
        );
        // Balance: a CPU hog on invoker-0's core (every backend pins invoker i to core
        // i mod cores), for the whole run of this backend.
        let _hog = (args.workload == "balance").then(|| Hog::start(0));
        let (r, failover_ms) = match *backend {
            "redis" | "kafka" => {
                // The baselines' hosts: the trigger and the collector in the first, invoker i
                // in host i+1, the broker in the last, as Conveyor's members are placed.
                let hosts_up = match hosts {
                    Hosts::Netns => Some(NetnsHosts::up(args.invokers + 2)?),
                    Hosts::Local => None,
                };
                let place = match &hosts_up {
                    None => crate::middleware::Place::loopback(),
                    Some(h) => crate::middleware::Place {
                        ns: Some(h.namespace(args.invokers + 1)),
                        addr: format!("10.77.0.{}", args.invokers + 2),
                    },
                };
                let mut spec = run.spec.clone();
                spec.hlog = hlog_for(backend);
                let bar = progress_for(backend, &spec);
                let progress = |done: u64, _n: u64| bar.set(done);
                let mrun = crate::middleware::Run {
                    invokers: args.invokers,
                    chain: args.chain,
                    fn_us: args.fn_us,
                    pin: args.pin == "auto",
                    spec,
                    namespaces: hosts_up
                        .as_ref()
                        .map(|h| (0..=args.invokers).map(|i| h.namespace(i)).collect()),
                    progress: Some(&progress),
                };
                let r = if *backend == "redis" {
                    let Some(server) = &redis_server else {
                        bail!("redis-server was not found");
                    };
                    let server =
                        crate::redis_backend::RedisServer::start(server, &place, args.redis_port)?;
                    crate::middleware::run(&server, &mrun).context("the redis run")?
                } else {
                    let Some(broker) = &kafka_broker else {
                        bail!("tansu was not found");
                    };
                    let broker = crate::kafka_backend::TansuBroker::start(
                        broker,
                        &place,
                        args.kafka_port,
                        args.kafka_fetch_wait_ms,
                    )?;
                    crate::middleware::run(&broker, &mrun).context("the kafka run")?
                };
                (r, None)
            }
            _ => {
                let outcome = run_group(&run)?;
                let failover_ms = outcome.failover_ms();
                report_faults(args, &outcome, failover_ms);
                (outcome.report, failover_ms)
            }
        };
        let entry = report_entry(args, backend, &r, failover_ms, rtt);
        print_summary(&r, burst);
        eprintln!(
            "baseline (same run): blocking UDP round trip on loopback p50 {} us; overhead p50 = {:.2} round trips",
            rtt.p50, entry.baseline.overhead_p50_per_rtt
        );
        if let Some(floor) = entry.drain_floor_s {
            eprintln!("drain floor (functions alone): {floor:.3} s");
        }
        if args.workload == "ramp" {
            for st in &r.steps {
                eprintln!(
                    "ramp step {:>6} req/s: sent {}, completed {}, throughput {:.1} req/s, latency p50 {} us, p99 {} us{}",
                    st.rate,
                    st.sent,
                    st.completed,
                    st.throughput_rps,
                    st.latency_us.p50,
                    st.latency_us.p99,
                    if st.served { "" } else { "  <- not served: the ramp stops" }
                );
            }
            eprintln!(
                "critical rate: {}",
                r.critical_rate_rps
                    .map_or("none (the first step was not served)".into(), |c| format!(
                        "{c} req/s"
                    ))
            );
        }
        if args.workload == "balance" {
            let total: u64 = r.per_invoker.values().sum();
            let idle: u64 = r
                .per_invoker
                .iter()
                .filter(|(n, _)| n.as_str() != "invoker-0")
                .map(|(_, c)| c)
                .sum();
            eprintln!(
                "balance: invoker-0 shared its core with a CPU hog; the other invokers took {:.1}% of the function runs",
                idle as f64 * 100.0 / total.max(1) as f64
            );
        }
        entries.push(entry);
    }
    let conveyor = entries.iter().find(|e| e.backend == "conveyor");
    for (c, o) in entries
        .iter()
        .filter(|e| e.backend != "conveyor")
        .filter_map(|o| conveyor.map(|c| (c, o)))
    {
        if args.workload == "ramp" {
            let show = |r: Option<f64>| r.map_or("none".to_string(), |r| format!("{r} req/s"));
            eprintln!(
                "critical rate, same run: conveyor {}, {} {}",
                show(c.critical_rate_rps),
                o.backend,
                show(o.critical_rate_rps)
            );
        } else {
            let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
            eprintln!(
            "{} / conveyor, same run: overhead p50 {:.2}x, p99 {:.2}x; latency p50 {:.2}x{}",
            o.backend,
            ratio(o.overhead_us.p50, c.overhead_us.p50),
            ratio(o.overhead_us.p99, c.overhead_us.p99),
            ratio(o.latency_us.p50, c.latency_us.p50),
            match (o.drain_s, c.drain_s, c.drain_floor_s) {
                (Some(od), Some(cd), Some(f)) => format!(
                    "; drain {od:.3} s vs {cd:.3} s, added over the functions' floor {:.3} s vs {:.3} s ({:.2}x)",
                    od - f,
                    cd - f,
                    (od - f) / (cd - f).max(1e-6)
                ),
                _ => String::new(),
            }
        );
        }
    }
    let json = serde_json::to_string_pretty(&entries)?;
    match args.json.as_deref() {
        Some("-") => println!("{json}"),
        Some(p) => std::fs::write(p, &json).with_context(|| format!("writing {p}"))?,
        None => {}
    }
    if let Some(path) = &args.plot {
        let plotted: Vec<crate::plot::Entry> = serde_json::from_str(&json)?;
        crate::plot::plot(&plotted, path)?;
        eprintln!("plot written: {}", path.display());
    }
    Ok(())
}

/// A thread that keeps one core busy (the balance workload's noisy neighbour).
struct Hog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start(core: usize) -> Hog {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cpu-hog".into())
            .spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .ok();
        eprintln!("balance: a CPU hog runs on core {core} (invoker-0's core)");
        Hog { stop, thread }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The JSON report's entry for one backend's run.
fn report_entry(
    args: &BenchArgs,
    backend: &str,
    r: &TriggerReport,
    failover_ms: Option<f64>,
    rtt: Percentiles,
) -> ReportEntry {
    let burst = args.workload == "burst";
    ReportEntry {
        schema: "conveyor-bench/1",
        workload: args.workload.clone(),
        backend: backend.into(),
        transport: if backend == "conveyor" {
            args.transport.clone()
        } else {
            "tcp".into()
        },
        hosts: args.hosts.clone(),
        invokers: args.invokers,
        chain: args.chain,
        fn_us: args.fn_us,
        payload: args.payload,
        rate: args.rate,
        sent: r.sent,
        completed: r.completed,
        lost: r.lost,
        duplicates: r.duplicates,
        errors: r.errors,
        duration_s: r.duration_s,
        throughput_rps: r.throughput_rps,
        latency_us: r.latency_us,
        overhead_us: Overhead {
            p50: r.overhead_us.p50,
            p99: r.overhead_us.p99,
        },
        breakdown_us: r.breakdown_us,
        per_invoker: r.per_invoker.clone(),
        drain_s: r.drain_s,
        drain_floor_s: burst.then(|| {
            args.requests as f64 * args.chain as f64 * args.fn_us as f64
                / 1e6
                / args.invokers as f64
        }),
        critical_rate_rps: r.critical_rate_rps,
        steps: (!r.steps.is_empty()).then(|| {
            r.steps
                .iter()
                .map(|s| serde_json::to_value(s).unwrap_or_default())
                .collect()
        }),
        failover_ms,
        cdf: r.cdf.clone(),
        retransmitted_slots: r.retransmitted_slots,
        max_batch: r.max_batch,
        baseline: Baseline {
            udp_rtt_us: rtt,
            overhead_p50_per_rtt: ((r.overhead_us.p50 as f64 / rtt.p50.max(1) as f64) * 100.0)
                .round()
                / 100.0,
        },
        machine: machine(),
    }
}

/// What the faults of a Conveyor run did.
fn report_faults(args: &BenchArgs, outcome: &GroupOutcome, failover_ms: Option<f64>) {
    let r = &outcome.report;
    for (name, at) in &outcome.killed_at_us {
        let view = r.views.iter().find(|v| v.1 >= *at);
        eprintln!(
            "fault: {name} {}; view {} installed at the trigger {:.2} ms later ({} from suspicion to install); {} requests re-queued; failover {} ms",
            if args.fault.iter().any(|f| f.starts_with("kill:") && f.contains(name.as_str())) {
                "killed"
            } else {
                "cut off"
            },
            view.map_or("none".into(), |v| v.0.to_string()),
            view.map_or(f64::NAN, |v| (v.1.saturating_sub(*at)) as f64 / 1000.0),
            view.and_then(|v| v.2).map_or("n/a".into(), |us| format!("{us} us")),
            r.requeued,
            failover_ms.map_or("n/a".into(), |f| format!("{f:.2}"))
        );
    }
    for (name, n) in &r.work_after_rejoin {
        eprintln!("{name} joined during the run (as a new member) and then ran {n} functions");
    }
}

fn print_summary(r: &TriggerReport, burst: bool) {
    eprintln!(
        "sent {}, completed {}, lost {}, duplicates {}, errors {}, throughput {:.1} req/s over {:.2} s",
        r.sent, r.completed, r.lost, r.duplicates, r.errors, r.throughput_rps, r.duration_s
    );
    let l = r.latency_us;
    eprintln!(
        "latency us:  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    eprintln!(
        "overhead us: p50 {}  p99 {}",
        r.overhead_us.p50, r.overhead_us.p99
    );
    let b = r.breakdown_us;
    eprintln!(
        "  per request (p50 / p99): ordering {} / {}, hand-off to functions {} / {}, trigger sending late {} / {}",
        b.ordering.p50, b.ordering.p99, b.handoff.p50, b.handoff.p99, b.send_late.p50, b.send_late.p99
    );
    if burst {
        if let Some(d) = r.drain_s {
            eprintln!("drain time: {d:.3} s");
        }
    }
    let total: u64 = r.per_invoker.values().sum();
    let shares: Vec<String> = r
        .per_invoker
        .iter()
        .map(|(n, c)| {
            format!(
                "{n} {:.1}% ({c} function runs)",
                100.0 * *c as f64 / total.max(1) as f64
            )
        })
        .collect();
    eprintln!("invoker shares: {}", shares.join(", "));
}

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
        },
        keep: false,
        idle: None,
        credits: 2,
        executor: "inline".into(),
        pin: true,
        confine: false,
        progress: true,
        hosts,
        impair: None,
        kills: Vec::new(),
        partitions: Vec::new(),
        joins: Vec::new(),
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
