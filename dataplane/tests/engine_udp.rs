//! Two engines over real UDP sockets on loopback: requests flow end to end, and bad input
//! (garbage, a wrong key, another group, a stranger's address) is counted by reason and dropped.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::{ProtoConfig, ProtoDrop};
use conveyor_core::queue::{Effect, Meta, Op};
use conveyor_core::types::{GroupId, MemberId, RequestId, Seq, View, ViewId};
use conveyor_core::wire::{FrameWriter, Header, Key, Kind, Row, WireError};
use conveyor_dataplane::engine::{Clock, EngineConfig, EngineHandle, IdlePolicy};
use conveyor_dataplane::invoker::InvokerApp;
use conveyor_dataplane::transport::udp::UdpTransport;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn cfg(me: u16, key: &Key) -> EngineConfig {
    EngineConfig {
        proto: ProtoConfig::default(),
        key: key.clone(),
        group: GroupId(7),
        view: View::new(ViewId(1), vec![MemberId(0), MemberId(1)]),
        me: MemberId(me),
        names: vec!["trigger".into(), "invoker-0".into()],
        idle: IdlePolicy::SHARED,
        core: None,
        startup_timeout: Duration::from_secs(10),
        linger: Duration::from_millis(100),
        rejoin: false,
        speculate: false,
        data_dir: None,
        log_segment_bytes: None,
        join: false,
    }
}

/// Adds a run's end to `done`; a run that ends twice fails the test.
fn count_completion(effect: Effect, done: &mut std::collections::BTreeSet<RequestId>) {
    if let Effect::Completed {
        id, terminal: true, ..
    } = effect
    {
        assert!(done.insert(id), "{id} completed twice");
    }
}

fn frame(key: &Key, group: GroupId) -> Vec<u8> {
    let mut buf = Vec::new();
    let h = Header {
        kind: Kind::Data,
        group,
        view: ViewId(1),
        sender: MemberId(1),
        count: 0,
        seq: Seq(0),
        flags: 0,
        incarnation: 1,
    };
    let row = Row {
        heartbeat: 1,
        delivered: 0,
        persisted: 0,
        received: vec![0, 0],
        incarnations: Vec::new(),
    };
    let mut w = FrameWriter::new(&mut buf, 1500, &h, &row);
    w.push_data(b"forged");
    w.finish(key);
    buf
}

#[test]
fn requests_flow_and_bad_frames_are_counted_and_dropped() {
    let key = Key::from_bytes([5; 32]);
    let free = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let (s0, s1) = (free(), free());
    let addrs: Vec<SocketAddr> = vec![s0.local_addr().unwrap(), s1.local_addr().unwrap()];
    drop(s0);
    let trigger = EngineHandle::start(
        cfg(0, &key),
        Box::new(UdpTransport::bind(addrs[0], addrs.clone()).unwrap()),
        Clock::new(),
    )
    .unwrap();
    // Before the invoker starts, its address sends garbage, a wrong key and another group.
    s1.send_to(b"\x00\x01garbage", addrs[0]).unwrap();
    s1.send_to(&frame(&Key::from_bytes([6; 32]), GroupId(7)), addrs[0])
        .unwrap();
    s1.send_to(&frame(&key, GroupId(8)), addrs[0]).unwrap();
    let stranger = free();
    stranger
        .send_to(&frame(&key, GroupId(7)), addrs[0])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s1);
    let pipeline = Pipeline::chain("t", 2, 5);
    let app = InvokerApp::new(MemberId(1), vec![pipeline.clone()], 2, 4096);
    let invoker = EngineHandle::start_with(
        cfg(1, &key),
        Box::new(UdpTransport::bind(addrs[1], addrs.clone()).unwrap()),
        Clock::new(),
        Some(Box::new(app)),
    )
    .unwrap();
    trigger.wait_ready(Duration::from_secs(10)).unwrap();
    for q in pipeline.queue_specs() {
        trigger.submit(&Op::Create(q)).unwrap();
    }
    let n = 200;
    for i in 0..n {
        let req =
            pipeline.entry_request(RequestId::new(MemberId(0), i), vec![1; 16], Meta::default());
        trigger
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
    }
    let mut done = std::collections::BTreeSet::new();
    while done.len() < n as usize {
        let ev = trigger
            .next_event(Duration::from_secs(10))
            .expect("completions keep coming");
        count_completion(ev.effect, &mut done);
    }
    // An oversized operation is refused to the pusher, not sent.
    let big = pipeline.entry_request(
        RequestId::new(MemberId(0), n),
        vec![0; 10_000],
        Meta::default(),
    );
    assert!(trigger
        .submit(&Op::Push {
            pusher: MemberId(0),
            req: big
        })
        .is_err());
    trigger.submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    let ri = invoker.join();
    let rt = trigger.join();
    assert!(ri.error.is_none() && rt.error.is_none(), "{ri:?} {rt:?}");
    assert_eq!(ri.digest, rt.digest, "replicas differ");
    assert_eq!(rt.proto.dropped(WireError::TooShort), 1, "{:?}", rt.proto);
    assert_eq!(rt.proto.dropped(WireError::BadMac), 1, "{:?}", rt.proto);
    assert_eq!(
        rt.proto.dropped_by(ProtoDrop::WrongGroup),
        1,
        "{:?}",
        rt.proto
    );
    assert_eq!(rt.transport.unknown_source, 1, "{:?}", rt.transport);
}

