//! The trigger's load generator: open loop (each request has an intended send time, and its
//! latency is measured from that time, so a stalled sender cannot hide queueing: no coordinated
//! omission), HDR histograms, and what the bench reports.

use crate::trigger::measure::{cdf, wait_until, Breakdown, Intervals, Percentiles};
use anyhow::{bail, Context, Result};
use conveyor_core::pipeline::Pipeline;
use conveyor_core::queue::{Effect, Meta, Op};
use conveyor_core::shard::{ShardId, ShardMap};
use conveyor_core::types::RequestId;
use conveyor_dataplane::engine::{EngineHandle, Event};
use conveyor_dataplane::shard::applied_map;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the trigger runs (written by `bench`/`demo`, read by `node --workload`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// `constant` or `burst`.
    pub workload: String,
    pub pipeline: String,
    pub rate: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub payload: usize,
    /// Alternate payloads of `payload` and `payload / 2` bytes (so branches are taken both ways).
    pub vary_payload: bool,
    /// How long to wait for outstanding requests after the last send.
    pub grace_s: f64,
    /// A file the trigger writes the load's start (CLOCK_MONOTONIC, microseconds) into, so
    /// that a bench can time faults from it.
    #[serde(default)]
    pub start_file: Option<String>,
    /// Write the end-to-end latencies (microseconds) here as an HdrHistogram interval log
    /// (one histogram per interval of the run, V2 deflate, readable by HdrHistogram's tools).
    #[serde(default)]
    pub hlog: Option<String>,
    /// A file the trigger keeps the number of completed requests in (rewritten about four
    /// times a second), for the bench's progress bar.
    #[serde(default)]
    pub progress_file: Option<String>,
    /// Keep a journal here, and pick the run up from it if it holds one (a trigger restarted
    /// mid-run: see `trigger::journal`).
    #[serde(default)]
    pub journal: Option<String>,
    /// A file the bench writes the times (CLOCK_MONOTONIC us, one per line) it killed the
    /// whole group at: the report gives, for each, the time to the next completion.
    #[serde(default)]
    pub kills_file: Option<String>,
    /// Queues moved to another shard during the run (a sharded group): the trigger submits
    /// each new map to every shard at its time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<ShardMove>,
}

/// `--fault move:QUEUE@S`: the queue goes to shard `to` at `at_s` seconds after the load
/// starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMove {
    pub queue: String,
    pub to: u16,
    pub at_s: f64,
}

/// Where a sharded trigger pushes: the engine of the shard that owns the pipeline's entry
/// queue, by the newest map every shard has applied (read from the engines a hundred times a
/// second). A push that reaches a shard no longer owning the queue is forwarded by that
/// shard, so routing by a stale map costs a hop, never a request.
struct Router {
    map: ShardMap,
    entry: String,
    read_at: u64,
}

impl Router {
    fn shard(&self) -> usize {
        usize::from(self.map.owner(&self.entry).0)
    }
    fn refresh(&mut self, handles: &[&EngineHandle], now_us: u64) {
        if handles.len() < 2 || now_us < self.read_at + 10_000 {
            return;
        }
        self.read_at = now_us;
        if let Some(m) = applied_map(handles.iter().map(|h| h.probe())) {
            if m.version > self.map.version {
                self.map = m;
            }
        }
    }
}

/// Writes the completed count to the progress file at most every 250 ms: in place, at the
/// start of a file opened once, padded to a fixed width. Rewriting it whole (truncate, write)
/// made ext4 wait for its journal now and then, for up to a third of a second measured here,
/// and the trigger's sends waited with it.
struct ProgressFile {
    file: Option<std::fs::File>,
    next_us: u64,
}

impl ProgressFile {
    fn open(path: Option<&str>) -> Result<ProgressFile> {
        let file = match path {
            None => None,
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(p)
                    .with_context(|| format!("opening {p}"))?,
            ),
        };
        Ok(ProgressFile { file, next_us: 0 })
    }
    fn tick(&mut self, now_us: u64, completed: u64) {
        use std::os::unix::fs::FileExt;
        if let Some(f) = &self.file {
            if now_us >= self.next_us {
                self.next_us = now_us + 250_000;
                let _ = f.write_at(format!("{completed:<20}\n").as_bytes(), 0);
            }
        }
    }
}

