//! Durable queues through the replica: what waits for a majority's disks, the logs every
//! member is handed, recovery after a whole-group restart, and a restarted origin or joiner
//! that carries its log.

use super::*;
use crate::queue::RejectReason;

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

/// A push into a durable queue whose policy is `reject` is refused, not ordered, while the
/// disks do not take the log: this member's disk is full, or the oldest acceptance held for a
/// majority's disks has waited `DISKS_STALLED` with no disk saying more. Other queues' pushes
/// still go (they wait for the disks), and once the disks take the log again pushes go too.
#[test]
fn a_reject_queue_refuses_pushes_while_the_disks_do_not_take_the_log() {
    let mut net = Net::new(3);
    let all = [MemberId(0), MemberId(1), MemberId(2)];
    for r in &mut net.rs {
        r.set_durable(true, &all);
    }
    let reject = QueueSpec {
        name: "r".into(),
        durability: crate::queue::Durability::Log,
        on_full: OnFull::Reject,
        ..spec()
    };
    let block = QueueSpec {
        name: "b".into(),
        durability: crate::queue::Durability::Log,
        ..spec()
    };
    for s in [reject, block] {
        net.rs[0].submit(&Op::Create(s)).unwrap();
    }
    net.run(5_000);
    let push = |net: &mut Net, queue: &str, n: u64| {
        let req = Request {
            id: RequestId::new(MemberId(0), n),
            instance: 0,
            step: "s".into(),
            queue: queue.into(),
            payload: vec![n as u8],
            meta: Meta::default(),
            http: None,
        };
        net.rs[0].submit(&Op::Push {
            pusher: MemberId(0),
            req,
        })
    };
    let refused = |r: Result<Seq, SubmitError>, n: u64| match r {
        Err(SubmitError::DisksFull { queue, effect }) => {
            assert_eq!(queue, "r");
            assert!(
                matches!(*effect, Effect::Rejected { id, reason: RejectReason::DisksFull, .. } if id == RequestId::new(MemberId(0), n)),
                "{effect:?}"
            );
        }
        other => panic!("push {n} not refused: {other:?}"),
    };
    // No disk has said anything: the first push waits; half a second is not a stall.
    push(&mut net, "r", 1).unwrap();
    net.run(500_000);
    assert!(!accepted(&net.fx[0], 1));
    assert!(!net.rs[0].disks_refuse());
    push(&mut net, "r", 2).unwrap();
    // A second later the disks still took nothing: refused, nothing ordered or kept.
    net.run(600_000);
    assert!(net.rs[0].disks_refuse());
    let unanswered = net.rs[0].unanswered();
    refused(push(&mut net, "r", 3), 3);
    assert_eq!(net.rs[0].unanswered(), unanswered);
    push(&mut net, "b", 4).expect("a block queue's push waits instead");
    push_to(&mut net, "q", 5);
    net.run(5_000);
    // The disks take the log: what waited is accepted, and pushes go again.
    for i in 0..3 {
        let end = drain_log(&mut net, i, &mut Vec::new());
        net.rs[i].persisted(end);
    }
    net.run(5_000);
    for n in [1, 2, 4] {
        assert!(accepted(&net.fx[0], n), "push {n} accepted");
    }
    assert!(!net.fx[0].iter().any(
        |e| matches!(e, Effect::Accepted { id, .. } | Effect::Rejected { id, .. } if *id == RequestId::new(MemberId(0), 3))
    ), "the refused push was never ordered");
    assert!(!net.rs[0].disks_refuse());
    push(&mut net, "r", 6).unwrap();
    // This member's own disk full: refused at once, until it takes the log again.
    net.rs[0].set_disk_full(true);
    refused(push(&mut net, "r", 7), 7);
    net.rs[0].set_disk_full(false);
    push(&mut net, "r", 8).unwrap();
}

/// With durable logging, a Redis command's reply waits for a majority's disks like a push's
/// acceptance (`XADD` returns once the entry is on disk at a majority).
#[test]
fn a_redis_reply_waits_for_a_majority_of_disks() {
    let mut net = Net::new(3);
    for r in &mut net.rs {
        r.set_durable(true, &[MemberId(0), MemberId(1), MemberId(2)]);
    }
    let args = ["XADD", "s", "1-1", "f", "v"]
        .iter()
        .map(|w| w.as_bytes().to_vec())
        .collect();
    net.rs[0]
        .submit(&Op::Redis {
            origin: MemberId(0),
            token: 9,
            now_ms: 5,
            args,
        })
        .unwrap();
    net.run(10_000);
    let told = |net: &Net| {
        net.fx[0]
            .iter()
            .any(|e| matches!(e, Effect::Redis { token: 9, .. }))
    };
    assert!(!told(&net), "told before any disk held it");
    for i in [0, 1] {
        let end = drain_log(&mut net, i, &mut Vec::new());
        net.rs[i].persisted(end);
    }
    net.run(5_000);
    assert!(told(&net), "two of three disks hold it");
}

