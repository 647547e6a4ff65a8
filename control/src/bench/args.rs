//! `conveyor bench`'s command line (BENCH.md's contract), its `--fault` specs, and the checks
//! that turn it into a [`Plan`] before anything runs.

use super::group::GroupRun;
use crate::trigger::loadgen::WorkloadSpec;
use anyhow::{bail, Context, Result};
use conveyor_core::pipeline::Pipeline;
use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// constant | ramp | burst | balance
    #[arg(long, default_value = "constant")]
    pub workload: String,
    /// Comma list of backends, run one after the other in this invocation: conveyor, redis
    /// (Redis Streams; the bench starts redis-server itself), kafka (the Kafka protocol through
    /// librdkafka, to a tansu broker the bench starts itself: tansu, not Apache Kafka), resp
    /// (the same Redis Streams harness against a Conveyor group of three members serving the
    /// Redis protocol, which the bench starts itself; --hosts local).
    #[arg(long, default_value = "conveyor")]
    pub backend: String,
    /// Port of the redis-server the bench starts (0: a free one).
    #[arg(long = "redis-port", default_value_t = 0)]
    pub redis_port: u16,
    /// The redis-server's append-only file: off (in memory only, as DIFFUSE ran it), or on
    /// with `appendfsync` always (every write synced before the answer), everysec or no (the
    /// kernel's schedule).
    #[arg(long = "redis-aof", default_value = "off", value_parser = ["off", "always", "everysec", "no"])]
    pub redis_aof: String,
    /// --backend redis against this Redis-protocol server instead of a redis-server the bench
    /// starts (redis://HOST:PORT, loopback hosts only): for example a Conveyor member's RESP
    /// port. The bench deletes its own streams there first (stage0.., results).
    #[arg(long = "redis-url")]
    pub redis_url: Option<String>,
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
    /// kill:MEMBER@S, partition:MEMBER@S[-E], join:MEMBER@S, kill:all@S (every member
    /// SIGKILLed, then restarted from its data directory; needs --durable), tear:MEMBER
    /// (with kill:all: MEMBER's log loses the end of its last record before the restart) and,
    /// with --shards, move:QUEUE@S (the queue goes to the next shard) or move:QUEUE=SHARD@S;
    /// all repeatable.
    #[arg(long)]
    pub fault: Vec<String>,
    /// Durable queues: every queue of the pipeline logged to its members' data directories
    /// (under the run's directory), what they tell waiting for a majority's disks.
    #[arg(long)]
    pub durable: bool,
    /// tc netem spec for every link (with --hosts netns).
    #[arg(long)]
    pub netem: Option<String>,
    /// With --hosts netns: loss and duplication made by the kernel (nftables) on every host's
    /// egress, for every backend of the run, e.g. "loss=20%,dup=10%".
    #[arg(long)]
    pub netloss: Option<String>,
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
    /// Requests each invoker may hold at once (the next ones are assigned while it runs one).
    #[arg(long, default_value_t = conveyor_config::DEFAULT_CREDITS)]
    pub credits: u32,
    /// Inject loss, duplication and delay on every member's sends, e.g.
    /// "loss=5%,dup=1%,delay=100us,jitter=50us" (works where the kernel has no netem).
    #[arg(long)]
    pub impair: Option<String>,
    /// Speculative execution: invokers start a request as soon as the order they hold assigns
    /// it to them, and submit its completion once the assignment is delivered (on, the
    /// default), or only once it is delivered (off).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub speculate: String,
    /// Where invokers run functions: inline (in the polling thread), thread (behind rings), or
    /// auto: inline for functions under 1 ms, thread for longer ones (a long function inline
    /// keeps its member from acknowledging, and total order waits for every member).
    #[arg(long, default_value = "auto")]
    pub executor: String,
    /// Core pinning of the members' polling threads: auto (invokers round-robin over the cores,
    /// the trigger left to the scheduler) or none.
    #[arg(long, default_value = "auto")]
    pub pin: String,
    /// Shards (Conveyor only): the group runs this many total-order groups, every member
    /// process a member of each, and the pipeline's steps alternate shards (step k on shard
    /// k mod N), so every continuation crosses to another shard.
    #[arg(long, default_value_t = 1)]
    pub shards: u16,
}

