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
            }),
            OnFull::Block => {
                fx.push(Effect::Blocked {
                    pusher,
                    id: req.id,
                    step: req.step.clone(),
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
        }
        // Serve ready consumers in order.
        let mut i = 0;
        while i < self.ready.len() {
            let (c, only) = self.ready[i].clone();
            match self.take(c, only.as_deref(), &mut fx) {
                Some((stamp, r)) => {
                    self.ready.remove(i);
                    self.in_flight
                        .push((r.instance, r.id, r.step.clone(), c, stamp));
                    fx.push(Effect::Assigned {
                        consumer: c,
                        req: r,
                    });
                }
                None => i += 1,
            }
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

#[test]
fn first_ready_consumer_is_served_first_and_fifo_lifo_hold() {
    let mut s = QueueState::new();
    let mut fx = Vec::new();
    for (name, order) in [("f", Order::Fifo), ("l", Order::Lifo)] {
        s.apply(
            Op::Create(QueueSpec {
                name: name.into(),
                capacity: 10,
                order,
                on_full: OnFull::Reject,
            }),
            &mut fx,
        );
    }
    for c in [1, 2] {
        s.apply(
            Op::Subscribe {
                consumer: MemberId(c),
                queue: "f".into(),
            },
            &mut fx,
        );
        s.apply(
            Op::Subscribe {
                consumer: MemberId(c),
                queue: "l".into(),
            },
            &mut fx,
        );
    }
    s.apply(
        Op::Ready {
            consumer: MemberId(2),
            credits: 1,
        },
        &mut fx,
    );
    s.apply(
        Op::Ready {
            consumer: MemberId(1),
            credits: 1,
        },
        &mut fx,
    );
    fx.clear();
    let mut r = req(1, 0);
    r.queue = "f".into();
    s.apply(
        Op::Push {
            pusher: MemberId(0),
            req: r,
        },
        &mut fx,
    );
    assert!(
        matches!(
            &fx[..],
            [
                Effect::Accepted {
                    id: RequestId(1),
                    ..
                },
                Effect::Assigned {
                    consumer: MemberId(2),
                    ..
                }
            ]
        ),
        "{fx:?}"
    );
    // LIFO: the newest first.
    for id in [10, 11, 12] {
        let mut r = req(id, 0);
        r.queue = "l".into();
        s.apply(
            Op::Push {
                pusher: MemberId(0),
                req: r,
            },
            &mut fx,
        );
    }
    fx.clear();
    s.apply(
        Op::TryTake {
            consumer: MemberId(1),
        },
        &mut fx,
    );
    s.apply(
        Op::TryTake {
            consumer: MemberId(1),
        },
        &mut fx,
    );
    let ids: Vec<u64> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Assigned { req, .. } => Some(req.id.0),
            _ => None,
        })
        .collect();
    // Consumer 1's standing credit took request 10 as soon as it was pushed; then each
    // non-blocking take gets the newest.
    assert_eq!(ids, vec![12, 11]);
}

#[test]
fn two_instances_of_one_step_of_one_run_both_complete() {
    let mut s = QueueState::new();
    let mut fx = Vec::new();
    for q in ["a", "d"] {
        s.apply(
            Op::Create(QueueSpec {
                name: q.into(),
                capacity: 10,
                order: Order::Fifo,
                on_full: OnFull::Reject,
            }),
            &mut fx,
        );
        for c in [1, 2] {
            s.apply(
                Op::Subscribe {
                    consumer: MemberId(c),
                    queue: q.into(),
                },
                &mut fx,
            );
        }
    }
    let mut first = req(7, 0);
    first.queue = "a".into();
    s.apply(
        Op::Push {
            pusher: MemberId(0),
            req: first,
        },
        &mut fx,
    );
    fx.clear();
    s.apply(
        Op::Ready {
            consumer: MemberId(1),
            credits: 1,
        },
        &mut fx,
    );
    let Some(Effect::Assigned { req: a, .. }) = fx.pop() else {
        panic!("{fx:?}")
    };
    // Its completion continues to step d twice (fan-out that merges again).
    let mut d = req(7, 0);
    d.queue = "d".into();
    d.step = "d".into();
    fx.clear();
    s.apply(
        Op::Complete {
            consumer: MemberId(1),
            id: a.id,
            instance: a.instance,
            step: a.step.clone(),
            outputs: vec![d.clone(), d],
            result: None,
            reply: None,
            meta: Meta::default(),
            credits: 0,
        },
        &mut fx,
    );
    s.apply(
        Op::Ready {
            consumer: MemberId(1),
            credits: 1,
        },
        &mut fx,
    );
    s.apply(
        Op::Ready {
            consumer: MemberId(2),
            credits: 1,
        },
        &mut fx,
    );
    let ds: Vec<(MemberId, Request)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Assigned { consumer, req } => Some((*consumer, req.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ds.len(), 2);
    assert_ne!(ds[0].1.instance, ds[1].1.instance);
    fx.clear();
    for (c, r) in &ds {
        s.apply(
            Op::Complete {
                consumer: *c,
                id: r.id,
                instance: r.instance,
                step: r.step.clone(),
                outputs: vec![],
                result: None,
                reply: None,
                meta: Meta::default(),
                credits: 0,
            },
            &mut fx,
        );
    }
    let done = fx
        .iter()
        .filter(|e| matches!(e, Effect::Completed { terminal: true, .. }))
        .count();
    assert_eq!(done, 2, "{fx:?}");
    // A repeated completion is a duplicate.
    let (c, r) = &ds[0];
    fx.clear();
    s.apply(
        Op::Complete {
            consumer: *c,
            id: r.id,
            instance: r.instance,
            step: r.step.clone(),
            outputs: vec![],
            result: None,
            reply: None,
            meta: Meta::default(),
            credits: 0,
        },
        &mut fx,
    );
    assert!(
        matches!(&fx[..], [Effect::DuplicateCompletion { .. }]),
        "{fx:?}"
    );
    assert_eq!(s.in_flight(), 0);
}

/// A view change removing an invoker: what it was running goes back to the head of its queue
/// (oldest first, before anything admitted normally), with new instances; the removed
/// invoker's credits and subscriptions are gone; its late completion counts for nothing; the
/// survivor runs the requests and completes them once.
#[test]
fn a_removed_invokers_requests_go_back_to_the_head() {
    for order in [Order::Fifo, Order::Lifo] {
        let mut s = QueueState::new();
        let mut fx = Vec::new();
        s.apply(
            Op::Create(QueueSpec {
                name: "q0".into(),
                capacity: 100,
                order,
                on_full: OnFull::Reject,
            }),
            &mut fx,
        );
        let (a, b, p) = (MemberId(1), MemberId(2), MemberId(0));
        for c in [a, b] {
            s.apply(
                Op::Subscribe {
                    consumer: c,
                    queue: "q0".into(),
                },
                &mut fx,
            );
        }
        // Invoker a takes requests 1 and 2; 3 and 4 wait in the queue.
        s.apply(
            Op::Ready {
                consumer: a,
                credits: 2,
            },
            &mut fx,
        );
        for id in 1..=4 {
            s.apply(
                Op::Push {
                    pusher: p,
                    req: req(id, 0),
                },
                &mut fx,
            );
        }
        let running: Vec<(u64, u64)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Assigned { consumer, req } if *consumer == a => {
                    Some((req.id.0, req.instance))
                }
                _ => None,
            })
            .collect();
        assert_eq!(running.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        fx.clear();
        s.remove_members(&[a], &mut fx);
        let back: Vec<(u64, u64)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Requeued {
                    from,
                    id,
                    old_instance,
                    ..
                } if *from == a => Some((id.0, *old_instance)),
                _ => None,
            })
            .collect();
        assert_eq!(back.len(), 2, "{order:?}: {fx:?}");
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.queue_depth("q0"), Some(4));
        // The survivor asks for work: the requests a was running come first, oldest first.
        fx.clear();
        s.apply(
            Op::Ready {
                consumer: b,
                credits: 4,
            },
            &mut fx,
        );
        let got: Vec<(u64, u64)> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Assigned { consumer, req } if *consumer == b => {
                    Some((req.id.0, req.instance))
                }
                _ => None,
            })
            .collect();
        let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(&ids[..2], &[1, 2], "{order:?}");
        // New instances: the old ones are not in flight any more.
        for (id, inst) in &got[..2] {
            let old = running.iter().find(|r| r.0 == *id).map(|r| r.1);
            assert_ne!(Some(*inst), old);
        }
        // a's late completion of its old instance is ignored; b's counts, once.
        fx.clear();
        s.apply(
            Op::Complete {
                consumer: a,
                id: RequestId(1),
                instance: running[0].1,
                step: "s0".into(),
                outputs: vec![],
                result: None,
                reply: None,
                meta: Meta::default(),
                credits: 1,
            },
            &mut fx,
        );
        assert!(
            matches!(fx[0], Effect::DuplicateCompletion { .. }),
            "{fx:?}"
        );
        // Nothing else happened: no continuation, no assignment.
        assert_eq!(fx.len(), 1, "{fx:?}");
        fx.clear();
        s.apply(
            Op::Complete {
                consumer: b,
                id: RequestId(1),
                instance: got[0].1,
                step: "s0".into(),
                outputs: vec![],
                result: None,
                reply: None,
                meta: Meta::default(),
                credits: 0,
            },
            &mut fx,
        );
        assert!(
            matches!(&fx[0], Effect::Completed { id, terminal: true, .. } if id.0 == 1),
            "{fx:?}"
        );
        // Replicas that apply the same view change agree.
        let mut r = QueueState::from_snapshot(&s.snapshot()).unwrap();
        assert_eq!(r.digest(), s.digest());
        let mut e1 = Vec::new();
        r.remove_members(&[b], &mut e1);
        let mut e2 = Vec::new();
        s.remove_members(&[b], &mut e2);
        assert_eq!(r.digest(), s.digest());
    }
}