/// The steps of a workload: (rate, requests); one step but for the ramp. A burst has no rate.
pub(crate) fn plan(spec: &WorkloadSpec) -> Result<Vec<(f64, u64)>> {
    Ok(match spec.workload.as_str() {
        "constant" => vec![(spec.rate, (spec.rate * spec.duration_s).round() as u64)],
        "burst" => vec![(f64::INFINITY, spec.requests)],
        "ramp" => crate::trigger::ramp::plan(spec.duration_s),
        other => bail!("unknown workload {other:?}"),
    })
}

/// What the trigger measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TriggerReport {
    pub sent: u64,
    /// The shards the trigger pushed across (1: a group without shards).
    #[serde(default = "one_shard")]
    pub shards: u16,
    /// The queues moved between shards during the run, as submitted.
    #[serde(default)]
    pub moves: Vec<ShardMove>,
    pub completed: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub throughput_rps: f64,
    pub latency_us: Percentiles,
    pub overhead_us: Percentiles,
    /// Where the overhead goes, per request, summed over its stages (same-host clocks): the
    /// trigger sending late, total-order multicast (submission to delivery, every hop), and the
    /// engine-to-function hand-off in the invokers.
    pub breakdown_us: Breakdown,
    /// Function executions per invoker.
    pub per_invoker: BTreeMap<String, u64>,
    pub drain_s: Option<f64>,
    /// (percent, latency us) points of the latency CDF.
    pub cdf: Vec<(f64, u64)>,
    /// Counters of the trigger's protocol engine.
    pub retransmitted_slots: u64,
    pub dropped_frames: u64,
    pub max_batch: u64,
    /// Requests put back in their queue because the member running them was removed.
    #[serde(default)]
    pub requeued: u64,
    /// First completion of a re-queued request (engine clock, microseconds).
    #[serde(default)]
    pub first_requeued_done_us: Option<u64>,
    /// Views installed during the run: (view id, engine clock us, us from this member's
    /// suspicion of a removed member to the install, if it suspected one).
    #[serde(default)]
    pub views: Vec<(u32, u64, Option<u64>)>,
    /// Functions run by each member after it (re)joined during the run.
    #[serde(default)]
    pub work_after_rejoin: BTreeMap<String, u64>,
    /// Ramp only: each step's measurements, and the highest rate served.
    #[serde(default)]
    pub steps: Vec<crate::trigger::ramp::StepReport>,
    #[serde(default)]
    pub critical_rate_rps: Option<f64>,
    /// Times this trigger was restarted mid-run (it picked the run up from its journal).
    #[serde(default)]
    pub restarts: u64,
    /// For each time the whole group was killed (`kills_file`): microseconds from the kill to
    /// the first completion after it (the group restarted, recovered, and ran a request).
    #[serde(default)]
    pub recoveries_us: Vec<u64>,
    /// Requests the trigger pushed again after a restart: sent, never ordered.
    #[serde(default)]
    pub pushed_again: u64,
}

/// Marks a request that ended in an error (failed, rejected or overwritten) in `Tally::finals`.
const ERRORED: u32 = u32::MAX;

struct Tally {
    sent_at: Vec<u64>,
    /// When each request's final completion was seen (0: not yet).
    done_at: Vec<u64>,
    submitted_at: Vec<u64>,
    /// Per request: terminal completions seen, or `ERRORED`.
    finals: Vec<u32>,
    latency: Histogram<u64>,
    overhead: Histogram<u64>,
    late: Histogram<u64>,
    ordering: Histogram<u64>,
    handoff: Histogram<u64>,
    per_invoker: BTreeMap<u16, u64>,
    completed: u64,
    errors: u64,
    duplicates: u64,
    last_done_us: u64,
    requeued: std::collections::BTreeSet<u64>,
    first_requeued_done_us: Option<u64>,
    views: Vec<(u32, u64, Option<u64>)>,
    joined_at: BTreeMap<u16, u64>,
    after_join: BTreeMap<u16, u64>,
    /// Latencies per interval of the run (for the interval log), if asked for.
    intervals: Option<Intervals>,
    /// The instance whose terminal completion was counted, per request: the same end told
    /// again (to a restarted trigger) is not a duplicate.
    done_instance: Vec<u64>,
    pushed_again: u64,
}

