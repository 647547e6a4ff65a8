//! Two shards' replicated queues and an adversarial forwarding between them: a two-step
//! pipeline whose steps live in different shards, forwarders that lose, duplicate, reorder and
//! forget (a forwarder failing and another starting from the outbox), consumers that fail
//! (their requests put back) or complete twice, and the map changing mid-run (a queue moving to
//! the other shard, each shard switching at its own point). Whatever the adversary does, once
//! it stops and forwarding is reliable again every request runs each step to completion exactly
//! once, and the outboxes empty.

use conveyor_core::queue::*;
use conveyor_core::shard::{
    Forward, Forwarder, ForwarderConfig, ForwarderStats, Forwarding, ShardId, ShardMap,
};
use conveyor_core::types::Instant;
use conveyor_core::types::{MemberId, RequestId};
use proptest::prelude::*;
use std::collections::BTreeMap;

const A: ShardId = ShardId(0);
const B: ShardId = ShardId(1);
const TRIGGER: MemberId = MemberId(9);

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        capacity: 8,
        order: Order::Fifo,
        on_full: OnFull::Block,
        durability: Durability::Memory,
    }
}

fn request(n: u64) -> Request {
    Request {
        id: RequestId::new(TRIGGER, n),
        instance: 0,
        step: "one".into(),
        queue: "s1".into(),
        payload: n.to_le_bytes().to_vec(),
        meta: Meta::default(),
        http: None,
    }
}

/// A tiny deterministic generator (xorshift64*), seeded by proptest.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One shard: its group's state (every replica's: they apply the same order), the requests
/// its consumer holds, and what happened.
struct Shard {
    me: ShardId,
    state: QueueState,
    /// Assigned to the consumer and not yet completed by it: (instance, request).
    running: Vec<(u64, Request)>,
    /// Completed per (request, step): counted from the order's effects.
    done: BTreeMap<(RequestId, String), usize>,
    consumer: MemberId,
    /// Every effect its order produced, in order.
    log: Vec<Effect>,
}

/// Messages between shards, in flight through the forwarders: entries and watermarks.
#[derive(Clone, Debug)]
enum Msg {
    Forward {
        from: ShardId,
        to: ShardId,
        seq: u64,
        entry: Forward,
    },
    Ack {
        from: ShardId,
        to: ShardId,
        upto: u64,
    },
}

struct World {
    shards: [Shard; 2],
    wire: Vec<Msg>,
    rng: Rng,
    /// What the adversary reached, for the coverage test.
    seen: Seen,
}

#[derive(Default, Debug)]
struct Seen {
    /// Forwarded entries ignored (taken before, or after a gap).
    ignored: usize,
    /// Requests moved with their queue by a new map.
    moved: usize,
    /// Entries a shard took for a queue it no longer owns, forwarded on.
    forwarded_on: usize,
    duplicate_completions: usize,
    requeued: usize,
    /// Runs that ended with an error in the other shard.
    failed: usize,
}

impl World {
    fn new(seed: u64) -> World {
        let mk = |me| Shard {
            me,
            state: QueueState::new(),
            running: Vec::new(),
            done: BTreeMap::new(),
            consumer: MemberId(1),
            log: Vec::new(),
        };
        let mut w = World {
            shards: [mk(A), mk(B)],
            wire: Vec::new(),
            rng: Rng(seed | 1),
            seen: Seen::default(),
        };
        let map = ShardMap::hashed(1, 2)
            .with_override("s1", A)
            .with_override("s2", B);
        for i in 0..2 {
            let me = w.shards[i].me;
            let c = w.shards[i].consumer;
            w.apply(i, Op::Create(spec("s1")));
            w.apply(i, Op::Create(spec("s2")));
            w.apply(
                i,
                Op::ShardMap {
                    by: c,
                    me,
                    map: map.clone(),
                },
            );
            for q in ["s1", "s2"] {
                w.apply(
                    i,
                    Op::Subscribe {
                        consumer: c,
                        queue: q.into(),
                    },
                );
            }
            w.apply(
                i,
                Op::Ready {
                    consumer: c,
                    credits: 4,
                },
            );
        }
        w
    }