/// Between shards, with durable logging: an outbox entry is not handed to a forwarder, nor an
/// inbox's watermark told, before a majority has the step on disk (a whole-group restart could
/// otherwise give the entry's number to another entry, or forget an entry its source dropped).
#[test]
fn an_outbox_entry_waits_for_a_majority_of_disks() {
    use crate::shard::{Forward, ShardId, ShardMap};
    let mut net = Net::new(3);
    for r in &mut net.rs {
        r.set_durable(true, &[MemberId(0), MemberId(1), MemberId(2)]);
    }
    net.rs[0].submit(&Op::Create(spec())).unwrap();
    let map = ShardMap::hashed(1, 2).with_override(&spec().name, ShardId(1));
    net.rs[0]
        .submit(&Op::ShardMap {
            by: MemberId(0),
            me: ShardId(0),
            map,
        })
        .unwrap();
    push_to(&mut net, &spec().name, 1);
    net.run(10_000);
    let outbox = |net: &Net| {
        net.fx[1].iter().any(|e| {
            matches!(e, Effect::Outbox { to: ShardId(1), seq: 1, entry: Forward::Push(r) } if r.id == RequestId::new(MemberId(0), 1))
        })
    };
    assert!(
        !outbox(&net),
        "handed to a forwarder before any disk held it"
    );
    assert!(!accepted(&net.fx[0], 1));
    // What a forwarder reads (the engine publishes this, not the effects): the entry is in
    // the applied state, not in what may be forwarded.
    assert_eq!(net.rs[1].queue().shards().outbox(ShardId(1)).count(), 1);
    let fp = net.rs[1].shards_fingerprint();
    let fwd = net.rs[1].shards_to_forward();
    assert_eq!(fwd.outbox_after(ShardId(1), 0).count(), 0, "{fwd:?}");
    assert_eq!(fwd.acknowledged_upto(ShardId(1)), 0);
    for i in [0, 2] {
        let end = drain_log(&mut net, i, &mut Vec::new());
        net.rs[i].persisted(end);
    }
    net.run(5_000);
    assert!(outbox(&net), "two of three disks hold it");
    assert_ne!(
        net.rs[1].shards_fingerprint(),
        fp,
        "republished once on the disks"
    );
    let fwd = net.rs[1].shards_to_forward();
    assert_eq!(
        fwd.outbox_after(ShardId(1), 0)
            .map(|(s, _)| s)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert!(
        accepted(&net.fx[0], 1),
        "the push went to the outbox: accepted"
    );
    // The other shard's side: an entry taken is told once on disk there too.
    net.rs[2]
        .submit(&Op::Forwarded {
            from: ShardId(1),
            seq: 1,
            entry: Forward::Push(Request {
                id: RequestId::new(MemberId(5), 7),
                instance: 0,
                step: "s".into(),
                queue: spec().name,
                payload: Vec::new(),
                meta: Meta::default(),
                http: None,
            }),
        })
        .unwrap();
    net.run(10_000);
    let inbox = |net: &Net| {
        net.fx[2].iter().any(|e| {
            matches!(
                e,
                Effect::Inbox {
                    from: ShardId(1),
                    upto: 1
                }
            )
        })
    };
    assert!(!inbox(&net));
    assert_eq!(net.rs[2].queue().shards().watermark(ShardId(1)), 1);
    assert_eq!(
        net.rs[2].shards_to_forward().watermark(ShardId(1)),
        0,
        "a forwarder would acknowledge an entry a whole-group restart could forget"
    );
    for i in [1, 2] {
        let end = drain_log(&mut net, i, &mut Vec::new());
        net.rs[i].persisted(end);
    }
    net.run(5_000);
    assert!(inbox(&net), "told once two disks hold it");
    assert_eq!(net.rs[2].shards_to_forward().watermark(ShardId(1)), 1);
    // Without durable logging, the state as applied.
    let mut plain = Net::new(1);
    plain.rs[0].submit(&Op::Create(spec())).unwrap();
    plain.run(5_000);
    assert!(matches!(
        plain.rs[0].shards_to_forward(),
        std::borrow::Cow::Borrowed(_)
    ));
}
