//! The baselines' side of `conveyor bench`: DIFFUSE's middleware abstraction (section 4.1:
//! create a channel, send, take, acknowledge) and one harness that runs the bench's pipeline
//! over any implementation of it. Redis Streams ([`redis`]) and a Kafka-protocol broker
//! ([`kafka`]) implement it; Conveyor itself runs as real members instead (`bench`).
//!
//! The pipeline is a linear chain: one channel per stage and one for results. The trigger
//! sends every request to stage 0; every invoker takes from all stages (the middleware decides
//! who gets what: that is its load balancing), runs the function, sends the continuation to
//! the next stage (or the result to the results channel) and acknowledges what it took; a
//! collector takes the results. The measurement is the same as Conveyor's: latency from each
//! request's intended send time (open loop, no coordinated omission) to the arrival of its
//! result, overhead = latency minus the functions' measured time.

pub(crate) mod kafka;
pub(crate) mod redis;

use crate::trigger::loadgen::{TriggerReport, WorkloadSpec};
use crate::trigger::measure::{Breakdown, Intervals, Percentiles};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What travels between stages: the request's number, its intended send time (bench clock,
/// microseconds), the functions' execution time so far, and the payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub sent: u64,
    pub exec: u64,
    pub payload: Vec<u8>,
}

impl Record {
    /// The record as bytes: three little-endian u64 and the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + self.payload.len());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.sent.to_le_bytes());
        b.extend_from_slice(&self.exec.to_le_bytes());
        b.extend_from_slice(&self.payload);
        b
    }

    /// The record from bytes; `None` if they are too short to be one.
    pub fn decode(b: &[u8]) -> Option<Record> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(Record {
            id: word(0)?,
            sent: word(1)?,
            exec: word(2)?,
            payload: b[24..].to_vec(),
        })
    }
}

/// Where a record goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Stage(usize),
    Results,
}

/// Who a connection is for: what it takes from, and how it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends to stage 0, takes nothing.
    Trigger,
    /// Takes from every stage, as a member of the one consumer group.
    Invoker(usize),
    /// Takes from the results channel.
    Collector,
}

/// A record taken from a channel, with what acknowledging it needs.
#[derive(Debug)]
pub struct Taken<T> {
    /// The stage it was taken from (`None`: the results channel).
    pub stage: Option<usize>,
    pub record: Record,
    pub token: T,
}

/// A middleware: creates the channels and hands out connections (one per thread).
pub trait Middleware: Sync {
    type Conn: Connection;
    /// Its name in reports.
    fn name(&self) -> &'static str;
    /// Creates the channels of a chain of `chain` stages for `invokers` consumers.
    fn create_channels(&self, chain: usize, invokers: usize) -> Result<()>;
    /// A connection for `role`.
    fn connect(&self, role: Role, chain: usize) -> Result<Self::Conn>;
    /// Waits until the consumer group has settled, if the middleware has such a phase (the
    /// run starts after it): by default there is none.
    fn settle(&self, _conns: &mut [&mut Self::Conn]) -> Result<()> {
        Ok(())
    }
}