/// Between the heads of several queues, the oldest run goes first: a continuation inherits its
/// run's stamp, so an invoker finishes request 1's pipeline before starting request 2 (with
/// one stamp per push, request 2's first step, pushed earlier than request 1's continuation,
/// would win, and a burst would advance stage by stage and finish nothing until the end).
/// Each queue keeps its own FIFO order.
#[test]
fn the_oldest_run_goes_first_between_queues() {
    let mut s = QueueState::new();
    let mut fx = Vec::new();
    for q in 0..2u8 {
        s.apply(
            Op::Create(QueueSpec {
                name: format!("q{q}"),
                capacity: 10,
                order: Order::Fifo,
                on_full: OnFull::Reject,
            }),
            &mut fx,
        );
        s.apply(
            Op::Subscribe {
                consumer: MemberId(1),
                queue: format!("q{q}"),
            },
            &mut fx,
        );
    }
    let pusher = MemberId(9);
    for id in 1..=3 {
        s.apply(
            Op::Push {
                pusher,
                req: req(id, 0),
            },
            &mut fx,
        );
    }
    let take = |s: &mut QueueState| -> Request {
        let mut fx = Vec::new();
        s.apply(
            Op::TryTake {
                consumer: MemberId(1),
            },
            &mut fx,
        );
        match fx.as_slice() {
            [Effect::Assigned { req, .. }] => req.clone(),
            other => panic!("expected one assignment: {other:?}"),
        }
    };
    let complete = |s: &mut QueueState, r: &Request, next: Option<u8>| {
        let mut fx = Vec::new();
        s.apply(
            Op::Complete {
                consumer: MemberId(1),
                id: r.id,
                instance: r.instance,
                step: r.step.clone(),
                outputs: next.map(|q| req(r.id.0, q)).into_iter().collect(),
                result: None,
                reply: None,
                meta: Meta::default(),
                credits: 0,
            },
            &mut fx,
        );
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Completed { .. })),
            "{fx:?}"
        );
    };
    let first = take(&mut s);
    assert_eq!((first.id, first.queue.as_str()), (RequestId(1), "q0"));
    complete(&mut s, &first, Some(1));
    // Request 1's second step, not request 2's first.
    let second = take(&mut s);
    assert_eq!((second.id, second.queue.as_str()), (RequestId(1), "q1"));
    complete(&mut s, &second, None);
    // Then requests 2 and 3 in their queue's FIFO order.
    let third = take(&mut s);
    assert_eq!((third.id, third.queue.as_str()), (RequestId(2), "q0"));
    complete(&mut s, &third, Some(1));
    let fourth = take(&mut s);
    assert_eq!((fourth.id, fourth.queue.as_str()), (RequestId(2), "q1"));
    let fifth = take(&mut s);
    assert_eq!((fifth.id, fifth.queue.as_str()), (RequestId(3), "q0"));
}

