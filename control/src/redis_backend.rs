//! The Redis Streams baseline of `conveyor bench --backend redis`: DIFFUSE's middleware
//! abstraction (section 4.1: create a channel, send, take, acknowledge) on Redis Streams, as
//! the paper compares it. One stream per pipeline stage with one consumer group (`XGROUP
//! CREATE ... MKSTREAM`); the trigger sends with `XADD`; every invoker takes from all stages
//! with `XREADGROUP ... BLOCK` (the first to ask gets the entry: Redis's own load balancing),
//! runs the function, then sends the continuation to the next stage and acknowledges (`XADD`
//! and `XACK`, pipelined in one round trip). The last stage posts to a results stream the
//! trigger's collector reads.
//!
//! The bench starts and stops a real `redis-server` (Debian's package) itself, on loopback,
//! without persistence (as DIFFUSE ran it: in memory). The trigger, the collector and the
//! invokers are threads of the bench process, each with its own connection; the measurement
//! is the same as Conveyor's: latency from each request's intended send time (open loop, no
//! coordinated omission) to the arrival of its result, overhead = latency minus the
//! functions' measured time.

use crate::loadgen::{Breakdown, Intervals, Percentiles, TriggerReport, WorkloadSpec};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where `redis-server` is, or a clear error (checked before any run starts).
pub fn find_server() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("redis-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("--backend redis: redis-server is not installed (Debian: apt-get install redis-server); nothing was run")
}

/// A `redis-server` this process started; stopped when dropped.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on 127.0.0.1:`port` (0: a free port), in memory only, and waits
    /// until it answers. A port in use is an error before anything runs.
    pub fn start(server: &Path, port: u16) -> Result<RedisServer> {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        } else {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!("--redis-port {port}: the port is in use; nothing was run");
            }
            port
        };
        let dir =
            std::env::temp_dir().join(format!("conveyor-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let mut s = RedisServer { child, port, dir };
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                bail!("redis-server exited at once ({st}) on port {port}");
            }
            if let Ok(mut c) = s.client().and_then(|c| Ok(c.get_connection()?)) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(s);
                }
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("redis-server on port {port} did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> Result<redis::Client> {
        Ok(redis::Client::open(format!(
            "redis://127.0.0.1:{}/",
            self.port
        ))?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A run of the pipeline over Redis Streams.
pub struct RedisRun<'a> {
    pub server: &'a RedisServer,
    pub invokers: usize,
    pub chain: usize,
    pub fn_us: u64,
    /// Pin invoker i to core i mod cores, as Conveyor's bench pins its invokers.
    pub pin: bool,
    pub spec: WorkloadSpec,
}

const GROUP: &str = "conveyor";

/// What the collector measured: latency, overhead, duplicates, the interval log.
type Collected = (Histogram<u64>, Histogram<u64>, u64, Option<Intervals>);
const RESULTS: &str = "results";

fn stage(i: usize) -> String {
    format!("stage{i}")
}

fn field_u64(map: &std::collections::HashMap<String, Value>, k: &str) -> u64 {
    match map.get(k) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Some(Value::Int(i)) => *i as u64,
        _ => 0,
    }
}

fn field_bytes(map: &std::collections::HashMap<String, Value>, k: &str) -> Vec<u8> {
    match map.get(k) {
        Some(Value::BulkString(b)) => b.clone(),
        _ => Vec::new(),
    }
}

/// The same function as Conveyor's builtin `spin`: CPU work of `us` microseconds.
fn spin(us: u64) {
    conveyor_dataplane::sys::burn_cpu(Duration::from_micros(us));
}