/// One thread's connection.
pub trait Connection: Send {
    type Token;
    /// Sends a record to a channel.
    fn send(&mut self, to: Dest, record: &Record) -> Result<()>;
    /// Takes up to `max` records, waiting up to `wait` for the first.
    fn take(&mut self, max: usize, wait: Duration) -> Result<Vec<Taken<Self::Token>>>;
    /// Acknowledges a taken record: it will not be delivered again.
    fn ack(&mut self, taken: &Taken<Self::Token>) -> Result<()>;
    /// Sends the continuation of a taken record, then acknowledges it (at least once: the
    /// continuation is sent before the acknowledgement). Backends may do both in one round trip.
    fn forward(&mut self, to: Dest, record: &Record, taken: &Taken<Self::Token>) -> Result<()> {
        self.send(to, record)?;
        self.ack(taken)
    }
    /// At the end of the run: waits for what is still in flight to be acknowledged, and
    /// returns what the run should say about this connection (nothing, by default).
    fn finish(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A run of the bench's pipeline over a middleware.
pub struct Run<'a> {
    pub invokers: usize,
    pub chain: usize,
    pub fn_us: u64,
    /// Pin invoker i to core i mod cores, as Conveyor's bench pins its invokers.
    pub pin: bool,
    pub spec: WorkloadSpec,
    /// Runs invoker i's thread inside this network namespace (`/var/run/netns/NAME`), and the
    /// trigger's and the collector's in the first entry: the namespace hosts of `--hosts netns`.
    pub namespaces: Option<Vec<String>>,
    /// Called with (completed, expected) while the run goes: the progress bar.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

impl std::fmt::Debug for Run<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("invokers", &self.invokers)
            .field("chain", &self.chain)
            .field("fn_us", &self.fn_us)
            .field("spec", &self.spec)
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

/// What the collector measured: latency, overhead, duplicates, the interval log.
type Collected = (Histogram<u64>, Histogram<u64>, u64, Option<Intervals>);

/// The same function as Conveyor's builtin `spin`: CPU work of `us` microseconds.
fn spin(us: u64) {
    conveyor_dataplane::sys::burn_cpu(Duration::from_micros(us));
}

/// Where a broker runs: on loopback, or inside a namespace host at its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The network namespace (`/var/run/netns/NAME`), or `None` for this process's own.
    pub ns: Option<String>,
    pub addr: String,
}

impl Place {
    pub fn loopback() -> Place {
        Place {
            ns: None,
            addr: "127.0.0.1".into(),
        }
    }

    /// `port`, checked free at this place, or a free one if it is 0. A port in use is an error
    /// before anything runs, named by `option`.
    pub fn port(&self, port: u16, option: &str) -> Result<u16> {
        let addr = self.addr.clone();
        let option = option.to_string();
        self.within(move || -> Result<u16> {
            if port == 0 {
                return Ok(std::net::TcpListener::bind((addr.as_str(), 0))?
                    .local_addr()?
                    .port());
            }
            if std::net::TcpListener::bind((addr.as_str(), port)).is_err() {
                bail!("{option} {port}: the port is in use on {addr}; nothing was run");
            }
            Ok(port)
        })
    }

    /// A command that runs `program` at this place (`ip netns exec` in a namespace host).
    pub fn command(&self, program: &std::path::Path) -> std::process::Command {
        match &self.ns {
            None => std::process::Command::new(program),
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
        }
    }

