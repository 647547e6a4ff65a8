//! How far shards scale: a model in virtual time of a deployment of `S` shards, each a
//! total-order group, running two-step pipelines whose second step lives in another shard for a
//! given fraction of the runs (issue 22).
//!
//! **What is real.** Each shard's replicated state is the production [`QueueState`] with its
//! [`crate::sim`]-tested shard logic: the queues, the assignments, the outbox, the inbox's
//! watermark, the routing of a run's end to its origin shard. Every operation the model orders
//! is the one the engine would submit (a push, a completion with its continuation, a forwarded
//! entry, a forwarder's acknowledgement), and a shard applies them in the order its sequencer
//! serves them. The cost of ordering and applying each kind of operation at one member comes
//! from [`measure`]: three real [`Replica`]s exchanging their frames in memory, timed on this
//! machine.
//!
//! **What is modelled.** Each member of a shard runs on its own core (pinned polling loops,
//! as deployed), so a shard orders one operation at a time, each taking the measured cost
//! (every member receives and applies every operation; they work in parallel). The network
//! takes `net_us` one way, and a delivery needs one more round for stability. Invokers are not
//! the bottleneck (functions take `function_us`, any number run at once) and each shard's
//! trigger keeps `window` runs in flight, so that the ordering is saturated: the figure is the
//! ordering capacity. A forwarder between each pair of shards submits every outbox entry to
//! its destination and acknowledges the destination's watermark back every `ack_every`
//! entries or `ack_delay_us`, whichever comes first. Not modelled: the transport's per-frame
//! system calls (kernel UDP; with RDMA or DPDK they are small), the control plane (off the
//! path), view changes.

use conveyor_core::proto::{Dest, ProtoConfig};
use conveyor_core::queue::{
    Durability, Effect, Meta, OnFull, Op, Order, QueueSpec, QueueState, Request, MAX_CREDITS,
};
use conveyor_core::shard::{Forward, ShardId, ShardMap};
use conveyor_core::types::{GroupId, Instant, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_core::Replica;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// The cost of ordering and applying one operation of each kind at one member, microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Costs {
    /// A trigger's push (assigned at once to a ready consumer).
    pub push_us: f64,
    /// A completion whose output is pushed in the same shard.
    pub complete_us: f64,
    /// An outbox entry taken by its destination shard (a continuation pushed there).
    pub forwarded_us: f64,
    /// A forwarder's acknowledgement (the source drops the entries up to it).
    pub ack_us: f64,
}

/// One shard's trigger and consumer (member ids inside every shard's group).
const TRIGGER: MemberId = MemberId(0);
const CONSUMER: MemberId = MemberId(1);

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        capacity: 1 << 24,
        order: Order::Fifo,
        on_full: OnFull::Block,
        durability: Durability::Memory,
    }
}

fn request(id: RequestId, step: &str, queue: &str) -> Request {
    Request {
        id,
        instance: 0,
        step: step.into(),
        queue: queue.into(),
        payload: vec![0x5a; 64],
        meta: Meta::default(),
        http: None,
    }
}

/// Three real replicas whose frames go straight to each other, for timing.
struct Bench {
    rs: Vec<Replica>,
    now: u64,
    /// Effects of replica 0 not yet looked at.
    fx: Vec<Effect>,
}

impl Bench {
    fn new() -> Bench {
        let view = View::new(ViewId(1), (0..3).map(MemberId).collect());
        let cfg = ProtoConfig {
            max_frame: 8192,
            ..ProtoConfig::default()
        };
        let rs = (0..3u16)
            .map(|i| {
                Replica::new(
                    cfg.clone(),
                    Key::from_bytes([7; 32]),
                    GroupId(0x5c),
                    view.clone(),
                    MemberId(i),
                    0x900 + u64::from(i),
                    Instant(0),
                )
                .expect("valid configuration")
            })
            .collect();
        Bench {
            rs,
            now: 0,
            fx: Vec::new(),
        }
    }

