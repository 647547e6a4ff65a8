//! The replica driven over a perfect network: views, speculation, returns, joiners.

use super::*;
use crate::proto::Dest;
use crate::queue::{Meta, OnFull, Order, QueueSpec, Request};
use crate::types::{RequestId, ViewId};

/// Replicas by member id, some down, every frame between live ones delivered each step;
/// every effect each one applies is recorded.
struct Net {
    rs: Vec<Replica>,
    down: Vec<bool>,
    now: u64,
    fx: Vec<Vec<Effect>>,
}

fn key() -> Key {
    Key::from_bytes([5; 32])
}

impl Net {
    fn new(n: u16) -> Net {
        let view = View::new(ViewId(1), (0..n).map(MemberId).collect());
        Net {
            rs: (0..n)
                .map(|i| {
                    Replica::new(
                        ProtoConfig::default(),
                        key(),
                        GroupId(7),
                        view.clone(),
                        MemberId(i),
                        0x100 + u64::from(i),
                        Instant(0),
                    )
                    .unwrap()
                })
                .collect(),
            down: vec![false; n as usize],
            now: 0,
            fx: vec![Vec::new(); n as usize],
        }
    }
    fn run(&mut self, us: u64) {
        for _ in 0..us / 500 {
            self.now += 500;
            let now = Instant(self.now);
            let mut frames = Vec::new();
            for (i, r) in self.rs.iter_mut().enumerate() {
                if self.down[i] {
                    continue;
                }
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
                    if to && !self.down[j] {
                        self.rs[j].handle_frame(now, &t.frame);
                    }
                }
            }
            for (i, r) in self.rs.iter_mut().enumerate() {
                while let Some(e) = r.poll_effect() {
                    self.fx[i].push(e);
                }
            }
        }
    }
}

fn spec() -> QueueSpec {
    QueueSpec {
        name: "q".into(),
        capacity: 16,
        order: Order::Fifo,
        on_full: OnFull::Block,
        durability: Default::default(),
    }
}

#[test]
fn a_view_is_reported_before_the_removed_members_requests_go_back() {
    let mut net = Net::new(3);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    for c in [1, 2] {
        let consumer = MemberId(c);
        net.rs[c as usize]
            .submit(&Op::Subscribe {
                consumer,
                queue: "q".into(),
            })
            .unwrap();
    }
    net.run(5_000);
    // Only member 2 is ready: the push is assigned to it; then it crashes.
    net.rs[2]
        .submit(&Op::Ready {
            consumer: MemberId(2),
            credits: 1,
        })
        .unwrap();
    net.run(5_000);
    let req = Request {
        id: RequestId::new(MemberId(0), 1),
        instance: 0,
        step: "s".into(),
        queue: "q".into(),
        payload: b"x".to_vec(),
        meta: Meta::default(),
        http: None,
    };
    net.rs[0]
        .submit(&Op::Push {
            pusher: MemberId(0),
            req,
        })
        .unwrap();
    net.run(5_000);
    assert!(net.fx[0]
        .iter()
        .any(|e| matches!(e, Effect::Assigned { consumer, .. } if *consumer == MemberId(2))));
    net.down[2] = true;
    net.run(200_000);
    for i in 0..2 {
        let at = net.fx[i]
            .iter()
            .position(|e| matches!(e, Effect::ViewInstalled { .. }))
            .expect("a view installed");
        assert!(
            matches!(&net.fx[i][at], Effect::ViewInstalled { removed, .. } if removed == &[MemberId(2)])
        );
        assert!(
            matches!(&net.fx[i][at + 1], Effect::Requeued { from, .. } if *from == MemberId(2)),
            "{:?}",
            &net.fx[i][at..]
        );
        assert_eq!(net.rs[i].stats().requeued, 1);
        assert_eq!(net.rs[i].queue().queue_depth("q"), Some(1));
    }
}

fn push(net: &mut Net, n: u64) {
    push_to(net, "q", n);
}

/// Three members; member 2 speculates, takes from queue "q" and has 4 credits.
fn speculating_net() -> Net {
    let mut net = Net::new(3);
    net.rs[2].set_speculation(true);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.run(5_000);
    net.rs[2]
        .submit(&Op::Subscribe {
            consumer: MemberId(2),
            queue: "q".into(),
        })
        .unwrap();
    net.rs[2]
        .submit(&Op::Ready {
            consumer: MemberId(2),
            credits: 4,
        })
        .unwrap();
    net.run(5_000);
    net
}