impl Tally {
    fn on(&mut self, ev: Event) {
        let idx = |id: RequestId| id.counter() as usize;
        match ev.effect {
            Effect::Completed {
                consumer,
                id,
                instance,
                terminal,
                meta,
                ..
            } => {
                *self.per_invoker.entry(consumer.0).or_insert(0) += 1;
                if self.joined_at.contains_key(&consumer.0) {
                    *self.after_join.entry(consumer.0).or_insert(0) += 1;
                }
                if self.requeued.contains(&id.0) && self.first_requeued_done_us.is_none() {
                    self.first_requeued_done_us = Some(ev.at_us);
                }
                if !terminal {
                    return;
                }
                let Some(f) = self.finals.get_mut(idx(id)) else {
                    return;
                };
                if *f == ERRORED {
                    return;
                }
                if *f >= 1 && self.done_instance[idx(id)] == instance {
                    // Told again after a restart: already counted.
                    return;
                }
                *f += 1;
                if *f == 1 {
                    self.done_instance[idx(id)] = instance;
                    let lat = ev.at_us.saturating_sub(self.sent_at[idx(id)]);
                    let _ = self.latency.record(lat.max(1));
                    self.done_at[idx(id)] = ev.at_us.max(1);
                    if let Some(iv) = &mut self.intervals {
                        iv.record(ev.at_us, lat.max(1));
                    }
                    let _ = self
                        .overhead
                        .record(lat.saturating_sub(meta.exec_us).max(1));
                    let order = meta.order_us + ev.at_us.saturating_sub(meta.submitted_us);
                    let _ = self.ordering.record(order.max(1));
                    let _ = self.handoff.record(meta.handoff_us.max(1));
                    let i = idx(id);
                    let late = self.submitted_at[i].saturating_sub(self.sent_at[i]);
                    let _ = self.late.record(late.max(1));
                    self.completed += 1;
                    self.last_done_us = self.last_done_us.max(ev.at_us);
                } else if *f == 2 {
                    self.duplicates += 1;
                }
            }
            Effect::Requeued { id, .. } => {
                self.requeued.insert(id.0);
            }
            Effect::ViewInstalled {
                view,
                suspected_at_us,
                joined,
                ..
            } => {
                for j in joined {
                    self.joined_at.entry(j.0).or_insert(ev.at_us);
                }
                self.views.push((
                    view,
                    ev.at_us,
                    suspected_at_us.map(|s| ev.at_us.saturating_sub(s)),
                ));
            }
            // Back after a removal; its engine pushed again what the group never ordered. If
            // the group dropped outcomes meanwhile, a request not pending and not done cannot
            // be told apart from a finished one: counted as an error.
            Effect::Rejoined {
                pushed_again,
                outcomes_dropped: false,
                ..
            } => self.pushed_again += pushed_again as u64,
            Effect::Rejoined {
                pending,
                outcomes_dropped: true,
                ..
            } => {
                let held: std::collections::BTreeSet<u64> =
                    pending.iter().map(|p| p.counter()).collect();
                for (i, f) in self.finals.iter_mut().enumerate() {
                    if *f == 0 && self.submitted_at[i] != 0 && !held.contains(&(i as u64)) {
                        *f = ERRORED;
                        self.errors += 1;
                    }
                }
            }
            Effect::Failed { id, .. }
            | Effect::Rejected { id, .. }
            | Effect::Overwritten { id, .. } => {
                if let Some(f) = self.finals.get_mut(idx(id)) {
                    if *f == 0 {
                        *f = ERRORED;
                        self.errors += 1;
                    }
                }
            }
            _ => {}
        }
    }
    fn outstanding(&self, sent: u64) -> u64 {
        sent - self.completed - self.errors
    }
}