#[test]
fn a_credit_for_one_queue_takes_only_from_it_and_try_push_never_blocks() {
    let mut s = QueueState::new();
    let mut fx = Vec::new();
    for name in ["a", "b"] {
        s.apply(
            Op::Create(QueueSpec {
                name: name.into(),
                capacity: 1,
                order: Order::Fifo,
                on_full: OnFull::Block,
            }),
            &mut fx,
        );
    }
    let push = |s: &mut QueueState, id: u64, q: &str, try_only: bool| {
        let mut r = req(id, 0);
        r.queue = q.into();
        let mut fx = Vec::new();
        let pusher = MemberId(0);
        s.apply(
            if try_only {
                Op::TryPush { pusher, req: r }
            } else {
                Op::Push { pusher, req: r }
            },
            &mut fx,
        );
        fx
    };
    // Member 1 subscribes to nothing; its credit for `b` is not used by `a`'s request.
    fx.clear();
    s.apply(
        Op::ReadyFor {
            consumer: MemberId(1),
            queue: "b".into(),
            credits: 1,
        },
        &mut fx,
    );
    assert!(fx.is_empty());
    let got = push(&mut s, 1, "a", false);
    assert!(matches!(&got[..], [Effect::Accepted { .. }]), "{got:?}");
    // `a` is full: a TryPush is refused, a Push waits.
    let got = push(&mut s, 2, "a", true);
    assert!(
        matches!(
            &got[..],
            [Effect::Rejected {
                reason: RejectReason::Full,
                ..
            }]
        ),
        "{got:?}"
    );
    let got = push(&mut s, 3, "a", false);
    assert!(matches!(&got[..], [Effect::Blocked { .. }]), "{got:?}");
    let got = push(&mut s, 4, "b", false);
    assert!(
        matches!(
            &got[..],
            [
                Effect::Accepted { id: RequestId(4), .. },
                Effect::Assigned { consumer: MemberId(1), req }
            ] if req.queue == "b"
        ),
        "{got:?}"
    );
    assert_eq!(s.queue_depth("a"), Some(1));
    assert_eq!(s.blocked_depth("a"), Some(1));
}