fn speculated(e: &Effect) -> Option<&Request> {
    match e {
        Effect::Speculated { req, .. } => Some(req),
        _ => None,
    }
}
fn confirmed(e: &Effect) -> Option<&Request> {
    match e {
        Effect::Confirmed { req, .. } => Some(req),
        _ => None,
    }
}
fn assigned(e: &Effect) -> Option<&Request> {
    match e {
        Effect::Assigned { req, .. } => Some(req),
        _ => None,
    }
}

/// With speculation on, an invoker is told of its assignment before it is delivered, then
/// that the delivery confirmed it (in place of the assignment itself); the others see the
/// plain assignment at the same place in the order.
#[test]
fn a_speculated_assignment_comes_first_and_is_then_confirmed() {
    let mut net = speculating_net();
    for n in 1..=3 {
        push(&mut net, n);
    }
    // One step: the pushes reach member 2, which cannot have seen them stable yet.
    net.run(500);
    let spec: Vec<&Request> = net.fx[2].iter().filter_map(speculated).collect();
    // The first is held after every slot before it; the next two after member 1's slots
    // of their rounds, which member 2 does not hold yet and takes for nulls.
    assert_eq!(spec.len(), 3, "{:?}", net.fx[2]);
    assert!(!net.fx[2]
        .iter()
        .any(|e| matches!(e, Effect::Confirmed { .. } | Effect::Assigned { .. })));
    net.run(10_000);
    let conf: Vec<&Request> = net.fx[2].iter().filter_map(confirmed).collect();
    let asgn: Vec<&Request> = net.fx[0].iter().filter_map(assigned).collect();
    let spec: Vec<&Request> = net.fx[2].iter().filter_map(speculated).collect();
    assert_eq!(conf, asgn);
    assert_eq!(spec, asgn);
    for r in spec {
        let at =
            |f: fn(&Effect) -> Option<&Request>| net.fx[2].iter().position(|e| f(e) == Some(r));
        let (s, c) = (at(speculated), at(confirmed));
        assert!(s < c, "{r:?} speculated at {s:?}, confirmed at {c:?}");
    }
    assert!(!net.fx[2]
        .iter()
        .any(|e| matches!(e, Effect::Assigned { .. } | Effect::Discarded { .. })));
    let st = net.rs[2].stats();
    assert_eq!((st.speculated, st.confirmed, st.discarded), (3, 3, 0));
    assert_eq!(st.speculation_resets, 0);
    assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
}

/// Switching speculation off discards what was speculated and not delivered; what is
/// delivered after is assigned as usual.
#[test]
fn switching_speculation_off_discards_what_was_not_delivered() {
    let mut net = speculating_net();
    push(&mut net, 1);
    net.run(500);
    assert!(matches!(net.fx[2].last(), Some(Effect::Speculated { .. })));
    net.rs[2].set_speculation(false);
    net.run(10_000);
    let tail: Vec<&Effect> = net.fx[2]
        .iter()
        .skip_while(|e| !matches!(e, Effect::Speculated { .. }))
        .filter(|e| e.concerns(MemberId(2)) && !matches!(e, Effect::Accepted { .. }))
        .collect();
    assert!(
        matches!(
            tail.as_slice(),
            [Effect::Speculated { req: a, speculation: x, .. }, Effect::Discarded { speculation: y, .. }, Effect::Assigned { req: b, .. }]
                if a == b && x == y
        ),
        "{tail:?}"
    );
}

fn joiner(nonce: u64, now: u64) -> Replica {
    Replica::joining(
        ProtoConfig::default(),
        key(),
        GroupId(7),
        MemberId(2),
        vec![MemberId(0), MemberId(1)],
        nonce,
        Instant(now),
    )
    .unwrap()
}

fn first_view(fx: &[Effect]) -> Option<u32> {
    fx.iter().find_map(|e| match e {
        Effect::ViewInstalled { view, .. } => Some(*view),
        _ => None,
    })
}

