//! Three engines over real UDP sockets with data directories: the whole group stops with
//! accepted requests waiting in a durable queue, one member's log loses the end of its last
//! record, and the group starts again from its data directories: every request it was told
//! accepted completes, exactly once, and the replicas agree.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::ProtoConfig;
use conveyor_core::queue::{Durability, Effect, Meta, Op};
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

fn cfg(me: u16, key: &Key, data: &Path) -> EngineConfig {
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
    }
}

/// Starts the three members on fresh ports: the trigger, and two invokers running the
/// pipeline (`run`) or taking nothing.
fn start(key: &Key, data: &Path, pipeline: &Pipeline, run: bool) -> Vec<EngineHandle> {
    let a = addrs();
    let mut hs = Vec::new();
    for me in 0..3u16 {
        let transport = Box::new(UdpTransport::bind(a[me as usize], a.clone()).unwrap());
        let app = (me > 0 && run).then(|| {
            Box::new(InvokerApp::new(
                MemberId(me),
                vec![pipeline.clone()],
                4,
                4096,
            )) as Box<dyn conveyor_dataplane::engine::InlineApp>
        });
        hs.push(
            EngineHandle::start_with(cfg(me, key, data), transport, Clock::new(), app).unwrap(),
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
    for i in 0..n {
        let req =
            pipeline.entry_request(RequestId::new(MemberId(0), i), vec![7; 32], Meta::default());
        hs[0]
            .submit(&Op::Push {
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
        if let Some(ev) = hs[0].next_event(Duration::from_millis(100)) {
            if let Effect::Accepted { id, .. } = ev.effect {
                accepted.insert(id);
            }
        }
    }
    // The whole group goes down.
    for h in hs {
        let r = h.stop();
        assert!(r.error.is_none(), "{r:?}");
    }
    // Invoker 1's log loses the end of its last record (a write a power cut tore).
    let dir = t.path().join("member-2");
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cvl"))
        .collect();
    segs.sort();
    let last = segs.pop().expect("a log segment");
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
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted requests done after the restart: {}",
            done.len(),
            accepted.len(),
            hs[0].status()
        );
        if let Some(ev) = hs[0].next_event(Duration::from_millis(100)) {
            if let Effect::Completed {
                id, terminal: true, ..
            } = ev.effect
            {
                assert!(done.insert(id), "{id} completed twice");
            }
        }
    }
    assert_eq!(done, accepted);
    hs[0].submit(&Op::Shutdown { by: MemberId(0) }).unwrap();
    let reports: Vec<_> = hs.into_iter().map(|h| h.join()).collect();
    for r in &reports {
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.digest, reports[0].digest, "replicas differ");
    }
}
