//! The replicated queue against a naive sequential model: same operations, same effects.

use conveyor_core::queue::*;
use conveyor_core::types::{MemberId, RequestId};
use proptest::prelude::*;

/// A queue of the model: spec, items with admission stamps, blocked pushes.
type ModelQueue = (QueueSpec, Vec<(u64, Request)>, Vec<(MemberId, Request)>);

/// A deliberately simple model: flat lists, linear scans, no cleverness.
#[derive(Default)]
struct Model {
    queues: Vec<ModelQueue>,
    subs: Vec<(MemberId, String)>,
    /// Credits in order; a queue name: a credit for that queue only.
    ready: Vec<(MemberId, Option<String>)>,
    /// (instance, request, step, consumer, stamp its continuations inherit)
    in_flight: Vec<(u64, RequestId, String, MemberId, u64)>,
    instances: u64,
    stamp: u64,
    pipelines_version: u64,
}

impl Model {
    fn credits(&self, c: MemberId) -> u32 {
        self.ready.iter().filter(|x| x.0 == c).count() as u32
    }
    fn q(&mut self, name: &str) -> Option<usize> {
        self.queues.iter().position(|q| q.0.name == name)
    }
    fn push(
        &mut self,
        pusher: MemberId,
        mut req: Request,
        run: Option<u64>,
        refuse: bool,
        fx: &mut Vec<Effect>,
    ) {
        self.instances += 1;
        req.instance = self.instances;
        let Some(i) = self.q(&req.queue) else {
            fx.push(Effect::Rejected {
                pusher,
                id: req.id,
                step: req.step,
                queue: req.queue,
                reason: RejectReason::NoSuchQueue,
                origin_shard: None,
            });
            return;
        };
        // A continuation keeps its run's stamp; a new request gets the next one.
        let stamp = run.unwrap_or_else(|| {
            self.stamp += 1;
            self.stamp
        });
        let (spec, items, blocked) = &mut self.queues[i];
        let id = req.id;
        if items.len() < spec.capacity as usize && blocked.is_empty() {
            items.push((stamp, req));
            if run.is_none() {
                fx.push(Effect::Accepted { pusher, id });
            }
            return;
        }
        let policy = if refuse { OnFull::Reject } else { spec.on_full };
        match policy {
            OnFull::Reject => fx.push(Effect::Rejected {
                pusher,
                id: req.id,
                step: req.step,
                queue: req.queue,
                reason: RejectReason::Full,
                origin_shard: None,
            }),
            OnFull::Block => {
                fx.push(Effect::Blocked {
                    pusher,
                    id: req.id,
                    step: req.step.clone(),
                    origin_shard: None,
                });
                blocked.push((pusher, req));
            }
            OnFull::OverwriteOldest => {
                if !items.is_empty() {
                    let (_, old) = items.remove(0);
                    fx.push(Effect::Overwritten {
                        id: old.id,
                        step: old.step,
                        queue: old.queue,
                    });
                }
                if spec.capacity == 0 {
                    fx.push(Effect::Overwritten {
                        id: req.id,
                        step: req.step,
                        queue: req.queue,
                    });
                } else {
                    items.push((stamp, req));
                    if run.is_none() {
                        fx.push(Effect::Accepted { pusher, id });
                    }
                }
            }
        }
    }
    fn take(
        &mut self,
        c: MemberId,
        only: Option<&str>,
        fx: &mut Vec<Effect>,
    ) -> Option<(u64, Request)> {
        // Candidate heads of every subscribed queue; the smallest stamp wins (ties: the queue
        // whose name sorts first).
        let mut best: Option<(u64, usize, usize)> = None;
        for (qi, (spec, items, _)) in self.queues.iter().enumerate() {
            let mine = match only {
                Some(n) => n == spec.name,
                None => self.subs.iter().any(|(x, n)| *x == c && *n == spec.name),
            };
            if !mine || items.is_empty() {
                continue;
            }
            let ii = match spec.order {
                Order::Fifo => 0,
                Order::Lifo => items.len() - 1,
            };
            let s = items[ii].0;
            if best.is_none_or(|b| s < b.0 || (s == b.0 && spec.name < self.queues[b.1].0.name)) {
                best = Some((s, qi, ii));
            }
        }
        let (_, qi, ii) = best?;
        let (spec, items, blocked) = &mut self.queues[qi];
        let (stamp, req) = items.remove(ii);
        if items.len() < spec.capacity as usize && !blocked.is_empty() {
            let (p, w) = blocked.remove(0);
            fx.push(Effect::Admitted {
                pusher: p,
                id: w.id,
                step: w.step.clone(),
                origin_shard: None,
            });
            self.stamp += 1;
            items.push((self.stamp, w));
        }
        Some((stamp, req))
    }
    fn finish(&mut self, c: MemberId, instance: u64, id: RequestId, step: &str) -> Option<u64> {
        match self
            .in_flight
            .iter()
            .position(|(n, i, s, x, _)| *n == instance && *i == id && s == step && *x == c)
        {
            Some(p) => Some(self.in_flight.remove(p).4),
            None => None,
        }
    }
    fn add(&mut self, c: MemberId, n: u32, only: Option<String>) {
        let n = n.min(MAX_CREDITS - self.credits(c));
        for _ in 0..n {
            self.ready.push((c, only.clone()));
        }
    }
    fn apply(&mut self, op: Op) -> Vec<Effect> {
        let mut fx = Vec::new();
        match op {
            Op::Create(spec) => match self.q(&spec.name) {
                Some(i) if self.queues[i].0 == spec => {}
                Some(_) => fx.push(Effect::Rejected {
                    pusher: MemberId(u16::MAX),
                    id: RequestId(0),
                    step: String::new(),
                    queue: spec.name,
                    reason: RejectReason::SpecConflict,
                    origin_shard: None,
                }),
                None => {
                    fx.push(Effect::Created {
                        queue: spec.name.clone(),
                    });
                    self.queues.push((spec, vec![], vec![]));
                }
            },
            Op::Subscribe { consumer, queue } => {
                if !self.subs.contains(&(consumer, queue.clone())) {
                    self.subs.push((consumer, queue));
                }
            }
            Op::Push { pusher, req } => self.push(pusher, req, None, false, &mut fx),
            Op::TryPush { pusher, req } => self.push(pusher, req, None, true, &mut fx),
            Op::Ready { consumer, credits } => self.add(consumer, credits, None),
            Op::ReadyFor {
                consumer,
                queue,
                credits,
            } => self.add(consumer, credits, Some(queue)),
            Op::TryTake { consumer } => match self.take(consumer, None, &mut fx) {
                Some((stamp, r)) => {
                    self.in_flight
                        .push((r.instance, r.id, r.step.clone(), consumer, stamp));
                    fx.push(Effect::Assigned { consumer, req: r });
                }
                None => fx.push(Effect::Empty { consumer }),
            },
            Op::Complete {
                consumer,
                id,
                instance,
                step,
                outputs,
                result,
                reply,
                meta,
                credits,
            } => {
                if let Some(run) = self.finish(consumer, instance, id, &step) {
                    let terminal = outputs.is_empty();
                    for o in outputs {
                        self.push(consumer, o, Some(run), false, &mut fx);
                    }
                    fx.push(Effect::Completed {
                        consumer,
                        id,
                        instance,
                        step,
                        terminal,
                        result,
                        reply,
                        meta,
                    });
                } else {
                    fx.push(Effect::DuplicateCompletion {
                        consumer,
                        id,
                        instance,
                        step,
                    });
                }
                self.add(consumer, credits, None);
            }
            Op::Fail {
                consumer,
                id,
                instance,
                step,
                error,
                status,
                credits,
            } => {
                if self.finish(consumer, instance, id, &step).is_some() {
                    fx.push(Effect::Failed {
                        consumer,
                        id,
                        instance,
                        step,
                        error,
                        status,
                    });
                } else {
                    fx.push(Effect::DuplicateCompletion {
                        consumer,
                        id,
                        instance,
                        step,
                    });
                }
                self.add(consumer, credits, None);
            }
            Op::Shutdown { by } => fx.push(Effect::Shutdown { by }),
            Op::Pipelines {
                version,
                queues,
                docs,
                ..
            } => {
                if version > self.pipelines_version {
                    self.pipelines_version = version;
                    for spec in queues {
                        match self.q(&spec.name) {
                            Some(i) => {
                                let (s, items, blocked) = &mut self.queues[i];
                                *s = spec;
                                while items.len() < s.capacity as usize && !blocked.is_empty() {
                                    let (p, w) = blocked.remove(0);
                                    fx.push(Effect::Admitted {
                                        pusher: p,
                                        id: w.id,
                                        step: w.step.clone(),
                                        origin_shard: None,
                                    });
                                    self.stamp += 1;
                                    items.push((self.stamp, w));
                                }
                            }
                            None => {
                                fx.push(Effect::Created {
                                    queue: spec.name.clone(),
                                });
                                self.queues.push((spec, vec![], vec![]));
                            }
                        }
                    }
                    fx.push(Effect::Pipelines { version, docs });
                }
            }
            // A restart's claim (the replica's, never a queue's), and what this model does not
            // generate: Redis commands, and the shards' operations (tests/shards.rs).
            Op::Recovered { .. }
            | Op::Redis { .. }
            | Op::ShardMap { .. }
            | Op::Forwarded { .. }
            | Op::ForwardAck { .. } => {}
        }
        // Serve ready consumers: the one holding the fewest requests first, then in the order
        // their credits came; after each assignment, look again from the start.
        'serve: loop {
            let mut order: Vec<(usize, usize)> = (0..self.ready.len())
                .map(|i| {
                    let c = self.ready[i].0;
                    (self.in_flight.iter().filter(|f| f.3 == c).count(), i)
                })
                .collect();
            order.sort();
            for (_, i) in order {
                let (c, only) = self.ready[i].clone();
                if let Some((stamp, r)) = self.take(c, only.as_deref(), &mut fx) {
                    self.ready.remove(i);
                    self.in_flight
                        .push((r.instance, r.id, r.step.clone(), c, stamp));
                    fx.push(Effect::Assigned {
                        consumer: c,
                        req: r,
                    });
                    continue 'serve;
                }
            }
            break;
        }
        fx
    }
}