/// A joiner that restarts (a new process, a new nonce) the moment it installed the view it
/// joined with, before it said anything in it: the new process is a new joiner; it never
/// installs the view meant for the old one, which a member that never heard from the old
/// one in that view would otherwise send it as a missed commit (seed 106118: the new
/// process then served in the old one's place, and found out from a row).
#[test]
fn a_restarted_joiner_does_not_take_the_view_of_the_process_before_it() {
    let mut net = Net::new(2);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.run(5_000);
    net.rs.push(joiner(1, net.now));
    net.down.push(false);
    net.fx.push(Vec::new());
    let mut steps = 0;
    while first_view(&net.fx[2]).is_none() {
        net.run(500);
        steps += 1;
        assert!(steps < 200, "the first joiner was never admitted");
    }
    let old = first_view(&net.fx[2]).unwrap_or(0);
    net.rs[2] = joiner(2, net.now);
    net.fx[2].clear();
    net.run(300_000);
    let new = first_view(&net.fx[2]).expect("the new process was admitted");
    assert!(
        new > old,
        "the new process installed view {new}, the old one's was {old}"
    );
    assert_eq!(net.rs[2].status(), Status::Serving);
    assert_eq!(net.rs[2].member().restarted_in_view(), None);
    assert_eq!(net.rs[2].view(), net.rs[0].view());
    assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
}

#[test]
fn a_joiner_whose_state_does_not_decode_stops_and_is_removed() {
    let mut net = Net::new(3);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.run(5_000);
    let mut j = joiner(0x5eed, net.now);
    // As if its state had arrived and did not decode: an empty queue would diverge.
    assert!(!j.on_state(b"not a snapshot"));
    assert_eq!(j.stats().bad_states, 1);
    assert_eq!(j.status(), Status::Excluded);
    assert_eq!(
        j.member().stop_reason(),
        Some(crate::proto::StopReason::StateRefused)
    );
    assert!(j.member().stop_reason().is_some_and(|r| r.kept_by_group()));
    net.rs.push(j);
    net.down.push(false);
    net.fx.push(Vec::new());
    net.run(300_000);
    // It sent nothing and joined nothing; the group went on without it.
    assert!(net.rs[3].member().poll_timeout() == Instant(u64::MAX));
    assert_eq!(net.rs[0].view().members.len(), 3);
    assert_eq!(net.rs[0].status(), Status::Serving);
}

/// A member removed by a view change (its links dark past the failure timeout) while
/// requests it pushed are queued and running comes back as a joiner in the same process:
/// it is told the outcomes it missed, then which of its requests the group still holds.
#[test]
fn a_removed_origin_that_comes_back_is_told_what_it_missed() {
    let mut net = Net::new(3);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.rs[1]
        .submit(&Op::Subscribe {
            consumer: MemberId(1),
            queue: "q".into(),
        })
        .unwrap();
    net.run(5_000);
    let origin = MemberId(2);
    let req = |n: u64| Request {
        id: RequestId::new(origin, n),
        instance: 0,
        step: "s".into(),
        queue: "q".into(),
        payload: vec![n as u8],
        meta: Meta::default(),
        http: None,
    };
    for n in 1..=3 {
        net.rs[2]
            .submit(&Op::Push {
                pusher: origin,
                req: req(n),
            })
            .unwrap();
    }
    net.run(5_000);
    // Member 2 goes dark with request 4 submitted but never ordered.
    net.down[2] = true;
    net.rs[2]
        .submit(&Op::Push {
            pusher: origin,
            req: req(4),
        })
        .unwrap();
    let since = net.rs[2].queue().applied();
    net.run(300_000);
    assert!(!net.rs[0].member().view().members.contains(&origin));
    // Without it, request 1 completes and request 2 fails; 3 stays queued.
    let assigned = |fx: &[Effect]| -> Vec<Request> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Assigned { consumer, req } if *consumer == MemberId(1) => Some(req.clone()),
                _ => None,
            })
            .collect()
    };
    net.rs[1]
        .submit(&Op::Ready {
            consumer: MemberId(1),
            credits: 1,
        })
        .unwrap();
    net.run(5_000);
    let a = assigned(&net.fx[1]).pop().unwrap();
    assert_eq!(a.id, req(1).id);
    net.rs[1]
        .submit(&Op::Complete {
            consumer: MemberId(1),
            id: a.id,
            instance: a.instance,
            step: a.step.clone(),
            outputs: Vec::new(),
            result: Some(b"one".to_vec()),
            reply: None,
            meta: Meta::default(),
            credits: 1,
        })
        .unwrap();
    net.run(5_000);
    let b = assigned(&net.fx[1]).pop().unwrap();
    assert_eq!(b.id, req(2).id);
    net.rs[1]
        .submit(&Op::Fail {
            consumer: MemberId(1),
            id: b.id,
            instance: b.instance,
            step: b.step.clone(),
            error: "two failed".into(),
            status: 500,
            credits: 0,
        })
        .unwrap();
    net.run(5_000);
    // Back, in the same process: a joiner that knows what its replica had applied.
    let mut j = joiner(0xbac, net.now);
    let unanswered = net.rs[2].take_unanswered();
    assert_eq!(
        unanswered.len(),
        4,
        "four pushes, none answered before it went dark"
    );
    j.set_rejoining(since, unanswered);
    net.rs[2] = j;
    net.down[2] = false;
    net.fx[2].clear();
    net.run(100_000);
    assert_eq!(net.rs[2].status(), Status::Serving);
    assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    let told: Vec<&Effect> = net.fx[2]
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::Completed { .. } | Effect::Failed { .. } | Effect::Rejoined { .. }
            )
        })
        .collect();
    assert!(
        matches!(
            told.as_slice(),
            [
                Effect::Completed { id: i1, result: Some(r), terminal: true, .. },
                Effect::Failed { id: i2, error, .. },
                Effect::Rejoined { origin: o, pending, pushed_again: 1, outcomes_dropped: false },
            ] if *i1 == req(1).id && r == b"one" && *i2 == req(2).id
                && error == "two failed" && *o == origin
                && *pending == vec![req(3).id, req(4).id]
        ),
        "{told:?}"
    );
    // Request 4 never reached the order: pushed again, it is queued behind 3, once.
    assert_eq!(net.rs[2].unanswered(), 2);
    assert_eq!(net.rs[0].queue().queue_depth("q"), Some(2));
    assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
}