/// Runs the workload and reports as Conveyor's trigger does.
pub fn run(r: &RedisRun) -> Result<TriggerReport> {
    let spec = &r.spec;
    let client = r.server.client()?;
    let mut con = client.get_connection().context("connecting to redis")?;
    for s in 0..r.chain {
        let _: () = con
            .xgroup_create_mkstream(stage(s), GROUP, "$")
            .context("creating the stage streams")?;
    }
    // The bench hands balance over as constant (the hog is its own).
    let plan = crate::loadgen::plan(spec)?;
    let ramp = spec.workload == "ramp";
    let n: u64 = plan.iter().map(|s| s.1).sum();
    if n == 0 {
        bail!("the workload sends no request");
    }
    let base = Instant::now();
    let now_us = move || base.elapsed().as_micros() as u64;
    let burst = spec.workload == "burst";
    let start = now_us() + 2_000;
    let start_unix = std::time::SystemTime::now() + Duration::from_micros(2_000);
    let intervals = spec
        .hlog
        .as_ref()
        .map(|_| Intervals::new(start, if burst { 10.0 } else { spec.duration_s }));
    let stop = Arc::new(AtomicBool::new(false));
    // Invokers: every one takes from every stage.
    let mut invokers = Vec::new();
    for i in 0..r.invokers {
        let client = client.clone();
        let stop = stop.clone();
        let (chain, fn_us, pin) = (r.chain, r.fn_us, r.pin);
        invokers.push(std::thread::spawn(move || -> Result<u64> {
            if pin {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                core_affinity::set_for_current(core_affinity::CoreId { id: i % cores });
            }
            let mut con = client.get_connection()?;
            let keys: Vec<String> = (0..chain).map(stage).collect();
            let ids: Vec<&str> = vec![">"; chain];
            let opts = StreamReadOptions::default()
                .group(GROUP, format!("invoker-{i}"))
                .count(1)
                .block(50);
            let mut runs = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let reply: StreamReadReply = con.xread_options(&keys, &ids, &opts)?;
                for key in reply.keys {
                    let s: usize = key.key.trim_start_matches("stage").parse().unwrap_or(0);
                    for e in key.ids {
                        let t0 = Instant::now();
                        spin(fn_us);
                        let exec = field_u64(&e.map, "exec") + t0.elapsed().as_micros() as u64;
                        let id = field_u64(&e.map, "id");
                        let sent = field_u64(&e.map, "sent");
                        let mut p = redis::pipe();
                        if s + 1 < chain {
                            p.cmd("XADD")
                                .arg(stage(s + 1))
                                .arg("*")
                                .arg("id")
                                .arg(id)
                                .arg("sent")
                                .arg(sent)
                                .arg("exec")
                                .arg(exec)
                                .arg("p")
                                .arg(field_bytes(&e.map, "p"))
                                .ignore();
                        } else {
                            p.cmd("XADD")
                                .arg(RESULTS)
                                .arg("*")
                                .arg("id")
                                .arg(id)
                                .arg("sent")
                                .arg(sent)
                                .arg("exec")
                                .arg(exec)
                                .ignore();
                        }
                        p.cmd("XACK").arg(&key.key).arg(GROUP).arg(&e.id).ignore();
                        let _: () = p.query(&mut con)?;
                        runs += 1;
                    }
                }
            }
            Ok(runs)
        }));
    }
    // The collector: results in arrival order.
    let done = Arc::new(AtomicU64::new(0));
    let done_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let last_done = Arc::new(AtomicU64::new(0));
    let collector = {
        let client = client.clone();
        let stop = stop.clone();
        let (done, last_done, done_at) = (done.clone(), last_done.clone(), done_at.clone());
        let mut intervals = intervals;
        std::thread::spawn(move || -> Result<Collected> {
            let mut con = client.get_connection()?;
            let mut lat = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let mut ovh = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let mut seen = vec![0u8; n as usize];
            let mut dups = 0u64;
            let mut last = "0".to_string();
            let opts = StreamReadOptions::default().count(256).block(50);
            while !stop.load(Ordering::Relaxed) {
                let reply: StreamReadReply = con.xread_options(&[RESULTS], &[&last], &opts)?;
                for key in reply.keys {
                    for e in key.ids {
                        let at = now_us();
                        let id = field_u64(&e.map, "id") as usize;
                        let sent = field_u64(&e.map, "sent");
                        let exec = field_u64(&e.map, "exec");
                        last = e.id.clone();
                        match seen.get_mut(id) {
                            Some(0) => {
                                seen[id] = 1;
                                let l = at.saturating_sub(sent).max(1);
                                let _ = lat.record(l);
                                let _ = ovh.record(l.saturating_sub(exec).max(1));
                                if let Some(iv) = &mut intervals {
                                    iv.record(at, l);
                                }
                                done.fetch_add(1, Ordering::Relaxed);
                                done_at[id].store(at.max(1), Ordering::Relaxed);
                                last_done.store(at, Ordering::Relaxed);
                            }
                            Some(_) => dups += 1,
                            None => {}
                        }
                    }
                }
            }
            Ok((lat, ovh, dups, intervals))
        })
    };
    // The trigger: open loop from intended send times, step by step.
    let mut late = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let payload = vec![7u8; spec.payload];
    let mut sent_at = vec![0u64; n as usize];
    let mut steps = Vec::new();
    let mut sent = 0u64;
    let mut base = start;
    'steps: for &(rate, count) in &plan {
        let gap_us = if rate.is_finite() { 1e6 / rate } else { 0.0 };
        let first = sent;
        for j in 0..count {
            let i = first + j;
            let intended = base + (j as f64 * gap_us) as u64;
            crate::loadgen::wait_until(intended, now_us, || {});
            let _ = late.record(now_us().saturating_sub(intended).max(1));
            sent_at[i as usize] = intended;
            let _: String = redis::cmd("XADD")
                .arg(stage(0))
                .arg("*")
                .arg("id")
                .arg(i)
                .arg("sent")
                .arg(intended)
                .arg("exec")
                .arg(0)
                .arg("p")
                .arg(&payload[..])
                .query(&mut con)
                .context("XADD to the first stage")?;
            sent = i + 1;
        }
        if ramp {
            let (a, b) = (first as usize, sent as usize);
            let settle = ((count as f64 / rate * 1e6) as u64).max(1_000_000);
            let until = now_us() + settle;
            let snapshot = || -> Vec<u64> {
                done_at[a..b]
                    .iter()
                    .map(|d| d.load(Ordering::Relaxed))
                    .collect()
            };
            while snapshot().contains(&0) && now_us() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            let step = crate::ramp::evaluate(rate, &sent_at[a..b], &snapshot(), base);
            let served = step.served;
            steps.push(step);
            if !served {
                break 'steps;
            }
            base = now_us() + 2_000;
        }
    }
    let n = sent;
    let deadline = now_us() + (spec.grace_s * 1e6) as u64;
    while done.load(Ordering::Relaxed) < n && now_us() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let (lat, ovh, duplicates, intervals) = collector
        .join()
        .map_err(|_| anyhow::anyhow!("the collector panicked"))??;
    if let (Some(path), Some(iv)) = (&spec.hlog, &intervals) {
        iv.write(path, start_unix)?;
    }
    let mut per_invoker = BTreeMap::new();
    for (i, h) in invokers.into_iter().enumerate() {
        let runs = h
            .join()
            .map_err(|_| anyhow::anyhow!("an invoker panicked"))??;
        per_invoker.insert(format!("invoker-{i}"), runs);
    }
    let completed = lat.len();
    let end = match last_done.load(Ordering::Relaxed) {
        0 => now_us(),
        t => t,
    };
    let duration_s = end.saturating_sub(start) as f64 / 1e6;
    let cdf = crate::loadgen::cdf(&lat);
    Ok(TriggerReport {
        sent: n,
        completed,
        lost: n - completed,
        duplicates,
        errors: 0,
        duration_s: (duration_s * 1000.0).round() / 1000.0,
        throughput_rps: if duration_s > 0.0 {
            (completed as f64 / duration_s * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency_us: Percentiles::of(&lat),
        overhead_us: Percentiles::of(&ovh),
        breakdown_us: Breakdown {
            send_late: Percentiles::of(&late),
            ..Breakdown::default()
        },
        per_invoker,
        drain_s: burst.then_some((duration_s * 1000.0).round() / 1000.0),
        cdf,
        critical_rate_rps: if ramp {
            crate::ramp::critical_rate(&steps)
        } else {
            None
        },
        steps,
        ..TriggerReport::default()
    })
}