/// `move:QUEUE@S` or `move:QUEUE=SHARD@S` against the run's queues and shards (`placed`:
/// where each queue starts); without `=SHARD` the queue goes to the shard after its own.
pub fn parse_moves(
    specs: &[String],
    placed: &[(String, u16)],
    shards: u16,
) -> Result<Vec<crate::trigger::loadgen::ShardMove>> {
    let mut moves = Vec::new();
    let mut now: std::collections::BTreeMap<&str, u16> =
        placed.iter().map(|(q, s)| (q.as_str(), *s)).collect();
    let mut parsed = Vec::new();
    for spec in specs {
        let Some(rest) = spec.strip_prefix("move:") else {
            continue;
        };
        if shards < 2 {
            bail!("--fault {spec:?}: moving a queue needs --shards 2 or more");
        }
        let (what, at) = rest
            .rsplit_once('@')
            .ok_or_else(|| anyhow::anyhow!("--fault {spec:?}: expected move:QUEUE@SECONDS"))?;
        let at = seconds(spec, at)?;
        let (queue, to) = match what.split_once('=') {
            Some((q, t)) => (
                q,
                Some(
                    t.parse::<u16>()
                        .ok()
                        .filter(|&t| t < shards)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "--fault {spec:?}: {t:?} is not a shard (0 to {})",
                                shards - 1
                            )
                        })?,
                ),
            ),
            None => (what, None),
        };
        if !now.contains_key(queue) {
            bail!(
                "--fault {spec:?}: no queue {queue:?}; the run's queues are {}",
                placed
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        parsed.push((at, queue, to));
    }
    parsed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (at, queue, to) in parsed {
        let from = now[queue];
        let to = to.unwrap_or((from + 1) % shards);
        now.insert(queue, to);
        moves.push(crate::trigger::loadgen::ShardMove {
            queue: queue.to_string(),
            to,
            at_s: at,
        });
    }
    Ok(moves)
}
/// A run's faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// (member, seconds): SIGKILL.
    pub kills: Vec<(String, f64)>,
    /// (member, cut at, healed at).
    pub partitions: Vec<(String, f64, f64)>,
    /// (member, seconds): started late, joining the running group.
    pub joins: Vec<(String, f64)>,
    /// Seconds: every member SIGKILLed, then restarted from its data directory.
    pub kill_all: Vec<f64>,
    /// Members whose log loses the end of its last record before each restart.
    pub tears: Vec<String>,
}

/// `member` names a member of the run (`trigger`, `invoker-0` ..).
fn known_member(spec: &str, member: &str, invokers: usize) -> Result<()> {
    if member == "trigger" || (0..invokers).any(|i| member == format!("invoker-{i}")) {
        return Ok(());
    }
    bail!(
        "--fault {spec:?}: no member {member:?}; the members are trigger and invoker-0 .. invoker-{}",
        invokers.saturating_sub(1)
    )
}

/// A fault's time: `at` seconds (finite, not negative) from the start of the load.
fn seconds(spec: &str, at: &str) -> Result<f64> {
    at.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| anyhow::anyhow!("--fault {spec:?}: {at:?} is not a number of seconds"))
}

/// Parses `--fault` specs against the run's member names. A partition heals 1 s after it
/// starts, or at `E` with `partition:MEMBER@S-E`.
pub fn parse_faults(specs: &[String], invokers: usize) -> Result<Faults> {
    let mut kills = Vec::new();
    let mut parts = Vec::new();
    let mut joins = Vec::new();
    let mut kill_all = Vec::new();
    let mut tears = Vec::new();
    for spec in specs {
        if spec.starts_with("move:") {
            // A shard map's change (`parse_moves`), not a member's fault.
            continue;
        }
        if let Some(member) = spec.strip_prefix("tear:") {
            known_member(spec, member, invokers)?;
            tears.push(member.to_string());
            continue;
        }
        if let Some(at) = spec.strip_prefix("kill:all@") {
            kill_all.push(seconds(spec, at)?);
            continue;
        }
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
        let at = seconds(spec, at)?;
        // The trigger's links may go dark (it comes back and is told what it missed); it
        // measures the run, so it is not killed.
        if member == "trigger" && kind != "partition" {
            bail!("--fault {spec:?}: the trigger measures the run and cannot be the one that fails; name an invoker (invoker-0 .. invoker-{}), or partition the trigger", invokers.saturating_sub(1));
        }
        known_member(spec, member, invokers)?;
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
    if !tears.is_empty() && kill_all.is_empty() {
        bail!(
            "--fault tear:MEMBER: only with kill:all@S (the log is torn while the group is down)"
        );
    }
    kill_all.sort_by(f64::total_cmp);
    if kill_all.windows(2).any(|w| w[1] - w[0] < 0.2) {
        bail!("--fault kill:all: restarts less than 0.2 s apart; the group needs the time to start again");
    }
    let others = !kills.is_empty() || !parts.is_empty() || !joins.is_empty();
    if !kill_all.is_empty() && others {
        bail!("--fault kill:all: not with other faults in the same run");
    }
    Ok(Faults {
        kills,
        partitions: parts,
        joins,
        kill_all,
        tears,
    })
}

/// Where a run's members live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// All on 127.0.0.1.
    Local,
    /// Each in its own network namespace, joined by veth and a bridge (`testbed/netns.sh`).
    Netns,
}