#[test]
fn a_joiner_gets_the_queue_and_is_told_its_pipelines() {
    let mut net = Net::new(2);
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.rs[1]
        .submit(&Op::Pipelines {
            by: MemberId(1),
            version: 3,
            queues: vec![spec()],
            docs: vec!["{\"name\": \"p\"}".into()],
        })
        .unwrap();
    net.run(5_000);
    net.rs.push(joiner(0x5eed, net.now));
    net.down.push(false);
    net.fx.push(Vec::new());
    net.run(50_000);
    assert_eq!(net.rs[2].status(), Status::Serving);
    assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    assert!(net.rs[0].stats().states_sent + net.rs[1].stats().states_sent >= 1);
    let told: Vec<&Effect> = net.fx[2]
        .iter()
        .filter(|e| matches!(e, Effect::Pipelines { .. }))
        .collect();
    assert!(
        matches!(told.as_slice(), [Effect::Pipelines { version: 3, docs }] if docs.len() == 1),
        "{:?}",
        net.fx[2]
    );
}

fn push_to(net: &mut Net, queue: &str, n: u64) {
    let req = Request {
        id: RequestId::new(MemberId(0), n),
        instance: 0,
        step: "s".into(),
        queue: queue.into(),
        payload: vec![n as u8],
        meta: Meta::default(),
        http: None,
    };
    net.rs[0]
        .submit(&Op::Push {
            pusher: MemberId(0),
            req,
        })
        .unwrap();
}

fn accepted(fx: &[Effect], n: u64) -> bool {
    fx.iter()
        .any(|e| matches!(e, Effect::Accepted { id, .. } if *id == RequestId::new(MemberId(0), n)))
}

/// What member `i` has to write so far (and the position after its last record).
fn drain_log(net: &mut Net, i: usize, log: &mut Vec<Persist>) -> u64 {
    while let Some(p) = net.rs[i].poll_persist() {
        log.push(p);
    }
    match log.last() {
        Some(Persist::Record { position, .. }) => position + 1,
        Some(Persist::Snapshot { position, .. }) => *position,
        None => 0,
    }
}

/// A member's log replayed: the state it describes.
fn replayed(log: &[Persist]) -> QueueState {
    let start = log
        .iter()
        .rposition(|p| matches!(p, Persist::Snapshot { .. }))
        .expect("a log starts with a snapshot");
    let Persist::Snapshot { state, .. } = &log[start] else {
        unreachable!()
    };
    let records = log[start + 1..].iter().map(|p| match p {
        Persist::Record {
            position,
            kind,
            bytes,
        } => (*position, *kind, bytes.as_slice()),
        Persist::Snapshot { .. } => panic!("one snapshot only here"),
    });
    crate::durable::replay(Some(state), records).unwrap()
}

