//! `conveyor`: run a member, the demo, or a benchmark.

use conveyor_control::bench::{self, demo as serve, plot};
use conveyor_control::{config, member as node, plane as control};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "conveyor",
    version,
    about = "Kernel-bypass total-order transport and replicated function-request queue for FaaS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a trigger and two invokers as separate processes on loopback, run a 3-function
    /// pipeline at 1000 requests/s for 5 s, and print what happened.
    Demo {
        /// udp (loopback), shm (shared memory, one host), or afxdp / dpdk (three network
        /// namespace hosts on a bridge; needs root).
        #[arg(long, default_value = "udp")]
        transport: String,
        /// Keep the group running with the trigger's OpenFaaS-compatible gateway (POST
        /// /function/demo) until interrupted, instead of running a workload.
        #[arg(long)]
        serve: bool,
        /// --serve: where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        address: String,
        /// --serve: where the trigger serves the Redis protocol (streams and consumer groups
        /// on the group's replicated state; no AUTH needed on loopback).
        #[arg(long, default_value = "127.0.0.1:6390")]
        resp_address: String,
    },
    /// Run one member of a group.
    Node {
        /// The group's configuration file (see conveyor.sample.toml).
        #[arg(long)]
        config: PathBuf,
        /// This member's name in the file.
        #[arg(long)]
        member: String,
        /// Trigger only: run this workload (JSON) and exit.
        #[arg(long)]
        workload: Option<PathBuf>,
        /// Trigger only: write the workload's report here (default: stdout).
        #[arg(long)]
        report: Option<PathBuf>,
        /// With `control.admission = "control"`: put this member on the control plane's
        /// allowlist with this token (`control.join_token`) before joining.
        #[arg(long, env = "CONVEYOR_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
    },
    /// Run a benchmark (see BENCH.md for the contract).
    Bench(Box<bench::BenchArgs>),
    /// Draw saved bench reports (--json files) as one SVG chart: DIFFUSE's figures 4 to 7
    /// (constant runs of several chain lengths make the latency-against-chain-length figure).
    Plot {
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Report files (JSON arrays, as `conveyor bench --json` writes them), all of one
        /// workload.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Check a group configuration file and its pipelines, and print the members.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the control plane of a group (HTTP/JSON API, /metrics; `[control]` in the file).
    Control {
        #[arg(long)]
        config: PathBuf,
        /// Where its state persists (default: control-state.json beside the group file).
        #[arg(long)]
        state: Option<PathBuf>,
        /// Listen here instead of `control.address`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Print a new random group key (64 hexadecimal digits, for `group.key`), or with
    /// `--token` a new random token (for `control.token`, `control.join_token`).
    Keygen {
        #[arg(long)]
        token: bool,
    },
    /// Ask the control plane: health, view, queues, metrics, pipelines [list|get N|put F|delete N],
    /// admissions, admit N, revoke N, leave N.
    Ctl {
        /// host:port of the control plane (default: `control.address` of --config).
        #[arg(long)]
        control: Option<String>,
        /// The group file, for the address and the token.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Token for changes (default: `control.token` of --config, or $CONVEYOR_TOKEN).
        #[arg(long)]
        token: Option<String>,
        #[arg(trailing_var_arg = true, required = true)]
        args: Vec<String>,
    },
}

/// 32 random bytes from the operating system: a group key in hexadecimal, or a token (43
/// characters of URL-safe base64).
fn keygen(token: bool) -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(if token {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    } else {
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.cmd {
        Cmd::Node { .. } | Cmd::Control { .. } => "info",
        // librdkafka's transient complaints (the Kafka baseline's client) are not the bench's.
        _ => "warn,rdkafka=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.cmd {
        Cmd::Demo {
            transport,
            serve: true,
            address,
            resp_address,
        } => serve::demo_serve(&transport, &address, &resp_address),
        Cmd::Demo { transport, .. } => bench::demo(&transport),
        Cmd::Node {
            config,
            member,
            workload,
            report,
            join_token,
        } => node::run(
            &config,
            &member,
            workload.as_deref(),
            report.as_deref(),
            join_token,
        ),
        Cmd::Bench(args) => bench::bench(&args),
        Cmd::Plot { out, reports } => plot::read_reports(&reports).and_then(|e| {
            plot::plot(&e, &out)?;
            eprintln!("plot written: {}", out.display());
            Ok(())
        }),
        Cmd::Check { config } => config::GroupConfig::load(&config)
            .and_then(|c| c.check_built().map(|()| c))
            .map(|c| {
                for (m, a) in c.file.members.iter().zip(&c.addresses) {
                    println!("{} {:?} {a}", m.name, m.role);
                }
                for p in &c.pipelines {
                    println!("pipeline {} ({} steps)", p.name, p.steps.len());
                }
                if c.shard_count() > 1 {
                    // Each shard's own group and ports, then where each queue is ordered.
                    for s in 0..c.shard_count() {
                        let sc = c.for_shard(s);
                        let ports: Vec<String> =
                            sc.addresses.iter().map(|a| a.port().to_string()).collect();
                        println!(
                            "shard {s}: group {:?}, ports {}",
                            sc.file.group.name,
                            ports.join(" ")
                        );
                    }
                    let map = c.shard_map();
                    let placed = c.file.shards.as_ref().map(|s| &s.place);
                    let mut named = std::collections::BTreeSet::new();
                    for p in &c.pipelines {
                        for q in p.queue_specs() {
                            let by_hand = placed.is_some_and(|s| s.contains_key(&q.name));
                            println!(
                                "queue {} on shard {} ({})",
                                q.name,
                                map.owner(&q.name).0,
                                if by_hand { "placed" } else { "hashed" }
                            );
                            named.insert(q.name);
                        }
                    }
                    // Placed queues no pipeline has: made at run time (the C library's, a
                    // stream's), or a name mistyped.
                    for (q, s) in placed.into_iter().flatten() {
                        if !named.contains(q) {
                            println!("queue {q} on shard {s} (placed; no pipeline has it)");
                        }
                    }
                }
            })
            .map_err(Into::into),
        Cmd::Control {
            config,
            state,
            listen,
        } => config::GroupConfig::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                let state = state.unwrap_or_else(|| {
                    config
                        .parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join("control-state.json")
                });
                control::serve(&c, &state, listen.as_deref())
            }),
        Cmd::Keygen { token } => keygen(token).map(|k| println!("{k}")),
        Cmd::Ctl {
            control: addr,
            config,
            token,
            args,
        } => (|| {
            let file = match &config {
                Some(p) => Some(config::GroupConfig::load(p)?),
                None => None,
            };
            let from_file = file.as_ref().and_then(|c| c.file.control.clone());
            let addr = addr
                .or_else(|| from_file.as_ref().map(|c| c.address.clone()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--control ADDR or --config FILE (with [control]) is needed")
                })?;
            let token = token
                .or_else(|| from_file.map(|c| c.token))
                .or_else(|| std::env::var("CONVEYOR_TOKEN").ok());
            control::ctl(&addr, token.as_deref(), &args)
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conveyor: error: {e:#}");
            if e.downcast_ref::<node::BadConfig>().is_some() {
                ExitCode::from(node::BadConfig::EXIT_CODE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