    /// Applies `op` at shard `i` (at every replica) and acts on its effects: assignments go to
    /// the consumer, outbox entries and watermarks onto the wire (the forwarder sends at once;
    /// it may also lose them), completions are counted.
    fn apply(&mut self, i: usize, op: Op) {
        let mut fx = Vec::new();
        let forwarded = match &op {
            Op::Forwarded { from, seq, .. } => Some((*from, *seq)),
            _ => None,
        };
        self.shards[i].state.apply(op, &mut fx);
        let me = self.shards[i].me;
        if let Some((from, seq)) = forwarded {
            if self.shards[i].state.shards().watermark(from) != seq {
                self.seen.ignored += 1;
            } else if fx.iter().any(|e| matches!(e, Effect::Outbox { .. })) {
                self.seen.forwarded_on += 1;
            }
        }
        self.shards[i].log.extend(fx.iter().cloned());
        for e in fx {
            if let Effect::Outbox {
                entry: Forward::Outcome(end),
                ..
            } = &e
            {
                if matches!(**end, Effect::Failed { .. }) {
                    self.seen.failed += 1;
                }
            }
            match e {
                Effect::Assigned { consumer, req } if consumer == self.shards[i].consumer => {
                    self.shards[i].running.push((req.instance, req));
                }
                Effect::Completed { id, step, .. } | Effect::Failed { id, step, .. } => {
                    *self.shards[i].done.entry((id, step)).or_default() += 1;
                }
                Effect::Outbox { to, seq, entry } => self.wire.push(Msg::Forward {
                    from: me,
                    to,
                    seq,
                    entry,
                }),
                Effect::Inbox { from, upto } => self.wire.push(Msg::Ack {
                    from: me,
                    to: from,
                    upto,
                }),
                Effect::Rejected { reason, .. } => panic!("rejected: {reason}"),
                Effect::ShardMap { moved, .. } => self.seen.moved += moved,
                Effect::DuplicateCompletion { .. } => self.seen.duplicate_completions += 1,
                _ => {}
            }
        }
    }

    fn index(s: ShardId) -> usize {
        s.0 as usize
    }

    /// Delivers one message: an entry into its destination's order, a watermark into its
    /// source's.
    fn deliver(&mut self, m: Msg) {
        match m {
            Msg::Forward {
                from,
                to,
                seq,
                entry,
            } => self.apply(Self::index(to), Op::Forwarded { from, seq, entry }),
            // An ack travels from the shard that took the entries to the one that sent them.
            Msg::Ack { from, to, upto } => {
                self.apply(Self::index(to), Op::ForwardAck { to: from, upto })
            }
        }
    }

    /// A forwarder (new, or after a timeout) sends the outbox of shard `i` again, in order.
    fn resend(&mut self, i: usize) {
        let me = self.shards[i].me;
        let st = &self.shards[i].state;
        let mut msgs = Vec::new();
        for to in st.shards().destinations().collect::<Vec<_>>() {
            for (seq, entry) in st.shards().outbox(to) {
                msgs.push(Msg::Forward {
                    from: me,
                    to,
                    seq,
                    entry: entry.clone(),
                });
            }
        }
        self.wire.extend(msgs);
    }

    /// The consumer of shard `i` completes one of its requests (the first step continues into
    /// `s2`; the second ends the run); sometimes it submits the completion twice.
    fn complete(&mut self, i: usize, which: usize, twice: bool) {
        if self.shards[i].running.is_empty() {
            return;
        }
        let (instance, req) = self.shards[i]
            .running
            .remove(which % self.shards[i].running.len());
        let outputs = if req.step == "one" {
            vec![Request {
                step: "two".into(),
                queue: "s2".into(),
                instance: 0,
                ..req.clone()
            }]
        } else {
            Vec::new()
        };
        // Sometimes the second step's function fails: the run ends with an error, told in its
        // origin shard like a result.
        let op = if req.step == "two" && self.rng.chance(10) {
            Op::Fail {
                consumer: self.shards[i].consumer,
                id: req.id,
                instance,
                step: req.step.clone(),
                error: "boom".into(),
                status: 500,
                credits: 1,
            }
        } else {
            Op::Complete {
                consumer: self.shards[i].consumer,
                id: req.id,
                instance,
                step: req.step.clone(),
                outputs,
                result: None,
                reply: None,
                meta: Meta::default(),
                credits: 1,
            }
        };
        if twice {
            self.apply(i, op.clone());
        }
        self.apply(i, op);
    }