/// Durable queues: every member hands every step of the order to its log, at consecutive
/// positions after a first snapshot (views too); a push into a durable queue is told accepted
/// only once a majority of the group has it on disk (a memory queue's at once); a member's log
/// replayed is its queue's state.
#[test]
fn a_durable_push_is_accepted_once_a_majority_has_it_on_disk() {
    let mut net = Net::new(3);
    for r in &mut net.rs {
        r.set_durable(true, &[MemberId(0), MemberId(1), MemberId(2)]);
    }
    let durable = QueueSpec {
        name: "d".into(),
        durability: crate::queue::Durability::Log,
        ..spec()
    };
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    net.rs[0].submit(&Op::Create(durable)).unwrap();
    net.run(5_000);
    push_to(&mut net, "q", 1);
    push_to(&mut net, "d", 2);
    net.run(10_000);
    assert!(
        accepted(&net.fx[0], 1),
        "a memory queue's push is accepted at once"
    );
    assert!(!accepted(&net.fx[0], 2), "no disk said anything yet");
    assert_eq!(net.rs[0].held_for_disks(), 1);
    let mut logs = vec![Vec::new(), Vec::new(), Vec::new()];
    let ends: Vec<u64> = (0..3)
        .map(|i| drain_log(&mut net, i, &mut logs[i]))
        .collect();
    assert_eq!(ends, vec![4; 3], "two creates and two pushes");
    for log in &logs {
        assert!(matches!(log[0], Persist::Snapshot { position: 0, .. }));
        let pos: Vec<u64> = log[1..]
            .iter()
            .map(|p| match p {
                Persist::Record { position, .. } => *position,
                Persist::Snapshot { .. } => u64::MAX,
            })
            .collect();
        assert_eq!(pos, vec![0, 1, 2, 3]);
    }
    // One disk is not a majority of three.
    net.rs[0].persisted(ends[0]);
    net.run(5_000);
    assert!(!accepted(&net.fx[0], 2));
    // A second member's disk, below the push, is not enough either.
    net.rs[2].persisted(3);
    net.run(5_000);
    assert!(!accepted(&net.fx[0], 2));
    assert_eq!(net.rs[0].majority_persisted(), 3);
    net.rs[2].persisted(ends[2]);
    net.run(5_000);
    assert!(accepted(&net.fx[0], 2), "two of three disks hold the push");
    assert_eq!(net.rs[0].held_for_disks(), 0);
    // A view change is a step of the log too; the logs replay to the members' states.
    net.down[1] = true;
    net.run(200_000);
    for i in [0, 2] {
        drain_log(&mut net, i, &mut logs[i]);
        assert!(logs[i].iter().any(|p| matches!(
            p,
            Persist::Record {
                kind: RecordKind::View,
                ..
            }
        )));
        assert_eq!(replayed(&logs[i]).digest(), net.rs[i].queue().digest());
    }
}

impl Net {
    /// Members 0..n restarted from their logs after the whole group went down (`None`: a
    /// member that stays down).
    fn recovering(states: Vec<Option<QueueState>>, now: u64) -> Net {
        let n = states.len() as u16;
        let members: Vec<MemberId> = (0..n).map(MemberId).collect();
        let view = View::new(ViewId(1), members.clone());
        let down: Vec<bool> = states.iter().map(Option::is_none).collect();
        let rs = states
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut r = Replica::new(
                    ProtoConfig::default(),
                    key(),
                    GroupId(7),
                    view.clone(),
                    MemberId(i as u16),
                    0x200 + i as u64,
                    Instant(now),
                )
                .unwrap();
                r.recover_from(s.unwrap_or_default());
                r.set_durable(true, &members);
                let claim = r.claim().unwrap();
                r.submit(&claim).unwrap();
                r
            })
            .collect();
        Net {
            rs,
            down,
            now,
            fx: vec![Vec::new(); n as usize],
        }
    }
}

fn durable_spec() -> QueueSpec {
    QueueSpec {
        name: "d".into(),
        durability: crate::queue::Durability::Log,
        ..spec()
    }
}