    /// One round: timers, every frame to its destinations, every effect applied.
    fn round(&mut self) {
        self.now += 20;
        let now = Instant(self.now);
        let mut frames = Vec::new();
        for (i, r) in self.rs.iter_mut().enumerate() {
            if now >= r.poll_timeout() {
                r.handle_timeout(now);
            }
            while let Some(t) = r.poll_transmit(now) {
                frames.push((i, t));
            }
        }
        for (from, t) in frames {
            for j in 0..self.rs.len() {
                let to = match t.dest {
                    Dest::All => j != from,
                    Dest::One(m) => usize::from(m.0) == j,
                };
                if to {
                    self.rs[j].handle_frame(now, &t.frame);
                }
            }
            self.rs[from].recycle(t.frame);
        }
        for (i, r) in self.rs.iter_mut().enumerate() {
            while let Some(e) = r.poll_effect() {
                if i == 0 {
                    self.fx.push(e);
                }
            }
        }
    }

    /// Orders `ops` (submitted by member 0 as the window allows) until every replica applied
    /// them all; the wall-clock time it took.
    fn order(&mut self, ops: Vec<Op>) -> std::time::Duration {
        let target = self.rs[0].applied() + ops.len() as u64;
        let mut ops: VecDeque<Vec<u8>> = ops.iter().map(Op::encode).collect();
        let start = std::time::Instant::now();
        while self.rs.iter().any(|r| r.applied() < target) {
            while !ops.is_empty() && self.rs[0].window_room() > 0 {
                let op = ops.pop_front().expect("not empty");
                self.rs[0].submit_encoded(op).expect("serving");
            }
            self.round();
            assert!(
                self.now < 3_600_000_000,
                "the measurement's group stopped ordering"
            );
        }
        start.elapsed()
    }
}

/// Times the operations the model orders: `n` of each kind through three real replicas on
/// this thread. A kind's cost is the time it took divided by `n` and by the three members
/// (each receives and applies every operation; deployed, each has its own core).
pub fn measure(n: usize) -> Costs {
    let mut b = Bench::new();
    let mut setup = vec![
        Op::Create(spec("a")),
        Op::Create(spec("b")),
        Op::Create(spec("far")),
        Op::ShardMap {
            by: TRIGGER,
            me: ShardId(0),
            map: ShardMap::hashed(1, 2)
                .with_override("a", ShardId(0))
                .with_override("b", ShardId(0))
                .with_override("far", ShardId(1)),
        },
    ];
    // The consumer takes from `a` only: continuations wait in `b`, holding no credit.
    setup.push(Op::Subscribe {
        consumer: CONSUMER,
        queue: "a".into(),
    });
    setup.push(Op::Ready {
        consumer: CONSUMER,
        credits: MAX_CREDITS,
    });
    b.order(setup);
    let id = |i: usize| RequestId::new(TRIGGER, i as u64);
    let (mut push, mut completion, mut forward, mut ack) = Default::default();
    // In chunks a consumer's credits cover (each completion gives its credit back).
    let chunk = MAX_CREDITS as usize;
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        let ids = done..done + k;
        // Pushes, each assigned at once.
        b.fx.clear();
        let pushes = ids
            .clone()
            .map(|i| Op::Push {
                pusher: TRIGGER,
                req: request(id(i), "one", "a"),
            })
            .collect();
        push += b.order(pushes);
        let assigned: Vec<Request> =
            b.fx.drain(..)
                .filter_map(|e| match e {
                    Effect::Assigned { req, .. } => Some(req),
                    _ => None,
                })
                .collect();
        assert_eq!(assigned.len(), k, "every push assigned");
        // Their completions, each pushing its continuation in the shard.
        let completions = assigned
            .iter()
            .map(|r| complete(r, vec![request(r.id, "two", "b")]))
            .collect();
        completion += b.order(completions);
        // Entries from shard 1, each taken (and assigned: their completions are not timed).
        let forwarded = ids
            .clone()
            .map(|i| Op::Forwarded {
                from: ShardId(1),
                seq: i as u64 + 1,
                entry: Forward::Push(request(id(n + i), "one", "a")),
            })
            .collect();
        forward += b.order(forwarded);
        let taken: Vec<Op> =
            b.fx.drain(..)
                .filter_map(|e| match e {
                    Effect::Assigned { req, .. } => Some(complete(&req, Vec::new())),
                    _ => None,
                })
                .collect();
        assert_eq!(taken.len(), k, "every entry taken");
        b.order(taken);
        // Acknowledgements, each dropping one entry of the outbox for shard 1 (filled first).
        let away = ids
            .clone()
            .map(|i| Op::Push {
                pusher: TRIGGER,
                req: request(id(2 * n + i), "one", "far"),
            })
            .collect();
        b.order(away);
        let acks = ids
            .map(|i| Op::ForwardAck {
                to: ShardId(1),
                upto: i as u64 + 1,
            })
            .collect();
        ack += b.order(acks);
        done += k;
    }
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64 / 3.0;
    let (push_us, complete_us, forwarded_us, ack_us) =
        (per(push), per(completion), per(forward), per(ack));
    assert_eq!(b.rs[0].queue().shards().waiting(), 0, "every entry dropped");
    Costs {
        push_us,
        complete_us,
        forwarded_us,
        ack_us,
    }
}