    /// The consumer of shard `i` fails: the group removes it (its requests go back to their
    /// queues) and it comes back as a new member.
    fn consumer_fails(&mut self, i: usize) {
        let old = self.shards[i].consumer;
        let mut fx = Vec::new();
        self.shards[i].state.remove_members(&[old], &mut fx);
        self.seen.requeued += fx
            .iter()
            .filter(|e| matches!(e, Effect::Requeued { .. }))
            .count();
        self.shards[i].running.clear();
        let c = MemberId(old.0 + 10);
        self.shards[i].consumer = c;
        for q in ["s1", "s2"] {
            self.apply(
                i,
                Op::Subscribe {
                    consumer: c,
                    queue: q.into(),
                },
            );
        }
        self.apply(
            i,
            Op::Ready {
                consumer: c,
                credits: 4,
            },
        );
    }

    fn quiet(&self) -> bool {
        self.wire.is_empty() && self.quiet_but_wire()
    }

    /// Nothing running, nothing waiting in an outbox (the hand-driven wire aside).
    fn quiet_but_wire(&self) -> bool {
        self.shards
            .iter()
            .all(|s| s.running.is_empty() && s.state.shards().waiting() == 0)
    }
}

fn run(seed: u64, requests: u64, steps: usize, loss: u64, remap: bool) -> World {
    let mut w = World::new(seed);
    let moved = if w.rng.chance(50) { "s2" } else { "s1" };
    let map2 = ShardMap::hashed(2, 2)
        .with_override("s1", A)
        .with_override("s2", B)
        .with_override(moved, if moved == "s2" { A } else { B });
    let mut mapped = [false; 2];
    let mut pushed = 0;
    for _ in 0..steps {
        match w.rng.below(12) {
            0 | 1 if pushed < requests => {
                pushed += 1;
                w.apply(
                    0,
                    Op::Push {
                        pusher: TRIGGER,
                        req: request(pushed),
                    },
                );
            }
            2..=4 => {
                let i = w.rng.below(2);
                let which = w.rng.below(64);
                let twice = w.rng.chance(10);
                w.complete(i, which, twice);
            }
            5..=7 if !w.wire.is_empty() => {
                // Any message, not the oldest: reordered; lost or duplicated at random.
                let k = w.rng.below(w.wire.len());
                let m = w.wire.swap_remove(k);
                if w.rng.chance(loss) {
                    continue;
                }
                if w.rng.chance(15) {
                    w.wire.push(m.clone());
                }
                w.deliver(m);
            }
            8 => {
                let i = w.rng.below(2);
                w.resend(i);
            }
            9 if w.rng.chance(20) => {
                // The forwarders fail: what was in flight is gone.
                w.wire.clear();
            }
            10 if w.rng.chance(10) => {
                let i = w.rng.below(2);
                w.consumer_fails(i);
            }
            11 if remap => {
                let i = w.rng.below(2);
                if !mapped[i] && w.rng.chance(5) {
                    mapped[i] = true;
                    let me = w.shards[i].me;
                    let by = w.shards[i].consumer;
                    w.apply(
                        i,
                        Op::ShardMap {
                            by,
                            me,
                            map: map2.clone(),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    // The adversary stops: the rest is pushed, the map reaches both shards, forwarding is
    // reliable (in order, a resend when the wire is empty), consumers complete what they run.
    while pushed < requests {
        pushed += 1;
        w.apply(
            0,
            Op::Push {
                pusher: TRIGGER,
                req: request(pushed),
            },
        );
    }
    for (i, done) in mapped.into_iter().enumerate() {
        if remap && !done {
            let me = w.shards[i].me;
            let by = w.shards[i].consumer;
            w.apply(
                i,
                Op::ShardMap {
                    by,
                    me,
                    map: map2.clone(),
                },
            );
        }
    }
    let mut rounds = 0;
    while !w.quiet() {
        rounds += 1;
        assert!(rounds < 100_000, "no progress (seed {seed})");
        if !w.wire.is_empty() {
            let m = w.wire.remove(0);
            w.deliver(m);
        } else if w.shards.iter().any(|s| !s.running.is_empty()) {
            for i in 0..2 {
                while !w.shards[i].running.is_empty() {
                    w.complete(i, 0, false);
                }
            }
        } else {
            w.resend(0);
            w.resend(1);
        }
    }
    w
}

fn check(w: &World, requests: u64, seed: u64) {
    for n in 1..=requests {
        let id = RequestId::new(TRIGGER, n);
        for step in ["one", "two"] {
            let times: usize = w
                .shards
                .iter()
                .map(|s| s.done.get(&(id, step.to_string())).copied().unwrap_or(0))
                .sum();
            assert_eq!(
                times, 1,
                "request {n} step {step} completed {times} times (seed {seed})"
            );
        }
    }
    // Every run began in A: its end is told there (and kept there for an origin that comes
    // back), never in B.
    assert!(
        w.shards[1].done.keys().all(|k| k.1 != "two"),
        "an end told outside its origin shard (seed {seed})"
    );
    for s in &w.shards {
        assert_eq!(s.state.size(), 0, "{} holds requests (seed {seed})", s.me);
        assert_eq!(s.state.shards().waiting(), 0);
        assert_eq!(
            s.state.shards().away().count(),
            0,
            "runs still away (seed {seed})"
        );
    }
}

#[test]
fn a_two_shard_pipeline_runs_each_step_once_without_faults() {
    // No adversary: only the reliable end.
    let w = run(7, 40, 0, 0, false);
    check(&w, 40, 7);
    // Every first step ran in A, every second step in B (40 entries taken from A), and the
    // runs' ends were told in A, their origin shard (40 entries taken from B).
    assert_eq!(w.shards[0].done.keys().filter(|k| k.1 == "one").count(), 40);
    assert_eq!(w.shards[1].state.shards().watermark(A), 40);
    assert_eq!(w.shards[0].state.shards().watermark(B), 40);
    assert_eq!(w.shards[1].done.len(), 0);
}

/// The adversary reaches every case the shards handle: duplicates and gaps ignored, requests
/// moved with their queue, entries forwarded on by a shard that no longer owns their queue,
/// completions submitted twice, a failed consumer's requests put back.
#[test]
fn the_adversary_reaches_every_case() {
    let mut all = Seen::default();
    for seed in 0..200 {
        let w = run(seed, 30, 600, 20, true);
        check(&w, 30, seed);
        all.ignored += w.seen.ignored;
        all.moved += w.seen.moved;
        all.forwarded_on += w.seen.forwarded_on;
        all.duplicate_completions += w.seen.duplicate_completions;
        all.requeued += w.seen.requeued;
        all.failed += w.seen.failed;
    }
    eprintln!("{all:?}");
    assert!(all.ignored > 0 && all.moved > 0 && all.forwarded_on > 0);
    assert!(all.duplicate_completions > 0 && all.requeued > 0);
    assert!(all.failed > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn every_step_runs_once_whatever_the_forwarders_and_the_map_do(seed in any::<u64>(), loss in 0u64..60) {
        let w = run(seed, 30, 600, loss, true);
        check(&w, 30, seed);
    }
}

/// A trigger that comes back (see `QueueState::rejoined`) counts its runs away in another
/// shard as held, so it does not push them again; once a run's end comes back it is among the
/// outcomes told to it.
#[test]
fn a_returning_origin_counts_its_runs_away_as_held_and_hears_their_ends() {
    let mut w = World::new(3);
    w.apply(
        0,
        Op::Push {
            pusher: TRIGGER,
            req: request(1),
        },
    );
    w.complete(0, 0, false);
    let held = |w: &World| match w.shards[0].state.rejoined(TRIGGER, 0).last() {
        Some(Effect::Rejoined { pending, .. }) => pending.clone(),
        e => panic!("{e:?}"),
    };
    // Step one done in A; step two waits in A's outbox for B.
    assert_eq!(held(&w), vec![RequestId::new(TRIGGER, 1)]);
    while let Some(m) = (!w.wire.is_empty()).then(|| w.wire.remove(0)) {
        w.deliver(m);
    }
    // Taken by B and acknowledged: no longer in A's outbox, still away.
    assert_eq!(w.shards[0].state.shards().waiting(), 0);
    assert_eq!(held(&w), vec![RequestId::new(TRIGGER, 1)]);
    w.complete(1, 0, false);
    while let Some(m) = (!w.wire.is_empty()).then(|| w.wire.remove(0)) {
        w.deliver(m);
    }
    assert_eq!(held(&w), Vec::<RequestId>::new());
    let told = w.shards[0].state.rejoined(TRIGGER, 0);
    assert!(
        told.iter().any(|e| matches!(e,
            Effect::Completed { id, step, terminal: true, .. } | Effect::Failed { id, step, .. }
                if *id == RequestId::new(TRIGGER, 1) && step == "two")),
        "{told:?}"
    );
}

/// Request ids are unique within a shard, not across shards: a run begun in A by member 9 may
/// meet, in B, a member 9 of B's own. The news of that run in B (its second step completed and
/// continued back into A) is for nobody in B; its pusher in A hears its push accepted and its
/// run's end.
#[test]
fn a_foreign_run_sharing_a_local_members_id_concerns_nobody_there() {
    let mut w = World::new(5);
    let flush = |w: &mut World| {
        while let Some(m) = (!w.wire.is_empty()).then(|| w.wire.remove(0)) {
            w.deliver(m);
        }
    };
    w.apply(
        0,
        Op::Push {
            pusher: TRIGGER,
            req: request(1),
        },
    );
    w.complete(0, 0, false);
    flush(&mut w);
    // Step two, in B, continues to a third step in A.
    let (instance, req) = w.shards[1].running.remove(0);
    let consumer = w.shards[1].consumer;
    w.apply(
        1,
        Op::Complete {
            consumer,
            id: req.id,
            instance,
            step: req.step.clone(),
            outputs: vec![Request {
                step: "three".into(),
                queue: "s1".into(),
                instance: 0,
                ..req.clone()
            }],
            result: None,
            reply: None,
            meta: Meta::default(),
            credits: 1,
        },
    );
    flush(&mut w);
    w.complete(0, 0, false);
    flush(&mut w);
    let id = RequestId::new(TRIGGER, 1);
    let about = |e: &Effect| match e {
        Effect::Accepted { id: i, .. }
        | Effect::Completed { id: i, .. }
        | Effect::Failed { id: i, .. }
        | Effect::Requeued { id: i, .. } => *i == id,
        _ => false,
    };
    let in_b: Vec<&Effect> = w.shards[1].log.iter().filter(|e| about(e)).collect();
    assert!(
        in_b.iter().any(|e| matches!(
            e,
            Effect::Completed {
                terminal: false,
                ..
            }
        )),
        "{in_b:?}"
    );
    for e in &in_b {
        assert!(!e.concerns(TRIGGER, Some(B)), "told in B: {e:?}");
    }
    // In A, the pusher hears its push accepted and its run's end, once.
    let in_a: Vec<&Effect> = w.shards[0].log.iter().filter(|e| about(e)).collect();
    let told: Vec<&&Effect> = in_a
        .iter()
        .filter(|e| e.concerns(TRIGGER, Some(A)))
        .collect();
    assert!(
        told.iter().any(|e| matches!(e, Effect::Accepted { .. })),
        "{in_a:?}"
    );
    assert_eq!(
        told.iter()
            .filter(|e| matches!(
                e,
                Effect::Completed { terminal: true, .. } | Effect::Failed { .. }
            ))
            .count(),
        1,
        "{in_a:?}"
    );
    // A member of another id hears none of it.
    assert!(in_a.iter().all(|e| !e.concerns(MemberId(1), Some(A))));
}

/// A requeued foreign request (its consumer in B failed) is B's business, not B's member 9's.
#[test]
fn a_foreign_request_requeued_concerns_nobody_there() {
    let mut w = World::new(6);
    w.apply(
        0,
        Op::Push {
            pusher: TRIGGER,
            req: request(1),
        },
    );
    w.complete(0, 0, false);
    while let Some(m) = (!w.wire.is_empty()).then(|| w.wire.remove(0)) {
        w.deliver(m);
    }
    assert_eq!(w.shards[1].running.len(), 1);
    let mut fx = Vec::new();
    let c = w.shards[1].consumer;
    w.shards[1].state.remove_members(&[c], &mut fx);
    let re: Vec<&Effect> = fx
        .iter()
        .filter(|e| matches!(e, Effect::Requeued { .. }))
        .collect();
    assert_eq!(re.len(), 1, "{fx:?}");
    assert!(!re[0].concerns(TRIGGER, Some(B)));
    // Not sharded, the same effect would be the pusher's (ids unique in the group).
    let mut s = QueueState::new();
    s.apply(Op::Create(spec("s1")), &mut fx);
    let mut fx = Vec::new();
    s.apply(
        Op::Subscribe {
            consumer: MemberId(1),
            queue: "s1".into(),
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
        Op::Push {
            pusher: TRIGGER,
            req: request(2),
        },
        &mut fx,
    );
    fx.clear();
    s.remove_members(&[MemberId(1)], &mut fx);
    let local = fx
        .iter()
        .find(|e| matches!(e, Effect::Requeued { .. }))
        .expect("requeued");
    assert!(local.concerns(TRIGGER, None));
}

/// The forwarders of `conveyor_core::shard::Forwarder` instead of the adversary's hand-driven
/// wire: in virtual time, each shard's forwarder reads both shards' states and submits; what it
/// submits is lost (`loss` percent), duplicated or delayed (reordered) on its way into the
/// order, and forwarders are sometimes replaced by new ones (a failed process's successor).
/// Once the faults stop the forwarders alone (their own timeouts, nobody resending for them)
/// bring every run to its end, each step once. Returns the forwarders' counters.
fn run_forwarders(seed: u64, requests: u64, loss: u64) -> (World, Vec<ForwarderStats>) {
    let mut w = World::new(seed);
    let cfg = ForwarderConfig {
        window: 8,
        ack_every: 4,
        ..ForwarderConfig::default()
    };
    let mut now = Instant::ZERO;
    let mut fw = [
        Forwarder::new(A, B, cfg.clone(), now),
        Forwarder::new(B, A, cfg.clone(), now),
    ];
    let mut stats = Vec::new();
    // Submissions on their way into a shard's order: (when, shard index, op).
    let mut path: Vec<(Instant, usize, Op)> = Vec::new();
    let mut pushed = 0;
    let faulty_until = Instant::from_micros(50_000);
    let mut out = Vec::new();
    for _ in 0..400_000 {
        now = now + core::time::Duration::from_micros(10);
        let faulty = loss > 0 && now < faulty_until;
        if pushed < requests && w.rng.chance(20) {
            pushed += 1;
            w.apply(
                0,
                Op::Push {
                    pusher: TRIGGER,
                    req: request(pushed),
                },
            );
        }
        // The hand-driven wire is not used: the forwarders read the replicated state.
        w.wire.clear();
        if w.rng.chance(30) {
            let i = w.rng.below(2);
            let which = w.rng.below(64);
            w.complete(i, which, false);
        }
        if faulty && w.rng.chance(1) {
            let i = w.rng.below(2);
            stats.push(fw[i].stats().clone());
            fw[i] = Forwarder::new(fw[i].from(), fw[i].to(), cfg.clone(), now);
        }
        for (i, f) in fw.iter_mut().enumerate() {
            let j = 1 - i;
            let due = f.poll_timeout().is_none_or(|t| t <= now) || w.rng.chance(50);
            if !due {
                continue;
            }
            f.poll(
                now,
                w.shards[i].state.shards(),
                w.shards[j].state.shards(),
                4,
                4,
                &mut out,
            );
            for f in out.drain(..) {
                let (to, op) = match f {
                    Forwarding::ToDestination(op) => (j, op),
                    Forwarding::ToSource(op) => (i, op),
                };
                if faulty && w.rng.chance(loss) {
                    continue;
                }
                let delay = if faulty { w.rng.below(500) as u64 } else { 20 };
                if faulty && w.rng.chance(10) {
                    path.push((
                        now + core::time::Duration::from_micros(delay * 2),
                        to,
                        op.clone(),
                    ));
                }
                path.push((now + core::time::Duration::from_micros(delay), to, op));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = path.drain(..).partition(|(t, _, _)| *t <= now);
        path = later;
        for (_, to, op) in due {
            w.apply(to, op);
        }
        if pushed == requests && path.is_empty() && w.quiet_but_wire() {
            break;
        }
    }
    stats.extend(fw.iter().map(|f| f.stats().clone()));
    (w, stats)
}

#[test]
fn forwarders_carry_every_run_once_through_loss_duplication_and_their_own_failures() {
    let mut went_back = 0;
    for seed in 0..40 {
        let (w, stats) = run_forwarders(seed, 40, 30);
        assert!(
            w.quiet_but_wire(),
            "runs left after the faults stopped (seed {seed})"
        );
        check(&w, 40, seed);
        went_back += stats.iter().map(|s| s.went_back).sum::<u64>();
    }
    // Losses were repaired by going back to the watermark.
    assert!(went_back > 0);
}

#[test]
fn forwarders_batch_acknowledgements() {
    let (w, stats) = run_forwarders(11, 200, 0);
    check(&w, 200, 11);
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    let acks: u64 = stats.iter().map(|s| s.acks).sum();
    // 400 entries taken (200 continuations into B, 200 ends back to A), each sent once.
    assert_eq!(sent, 400, "{stats:?}");
    assert!(
        acks * 2 < sent,
        "{acks} acknowledgements for {sent} entries"
    );
}