/// A durable group with three requests accepted, one of them in flight at member 2, every
/// log on disk; the members' logs.
fn durable_run() -> (Net, Vec<Vec<Persist>>) {
    let mut net = Net::new(3);
    let members = [MemberId(0), MemberId(1), MemberId(2)];
    for r in &mut net.rs {
        r.set_durable(true, &members);
    }
    net.rs[0].submit(&Op::Create(durable_spec())).unwrap();
    net.rs[2]
        .submit(&Op::Subscribe {
            consumer: MemberId(2),
            queue: "d".into(),
        })
        .unwrap();
    net.rs[2]
        .submit(&Op::Ready {
            consumer: MemberId(2),
            credits: 1,
        })
        .unwrap();
    net.run(5_000);
    for n in 1..=3 {
        push_to(&mut net, "d", n);
    }
    net.run(10_000);
    let logs: Vec<Vec<Persist>> = (0..3)
        .map(|i| {
            let mut log = Vec::new();
            let end = drain_log(&mut net, i, &mut log);
            net.rs[i].persisted(end);
            log
        })
        .collect();
    net.run(10_000);
    for n in 1..=3 {
        assert!(accepted(&net.fx[0], n), "push {n} told accepted");
    }
    assert!(net.fx[2]
        .iter()
        .any(|e| matches!(e, Effect::Assigned { consumer, .. } if *consumer == MemberId(2))));
    (net, logs)
}

fn assigned_to(fx: &[Effect], to: MemberId) -> Vec<RequestId> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Assigned { consumer, req } if *consumer == to => Some(req.id),
            _ => None,
        })
        .collect()
}

/// The whole group goes down and restarts from its logs, one of which lost its last records
/// (not synced): the members decide on the longest log of the majority that claims first,
/// the member behind takes the state from a holder, every replica ends with the same queue,
/// the request that was in flight is queued again, and every accepted request is taken once
/// by a new consumer. Nothing is taken from the host before the decision.
#[test]
fn after_a_whole_group_restart_the_members_go_on_from_the_longest_log() {
    let (old, mut logs) = durable_run();
    let end = old.rs[0].queue().applied();
    // Member 1's disk had not synced its last two records when the power went.
    let cut = logs[1].len() - 2;
    logs[1].truncate(cut);
    let states: Vec<Option<QueueState>> = logs.iter().map(|l| Some(replayed(l))).collect();
    assert_eq!(states[1].as_ref().unwrap().applied(), end - 2);
    let mut net = Net::recovering(states, old.now);
    assert_eq!(
        net.rs[0].submit(&Op::Create(spec())),
        Err(SubmitError::NotServing("recovering")),
        "nothing is taken before the group has decided"
    );
    net.run(20_000);
    for r in &net.rs {
        let (stage, d) = r.recovery().unwrap();
        assert_eq!(stage, RecoveryStage::Recovered);
        assert_eq!(d.unwrap().at.position, end, "the longest log decides");
    }
    assert_eq!(
        net.rs[0].stats().states_sent,
        1,
        "the lowest-ranked holder sends"
    );
    assert_eq!(net.rs[1].stats().dropped_recovering, 0);
    let digest = net.rs[0].queue().digest();
    for r in &net.rs {
        assert_eq!(r.queue().digest(), digest, "one state everywhere");
        assert_eq!(r.queue().applied(), end + 1, "the restart is a step");
    }
    assert!(net.fx[0]
        .iter()
        .any(|e| matches!(e, Effect::Requeued { from, .. } if *from == MemberId(2))));
    // Member 1's log starts again from the group's state; the holders' go on.
    let mut log1 = Vec::new();
    drain_log(&mut net, 1, &mut log1);
    assert!(
        matches!(log1.last(), Some(Persist::Snapshot { position, .. }) if *position == end + 1)
    );
    let mut log0 = Vec::new();
    drain_log(&mut net, 0, &mut log0);
    assert!(matches!(
        log0.as_slice(),
        [Persist::Snapshot { position: p, .. }, Persist::Record { position: q, kind: RecordKind::Restart, .. }]
            if *p == end && *q == end
    ));
    // A new consumer takes all three, each once.
    net.rs[1]
        .submit(&Op::Subscribe {
            consumer: MemberId(1),
            queue: "d".into(),
        })
        .unwrap();
    net.rs[1]
        .submit(&Op::Ready {
            consumer: MemberId(1),
            credits: 10,
        })
        .unwrap();
    net.run(10_000);
    let mut got = assigned_to(&net.fx[0], MemberId(1));
    got.sort();
    let want: Vec<RequestId> = (1..=3).map(|n| RequestId::new(MemberId(0), n)).collect();
    assert_eq!(got, want);
    for i in 1..3 {
        assert_eq!(assigned_to(&net.fx[i], MemberId(1)).len(), 3);
    }
}