fn complete(r: &Request, outputs: Vec<Request>) -> Op {
    let terminal = outputs.is_empty();
    Op::Complete {
        consumer: CONSUMER,
        id: r.id,
        instance: r.instance,
        step: r.step.clone(),
        outputs,
        result: terminal.then(|| vec![1]),
        reply: None,
        meta: Meta::default(),
        credits: 1,
    }
}

/// One configuration of the model.
#[derive(Clone, Debug)]
pub struct Params {
    pub shards: u16,
    /// The fraction of pipelines whose second step lives in another shard (rounded to
    /// twentieths: each shard's trigger runs 20 pipelines round robin).
    pub cross: f64,
    pub costs: Costs,
    /// Runs each shard's trigger keeps in flight.
    pub window: usize,
    pub net_us: u64,
    pub function_us: u64,
    pub ack_every: u64,
    pub ack_delay_us: u64,
    /// Virtual time before counting, and counted.
    pub warmup_us: u64,
    pub measure_us: u64,
}

impl Params {
    pub fn new(shards: u16, cross: f64, costs: Costs) -> Params {
        Params {
            shards,
            cross,
            costs,
            window: 256,
            net_us: 5,
            function_us: 20,
            ack_every: 32,
            ack_delay_us: 1_000,
            warmup_us: 5_000,
            measure_us: 20_000,
        }
    }
}

/// What a configuration achieved in the counted time.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub shards: u16,
    pub cross: f64,
    /// Operations ordered per second, all shards together.
    pub ops_per_s: f64,
    /// Runs ended (told at their origin) per second.
    pub runs_per_s: f64,
    /// Of the ordered operations: forwarded entries and acknowledgements.
    pub forwarded: u64,
    pub acks: u64,
    /// Runs whose second step ran in another shard.
    pub cross_runs: u64,
    pub runs: u64,
    /// The most any one shard ordered, against the mean (1: balanced).
    pub imbalance: f64,
    /// Runs ended twice, steps run twice (the model's own check: always 0).
    pub duplicates: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// `op` reaches shard `shard`'s sequencer.
    Submit { shard: u16, op: OpBox },
    /// Shard `shard` finished ordering the operation it was serving.
    Served { shard: u16 },
    /// The forwarder from `from` to `to` acknowledges what it has seen taken.
    AckTimer { from: u16, to: u16 },
}

/// An operation in the event queue (ordered by its encoding, only to break ties
/// deterministically).
#[derive(Debug, PartialEq, Eq)]
struct OpBox(Op);
impl PartialOrd for OpBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OpBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

struct Shard {
    state: QueueState,
    waiting: VecDeque<Op>,
    busy: bool,
    ordered: u64,
    next_run: u64,
    /// Pipelines round robin.
    next_pipeline: usize,
}