/// Runs `spec` from this trigger member; returns its measurements. Creates the pipeline's
/// queues first.
///
/// `handles`: this trigger's member of each shard, by shard (one for a group without shards).
/// With several, `map` is the deployment's first shard map: submitted to every shard before
/// the load, and the pushes go to the shard owning the entry queue.
pub fn run_trigger(
    handles: &[&EngineHandle],
    map: &ShardMap,
    pipeline: &Pipeline,
    spec: &WorkloadSpec,
    names: &[String],
) -> Result<TriggerReport> {
    let Some(handle) = handles.first() else {
        bail!("a trigger needs an engine");
    };
    let me = handle.me();
    let clock = handle.clock();
    conveyor_dataplane::sys::set_timer_slack_ns(1000);
    if !spec.moves.is_empty() && handles.len() < 2 {
        bail!("moving a queue to another shard needs a sharded group");
    }
    for h in handles {
        for q in pipeline.queue_specs() {
            h.submit(&Op::Create(q)).context("creating queues")?;
        }
    }
    if handles.len() > 1 {
        conveyor_dataplane::shard::submit_map(handles.iter().copied(), map)
            .context("submitting the shard map")?;
    }
    let mut router = Router {
        map: map.clone(),
        entry: pipeline
            .entry_request(RequestId::new(me, 0), Vec::new(), Meta::default())
            .queue,
        read_at: 0,
    };
    // The maps the run's moves submit, in time order, each from the one before.
    let mut moves: Vec<(u64, ShardMap)> = Vec::new();
    let mut sorted_moves = spec.moves.clone();
    sorted_moves.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    {
        let mut m = map.clone();
        for mv in &sorted_moves {
            if mv.to >= m.shards {
                bail!(
                    "move:{}: there is no shard {} ({} shards)",
                    mv.queue,
                    mv.to,
                    m.shards
                );
            }
            m = m.with_override(&mv.queue, ShardId(mv.to));
            m.version += 1;
            moves.push(((mv.at_s * 1e6) as u64, m.clone()));
        }
    }
    let mut moved = 0usize;
    let plan = plan(spec)?;
    let ramp = spec.workload == "ramp";
    let n: u64 = plan.iter().map(|s| s.1).sum();
    if n == 0 {
        bail!(
            "the workload sends no request (rate {} for {}s)",
            spec.rate,
            spec.duration_s
        );
    }
    let mut t = Tally {
        sent_at: vec![0; n as usize],
        done_at: vec![0; n as usize],
        submitted_at: vec![0; n as usize],
        finals: vec![0; n as usize],
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        overhead: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        late: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        ordering: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        handoff: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        per_invoker: BTreeMap::new(),
        completed: 0,
        errors: 0,
        duplicates: 0,
        last_done_us: 0,
        requeued: Default::default(),
        first_requeued_done_us: None,
        views: Vec::new(),
        joined_at: BTreeMap::new(),
        after_join: BTreeMap::new(),
        intervals: None,
        done_instance: vec![0; n as usize],
        pushed_again: 0,
    };
    let (mut ears, replayed) = Ears::open(spec.journal.as_deref())?;
    let burst = spec.workload == "burst";
    let resumed = replayed.start_us.is_some();
    let start = replayed.start_us.unwrap_or(clock.now_us() + 2_000);
    let start_unix = std::time::SystemTime::now() + Duration::from_micros(2_000);
    if spec.hlog.is_some() {
        let run_s = if burst { 10.0 } else { spec.duration_s };
        t.intervals = Some(Intervals::new(start, run_s));
    }
    // What the request `i` sent at `intended` and submitted at `submitted` is.
    let push = |i: u64, intended: u64, submitted: u64| -> Op {
        let len = if spec.vary_payload && i % 2 == 1 {
            spec.payload / 2
        } else {
            spec.payload
        };
        let mut payload = vec![0u8; len];
        for (j, b) in payload.iter_mut().enumerate() {
            *b = (i as usize + j) as u8;
        }
        let req = pipeline.entry_request(
            RequestId::new(me, i),
            payload,
            Meta {
                sent_us: intended,
                submitted_us: submitted,
                ..Meta::default()
            },
        );
        Op::Push { pusher: me, req }
    };
    // Restarted mid-run: what the journal says was sent and heard is counted again, and the
    // engine is told what this trigger still waits for (see `trigger::journal`).
    let mut sent = 0u64;
    if resumed {
        for &(i, intended, submitted, _) in &replayed.sent {
            if let Some(slot) = t.sent_at.get_mut(i as usize) {
                *slot = intended;
                t.submitted_at[i as usize] = submitted;
                sent = sent.max(i + 1);
            }
        }
        for ev in replayed.events {
            t.on(ev);
        }
        // Each shard answers for the runs submitted to it (their origin shard).
        let mut unanswered: Vec<BTreeMap<RequestId, Vec<u8>>> =
            vec![BTreeMap::new(); handles.len()];
        for &(i, intended, submitted, shard) in &replayed.sent {
            if t.finals.get(i as usize) != Some(&0) {
                continue;
            }
            let Some(u) = unanswered.get_mut(shard as usize) else {
                bail!(
                    "the journal says request {i} went to shard {shard}; this trigger has {}",
                    handles.len()
                );
            };
            u.insert(RequestId::new(me, i), push(i, intended, submitted).encode());
        }
        tracing::warn!(
            restarts = replayed.restarts + 1,
            sent,
            completed = t.completed,
            waiting = unanswered.iter().map(|u| u.len()).sum::<usize>(),
            "the trigger restarted mid-run: picking the run up from its journal"
        );
        for (s, (h, u)) in handles.iter().zip(unanswered).enumerate() {
            let since = replayed.told_through.get(&(s as u16)).copied().unwrap_or(0);
            h.resume(since, u);
        }
    } else {
        ears.started(start)?;
        if let Some(f) = &spec.start_file {
            std::fs::write(f, start.to_string()).with_context(|| format!("writing {f}"))?;
        }
    }
    let mut steps = Vec::new();
    let mut base = start;
    let mut progress = ProgressFile::open(spec.progress_file.as_deref())?;
    'steps: for &(rate, count) in &plan {
        let gap_us = if rate.is_finite() { 1e6 / rate } else { 0.0 };
        let first = sent;
        let first = if ramp { first } else { 0 };
        for j in 0..count {
            let i = first + j;
            if !ramp && i < sent {
                // Sent before a restart.
                continue;
            }
            let intended = base + (j as f64 * gap_us) as u64;
            let mut heard = Ok(false);
            wait_until(
                intended,
                || clock.now_us(),
                || {
                    if heard.is_ok() {
                        heard = ears.drain(handles, |ev| t.on(ev));
                    }
                    progress.tick(clock.now_us(), t.completed);
                },
            );
            heard?;
            submit_moves(
                handles,
                &moves,
                &mut moved,
                clock.now_us().saturating_sub(start),
            )?;
            router.refresh(handles, clock.now_us());
            let shard = router.shard().min(handles.len() - 1);
            let handle = &handles[shard];
            let submitted = clock.now_us();
            t.sent_at[i as usize] = intended;
            t.submitted_at[i as usize] = submitted;
            let op = push(i, intended, submitted);
            ears.sent(i, intended, submitted, shard as u16)?;
            while !handle.try_submit(&op)? {
                // Backpressure: the ring is full. Collect completions, then sleep rather than spin:
                // on a small machine this thread's spinning would take a core from the members.
                ears.drain(handles, |ev| t.on(ev))?;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent = i + 1;
        }
        if ramp {
            // Let the step settle (its own length, at least 1 s), then judge it.
            let (a, b) = (first as usize, sent as usize);
            let settle = ((count as f64 / rate * 1e6) as u64).max(1_000_000);
            let until = clock.now_us() + settle;
            while t.done_at[a..b].contains(&0) && clock.now_us() < until {
                progress.tick(clock.now_us(), t.completed);
                let any = ears.drain(handles, |ev| t.on(ev))?;
                if !any {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            let step =
                crate::trigger::ramp::evaluate(rate, &t.sent_at[a..b], &t.done_at[a..b], base);
            tracing::info!(
                rate,
                throughput = step.throughput_rps,
                p50_us = step.latency_us.p50,
                p99_us = step.latency_us.p99,
                served = step.served,
                "ramp step"
            );
            let served = step.served;
            steps.push(step);
            if !served {
                break 'steps;
            }
            base = clock.now_us() + 2_000;
        }
    }
    let n = sent;
    let last_sent = clock.now_us();
    let deadline = last_sent + (spec.grace_s * 1e6) as u64;
    // Completions are stamped by the engine when delivered, so this thread need not wake fast:
    // it sleeps between looks rather than taking a core from the members.
    while (t.outstanding(n) > 0 || moved < moves.len()) && clock.now_us() < deadline {
        progress.tick(clock.now_us(), t.completed);
        submit_moves(
            handles,
            &moves,
            &mut moved,
            clock.now_us().saturating_sub(start),
        )?;
        let any = ears.drain(handles, |ev| t.on(ev))?;
        if !any {
            if let Some(h) = handles.iter().find(|h| h.is_finished()) {
                bail!("the engine stopped: {}", h.status());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    ears.drain(handles, |ev| t.on(ev))?;
    let recoveries_us = recoveries(spec.kills_file.as_deref(), &t.done_at);
    let end = if t.last_done_us > 0 {
        t.last_done_us
    } else {
        clock.now_us()
    };
    let duration_s = (end.saturating_sub(start)) as f64 / 1e6;
    if let (Some(path), Some(iv)) = (&spec.hlog, &t.intervals) {
        iv.write(path, start_unix)?;
    }
    let cdf = cdf(&t.latency);
    Ok(TriggerReport {
        sent: n,
        shards: handles.len() as u16,
        moves: sorted_moves.iter().take(moved).cloned().collect(),
        completed: t.completed,
        lost: n - t.completed - t.errors,
        duplicates: t.duplicates,
        errors: t.errors,
        duration_s: (duration_s * 1000.0).round() / 1000.0,
        throughput_rps: if duration_s > 0.0 {
            (t.completed as f64 / duration_s * 10.0).round() / 10.0
        } else {
            0.0
        },
        latency_us: Percentiles::of(&t.latency),
        overhead_us: Percentiles::of(&t.overhead),
        breakdown_us: Breakdown {
            send_late: Percentiles::of(&t.late),
            ordering: Percentiles::of(&t.ordering),
            handoff: Percentiles::of(&t.handoff),
        },
        per_invoker: t
            .per_invoker
            .iter()
            .map(|(id, c)| {
                (
                    names
                        .get(*id as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("m{id}")),
                    *c,
                )
            })
            .collect(),
        drain_s: burst
            .then_some(((end.saturating_sub(start)) as f64 / 1e6 * 1000.0).round() / 1000.0),
        cdf,
        retransmitted_slots: 0,
        dropped_frames: 0,
        max_batch: 0,
        requeued: t.requeued.len() as u64,
        first_requeued_done_us: t.first_requeued_done_us,
        views: t.views,
        work_after_rejoin: t
            .after_join
            .iter()
            .map(|(id, c)| {
                (
                    names
                        .get(*id as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("m{id}")),
                    *c,
                )
            })
            .collect(),
        restarts: replayed.restarts + u64::from(resumed),
        recoveries_us,
        pushed_again: t.pushed_again,
        critical_rate_rps: if ramp {
            crate::trigger::ramp::critical_rate(&steps)
        } else {
            None
        },
        steps,
    })
}

fn one_shard() -> u16 {
    1
}

/// Submits to every shard the maps of `moves` (time after the start, map) due at `since_us`
/// from `*moved` on.
fn submit_moves(
    handles: &[&EngineHandle],
    moves: &[(u64, ShardMap)],
    moved: &mut usize,
    since_us: u64,
) -> Result<()> {
    while let Some((at, m)) = moves.get(*moved) {
        if since_us < *at {
            break;
        }
        conveyor_dataplane::shard::submit_map(handles.iter().copied(), m)?;
        tracing::info!(version = m.version, "fault: the shard map moves a queue");
        *moved += 1;
    }
    Ok(())
}

/// For each kill time in `kills_file` (CLOCK_MONOTONIC us, one per line), the time from it to
/// the first completion after it.
fn recoveries(kills_file: Option<&str>, done_at: &[u64]) -> Vec<u64> {
    let Some(text) = kills_file.and_then(|f| std::fs::read_to_string(f).ok()) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .filter_map(|k| done_at.iter().filter(|&&d| d > k).min().map(|d| d - k))
        .collect()
}

/// Where the trigger hears its events: straight from the engine, or through its journal.
struct Ears {
    journal: Option<crate::trigger::journal::Journal>,
}

impl Ears {
    fn open(path: Option<&str>) -> Result<(Ears, crate::trigger::journal::Replayed)> {
        match path {
            None => Ok((Ears { journal: None }, Default::default())),
            Some(p) => {
                let (j, r) = crate::trigger::journal::Journal::open(std::path::Path::new(p))?;
                Ok((Ears { journal: Some(j) }, r))
            }
        }
    }
    fn drain(&mut self, handles: &[&EngineHandle], mut on: impl FnMut(Event)) -> Result<bool> {
        match &mut self.journal {
            Some(j) => {
                let mut any = false;
                for (s, h) in handles.iter().enumerate() {
                    any |= j.drain(s as u16, h, &mut on)?;
                }
                Ok(any)
            }
            None => {
                let mut any = false;
                for h in handles {
                    while let Some(ev) = h.try_event() {
                        on(ev);
                        any = true;
                    }
                }
                Ok(any)
            }
        }
    }
    fn started(&mut self, start_us: u64) -> Result<()> {
        self.journal
            .as_mut()
            .map_or(Ok(()), |j| j.started(start_us))
    }
    fn sent(&mut self, i: u64, intended: u64, submitted: u64, shard: u16) -> Result<()> {
        self.journal
            .as_mut()
            .map_or(Ok(()), |j| j.sent(i, intended, submitted, shard))
    }
}