/// A member that does not come back: the two others are a majority of the group file's
/// members, and decide on their longer log once the view no longer waits for the third.
/// What the host says is on disk counts only once the log is the group's.
#[test]
fn a_majority_recovers_without_the_third_member() {
    let (old, mut logs) = durable_run();
    let end = old.rs[0].queue().applied();
    let cut = logs[2].len() - 1;
    logs[2].truncate(cut);
    let states = vec![None, Some(replayed(&logs[1])), Some(replayed(&logs[2]))];
    let mut net = Net::recovering(states, old.now);
    net.rs[1].persisted(end);
    assert_eq!(
        net.rs[1].member().persisted()[1],
        0,
        "not the group's log yet"
    );
    // The first view waits for a member never heard from for the start-up grace (20 s).
    net.run(21_000_000);
    for i in [1, 2] {
        let (stage, d) = net.rs[i].recovery().unwrap();
        assert_eq!(stage, RecoveryStage::Recovered, "member {i}");
        assert_eq!(d.unwrap().at.position, end);
        assert_eq!(net.rs[i].view().members, vec![MemberId(1), MemberId(2)]);
    }
    assert_eq!(net.rs[1].queue().digest(), net.rs[2].queue().digest());
    // Member 2 took member 1's state; once its host took the snapshot, its disk counts.
    let mut log2 = Vec::new();
    let at = drain_log(&mut net, 2, &mut log2);
    net.rs[2].persisted(at);
    assert_eq!(net.rs[2].member().persisted()[1], at);
}

/// Claims compare by epoch before position: two members whose logs went through a restart
/// (epoch 1) hold what the group was told since; a third, down through that restart, has a
/// longer log of the history before it, which must not win (it takes the state instead).
#[test]
fn a_longer_log_of_an_earlier_epoch_does_not_win() {
    let mut before = QueueState::new();
    let mut fx = Vec::new();
    before.apply(Op::Create(durable_spec()), &mut fx);
    let mut stale = before.clone();
    for _ in 0..20 {
        stale.apply(
            Op::Ready {
                consumer: MemberId(2),
                credits: 1,
            },
            &mut fx,
        );
    }
    let mut restarted = before;
    restarted.restart(1, &[], &mut fx);
    restarted.apply(
        Op::Ready {
            consumer: MemberId(0),
            credits: 1,
        },
        &mut fx,
    );
    assert!(stale.applied() > restarted.applied());
    let mut net = Net::recovering(
        vec![
            Some(restarted.clone()),
            Some(stale),
            Some(restarted.clone()),
        ],
        0,
    );
    net.run(20_000);
    for r in &net.rs {
        let (stage, d) = r.recovery().unwrap();
        assert_eq!(stage, RecoveryStage::Recovered);
        assert_eq!(
            d.unwrap().at,
            Claim {
                epoch: 1,
                position: restarted.applied()
            }
        );
        assert_eq!(r.queue().epoch(), 2);
    }
    assert_eq!(net.rs[1].queue().digest(), net.rs[0].queue().digest());
}