/// The forwarder from one shard to another: the highest entry seen taken, and acknowledged.
#[derive(Default)]
struct Forwarder {
    taken: u64,
    acked: u64,
    timer: bool,
}

/// Pipelines per shard.
const PIPELINES: usize = 20;

struct Model<'a> {
    p: &'a Params,
    /// Virtual time, nanoseconds.
    now: u64,
    events: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    shards: Vec<Shard>,
    fwd: BTreeMap<(u16, u16), Forwarder>,
    counting: bool,
    out: Outcome,
    /// Per (origin shard, run): ends told; per (shard, instance): completions applied.
    ended: BTreeMap<(u16, RequestId), u32>,
    steps: BTreeMap<(u16, u64), u32>,
}

impl Model<'_> {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    fn submit(&mut self, t: u64, shard: u16, op: Op) {
        self.at(
            t,
            Ev::Submit {
                shard,
                op: OpBox(op),
            },
        );
    }

    /// Shard `i`'s pipeline `k`: its two queues; the second is in another shard for the first
    /// `cross * 20` pipelines.
    fn queues(&self, i: u16, k: usize) -> (String, String, u16) {
        let s = self.p.shards;
        let crossing = (self.p.cross * PIPELINES as f64).round() as usize;
        let to = if s > 1 && k < crossing {
            // Spread over the other shards.
            (i + 1 + (k as u16 % (s - 1))) % s
        } else {
            i
        };
        (format!("p{i}.{k}.a"), format!("p{i}.{k}.b@{to}"), to)
    }

    fn start_run(&mut self, i: u16) {
        let sh = &mut self.shards[i as usize];
        sh.next_run += 1;
        let id = RequestId::new(TRIGGER, (u64::from(i) << 32) | sh.next_run);
        let k = sh.next_pipeline;
        sh.next_pipeline = (k + 1) % PIPELINES;
        let (a, _, _) = self.queues(i, k);
        let t = self.now + self.p.net_us * 1000;
        self.submit(
            t,
            i,
            Op::Push {
                pusher: TRIGGER,
                req: request(id, &format!("{k}"), &a),
            },
        );
    }

    fn cost(&self, op: &Op) -> u64 {
        let c = &self.p.costs;
        let us = match op {
            Op::Complete { .. } => c.complete_us,
            Op::Forwarded { .. } => c.forwarded_us,
            Op::ForwardAck { .. } => c.ack_us,
            _ => c.push_us,
        };
        // Nanoseconds of virtual time.
        (us * 1000.0).round().max(1.0) as u64
    }

    fn serve_next(&mut self, i: u16) {
        let sh = &self.shards[i as usize];
        if sh.busy {
            return;
        }
        let Some(op) = sh.waiting.front() else {
            return;
        };
        let d = self.cost(op);
        self.shards[i as usize].busy = true;
        self.at(self.now + d, Ev::Served { shard: i });
    }

    fn served(&mut self, i: u16) {
        let sh = &mut self.shards[i as usize];
        sh.busy = false;
        let op = sh.waiting.pop_front().expect("served an operation");
        if self.counting {
            sh.ordered += 1;
            match &op {
                Op::Forwarded { .. } => self.out.forwarded += 1,
                Op::ForwardAck { .. } => self.out.acks += 1,
                _ => {}
            }
        }
        let mut fx = Vec::new();
        sh.state.apply(op, &mut fx);
        // Every member holds it one more round later (stability), then acts on it.
        let t = self.now + 2 * self.p.net_us * 1000;
        for e in fx {
            self.effect(i, t, e);
        }
        self.serve_next(i);
    }

    fn effect(&mut self, i: u16, t: u64, e: Effect) {
        let net = self.p.net_us * 1000;
        match e {
            Effect::Assigned { req, .. } => {
                *self.steps.entry((i, req.instance)).or_default() += 1;
                let outputs = if req.queue.ends_with(".a") {
                    let k: usize = req.step.parse().expect("pipeline number");
                    let origin = (req.id.counter() >> 32) as u16;
                    let (_, b, to) = self.queues(origin, k);
                    if self.counting && to != origin {
                        self.out.cross_runs += 1;
                    }
                    vec![request(req.id, "second", &b)]
                } else {
                    Vec::new()
                };
                let done = t + self.p.function_us * 1000 + net;
                self.submit(done, i, complete(&req, outputs));
            }
            Effect::Outbox { to, seq, entry } => {
                self.submit(
                    t + net,
                    to.0,
                    Op::Forwarded {
                        from: ShardId(i),
                        seq,
                        entry,
                    },
                );
            }
            Effect::Inbox { from, upto } => {
                let key = (from.0, i);
                let f = self.fwd.entry(key).or_default();
                f.taken = f.taken.max(upto);
                if f.taken >= f.acked + self.p.ack_every {
                    f.acked = f.taken;
                    let upto = f.taken;
                    self.submit(
                        t + net,
                        from.0,
                        Op::ForwardAck {
                            to: ShardId(i),
                            upto,
                        },
                    );
                } else if f.taken > f.acked && !f.timer {
                    f.timer = true;
                    let when = t + self.p.ack_delay_us * 1000;
                    self.at(
                        when,
                        Ev::AckTimer {
                            from: from.0,
                            to: i,
                        },
                    );
                }
            }
            Effect::Completed {
                id, terminal: true, ..
            } => {
                // Told here: this is the run's origin shard (another shard routes it here).
                let origin = (id.counter() >> 32) as u16;
                assert_eq!(origin, i, "a run's end told outside its origin shard");
                *self.ended.entry((i, id)).or_default() += 1;
                if self.counting {
                    self.out.runs += 1;
                }
                self.start_run(i);
            }
            _ => {}
        }
    }

    fn ack_timer(&mut self, from: u16, to: u16) {
        let net = self.p.net_us * 1000;
        let f = self.fwd.entry((from, to)).or_default();
        f.timer = false;
        if f.taken > f.acked {
            f.acked = f.taken;
            let upto = f.taken;
            let t = self.now + net;
            self.submit(
                t,
                from,
                Op::ForwardAck {
                    to: ShardId(to),
                    upto,
                },
            );
        }
    }
}

