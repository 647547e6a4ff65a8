//! Three engines over real UDP sockets with data directories: the whole group stops with
//! accepted requests waiting in a durable queue, one member's log loses the end of its last
//! record, and the group starts again from its data directories: every request it was told
//! accepted completes, exactly once, and the replicas agree. And the log stays bounded: a
//! snapshot each time it grew by a segment, the segments before it deleted.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::ProtoConfig;
use conveyor_core::queue::{
    Durability, Effect, Meta, OnFull, Op, Order, QueueSpec, RejectReason, Request,
};
use conveyor_core::types::{GroupId, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_dataplane::engine::{Clock, EngineConfig, EngineHandle, IdlePolicy};
use conveyor_dataplane::invoker::InvokerApp;
use conveyor_dataplane::transport::udp::UdpTransport;
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

fn addrs() -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn cfg(me: u16, key: &Key, data: &Path, segment: Option<u64>) -> EngineConfig {
    EngineConfig {
        proto: ProtoConfig::default(),
        key: key.clone(),
        group: GroupId(7),
        view: View::new(ViewId(1), vec![MemberId(0), MemberId(1), MemberId(2)]),
        me: MemberId(me),
        names: vec!["trigger".into(), "invoker-0".into(), "invoker-1".into()],
        idle: IdlePolicy::SHARED,
        core: None,
        startup_timeout: Duration::from_secs(10),
        linger: Duration::from_millis(100),
        rejoin: true,
        speculate: false,
        join: false,
        data_dir: Some(data.join(format!("member-{me}"))),
        log_segment_bytes: segment,
    }
}

/// Starts the three members on fresh ports: the trigger, and two invokers running the
/// pipeline (`run`) or taking nothing.
fn start(key: &Key, data: &Path, pipeline: &Pipeline, run: bool) -> Vec<EngineHandle> {
    start_with(key, data, pipeline, run, None)
}

fn start_with(
    key: &Key,
    data: &Path,
    pipeline: &Pipeline,
    run: bool,
    segment: Option<u64>,
) -> Vec<EngineHandle> {
    // The ports addrs() found free may be taken by a test running beside this one before
    // they are bound again: then three others.
    let mut transports = Vec::new();
    for attempt in 1.. {
        let a = addrs();
        match (0..3)
            .map(|me| UdpTransport::bind(a[me], a.clone()))
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(t) => {
                transports = t;
                break;
            }
            Err(e) if attempt < 20 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding the members' ports: {e}"),
        }
    }
    let mut hs = Vec::new();
    for (me, transport) in (0..3u16).zip(transports) {
        let transport = Box::new(transport);
        let app = (me > 0 && run).then(|| {
            Box::new(InvokerApp::new(
                MemberId(me),
                vec![pipeline.clone()],
                4,
                4096,
            )) as Box<dyn conveyor_dataplane::engine::InlineApp>
        });
        hs.push(
            EngineHandle::start_with(cfg(me, key, data, segment), transport, Clock::new(), app)
                .unwrap(),
        );
    }
    hs
}

#[test]
fn a_whole_group_restart_from_data_directories_loses_no_accepted_request() {
    let key = Key::from_bytes([3; 32]);
    let t = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::chain("d", 2, 20);
    let n = 200u64;
    // First run: no invoker takes anything; every push is told accepted once two of the
    // three members have it on disk.
    let hs = start(&key, t.path(), &pipeline, false);
    hs[0].wait_ready(Duration::from_secs(10)).unwrap();
    for mut q in pipeline.queue_specs() {
        q.durability = Durability::Log;
        hs[0].submit(&Op::Create(q)).unwrap();
    }
    let accepted = push_accepted(&hs[0], &pipeline, 0, n, 32);
    // The whole group goes down.
    for h in hs {
        let r = h.stop();
        assert!(r.error.is_none(), "{r:?}");
    }
    // Invoker 1's log loses the end of its last record (a write a power cut tore).
    let last = files(t.path(), 2, "cvl").pop().expect("a log segment");
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    // Second run, from the data directories: the invokers run the pipeline; every accepted
    // request completes once.
    let hs = start(&key, t.path(), &pipeline, true);
    hs[0].wait_ready(Duration::from_secs(10)).unwrap();
    complete_once(&hs[0], &accepted);
    hs[0].submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    let reports: Vec<_> = hs.into_iter().map(|h| h.join()).collect();
    for r in &reports {
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.digest, reports[0].digest, "replicas differ");
    }
}