#[derive(Clone, Debug)]
enum Gen {
    Create(u8, u32, bool, u8),
    Subscribe(u16, u8),
    Push(u8),
    TryPush(u8),
    Ready(u16, u32),
    ReadyFor(u16, u8, u32),
    TryTake(u16),
    Complete(u16, usize, Option<u8>, u32),
    Fail(u16, usize, u32),
    /// A pipeline change: version, then one queue's new spec.
    Pipelines(u8, u8, u32, bool, u8),
}

fn gen() -> impl Strategy<Value = Gen> {
    prop_oneof![
        1 => (0u8..3, 0u32..4, any::<bool>(), 0u8..3).prop_map(|(q, c, l, f)| Gen::Create(q, c, l, f)),
        1 => (0u16..3, 0u8..3).prop_map(|(c, q)| Gen::Subscribe(c, q)),
        3 => (0u8..3).prop_map(Gen::Push),
        1 => (0u8..3).prop_map(Gen::TryPush),
        2 => (0u16..3, 0u32..3).prop_map(|(c, n)| Gen::Ready(c, n)),
        1 => (0u16..3, 0u8..4, 0u32..3).prop_map(|(c, q, n)| Gen::ReadyFor(c, q, n)),
        1 => (0u16..3).prop_map(Gen::TryTake),
        3 => (0u16..3, any::<usize>(), proptest::option::of(0u8..3), 0u32..2).prop_map(|(c, i, q, n)| Gen::Complete(c, i, q, n)),
        1 => (0u16..3, any::<usize>(), 0u32..2).prop_map(|(c, i, n)| Gen::Fail(c, i, n)),
        1 => (0u8..6, 0u8..4, 0u32..5, any::<bool>(), 0u8..3).prop_map(|(v, q, c, l, f)| Gen::Pipelines(v, q, c, l, f)),
    ]
}