/// A process restarted from its data directory after the whole group went down, whose host
/// recorded how far it had been told ends ([`Replica::told_through`]) and which pushes it still
/// waits for: once the group has decided, it is told the ends after that position (a run that
/// completed just before the crash), and its push that never reached the order goes again.
#[test]
fn a_restarted_origin_is_told_what_it_missed_and_pushes_again_what_was_lost() {
    let (mut old, logs) = durable_run();
    // Its host drained every effect: it has heard every end so far.
    while old.rs[0].poll_effect().is_some() {}
    let since = old.rs[0].told_through().expect("member 0 serves");
    assert!(since <= old.rs[0].queue().applied());
    // Member 2 completes request 1; the end is on every disk, but member 0's host is killed
    // before it hears of it (the completion stays unread), with push 4 never ordered.
    let a = assigned_to(&old.fx[2], MemberId(2))[0];
    let instance = old.fx[2]
        .iter()
        .find_map(|e| match e {
            Effect::Assigned { req, .. } if req.id == a => Some(req.instance),
            _ => None,
        })
        .unwrap();
    old.rs[2]
        .submit(&Op::Complete {
            consumer: MemberId(2),
            id: a,
            instance,
            step: "s".into(),
            outputs: Vec::new(),
            result: Some(b"done".to_vec()),
            reply: None,
            meta: Meta::default(),
            credits: 0,
        })
        .unwrap();
    old.run(5_000);
    let mut logs = logs;
    for (i, log) in logs.iter_mut().enumerate() {
        let end = drain_log(&mut old, i, log);
        old.rs[i].persisted(end);
    }
    let op4 = |n: u64| {
        Op::Push {
            pusher: MemberId(0),
            req: Request {
                id: RequestId::new(MemberId(0), n),
                instance: 0,
                step: "s".into(),
                queue: "d".into(),
                payload: vec![n as u8],
                meta: Meta::default(),
                http: None,
            },
        }
        .encode()
    };
    let unanswered: BTreeMap<RequestId, Vec<u8>> = (1..=4)
        .map(|n| (RequestId::new(MemberId(0), n), op4(n)))
        .collect();
    let states: Vec<Option<QueueState>> = logs.iter().map(|l| Some(replayed(l))).collect();
    let mut net = Net::recovering(states, old.now);
    assert_eq!(net.rs[0].told_through(), None, "not before the decision");
    net.rs[0].resume(since, unanswered);
    net.run(20_000);
    // The disks take the decided state: the ends it missed are told once they hold it.
    for _ in 0..3 {
        for i in 0..3 {
            let end = drain_log(&mut net, i, &mut Vec::new());
            if end > 0 {
                net.rs[i].persisted(end);
            }
        }
        net.run(5_000);
    }
    let told: Vec<&Effect> = net.fx[0]
        .iter()
        .filter(|e| matches!(e, Effect::Completed { .. } | Effect::Rejoined { .. }))
        .collect();
    assert!(
        matches!(
            told.as_slice(),
            [
                Effect::Completed { id, result: Some(r), terminal: true, .. },
                Effect::Rejoined { pending, pushed_again: 1, outcomes_dropped: false, .. },
            ] if *id == a && r == b"done"
                && pending.len() == 3 && pending.contains(&RequestId::new(MemberId(0), 4))
        ),
        "{told:?}"
    );
    let through = net.rs[0].told_through().expect("told what it missed");
    assert_eq!(
        net.rs[0].queue().queue_depth("d"),
        Some(3),
        "2, 3 and 4 queued"
    );
    assert_eq!(net.rs[1].queue().digest(), net.rs[0].queue().digest());
    // A host resuming once the replica serves is answered at once: push 5 never reached the
    // order and goes again.
    net.fx[0].clear();
    let five: BTreeMap<RequestId, Vec<u8>> = [(RequestId::new(MemberId(0), 5), op4(5))].into();
    net.rs[0].resume(through, five);
    net.run(20_000);
    assert!(
        net.fx[0].iter().any(|e| matches!(
            e,
            Effect::Rejoined {
                pushed_again: 1,
                outcomes_dropped: false,
                ..
            }
        )),
        "{:?}",
        net.fx[0]
    );
    assert!(!net.fx[0]
        .iter()
        .any(|e| matches!(e, Effect::Completed { .. })));
    assert_eq!(net.rs[1].queue().queue_depth("d"), Some(4));
}

/// A member that comes back as a joiner carrying its log's state (removed, or restarted out
/// of the view) writes nothing until the group's state comes: it would otherwise start its log
/// again from its empty queue, wiping what it may have to claim from after another
/// whole-group restart (the simulator found a told acceptance lost that way: seed 786 with
/// rows sent as soon as the disk moves). Its old log does not count for the group either. Once
/// the state comes, its log starts again from it.
#[test]
fn a_joiner_carrying_its_log_writes_nothing_before_the_state() {
    let (mut old, _) = durable_run();
    let members = [MemberId(0), MemberId(1), MemberId(2)];
    let logged = old.rs[2].queue().clone();
    let mut j = joiner(0x10c, old.now);
    j.set_durable(true, &members);
    j.set_log_state(logged.clone());
    j.persisted(logged.applied());
    old.down[2] = true;
    old.run(200_000);
    assert_eq!(j.poll_persist(), None, "its log stays as it is");
    assert_eq!(
        j.member().persisted()[j.member().view().rank_of(MemberId(2)).unwrap_or(0)],
        0
    );
    old.rs[2] = j;
    old.down[2] = false;
    old.run(100_000);
    assert_eq!(old.rs[2].status(), Status::Serving);
    let mut log = Vec::new();
    drain_log(&mut old, 2, &mut log);
    assert!(
        matches!(log.first(), Some(Persist::Snapshot { position, .. }) if *position >= logged.applied()),
        "{log:?}"
    );
    assert_eq!(old.rs[2].queue().digest(), old.rs[0].queue().digest());
}