/// Pushes requests `from .. from + n` (payloads of `len` bytes) into the pipeline's durable
/// queues and waits (20 s at most) until each is told accepted.
fn push_accepted(
    h: &EngineHandle,
    pipeline: &Pipeline,
    from: u64,
    n: u64,
    len: usize,
) -> BTreeSet<RequestId> {
    for i in from..from + n {
        let req = pipeline.entry_request(
            RequestId::new(MemberId(0), i),
            vec![7; len],
            Meta::default(),
        );
        h.submit(&Op::Push {
            pusher: MemberId(0),
            req,
        })
        .unwrap();
    }
    let mut accepted = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (accepted.len() as u64) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} accepted",
            accepted.len()
        );
        if let Some(ev) = h.next_event(Duration::from_millis(100)) {
            if let Effect::Accepted { id, .. } = ev.effect {
                accepted.insert(id);
            }
        }
    }
    accepted
}

/// Waits (30 s at most) until every request of `accepted` completed, each once, and nothing
/// else did.
fn complete_once(h: &EngineHandle, accepted: &BTreeSet<RequestId>) {
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted requests done after the restart: {}",
            done.len(),
            accepted.len(),
            h.status()
        );
        if let Some(ev) = h.next_event(Duration::from_millis(100)) {
            if let Effect::Completed {
                id, terminal: true, ..
            } = ev.effect
            {
                assert!(done.insert(id), "{id} completed twice");
            }
        }
    }
    assert_eq!(&done, accepted);
}

/// The files of member `m`'s data directory with this extension.
fn files(data: &Path, m: u16, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data.join(format!("member-{m}")))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// With 16 KiB segments, 3000 accepted pushes of 200 bytes (about 700 KiB of log): every member
/// took snapshots as its log grew and deleted the segments behind them (a few files, not
/// forty), and the group restarted from those directories still holds all 3000, once each.
#[test]
fn snapshots_keep_the_log_bounded_and_recovery_starts_from_them() {
    let key = Key::from_bytes([4; 32]);
    let t = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::chain("d", 1, 20);
    let segment = Some(16 << 10);
    let hs = start_with(&key, t.path(), &pipeline, false, segment);
    hs[0].wait_ready(Duration::from_secs(10)).unwrap();
    for mut q in pipeline.queue_specs() {
        q.durability = Durability::Log;
        q.capacity = 100_000;
        hs[0].submit(&Op::Create(q)).unwrap();
    }
    let mut accepted = BTreeSet::new();
    for round in 0..3 {
        accepted.extend(push_accepted(&hs[0], &pipeline, round * 1000, 1000, 200));
    }
    for h in hs {
        let r = h.stop();
        assert!(r.error.is_none(), "{r:?}");
    }
    for m in 0..3 {
        let segs = files(t.path(), m, "cvl");
        let snaps = files(t.path(), m, "cvs");
        let bytes: u64 = segs
            .iter()
            .chain(&snaps)
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            segs.len() <= 3,
            "member {m}: {} segments left: {segs:?}",
            segs.len()
        );
        assert_eq!(snaps.len(), 1, "member {m}: {snaps:?}");
        assert!(
            !snaps[0]
                .to_string_lossy()
                .ends_with("-00000000000000000000.cvs"),
            "member {m}: only the first snapshot: {snaps:?}"
        );
        // The snapshot holds the queue (3000 x 200 bytes); the log behind it is gone.
        assert!(bytes < (2 * 700) << 10, "member {m}: {bytes} bytes on disk");
    }
    // The group restarts from the snapshots and their tails: all 3000 are still queued.
    let hs = start_with(&key, t.path(), &pipeline, true, segment);
    hs[0].wait_ready(Duration::from_secs(10)).unwrap();
    complete_once(&hs[0], &accepted);
    hs[0].submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    for h in hs {
        assert!(h.join().error.is_none());
    }
}

