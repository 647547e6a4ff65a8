//! `conveyor bench`'s run: the plan from the command line, each backend in turn (Conveyor's
//! own members, or a baseline through the middleware harness), the reports and plots.

use super::args::{plan, BenchArgs, Hosts, Plan};
use super::group::{progress_for, run_group, NetnsHosts, Speculation};
use super::report::{compare, print_backend, report_entry, report_faults, udp_rtt_baseline};
use crate::trigger::loadgen::TriggerReport;
use anyhow::{bail, Context, Result};

/// `conveyor bench`: see BENCH.md.
pub fn bench(args: &BenchArgs) -> Result<()> {
    let plan = plan(args)?;
    let rtt = udp_rtt_baseline().context("measuring the baseline")?;
    let mut entries = Vec::new();
    for backend in &plan.backends {
        let (r, failover_ms, speculation) = run_backend(args, &plan, backend)?;
        let mut entry = report_entry(args, backend, &r, failover_ms, rtt);
        entry.speculation = speculation;
        print_backend(args, &r, &entry, rtt);
        entries.push(entry);
    }
    compare(args, &entries);
    let json = serde_json::to_string_pretty(&entries)?;
    match args.json.as_deref() {
        Some("-") => println!("{json}"),
        Some(p) => std::fs::write(p, &json).with_context(|| format!("writing {p}"))?,
        None => {}
    }
    if let Some(path) = &args.plot {
        let plotted: Vec<super::plot::Entry> = serde_json::from_str(&json)?;
        super::plot::plot(&plotted, path)?;
        eprintln!("plot written: {}", path.display());
    }
    Ok(())
}

/// Runs the workload on one backend; returns what it measured and, with a fault, the
/// failover time.
fn run_backend(
    args: &BenchArgs,
    plan: &Plan,
    backend: &str,
) -> Result<(TriggerReport, Option<f64>, Option<Speculation>)> {
    eprintln!(
        "conveyor bench: {} workload, backend {backend}, transport {}, hosts {}, {} invokers, chain {} x {} us",
        args.workload,
        match backend {
            "conveyor" => args.transport.clone(),
            "redis" if args.redis_url.is_some() => format!(
                "tcp (redis protocol, {})",
                args.redis_url.as_deref().unwrap_or_default()
            ),
            "resp" => "tcp (redis protocol, a Conveyor group of 3 members over udp)".to_string(),
            "redis" if args.redis_aof == "off" => "tcp (redis protocol, in memory)".to_string(),
            "redis" => format!("tcp (redis protocol, append-only file, appendfsync {})", args.redis_aof),
            _ => "tcp (kafka protocol, tansu broker)".to_string(),
        },
        args.hosts,
        args.invokers,
        args.chain,
        args.fn_us
    );
    // Balance: a CPU hog on invoker-0's core (every backend pins invoker i to core
    // i mod cores), for the whole run of this backend.
    let _hog = (args.workload == "balance").then(|| Hog::start(0));
    let (r, failover_ms, speculation) = match backend {
        "redis" | "kafka" | "resp" => {
            // The baselines' hosts: the trigger and the collector in the first, invoker i
            // in host i+1, the broker in the last, as Conveyor's members are placed.
            let hosts_up = match plan.hosts {
                Hosts::Netns => Some(NetnsHosts::up(args.invokers + 2, args.netloss.as_deref())?),
                Hosts::Local => None,
            };
            let place = match &hosts_up {
                None => super::baselines::Place::loopback(),
                Some(h) => super::baselines::Place {
                    ns: Some(h.namespace(args.invokers + 1)),
                    addr: format!("10.77.0.{}", args.invokers + 2),
                },
            };
            let mut spec = plan.run.spec.clone();
            spec.hlog = plan.hlog_for(backend);
            let bar = progress_for(backend, &spec);
            let progress = |done: u64, _n: u64| bar.set(done);
            let mrun = super::baselines::Run {
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
            let r = if backend == "resp" {
                let group = super::baselines::redis::RespTarget::conveyor_group()?;
                super::baselines::run(&group, &mrun).context("the resp run")?
            } else if let (true, Some(url)) = (backend == "redis", &args.redis_url) {
                let target = super::baselines::redis::RespTarget::url(url);
                super::baselines::run(&target, &mrun).context("the redis run")?
            } else if backend == "redis" {
                let Some(server) = &plan.redis_server else {
                    bail!("redis-server was not found");
                };
                let server = super::baselines::redis::RedisServer::start(
                    server,
                    &place,
                    args.redis_port,
                    &args.redis_aof,
                )?;
                super::baselines::run(&server, &mrun).context("the redis run")?
            } else {
                let Some(broker) = &plan.kafka_broker else {
                    bail!("tansu was not found");
                };
                let broker = super::baselines::kafka::TansuBroker::start(
                    broker,
                    &place,
                    args.kafka_port,
                    args.kafka_fetch_wait_ms,
                )?;
                super::baselines::run(&broker, &mrun).context("the kafka run")?
            };
            (r, None, None)
        }
        _ => {
            let outcome = run_group(&plan.run)?;
            let failover_ms = outcome.failover_ms();
            report_faults(args, &outcome, failover_ms);
            (outcome.report, failover_ms, Some(outcome.speculation))
        }
    };
    Ok((r, failover_ms, speculation))
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
