//! The replicated queue, case by case: service order, instances, re-queueing after a
//! failure, runs between queues, one-queue credits (its model-based test is
//! `queue_model.rs`).

use conveyor_core::queue::*;
use conveyor_core::types::{MemberId, RequestId};

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
                durability: Default::default(),
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
                durability: Default::default(),
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
                durability: Default::default(),
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
                durability: Default::default(),
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
                durability: Default::default(),
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

/// Who each `Assigned` effect went to, in order.
fn assignees(fx: &[Effect]) -> Vec<u16> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Assigned { consumer, .. } => Some(consumer.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_request_goes_to_the_least_loaded_ready_consumer_then_the_earliest_ready() {
    let mut s = QueueState::new();
    let mut fx = Vec::new();
    s.apply(
        Op::Create(QueueSpec {
            name: "q0".into(),
            capacity: 100,
            order: Order::Fifo,
            on_full: OnFull::Reject,
            durability: Default::default(),
        }),
        &mut fx,
    );
    for c in [1, 2, 3] {
        s.apply(
            Op::Subscribe {
                consumer: MemberId(c),
                queue: "q0".into(),
            },
            &mut fx,
        );
    }
    // Consumer 1 became ready first, with 4 credits; then 2 with 4; then 3 with 1.
    for (c, credits) in [(1, 4), (2, 4), (3, 1)] {
        s.apply(
            Op::Ready {
                consumer: MemberId(c),
                credits,
            },
            &mut fx,
        );
    }
    fx.clear();
    let push = |s: &mut QueueState, fx: &mut Vec<Effect>, id: u64| {
        s.apply(
            Op::Push {
                pusher: MemberId(0),
                req: req(id, 0),
            },
            fx,
        );
    };
    // One at a time: 1 (earliest, idle), 2 (idle, 1 holds one), 3 (idle), then 1 and 2 again
    // (one each held: earliest first), and 3 has no credit left.
    for id in 1..=5 {
        push(&mut s, &mut fx, id);
    }
    assert_eq!(assignees(&fx), vec![1, 2, 3, 1, 2], "{fx:?}");
    // A completion makes 3 the idlest again; it gives no credit back, so 1 (two held, like 2,
    // and its credits came first) takes the next.
    let Some(Effect::Assigned { req: third, .. }) = fx
        .iter()
        .find(|e| matches!(e, Effect::Assigned { consumer, .. } if consumer.0 == 3))
        .cloned()
    else {
        panic!("{fx:?}")
    };
    fx.clear();
    s.apply(
        Op::Complete {
            consumer: MemberId(3),
            id: third.id,
            instance: third.instance,
            step: third.step.clone(),
            outputs: vec![],
            result: None,
            reply: None,
            meta: Meta::default(),
            credits: 0,
        },
        &mut fx,
    );
    push(&mut s, &mut fx, 6);
    assert_eq!(assignees(&fx), vec![1], "{fx:?}");
    // Then the less loaded of 1 and 2 each time (2: three held against four), the earlier
    // ready on a tie, until their credits run out.
    fx.clear();
    for id in 7..=9 {
        push(&mut s, &mut fx, id);
    }
    assert_eq!(assignees(&fx), vec![2, 1, 2], "{fx:?}");
    fx.clear();
    push(&mut s, &mut fx, 10);
    assert!(assignees(&fx).is_empty(), "no credit left: {fx:?}");
    // The request waiting in the queue goes to the next credit that comes: 3's.
    s.apply(
        Op::Ready {
            consumer: MemberId(3),
            credits: 1,
        },
        &mut fx,
    );
    assert_eq!(assignees(&fx), vec![3], "{fx:?}");
}