/// The three members' data directories on one 2 MiB tmpfs, a filler taking the rest of it:
/// pushes into a durable queue are held (not told accepted; the members say their disk is
/// full in `Live`, the `/metrics` source), nothing is lost or stopped, and pushes into a
/// durable queue whose policy is reject are refused at once (each told, and counted); once
/// space is back every held push is told accepted, once, every replica holds all of them, and
/// the reject queue takes pushes again. (A member stopped
/// while its disk is full stops: its writer gives up what it could not write.)
#[test]
#[ignore = "needs root"]
fn a_full_disk_holds_pushes_back_and_loses_none() {
    assert!(
        conveyor_dataplane::sys::is_root(),
        "this test needs root (it mounts a tmpfs): run it as root"
    );
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(mnt.clone());
    let key = Key::from_bytes([5; 32]);
    let pipeline = Pipeline::chain("d", 1, 20);
    let hs = start(&key, &mnt, &pipeline, false);
    hs[0].wait_ready(Duration::from_secs(10)).unwrap();
    for mut q in pipeline.queue_specs() {
        q.durability = Durability::Log;
        q.capacity = 100_000;
        hs[0].submit(&Op::Create(q)).unwrap();
    }
    // A durable queue whose policy is reject: its pushes are refused while the disks are full.
    let reject = QueueSpec {
        name: "rq".into(),
        capacity: 100_000,
        order: Order::Fifo,
        on_full: OnFull::Reject,
        durability: Durability::Log,
    };
    hs[0].submit(&Op::Create(reject)).unwrap();
    let push_rq = |i: u64| {
        let req = Request {
            id: RequestId::new(MemberId(0), 1_000_000 + i),
            instance: 0,
            step: "rq".into(),
            queue: "rq".into(),
            payload: vec![1; 20],
            meta: Meta::default(),
            http: None,
        };
        hs[0]
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
    };
    let mut accepted = push_accepted(&hs[0], &pipeline, 0, 100, 200);
    // The rest of the file system goes to a filler.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    // About 250 KB of log per member once space is back (the 2 MiB hold all three).
    let n = 1000u64;
    for i in 100..100 + n {
        let req = pipeline.entry_request(
            RequestId::new(MemberId(0), i),
            vec![7; 200],
            Meta::default(),
        );
        hs[0]
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
    }
    // The disks fill: the members say so, and acceptances stop short of the pushes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(ev) = hs[0].try_event() {
            if let Effect::Accepted { id, .. } = ev.effect {
                assert!(accepted.insert(id), "{id} accepted twice");
            }
        }
        let full = hs
            .iter()
            .filter(|h| h.live().log.is_some_and(|l| l.disk_full))
            .count();
        if full >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full disk was not said: {:?}",
            hs.iter().map(|h| h.live().log).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Pushes into the reject queue are refused at once, each told to its pusher.
    for i in 0..50 {
        push_rq(i);
    }
    let mut refused = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "{} of 50 pushes into the reject queue refused",
            refused.len()
        );
        if let Some(ev) = hs[0].next_event(Duration::from_millis(100)) {
            match ev.effect {
                Effect::Accepted { id, .. } if id.counter() >= 1_000_000 => {
                    panic!("{id} accepted into the reject queue with the disks full")
                }
                Effect::Accepted { id, .. } => assert!(accepted.insert(id), "{id} accepted twice"),
                Effect::Rejected {
                    id,
                    reason: RejectReason::DisksFull,
                    ..
                } => assert!(refused.insert(id), "{id} refused twice"),
                _ => {}
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    while let Some(ev) = hs[0].try_event() {
        if let Effect::Accepted { id, .. } = ev.effect {
            assert!(accepted.insert(id), "{id} accepted twice");
        }
    }
    let before = accepted.len() as u64;
    assert!(
        before < 100 + n,
        "every push was told accepted with the disks full"
    );
    let live = hs[0].live().log.unwrap();
    assert!(
        live.failed_writes > 0 && live.held_for_disks > 0 && live.refused_for_disks == 50,
        "{live:?}"
    );
    for h in &hs {
        assert!(!h.is_finished(), "a member stopped: {}", h.status());
    }
    // Space comes back: every push is told accepted, once.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (accepted.len() as u64) < 100 + n {
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted after space came back ({before} before)",
            accepted.len(),
            100 + n
        );
        if let Some(ev) = hs[0].next_event(Duration::from_millis(100)) {
            if let Effect::Accepted { id, .. } = ev.effect {
                assert!(accepted.insert(id), "{id} accepted twice");
            }
        }
    }
    // (`Live` is refreshed about five times a second.)
    let deadline = Instant::now() + Duration::from_secs(10);
    for h in &hs {
        loop {
            let l = h.live();
            let depth: usize = l.queues.iter().map(|q| q.1).sum();
            if !l.log.unwrap().disk_full && depth as u64 == 100 + n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}, {:?}: not every push held, or still full",
                l.queues,
                l.log
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // With space back, the reject queue takes pushes again.
    push_rq(50);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no answer to a push into the reject queue"
        );
        if let Some(ev) = hs[0].next_event(Duration::from_millis(100)) {
            match ev.effect {
                Effect::Accepted { id, .. } if id.counter() == 1_000_050 => break,
                Effect::Rejected { id, reason, .. } => panic!("{id} refused: {reason}"),
                _ => {}
            }
        }
    }
    hs[0].submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    for h in hs {
        assert!(h.join().error.is_none());
    }
}
