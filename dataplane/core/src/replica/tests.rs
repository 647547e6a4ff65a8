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
        .filter(|e| e.concerns(MemberId(2), None) && !matches!(e, Effect::Accepted { .. }))
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

mod durable;
mod streams;