fn req(id: u64, q: u8) -> Request {
    Request {
        id: RequestId(id),
        instance: 0,
        step: format!("s{q}"),
        queue: format!("q{q}"),
        payload: vec![id as u8],
        meta: Meta::default(),
        http: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_sequential_model(ops in proptest::collection::vec(gen(), 1..80)) {
        let mut model = Model::default();
        let mut real = QueueState::new();
        let mut next_id = 1u64;
        let mut assigned: std::collections::BTreeSet<u64> = Default::default();
        let mut depths: std::collections::BTreeMap<String, usize> = Default::default();
        for g in ops {
            let op = match g {
                Gen::Create(q, cap, lifo, f) => Op::Create(QueueSpec {
                    name: format!("q{q}"), capacity: cap,
                    order: if lifo { Order::Lifo } else { Order::Fifo },
                    on_full: [OnFull::Block, OnFull::Reject, OnFull::OverwriteOldest][f as usize],
                    durability: Default::default(),
                }),
                Gen::Subscribe(c, q) => Op::Subscribe { consumer: MemberId(c), queue: format!("q{q}") },
                Gen::Push(q) => { next_id += 1; Op::Push { pusher: MemberId(9), req: req(next_id, q) } }
                Gen::TryPush(q) => { next_id += 1; Op::TryPush { pusher: MemberId(9), req: req(next_id, q) } }
                Gen::Ready(c, n) => Op::Ready { consumer: MemberId(c), credits: n },
                Gen::ReadyFor(c, q, n) => Op::ReadyFor { consumer: MemberId(c), queue: format!("q{q}"), credits: n },
                Gen::TryTake(c) => Op::TryTake { consumer: MemberId(c) },
                Gen::Complete(c, i, out, n) => {
                    // Mostly complete something really in flight (at this or another consumer),
                    // sometimes an instance that never existed.
                    let (instance, id, step) = if model.in_flight.is_empty() { (i as u64 % 7, RequestId(i as u64 % 5), "s0".to_string()) }
                        else { let f = &model.in_flight[i % model.in_flight.len()]; (f.0, f.1, f.2.clone()) };
                    // Fan-out to the same step twice (two instances of one step of one run).
                    let outputs = out.map(|q| { let mut r = req(id.0, q); r.step = format!("s{q}x"); vec![r.clone(), r] }).unwrap_or_default();
                    Op::Complete { consumer: MemberId(c), id, instance, step, outputs, result: None, reply: None, meta: Meta::default(), credits: n }
                }
                Gen::Pipelines(v, q, cap, lifo, f) => Op::Pipelines {
                    by: MemberId(0),
                    version: u64::from(v),
                    queues: vec![QueueSpec {
                        name: format!("q{q}"), capacity: cap,
                        order: if lifo { Order::Lifo } else { Order::Fifo },
                        on_full: [OnFull::Block, OnFull::Reject, OnFull::OverwriteOldest][f as usize],
                        durability: Default::default(),
                    }],
                    docs: vec![format!("doc {v}")],
                },
                Gen::Fail(c, i, n) => {
                    let (instance, id, step) = if model.in_flight.is_empty() { (1, RequestId(1), "s0".to_string()) }
                        else { let f = &model.in_flight[i % model.in_flight.len()]; (f.0, f.1, f.2.clone()) };
                    Op::Fail { consumer: MemberId(c), id, instance, step, error: "boom".into(), status: 500, credits: n }
                }
            };
            // Every operation survives its own encoding.
            let op = Op::decode(&op.encode()).unwrap();
            let want = model.apply(op.clone());
            let mut got = Vec::new();
            real.apply(op, &mut got);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(real.in_flight(), model.in_flight.len());
            for e in &got {
                if let Effect::Assigned { req, .. } = e {
                    // Exactly one consumer: a request instance is never handed out twice.
                    prop_assert!(assigned.insert(req.instance), "assigned twice: {:?}", req);
                }
                if let Effect::Completed { instance, .. } | Effect::Failed { instance, .. } = e {
                    prop_assert!(assigned.remove(instance), "completed but not assigned: {}", instance);
                }
            }
            for (spec, items, _) in &model.queues {
                // Within capacity, unless a pipeline change lowered it below the depth: the
                // requests stay (nothing is lost), and the queue does not grow until it drains.
                let before = depths.get(&spec.name).copied().unwrap_or(0);
                prop_assert!(items.len() <= (spec.capacity as usize).max(before));
                prop_assert_eq!(real.queue_depth(&spec.name), Some(items.len()));
                depths.insert(spec.name.clone(), items.len());
            }
        }
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Op::decode(&bytes);
    }
}