/// Runs one configuration of the model (deterministic: no randomness).
pub fn run(p: &Params) -> Outcome {
    assert!(p.shards >= 1);
    let mut m = Model {
        p,
        now: 0,
        events: BinaryHeap::new(),
        seq: 0,
        shards: Vec::new(),
        fwd: BTreeMap::new(),
        counting: false,
        out: Outcome {
            shards: p.shards,
            cross: p.cross,
            ..Outcome::default()
        },
        ended: BTreeMap::new(),
        steps: BTreeMap::new(),
    };
    // Each shard: the map (its pipelines' second queues placed as `queues` says), its queues
    // and its consumer, applied before the clock starts.
    let mut map = ShardMap::hashed(1, p.shards);
    for i in 0..p.shards {
        for k in 0..PIPELINES {
            let (a, b, to) = m.queues(i, k);
            map = map
                .with_override(&a, ShardId(i))
                .with_override(&b, ShardId(to));
        }
    }
    for i in 0..p.shards {
        let mut state = QueueState::new();
        let mut fx = Vec::new();
        let mine: Vec<String> = map
            .overrides
            .iter()
            .filter(|(_, s)| s.0 == i)
            .map(|(q, _)| q.clone())
            .collect();
        for q in &mine {
            state.apply(Op::Create(spec(q)), &mut fx);
            state.apply(
                Op::Subscribe {
                    consumer: CONSUMER,
                    queue: q.clone(),
                },
                &mut fx,
            );
        }
        state.apply(
            Op::ShardMap {
                by: TRIGGER,
                me: ShardId(i),
                map: map.clone(),
            },
            &mut fx,
        );
        state.apply(
            Op::Ready {
                consumer: CONSUMER,
                credits: MAX_CREDITS,
            },
            &mut fx,
        );
        m.shards.push(Shard {
            state,
            waiting: VecDeque::new(),
            busy: false,
            ordered: 0,
            next_run: 0,
            next_pipeline: 0,
        });
    }
    for i in 0..p.shards {
        for _ in 0..p.window {
            m.start_run(i);
        }
    }
    let warm = p.warmup_us * 1000;
    let end = warm + p.measure_us * 1000;
    while let Some(Reverse((t, _, ev))) = m.events.pop() {
        if t >= end {
            break;
        }
        m.now = t;
        if !m.counting && t >= warm {
            m.counting = true;
        }
        match ev {
            Ev::Submit { shard, op } => {
                m.shards[shard as usize].waiting.push_back(op.0);
                m.serve_next(shard);
            }
            Ev::Served { shard } => m.served(shard),
            Ev::AckTimer { from, to } => m.ack_timer(from, to),
        }
    }
    let secs = p.measure_us as f64 / 1e6;
    let ordered: Vec<u64> = m.shards.iter().map(|s| s.ordered).collect();
    let total: u64 = ordered.iter().sum();
    let mean = total as f64 / ordered.len() as f64;
    m.out.ops_per_s = total as f64 / secs;
    m.out.runs_per_s = m.out.runs as f64 / secs;
    m.out.imbalance = ordered.iter().copied().max().unwrap_or(0) as f64 / mean.max(1.0);
    m.out.duplicates = m.ended.values().filter(|&&n| n > 1).count() as u64
        + m.steps.values().filter(|&&n| n > 1).count() as u64;
    m.out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSTS: Costs = Costs {
        push_us: 2.0,
        complete_us: 3.0,
        forwarded_us: 2.5,
        ack_us: 1.0,
    };

    fn quick(shards: u16, cross: f64) -> Outcome {
        let mut p = Params::new(shards, cross, COSTS);
        p.warmup_us = 10_000;
        p.measure_us = 20_000;
        run(&p)
    }

    #[test]
    fn a_saturated_shard_orders_at_its_measured_cost() {
        let o = quick(1, 0.0);
        // A run is a push and two completions: 8 us of one sequencer's time.
        assert!(
            (o.ops_per_s - 3.0 / 8e-6).abs() / (3.0 / 8e-6) < 0.05,
            "{o:?}"
        );
        assert!(
            (o.runs_per_s - 1.0 / 8e-6).abs() / (1.0 / 8e-6) < 0.05,
            "{o:?}"
        );
        assert_eq!(
            (o.forwarded, o.acks, o.cross_runs, o.duplicates),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn shards_without_cross_traffic_scale_linearly() {
        let one = quick(1, 0.0);
        let eight = quick(8, 0.0);
        let r = eight.ops_per_s / one.ops_per_s;
        assert!((7.9..8.1).contains(&r), "{r}");
        assert!(eight.imbalance < 1.01, "{eight:?}");
    }

    #[test]
    fn cross_shard_runs_cost_their_forwarding_and_end_once_at_their_origin() {
        let o = quick(4, 0.5);
        // Half the runs cross: each takes its continuation forwarded into the other shard and
        // its end forwarded back (two entries), acknowledged in batches.
        let half = o.cross_runs as f64 / o.runs as f64;
        assert!((0.45..0.55).contains(&half), "{o:?}");
        let per_cross = o.forwarded as f64 / o.cross_runs as f64;
        assert!((1.8..2.2).contains(&per_cross), "{o:?}");
        assert!(o.acks > 0 && o.acks * 8 < o.forwarded, "{o:?}");
        assert_eq!(o.duplicates, 0);
        // Per run: 3 operations in one shard, about 5 with a hop (and the acks).
        let zero = quick(4, 0.0);
        let r = o.runs_per_s / zero.runs_per_s;
        assert!((0.6..0.85).contains(&r), "{r}");
    }

    #[test]
    fn the_measured_costs_are_positive_and_every_operation_is_applied() {
        let c = measure(300);
        for v in [c.push_us, c.complete_us, c.forwarded_us, c.ack_us] {
            assert!(v > 0.0 && v.is_finite(), "{c:?}");
        }
    }
}