/// Speculation over real sockets: a trigger and two invokers (inline applications), every
/// request of a chain-2 pipeline completes exactly once; the invokers start most steps before
/// their assignment is delivered and every speculation is confirmed or discarded, each
/// execution's completion submitted only for a confirmed one (the replicas stay identical,
/// and no invoker ran more than it completed plus what was discarded).
#[test]
fn speculated_steps_complete_exactly_once() {
    let key = Key::from_bytes([9; 32]);
    let socks: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    drop(socks);
    let member = |me: u16| {
        let mut c = cfg(me, &key);
        c.view = View::new(ViewId(1), vec![MemberId(0), MemberId(1), MemberId(2)]);
        c.names = vec!["trigger".into(), "invoker-0".into(), "invoker-1".into()];
        c.speculate = me != 0;
        c
    };
    let pipeline = Pipeline::chain("t", 2, 20);
    let mut reports = Vec::new();
    let mut invokers = Vec::new();
    for me in [1u16, 2] {
        let app = InvokerApp::new(MemberId(me), vec![pipeline.clone()], 2, 4096);
        reports.push(app.report());
        invokers.push(
            EngineHandle::start_with(
                member(me),
                Box::new(UdpTransport::bind(addrs[me as usize], addrs.clone()).unwrap()),
                Clock::new(),
                Some(Box::new(app)),
            )
            .unwrap(),
        );
    }
    let trigger = EngineHandle::start(
        member(0),
        Box::new(UdpTransport::bind(addrs[0], addrs.clone()).unwrap()),
        Clock::new(),
    )
    .unwrap();
    trigger.wait_ready(Duration::from_secs(10)).unwrap();
    for q in pipeline.queue_specs() {
        trigger.submit(&Op::Create(q)).unwrap();
    }
    let n = 300u64;
    let mut done = std::collections::BTreeSet::new();
    for i in 0..n {
        let req =
            pipeline.entry_request(RequestId::new(MemberId(0), i), vec![1; 16], Meta::default());
        trigger
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
        // Paced, so that invokers are idle when a push arrives (what speculation is for).
        std::thread::sleep(Duration::from_micros(300));
        while let Some(ev) = trigger.next_event(Duration::ZERO) {
            count_completion(ev.effect, &mut done);
        }
    }
    while done.len() < n as usize {
        let ev = trigger
            .next_event(Duration::from_secs(10))
            .expect("completions keep coming");
        count_completion(ev.effect, &mut done);
    }
    trigger.submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    let rt = trigger.join();
    let ri: Vec<_> = invokers.into_iter().map(|h| h.join()).collect();
    for r in &ri {
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.digest, rt.digest, "replicas differ");
    }
    let started: u64 = ri.iter().map(|r| r.speculation.started).sum();
    let confirmed: u64 = ri.iter().map(|r| r.speculation.confirmed).sum();
    let discarded: u64 = ri.iter().map(|r| r.speculation.discarded).sum();
    let executed: u64 = reports.iter().map(|r| r.lock().unwrap().executed).sum();
    assert_eq!(
        started,
        confirmed + discarded,
        "{:?}",
        ri.iter().map(|r| r.speculation).collect::<Vec<_>>()
    );
    assert!(
        started >= n,
        "only {started} of {} steps were speculated",
        2 * n
    );
    // Every step ran once, plus once more for each discarded speculation.
    assert_eq!(executed, 2 * n + discarded);
}