/// What a checked command line asks for: the backends in order, the group run, where things
/// go. Every option is checked before anything runs; a bad one is named.
pub(super) struct Plan {
    pub(super) backends: Vec<String>,
    pub(super) hosts: Hosts,
    pub(super) run: GroupRun,
    pub(super) redis_server: Option<PathBuf>,
    pub(super) kafka_broker: Option<PathBuf>,
    hlog_dir: Option<PathBuf>,
}

impl Plan {
    /// Where `backend`'s interval log goes, if asked for.
    pub(super) fn hlog_for(&self, backend: &str) -> Option<String> {
        hlog_path(self.hlog_dir.as_deref(), backend)
    }
}

/// DIR/BACKEND.hlog: one interval log per backend (end-to-end latency, microseconds).
fn hlog_path(dir: Option<&std::path::Path>, backend: &str) -> Option<String> {
    dir.map(|d| {
        d.join(format!("{backend}.hlog"))
            .to_string_lossy()
            .into_owned()
    })
}

/// Checks every option and plans the run.
pub(super) fn plan(args: &BenchArgs) -> Result<Plan> {
    let mut backends: Vec<&str> = Vec::new();
    for b in args.backend.split(',').map(str::trim) {
        match b {
            "conveyor" | "redis" | "kafka" | "resp" => {
                if !backends.contains(&b) {
                    backends.push(b);
                }
            }
            other => bail!("--backend: unknown backend {other:?}; known: conveyor, redis, kafka, resp (the Redis baseline through a Conveyor group's Redis protocol)"),
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
    if !backends.contains(&"redis") && args.redis_aof != "off" {
        bail!("--redis-aof: only with --backend redis");
    }
    if let Some(url) = &args.redis_url {
        if !backends.contains(&"redis") {
            bail!("--redis-url: only with --backend redis");
        }
        if args.redis_port != 0 || args.redis_aof != "off" {
            bail!("--redis-url: the bench starts no redis-server then; --redis-port and --redis-aof do not apply");
        }
        if args.hosts != "local" {
            bail!("--redis-url: with --hosts local only (the namespace hosts cannot reach this host's loopback); nothing was run");
        }
        super::baselines::redis::check_url(url)?;
    }
    if backends.contains(&"resp") && args.hosts != "local" {
        bail!("--backend resp: with --hosts local only for now (its group runs on this host's loopback); nothing was run");
    }
    if !backends.contains(&"kafka") && args.kafka_port != 0 {
        bail!("--kafka-port: only with --backend kafka");
    }
    if args.transport == "shm" && args.hosts != "local" {
        bail!("--transport shm joins the members of one host through shared memory: use --hosts local; nothing was run");
    }
    if args.hosts == "netns" && super::group::effective_uid() != 0 {
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
                super::baselines::Place::loopback().port(port, option)?;
            }
        }
    }
    let redis_server = if backends.contains(&"redis") && args.redis_url.is_none() {
        Some(super::baselines::redis::find_server()?)
    } else {
        None
    };
    let kafka_broker = if backends.contains(&"kafka") {
        Some(super::baselines::kafka::find_broker()?)
    } else {
        None
    };
    if let Some(plot) = &args.plot {
        super::plot::check_path(plot)?;
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
    if let Some(feature) = conveyor_dataplane::transport::open::missing_feature(&args.transport) {
        bail!(
            "--transport {}: not built into this binary (it needs the cargo feature `{feature}`); nothing was run",
            args.transport
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
    let Faults {
        kills,
        partitions,
        joins,
        kill_all,
        tears,
    } = parse_faults(&args.fault, args.invokers)?;
    if !kill_all.is_empty() && !args.durable {
        bail!("--fault kill:all: needs --durable (a group that restarts from nothing has nothing to recover); nothing was run");
    }
    if !kill_all.is_empty() && args.workload == "ramp" {
        bail!("--fault kill:all: with the constant or burst workload (a ramp's steps would be judged across the restart)");
    }
    if !partitions.is_empty() && hosts != Hosts::Netns {
        bail!("--fault partition: needs --hosts netns (it cuts the member's links on the namespace bridge)");
    }
    if let Some(spec) = &args.netloss {
        parse_netloss(spec).map_err(|e| anyhow::anyhow!("--netloss: {e}"))?;
        if hosts != Hosts::Netns {
            bail!("--netloss: needs --hosts netns (the kernel drops and duplicates on each namespace host's egress; on loopback use --impair); nothing was run");
        }
        if !std::path::Path::new("/usr/sbin/nft").exists()
            && !std::path::Path::new("/sbin/nft").exists()
        {
            bail!("--netloss: needs nftables (apt-get install nftables); nothing was run");
        }
    }
    if args.netem.is_some() {
        bail!("--netem: not available in this version (the kernel of the development machines has no netem); use --impair \"loss=5%,delay=50us\" to inject loss, duplication and delay in Conveyor's transport");
    }
    // One interval log per backend (see hlog_path).
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
    if args.shards == 0 || args.shards > crate::config::MAX_SHARDS {
        bail!("--shards: between 1 and {}", crate::config::MAX_SHARDS);
    }
    if args.shards > 1 && backends.iter().any(|b| *b != "conveyor") {
        bail!("--shards: Conveyor only (the other backends have no shards here); nothing was run");
    }
    let pipeline = Pipeline::chain("bench", args.chain, args.fn_us);
    // Steps alternate shards: step k's queue on shard k mod N.
    let placement: Vec<(String, u16)> = if args.shards > 1 {
        (0..args.chain)
            .map(|k| {
                let q = pipeline
                    .steps
                    .get(&format!("f{k}"))
                    .map(|s| s.queue.name.clone())
                    .unwrap_or_default();
                (q, (k % usize::from(args.shards)) as u16)
            })
            .collect()
    } else {
        Vec::new()
    };
    let moves = parse_moves(&args.fault, &placement, args.shards)?;
    let mut pipeline_json = pipeline.to_json();
    if args.durable {
        pipeline_json = durable_pipeline(&pipeline_json)?;
    }
    let run = GroupRun {
        invokers: args.invokers,
        pipeline_json,
        durable: args.durable,
        kill_all,
        tears,
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
            hlog: hlog_path(hlog_dir.as_deref(), "conveyor"),
            progress_file: None,
            journal: None,
            kills_file: None,
            moves,
        },
        shards: args.shards,
        placement,
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
        speculate: args.speculate == "on",
        netloss: args.netloss.clone(),
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
    Ok(Plan {
        backends: backends.iter().map(|b| b.to_string()).collect(),
        hosts,
        run,
        redis_server,
        kafka_broker,
        hlog_dir,
    })
}

/// The pipeline's document with every queue durable (`queue_defaults.durability = "log"`).
fn durable_pipeline(json: &str) -> Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(json)?;
    let obj = doc
        .as_object_mut()
        .context("the bench's pipeline is not a JSON object")?;
    let defaults = obj
        .entry("queue_defaults")
        .or_insert_with(|| serde_json::json!({}));
    defaults
        .as_object_mut()
        .context("queue_defaults is not an object")?
        .insert("durability".into(), "log".into());
    let out = serde_json::to_string_pretty(&doc)?;
    // What the members will read must read.
    Pipeline::from_json(&out).map_err(|e| anyhow::anyhow!("the durable pipeline: {e}"))?;
    Ok(out)
}

/// "loss=20%,dup=10%" -> (loss, duplication) in hundredths of a percent, as `netns.sh` reads it.
pub(super) fn parse_netloss(spec: &str) -> Result<(u32, u32), String> {
    let (mut loss, mut dup) = (0, 0);
    for item in spec.split(',') {
        let (key, val) = item.split_once('=').ok_or_else(|| {
            format!("{item:?} is not KEY=PERCENT% (for example loss=20%,dup=10%)")
        })?;
        let pct = val
            .strip_suffix('%')
            .and_then(|v| {
                let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
                let ok = !whole.is_empty()
                    && whole.bytes().all(|b| b.is_ascii_digit())
                    && frac.len() <= 2
                    && frac.bytes().all(|b| b.is_ascii_digit());
                ok.then(|| {
                    whole.parse::<u32>().ok().map(|w| {
                        w.saturating_mul(100) + format!("{frac:0<2}").parse::<u32>().unwrap_or(0)
                    })
                })
                .flatten()
            })
            .ok_or_else(|| format!("{item:?}: the value must be a percentage with at most two decimals, like 20% or 0.5%"))?;
        if pct > 10_000 {
            return Err(format!("{item:?} is over 100%"));
        }
        match key {
            "loss" => loss = pct,
            "dup" => dup = pct,
            other => return Err(format!("unknown key {other:?} (loss, dup)")),
        }
    }
    Ok((loss, dup))
}

#[cfg(test)]
mod netloss_tests {
    use super::parse_netloss;

    #[test]
    fn netloss_specs() {
        assert_eq!(parse_netloss("loss=20%,dup=10%"), Ok((2000, 1000)));
        assert_eq!(parse_netloss("loss=0.5%"), Ok((50, 0)));
        assert_eq!(parse_netloss("dup=1.25%"), Ok((0, 125)));
        for bad in [
            "loss=20",
            "los=2%",
            "loss=101%",
            "loss=1.234%",
            "loss=%",
            "loss=-1%",
            "",
        ] {
            assert!(parse_netloss(bad).is_err(), "{bad:?}");
        }
    }
}
