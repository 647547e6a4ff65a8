//! The `rdma` transport's logic over the in-process verbs emulation (no RDMA device exists on
//! these machines): the emulation's semantics (ordering, completions, error completions, a dead
//! peer), the transport's rings, credits and reconnection, and the same end-to-end protocol
//! test as the other transports, plus a member that dies in the middle of its writes.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::ProtoConfig;
use conveyor_core::queue::{Effect, Meta, Op};
use conveyor_core::types::{GroupId, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::{max_payload_for, Key};
use conveyor_dataplane::engine::{Clock, EngineConfig, EngineHandle, IdlePolicy};
use conveyor_dataplane::invoker::InvokerApp;
use conveyor_dataplane::transport::rdma::emu::{EmuDevice, Fabric};
use conveyor_dataplane::transport::rdma::{
    Completion, RdmaConfig, RdmaTransport, Verbs, WcOpcode, WcStatus, SLOTS,
};
use conveyor_dataplane::transport::{RecvBatch, Transport};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn poll_until(dev: &EmuDevice, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < n && start.elapsed() < Duration::from_secs(5) {
        dev.poll(&mut out, 64);
    }
    out
}

/// Two devices with a connected queue pair each way, a region on each.
#[test]
fn emulated_writes_are_placed_in_order_and_failures_complete_with_errors() {
    let fabric = Fabric::new();
    let (a, b) = (fabric.device(), fabric.device());
    let (ma, _ra) = a.register(4096).unwrap();
    let (mb, rb) = b.register(4096).unwrap();
    let (qa, ea) = a.create_qp().unwrap();
    let (qb, eb) = b.create_qp().unwrap();
    // A write to a peer whose queue pair is not connected yet waits (RC retransmits).
    a.connect(qa, &eb).unwrap();
    for i in 0..4u64 {
        b.post_recv(qb, 100 + i).unwrap();
    }
    a.write(ma, 0, b"first");
    a.post_write(qa, 1, ma, 0, 5, rb, 0, Some(7)).unwrap();
    assert_eq!(fabric.in_flight(), 1);
    b.connect(qb, &ea).unwrap();
    assert_eq!(fabric.in_flight(), 0);
    // Later writes on the queue pair land after earlier ones, at the peer and in completions.
    a.write(ma, 8, b"second");
    a.post_write(qa, 2, ma, 8, 6, rb, 0, None).unwrap();
    a.post_write(qa, 3, ma, 8, 6, rb, 16, Some(9)).unwrap();
    let wa = poll_until(&a, 3);
    assert_eq!(
        wa.iter().map(|c| (c.wr_id, c.status)).collect::<Vec<_>>(),
        vec![
            (1, WcStatus::Success),
            (2, WcStatus::Success),
            (3, WcStatus::Success)
        ]
    );
    let wb = poll_until(&b, 2);
    assert_eq!(
        wb.iter()
            .map(|c| (c.wr_id, c.opcode, c.imm))
            .collect::<Vec<_>>(),
        vec![
            (100, WcOpcode::RecvRdmaWithImm, Some(7)),
            (101, WcOpcode::RecvRdmaWithImm, Some(9))
        ]
    );
    let mut got = [0u8; 6];
    b.read(mb, 0, &mut got);
    assert_eq!(&got, b"second", "the second write overwrote the first");
    b.read(mb, 16, &mut got);
    assert_eq!(&got, b"second");
    // A bad rkey: remote access error, then the queue pair flushes what follows.
    let mut bad = rb;
    bad.rkey ^= 1;
    fabric.hold(true);
    a.post_write(qa, 4, ma, 0, 5, bad, 0, None).unwrap();
    a.post_write(qa, 5, ma, 0, 5, rb, 0, None).unwrap();
    fabric.hold(false);
    let w = poll_until(&a, 2);
    assert_eq!(w[0].status, WcStatus::RemoteAccess);
    assert_eq!(w[1].status, WcStatus::Flushed);
    // Out of bounds is refused the same way.
    let (qa2, ea2) = a.create_qp().unwrap();
    let (qb2, eb2) = b.create_qp().unwrap();
    a.connect(qa2, &eb2).unwrap();
    b.connect(qb2, &ea2).unwrap();
    a.post_write(qa2, 6, ma, 0, 64, rb, 4090, None).unwrap();
    assert_eq!(poll_until(&a, 1)[0].status, WcStatus::RemoteAccess);
    // A peer that dies with writes in flight: the first fails (retries exhausted), the rest
    // are flushed; nothing of them lands.
    let (qa3, ea3) = a.create_qp().unwrap();
    let (qb3, eb3) = b.create_qp().unwrap();
    a.connect(qa3, &eb3).unwrap();
    b.connect(qb3, &ea3).unwrap();
    b.write(mb, 100, b"before");
    fabric.hold(true);
    a.write(ma, 0, b"after!");
    for i in 0..3 {
        a.post_write(qa3, 10 + i, ma, 0, 6, rb, 100, None).unwrap();
    }
    fabric.kill(&b);
    fabric.hold(false);
    let w = poll_until(&a, 3);
    assert_eq!(
        w.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![
            WcStatus::RetryExceeded,
            WcStatus::Flushed,
            WcStatus::Flushed
        ]
    );
    // The dead device refuses work.
    assert!(b.post_recv(qb3, 1).is_err());
}

fn open(fabric: &Fabric, addrs: &[SocketAddr], me: usize) -> (RdmaTransport, Arc<EmuDevice>) {
    let dev = fabric.device();
    let t = RdmaTransport::open(
        &RdmaConfig {
            group: "test".into(),
            me,
            peers: addrs.to_vec(),
            max_frame: 1400,
            poll_us: 50,
        },
        dev.clone(),
    )
    .unwrap();
    (t, dev)
}

fn wait_connected(ts: &mut [&mut RdmaTransport]) {
    let mut rb = RecvBatch::new(64, 2048);
    let start = Instant::now();
    loop {
        let mut all = true;
        for t in ts.iter_mut() {
            t.recv(&mut rb).unwrap();
            let n = t.stats().device[0].1;
            all &= n > 0;
        }
        if all {
            // One more round so both ends see READY.
            std::thread::sleep(Duration::from_millis(20));
            for t in ts.iter_mut() {
                t.recv(&mut rb).unwrap();
            }
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no connection");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Frames arrive whole and in order, in both directions, far beyond one ring's worth: the
/// credit (the receiver's status row at the sender) keeps a sender from overwriting what was
/// not read, and what waits for credit is sent when it comes.
#[test]
fn frames_flow_in_order_through_rings_and_credits() {
    let fabric = Fabric::new();
    let addrs = free_addrs(2);
    let (mut a, _da) = open(&fabric, &addrs, 0);
    let (mut b, _db) = open(&fabric, &addrs, 1);
    wait_connected(&mut [&mut a, &mut b]);
    let n = 5 * SLOTS as u32;
    // The receiver does not read while the sender sends: only a ring's worth can be written.
    for i in 0..n {
        let mut f = i.to_le_bytes().to_vec();
        f.resize(4 + (i as usize % 300), i as u8);
        a.send(&[(1, &f)]).unwrap();
    }
    let s = a.stats();
    assert!(
        s.frames_sent <= SLOTS as u64,
        "sent {} with a ring of {SLOTS}",
        s.frames_sent
    );
    let mut rb = RecvBatch::new(64, 2048);
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n as usize && start.elapsed() < Duration::from_secs(10) {
        b.recv(&mut rb).unwrap();
        got.extend(rb.iter().map(|(p, f)| (p, f.to_vec())));
        a.recv(&mut rb).unwrap(); // completions and credits
    }
    assert_eq!(got.len(), n as usize);
    for (i, (p, f)) in got.iter().enumerate() {
        assert_eq!(*p, Some(0));
        assert_eq!(f.len(), 4 + i % 300);
        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()), i as u32);
        assert!(f[4..].iter().all(|&x| x == i as u8));
    }
    b.send(&[(0, b"back")]).unwrap();
    let mut back = Vec::new();
    let start = Instant::now();
    while back.is_empty() && start.elapsed() < Duration::from_secs(5) {
        a.recv(&mut rb).unwrap();
        back.extend(rb.iter().map(|(p, f)| (p, f.to_vec())));
    }
    assert_eq!(back, vec![(Some(1), b"back".to_vec())]);
    assert_eq!(b.stats().malformed, 0);
    assert_eq!(a.stats().send_errors, 0);
}

/// A peer dies with writes in flight: the sender's link fails (counted), nothing panics, and
/// when the peer comes back (a new device and transport on the same address) the link is made
/// again and frames flow.
#[test]
fn a_peer_that_dies_mid_write_is_dropped_and_reconnected_when_back() {
    let fabric = Fabric::new();
    let addrs = free_addrs(2);
    let (mut a, _da) = open(&fabric, &addrs, 0);
    let (mut b, db) = open(&fabric, &addrs, 1);
    wait_connected(&mut [&mut a, &mut b]);
    fabric.hold(true);
    for i in 0..10u32 {
        a.send(&[(1, &i.to_le_bytes())]).unwrap();
    }
    assert!(fabric.in_flight() >= 10);
    fabric.kill(&db);
    fabric.hold(false);
    drop(b);
    let mut rb = RecvBatch::new(64, 2048);
    let start = Instant::now();
    while a.connected(1) && start.elapsed() < Duration::from_secs(5) {
        a.recv(&mut rb).unwrap();
    }
    assert!(!a.connected(1), "the link to the dead peer is torn down");
    let s = a.stats();
    assert_eq!(
        s.device.iter().find(|d| d.0 == "link_failures").unwrap().1,
        1,
        "{s:?}"
    );
    // Frames to a peer without a link are counted, not queued for ever.
    a.send(&[(1, b"nobody")]).unwrap();
    assert!(a.stats().unresolved >= 1);
    // The peer restarts.
    let (mut b2, _db2) = open(&fabric, &addrs, 1);
    let start = Instant::now();
    while !(a.connected(1) && b2.connected(0)) {
        a.recv(&mut rb).unwrap();
        b2.recv(&mut rb).unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "no reconnection");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut got = Vec::new();
    let start = Instant::now();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        a.send(&[(1, b"again")]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        b2.recv(&mut rb).unwrap();
        got.extend(rb.iter().map(|(p, f)| (p, f.to_vec())));
    }
    assert_eq!(got.first(), Some(&(Some(0), b"again".to_vec())));
}

/// A handshake from another group is refused; the transport keeps waiting for its own peer.
#[test]
fn another_groups_member_is_refused_on_the_side_channel() {
    let fabric = Fabric::new();
    let addrs = free_addrs(2);
    let (mut a, _da) = open(&fabric, &addrs, 0);
    let dev = fabric.device();
    let mut stranger = RdmaTransport::open(
        &RdmaConfig {
            group: "other".into(),
            me: 1,
            peers: addrs.clone(),
            max_frame: 1400,
            poll_us: 50,
        },
        dev,
    )
    .unwrap();
    let mut rb = RecvBatch::new(64, 2048);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        a.recv(&mut rb).unwrap();
        stranger.recv(&mut rb).unwrap();
    }
    assert!(!a.connected(1) && !stranger.connected(0));
}

fn engine_cfg(me: u16, key: &Key, n: usize) -> EngineConfig {
    let max_frame = 1400;
    EngineConfig {
        proto: ProtoConfig {
            max_frame,
            max_payload: max_payload_for(max_frame, n),
            ..ProtoConfig::default()
        },
        key: key.clone(),
        group: GroupId(9),
        view: View::new(ViewId(1), (0..n as u16).map(MemberId).collect()),
        me: MemberId(me),
        names: (0..n)
            .map(|i| {
                if i == 0 {
                    "trigger".to_string()
                } else {
                    format!("invoker-{}", i - 1)
                }
            })
            .collect(),
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

/// The protocol end to end over the rdma transport (a trigger and two invokers, emulated
/// verbs): every request completes once and the replicas agree. Then one invoker's device
/// dies in the middle of its writes: the others remove it, and every request pushed before
/// and after still completes exactly once.
#[test]
fn the_protocol_runs_over_rdma_and_survives_a_member_dying_mid_write() {
    let key = Key::from_bytes([3; 32]);
    let fabric = Fabric::new();
    let addrs = free_addrs(3);
    let n = 3;
    let pipeline = Pipeline::chain("t", 2, 5);
    let transport = |me: usize| {
        let dev = fabric.device();
        let t = RdmaTransport::open(
            &RdmaConfig {
                group: "engines".into(),
                me,
                peers: addrs.clone(),
                max_frame: 1400,
                poll_us: 50,
            },
            dev.clone(),
        )
        .unwrap();
        (Box::new(t), dev)
    };
    let (t0, _d0) = transport(0);
    let (t1, _d1) = transport(1);
    let (t2, d2) = transport(2);
    let trigger = EngineHandle::start(engine_cfg(0, &key, n), t0, Clock::new()).unwrap();
    let inv = |me: u16, t| {
        EngineHandle::start_with(
            engine_cfg(me, &key, n),
            t,
            Clock::new(),
            Some(Box::new(InvokerApp::new(
                MemberId(me),
                vec![pipeline.clone()],
                2,
                4096,
            ))),
        )
        .unwrap()
    };
    let i1 = inv(1, t1);
    let i2 = inv(2, t2);
    trigger.wait_ready(Duration::from_secs(10)).unwrap();
    for q in pipeline.queue_specs() {
        trigger.submit(&Op::Create(q)).unwrap();
    }
    let total = 600u64;
    let mut done = std::collections::BTreeSet::new();
    let mut pushed = 0;
    let mut killed = false;
    let start = Instant::now();
    while done.len() < total as usize {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {total} completed",
            done.len()
        );
        if pushed < total && pushed < done.len() as u64 + 64 {
            let req = pipeline.entry_request(
                RequestId::new(MemberId(0), pushed),
                vec![pushed as u8; 32],
                Meta::default(),
            );
            trigger
                .submit(&Op::Push {
                    pusher: MemberId(0),
                    req,
                })
                .unwrap();
            pushed += 1;
            continue;
        }
        if !killed && done.len() >= 200 {
            // Invoker 2's device dies while frames are in flight both ways.
            fabric.hold(true);
            std::thread::sleep(Duration::from_millis(2));
            fabric.kill(&d2);
            fabric.hold(false);
            killed = true;
        }
        if let Some(ev) = trigger.next_event(Duration::from_millis(100)) {
            if let Effect::Completed {
                id, terminal: true, ..
            } = ev.effect
            {
                assert!(done.insert(id), "{id} completed twice");
            }
        }
    }
    assert!(killed);
    assert!(
        trigger.view_id() > 1,
        "the dead invoker was removed by a view change"
    );
    trigger.submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    let r1 = i1.join();
    let rt = trigger.join();
    let _ = i2.stop();
    assert!(r1.error.is_none() && rt.error.is_none(), "{r1:?} {rt:?}");
    assert_eq!(r1.digest, rt.digest, "replicas differ");
    assert_eq!(rt.transport.malformed, 0, "{:?}", rt.transport);
    assert!(
        rt.transport
            .device
            .iter()
            .any(|&(k, v)| k == "link_failures" && v >= 1),
        "{:?}",
        rt.transport
    );
}
