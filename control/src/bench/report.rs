//! The bench's report: one JSON entry per backend (BENCH.md's schema), with the machine, the
//! same-run UDP round-trip baseline, and what is printed on the terminal.

use super::args::BenchArgs;
use super::group::GroupOutcome;
use crate::trigger::loadgen::TriggerReport;
use crate::trigger::measure::Percentiles;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

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
pub(super) struct ReportEntry {
    schema: &'static str,
    workload: String,
    backend: String,
    transport: String,
    hosts: String,
    /// Kernel-made loss and duplication on every namespace host's egress (`--netloss`).
    netloss: Option<String>,
    /// The redis backend's append-only file (`--redis-aof`: off, always, everysec, no).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_aof: Option<String>,
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
    breakdown_us: crate::trigger::measure::Breakdown,
    per_invoker: BTreeMap<String, u64>,
    drain_s: Option<f64>,
    drain_floor_s: Option<f64>,
    critical_rate_rps: Option<f64>,
    steps: Option<Vec<serde_json::Value>>,
    failover_ms: Option<f64>,
    /// Shards the group ran as (`--shards`, Conveyor only; left out for 1), and the queues
    /// moved between shards during the run (`--fault move:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shard_moves: Vec<crate::trigger::loadgen::ShardMove>,
    /// Durable queues (`--durable`, Conveyor only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    durable: bool,
    /// With `--fault kill:all@S`: from the kill to the first completion after the group
    /// restarted from its data directories, the longest of the run's restarts (ms), and each.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_ms: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    recoveries_ms: Vec<f64>,
    /// Requests the restarted trigger pushed again (sent, but never ordered before the kill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed_again: Option<u64>,
    cdf: Vec<(f64, u64)>,
    retransmitted_slots: u64,
    /// Views installed at the trigger during the run (Conveyor only): 0 when no member was
    /// suspected.
    view_changes: Option<usize>,
    /// The invokers' speculated executions (Conveyor only): started before delivery, and of
    /// those confirmed or discarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) speculation: Option<super::group::Speculation>,
    max_batch: u64,
    baseline: Baseline,
    machine: Machine,
}

/// The JSON report's entry for one backend's run.
pub(super) fn report_entry(
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
        netloss: args.netloss.clone(),
        redis_aof: (backend == "redis").then(|| args.redis_aof.clone()),
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
        shards: (backend == "conveyor" && r.shards > 1).then_some(r.shards),
        shard_moves: if backend == "conveyor" {
            r.moves.clone()
        } else {
            Vec::new()
        },
        durable: backend == "conveyor" && args.durable,
        recovery_ms: r
            .recoveries_us
            .iter()
            .max()
            .map(|us| (*us as f64 / 100.0).round() / 10.0),
        recoveries_ms: r
            .recoveries_us
            .iter()
            .map(|us| (*us as f64 / 100.0).round() / 10.0)
            .collect(),
        pushed_again: (r.restarts > 0).then_some(r.pushed_again),
        cdf: r.cdf.clone(),
        retransmitted_slots: r.retransmitted_slots,
        view_changes: (backend == "conveyor").then_some(r.views.len()),
        speculation: None,
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
pub(super) fn report_faults(args: &BenchArgs, outcome: &GroupOutcome, failover_ms: Option<f64>) {
    let r = &outcome.report;
    for (name, at) in outcome.killed_at_us.iter().filter(|k| k.0 != "all") {
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
    for (i, ms) in outcome.recoveries_ms.iter().enumerate() {
        eprintln!(
            "fault: the whole group killed ({} of {}); first completion {ms:.1} ms after the kill (the members restarted from their data directories and recovered)",
            i + 1,
            outcome.recoveries_ms.len()
        );
    }
    if r.restarts > 0 {
        eprintln!(
            "the trigger restarted {} times and picked the run up from its journal; it pushed {} requests again (sent, never ordered)",
            r.restarts, r.pushed_again
        );
    }
    for (name, n) in &r.work_after_rejoin {
        eprintln!("{name} joined during the run (as a new member) and then ran {n} functions");
    }
}

pub(super) fn print_summary(r: &TriggerReport, burst: bool) {
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
    // A sharded run's counts are the invokers' own, logged when they stop: a member killed
    // by SIGKILL never logs its count, so after kill:all only the last incarnation's show.
    let since = if r.shards > 1 && r.restarts > 0 {
        " (counted by the invokers since the group's last restart)"
    } else {
        ""
    };
    eprintln!("invoker shares: {}{since}", shares.join(", "));
    if !r.views.is_empty() {
        let ids: Vec<String> = r.views.iter().map(|v| v.0.to_string()).collect();
        eprintln!(
            "view changes during the run: {} (views {})",
            r.views.len(),
            ids.join(", ")
        );
    }
}

/// What one backend's run says on the terminal (besides the JSON report).
pub(super) fn print_backend(
    args: &BenchArgs,
    r: &TriggerReport,
    entry: &ReportEntry,
    rtt: Percentiles,
) {
    let burst = args.workload == "burst";
    print_summary(r, burst);
    eprintln!(
        "baseline (same run): blocking UDP round trip on loopback p50 {} us; overhead p50 = {:.2} round trips",
        rtt.p50, entry.baseline.overhead_p50_per_rtt
    );
    if let Some(floor) = entry.drain_floor_s {
        eprintln!("drain floor (functions alone): {floor:.3} s");
    }
    if let Some(s) = entry.speculation {
        eprintln!(
            "speculation ({}): {} requests started before their assignment was delivered, {} confirmed, {} discarded",
            args.speculate, s.started, s.confirmed, s.discarded
        );
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
}

/// Every baseline against Conveyor, measured in the same run.
pub(super) fn compare(args: &BenchArgs, entries: &[ReportEntry]) {
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
}