    /// Runs `f` on a thread inside this place's namespace (here, if it has none).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        match &self.ns {
            None => f(),
            Some(ns) => std::thread::scope(|s| {
                s.spawn(|| {
                    enter_namespace(ns)?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
            }),
        }
    }
}

/// The first file named `name` in a directory of `PATH`, then in `extra` (a broker's binary).
pub fn find_program(name: &str, extra: Option<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Moves the calling thread into the network namespace `name` (a `--hosts netns` host).
fn enter_namespace(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    conveyor_dataplane::sys::set_net_namespace(&f)
        .with_context(|| format!("entering the network namespace {name}"))
}

/// Runs the workload over `m` and reports as Conveyor's trigger does.
pub fn run<M: Middleware>(m: &M, r: &Run) -> Result<TriggerReport> {
    let ns_of = |i: Option<usize>| -> Option<String> {
        let list = r.namespaces.as_ref()?;
        Some(match i {
            None => list[0].clone(),
            Some(i) => list[(i + 1).min(list.len() - 1)].clone(),
        })
    };
    if let Some(ns) = ns_of(None) {
        // The harness's own thread (trigger) lives in the trigger's host for the whole run;
        // it goes back to where it was at the end.
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        enter_namespace(&ns)?;
        let out = run_here(m, r, &ns_of);
        conveyor_dataplane::sys::set_net_namespace(&home)?;
        return out;
    }
    run_here(m, r, &ns_of)
}

fn run_here<M: Middleware>(
    m: &M,
    r: &Run,
    ns_of: &dyn Fn(Option<usize>) -> Option<String>,
) -> Result<TriggerReport> {
    let spec = &r.spec;
    m.create_channels(r.chain, r.invokers)
        .with_context(|| format!("creating the {} channels", m.name()))?;
    let plan = crate::trigger::loadgen::plan(spec)?;
    let ramp = spec.workload == "ramp";
    let burst = spec.workload == "burst";
    let n: u64 = plan.iter().map(|s| s.1).sum();
    if n == 0 {
        bail!("the workload sends no request");
    }
    // Connections first (each in its thread's namespace), then the group settles, then the
    // load starts: a consumer group's first rebalance is not part of any request's latency.
    let mut invoker_conns = Vec::new();
    let chain = r.chain;
    for i in 0..r.invokers {
        let ns = ns_of(Some(i));
        invoker_conns.push(std::thread::scope(|s| {
            s.spawn(|| -> Result<M::Conn> {
                if let Some(ns) = &ns {
                    enter_namespace(ns)?;
                }
                m.connect(Role::Invoker(i), chain)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("connecting invoker-{i} panicked"))?
        })?);
    }
    let mut collector_conn = m.connect(Role::Collector, r.chain)?;
    let mut trigger = m.connect(Role::Trigger, r.chain)?;
    {
        let mut all: Vec<&mut M::Conn> = invoker_conns.iter_mut().collect();
        all.push(&mut collector_conn);
        m.settle(&mut all)
            .context("waiting for the consumer group")?;
    }
    let base = Instant::now();
    let now_us = move || base.elapsed().as_micros() as u64;
    let start = now_us() + 2_000;
    let start_unix = std::time::SystemTime::now() + Duration::from_micros(2_000);
    let intervals = spec
        .hlog
        .as_ref()
        .map(|_| Intervals::new(start, if burst { 10.0 } else { spec.duration_s }));
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let done_at: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let last_done = AtomicU64::new(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| -> Result<TriggerReport> {
        // Invokers: every one takes from every stage.
        let mut invokers = Vec::new();
        for (i, mut con) in invoker_conns.into_iter().enumerate() {
            let (stop, chain, fn_us, pin, ns) = (&stop, r.chain, r.fn_us, r.pin, ns_of(Some(i)));
            invokers.push(s.spawn(move || -> Result<(u64, Vec<String>)> {
                if let Some(ns) = &ns {
                    enter_namespace(ns)?;
                }
                if pin {
                    core_affinity::set_for_current(core_affinity::CoreId { id: i % cores });
                }
                let mut runs = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for mut t in con.take(1, Duration::from_millis(50))? {
                        let Some(st) = t.stage else { continue };
                        let t0 = Instant::now();
                        spin(fn_us);
                        let next = Record {
                            id: t.record.id,
                            sent: t.record.sent,
                            exec: t.record.exec + t0.elapsed().as_micros() as u64,
                            payload: if st + 1 < chain {
                                std::mem::take(&mut t.record.payload)
                            } else {
                                Vec::new()
                            },
                        };
                        let to = if st + 1 < chain {
                            Dest::Stage(st + 1)
                        } else {
                            Dest::Results
                        };
                        con.forward(to, &next, &t)?;
                        runs += 1;
                    }
                }
                Ok((runs, con.finish()?))
            }));
        }
        // The collector: results in arrival order.
        let collector = {
            let (stop, done, last_done, done_at) = (&stop, &done, &last_done, &done_at);
            let mut intervals = intervals;
            let mut con = collector_conn;
            s.spawn(move || -> Result<Collected> {
                let mut lat = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
                let mut ovh = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
                let mut seen = vec![0u8; n as usize];
                let mut dups = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for t in con.take(256, Duration::from_millis(50))? {
                        let at = now_us();
                        let rec = &t.record;
                        match seen.get_mut(rec.id as usize) {
                            Some(0) => {
                                seen[rec.id as usize] = 1;
                                let l = at.saturating_sub(rec.sent).max(1);
                                let _ = lat.record(l);
                                let _ = ovh.record(l.saturating_sub(rec.exec).max(1));
                                if let Some(iv) = &mut intervals {
                                    iv.record(at, l);
                                }
                                done.fetch_add(1, Ordering::Relaxed);
                                done_at[rec.id as usize].store(at.max(1), Ordering::Relaxed);
                                last_done.store(at, Ordering::Relaxed);
                            }
                            Some(_) => dups += 1,
                            None => {}
                        }
                        con.ack(&t)?;
                    }
                }
                for n in con.finish()? {
                    eprintln!("{n}");
                }
                Ok((lat, ovh, dups, intervals))
            })
        };
        // The trigger: open loop from intended send times, step by step. Whatever fails
        // here stops the other threads before it is reported.
        let driven = drive(
            &mut trigger,
            &plan,
            r,
            start,
            &now_us,
            &done,
            &done_at,
            ramp,
        );
        stop.store(true, Ordering::Relaxed);
        let finished = trigger.finish();
        let collected = collector
            .join()
            .map_err(|_| anyhow::anyhow!("the collector panicked"))?;
        let mut per_invoker = BTreeMap::new();
        for (i, h) in invokers.into_iter().enumerate() {
            let (runs, notes) = h
                .join()
                .map_err(|_| anyhow::anyhow!("invoker-{i} panicked"))?
                .with_context(|| format!("invoker-{i}"))?;
            for n in notes {
                eprintln!("{n}");
            }
            per_invoker.insert(format!("invoker-{i}"), runs);
        }
        let (sent, late, steps) = driven?;
        finished.context("the trigger's last records")?;
        let (lat, ovh, duplicates, intervals) = collected.context("the collector")?;
        if let (Some(path), Some(iv)) = (&spec.hlog, &intervals) {
            iv.write(path, start_unix)?;
        }
        let completed = lat.len();
        let end = match last_done.load(Ordering::Relaxed) {
            0 => now_us(),
            t => t,
        };
        let duration_s = end.saturating_sub(start) as f64 / 1e6;
        Ok(TriggerReport {
            sent,
            completed,
            lost: sent.saturating_sub(completed),
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
            cdf: crate::trigger::measure::cdf(&lat),
            critical_rate_rps: if ramp {
                crate::trigger::ramp::critical_rate(&steps)
            } else {
                None
            },
            steps,
            ..TriggerReport::default()
        })
    })
}

/// The trigger's loop: sends the plan open loop, judges ramp steps, waits for the results up
/// to the grace period. Returns (sent, send lateness, ramp steps).
#[allow(clippy::too_many_arguments)]
fn drive<C: Connection>(
    trigger: &mut C,
    plan: &[(f64, u64)],
    r: &Run,
    start: u64,
    now_us: &dyn Fn() -> u64,
    done: &AtomicU64,
    done_at: &[AtomicU64],
    ramp: bool,
) -> Result<(u64, Histogram<u64>, Vec<crate::trigger::ramp::StepReport>)> {
    let spec = &r.spec;
    let n: u64 = plan.iter().map(|s| s.1).sum();
    let mut late = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    // One record, renumbered for each request: no allocation per send.
    let mut rec = Record {
        payload: vec![7u8; spec.payload],
        ..Record::default()
    };
    let mut sent_at = vec![0u64; n as usize];
    let mut steps = Vec::new();
    let mut sent = 0u64;
    let mut base = start;
    let mut shown = Instant::now();
    let mut show = |force: bool| {
        if let Some(p) = r.progress {
            if force || shown.elapsed() > Duration::from_millis(200) {
                p(done.load(Ordering::Relaxed), n);
                shown = Instant::now();
            }
        }
    };
    'steps: for &(rate, count) in plan {
        let gap_us = if rate.is_finite() { 1e6 / rate } else { 0.0 };
        let first = sent;
        for j in 0..count {
            let i = first + j;
            let intended = base + (j as f64 * gap_us) as u64;
            crate::trigger::measure::wait_until(intended, now_us, || {});
            let _ = late.record(now_us().saturating_sub(intended).max(1));
            sent_at[i as usize] = intended;
            (rec.id, rec.sent) = (i, intended);
            trigger
                .send(Dest::Stage(0), &rec)
                .context("sending to the first stage")?;
            sent = i + 1;
            show(false);
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
            let step = crate::trigger::ramp::evaluate(rate, &sent_at[a..b], &snapshot(), base);
            let served = step.served;
            steps.push(step);
            show(true);
            if !served {
                break 'steps;
            }
            base = now_us() + 2_000;
        }
    }
    let deadline = now_us() + (spec.grace_s * 1e6) as u64;
    while done.load(Ordering::Relaxed) < sent && now_us() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        show(false);
    }
    show(true);
    Ok((sent, late, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_short_input_is_refused() {
        let r = Record {
            id: 7,
            sent: 1_000_001,
            exec: 60,
            payload: vec![1, 2, 3],
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[0u8; 23]), None);
        let empty = Record::default();
        assert_eq!(Record::decode(&empty.encode()), Some(empty));
    }
}
