//! Two shards, each a group of three engines over real UDP sockets (and again over the `rdma`
//! transport on the emulated fabric: each shard's members their own device contexts, queue
//! pairs and side channels, as a sharded group file gives them), on three "hosts" (member `i`
//! of each shard; the engines of one host share its forwarders, `conveyor_dataplane::shard`).
//! A three-step pipeline whose steps alternate shards (shard 0, shard 1, shard 0): every run's
//! continuations cross to the other shard and back through the forwarders, and its end is told
//! to its pusher in shard 0. Every run completes exactly once, also when an invoker of each
//! shard stops mid-run.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::ProtoConfig;
use conveyor_core::queue::{Effect, Meta, Op};
use conveyor_core::shard::{ForwarderConfig, ShardId, ShardMap};
use conveyor_core::types::{GroupId, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_dataplane::engine::{Clock, EngineConfig, EngineHandle, IdlePolicy};
use conveyor_dataplane::invoker::InvokerApp;
use conveyor_dataplane::shard::{Forwarders, ShardMember};
use conveyor_dataplane::transport::rdma::emu::Fabric;
use conveyor_dataplane::transport::rdma::{RdmaConfig, RdmaTransport};
use conveyor_dataplane::transport::udp::UdpTransport;
use conveyor_dataplane::transport::Transport;
use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(shard: u16, me: u16, key: &Key) -> EngineConfig {
    EngineConfig {
        proto: ProtoConfig::default(),
        key: key.clone(),
        group: GroupId(40 + u32::from(shard)),
        view: View::new(ViewId(1), vec![MemberId(0), MemberId(1), MemberId(2)]),
        me: MemberId(me),
        names: vec!["host-0".into(), "host-1".into(), "host-2".into()],
        idle: IdlePolicy::SHARED,
        core: None,
        startup_timeout: Duration::from_secs(10),
        linger: Duration::from_millis(100),
        rejoin: false,
        speculate: false,
        join: false,
        data_dir: None,
        log_segment_bytes: None,
    }
}

/// What the shards' members talk over.
#[derive(Clone, Copy, Debug)]
enum Medium {
    Udp,
    /// The `rdma` transport on one emulated fabric (every member of every shard a device of
    /// its own on it).
    Rdma,
}

/// Three free TCP ports on loopback (the rdma transport's side channels).
fn free_tcp3() -> Vec<SocketAddr> {
    let ls: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// One shard's transports: UDP sockets on fresh ports, or rdma on `fabric`.
fn transports(shard: u16, medium: Medium, fabric: &Fabric) -> Vec<Box<dyn Transport>> {
    match medium {
        Medium::Udp => udp3().into_iter().map(|t| Box::new(t) as _).collect(),
        Medium::Rdma => {
            let a = free_tcp3();
            (0..3)
                .map(|me| {
                    let t = RdmaTransport::open(
                        &RdmaConfig {
                            group: format!("shard{shard}"),
                            me,
                            peers: a.clone(),
                            // The protocol's frames (the group's max_frame).
                            max_frame: ProtoConfig::default().max_frame,
                            poll_us: 50,
                        },
                        fabric.device(),
                    )
                    .unwrap();
                    Box::new(t) as _
                })
                .collect()
        }
    }
}

fn udp3() -> Vec<UdpTransport> {
    let mut transports = Vec::new();
    for attempt in 1.. {
        let socks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let a: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        drop(socks);
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
    transports
}

/// One shard's three engines: member 0 a trigger (no application), members 1 and 2 invokers
/// running the pipeline.
fn start_shard(
    shard: u16,
    key: &Key,
    pipeline: &Pipeline,
    medium: Medium,
    fabric: &Fabric,
) -> Vec<EngineHandle> {
    (0..3u16)
        .zip(transports(shard, medium, fabric))
        .map(|(me, t)| {
            let app = (me > 0).then(|| {
                Box::new(InvokerApp::new(
                    MemberId(me),
                    vec![pipeline.clone()],
                    4,
                    4096,
                )) as Box<dyn conveyor_dataplane::engine::InlineApp>
            });
            EngineHandle::start_with(cfg(shard, me, key), t, Clock::new(), app).unwrap()
        })
        .collect()
}

#[test]
fn runs_cross_shards_through_the_forwarders_exactly_once_also_when_invokers_stop() {
    runs_cross_shards(Medium::Udp);
}

#[test]
fn over_the_rdma_transport_too() {
    runs_cross_shards(Medium::Rdma);
}

fn runs_cross_shards(medium: Medium) {
    let fabric = Fabric::new();
    let key = Key::from_bytes([0x44; 32]);
    let pipeline = Pipeline::chain("x", 3, 300);
    let queues: Vec<String> = pipeline.queue_specs().into_iter().map(|q| q.name).collect();
    assert_eq!(queues.len(), 3);
    // Steps alternate shards: 0, 1, 0.
    let mut map = ShardMap::hashed(1, 2);
    for (k, q) in queues.iter().enumerate() {
        map = map.with_override(q, ShardId((k % 2) as u16));
    }
    let mut shards: Vec<Vec<Option<EngineHandle>>> = (0..2u16)
        .map(|s| {
            start_shard(s, &key, &pipeline, medium, &fabric)
                .into_iter()
                .map(Some)
                .collect()
        })
        .collect();
    for (s, hs) in shards.iter().enumerate() {
        let h = hs[0].as_ref().unwrap();
        h.wait_ready(Duration::from_secs(10)).unwrap();
        for q in pipeline.queue_specs() {
            h.submit(&Op::Create(q)).unwrap();
        }
        h.submit(&Op::ShardMap {
            by: MemberId(0),
            me: ShardId(s as u16),
            map: map.clone(),
        })
        .unwrap();
    }
    // Each host's forwarders, over its members of both shards.
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Clock::new();
    let fwd_cfg = ForwarderConfig {
        resend_after: Duration::from_millis(20),
        ..ForwarderConfig::default()
    };
    let forwarders: Vec<_> = (0..3)
        .map(|host| {
            let members: Vec<ShardMember> = (0..2)
                .map(|s| {
                    let h = shards[s][host].as_ref().unwrap();
                    ShardMember {
                        shard: ShardId(s as u16),
                        me: MemberId(host as u16),
                        probe: h.probe(),
                        submitter: h.submitter(),
                    }
                })
                .collect();
            let (stop, clock, cfg) = (stop.clone(), clock, fwd_cfg.clone());
            std::thread::spawn(move || {
                Forwarders::new(members, cfg).run(&clock, Duration::from_micros(200), &stop)
            })
        })
        .collect();
    let n = 300u64;
    let trigger = shards[0][0].take().unwrap();
    let mut done = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pushed = 0u64;
    while done.len() < n as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {n} runs done ({} accepted): {}",
            done.len(),
            accepted.len(),
            trigger.status()
        );
        if pushed < n {
            let req = pipeline.entry_request(
                RequestId::new(MemberId(0), pushed + 1),
                vec![1; 32],
                Meta::default(),
            );
            pushed += 1;
            trigger
                .submit(&Op::Push {
                    pusher: MemberId(0),
                    req,
                })
                .unwrap();
        }
        if done.len() as u64 >= n / 4 && shards[0][2].is_some() {
            // An invoker of each shard stops (host 2's), with runs in every step under way:
            // its requests go back to their queues when the group removes it.
            for s in &mut shards {
                let r = s[2].take().unwrap().stop();
                assert!(r.error.is_none(), "{r:?}");
            }
        }
        if let Some(ev) = trigger.next_event(if pushed < n {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        }) {
            match ev.effect {
                Effect::Accepted { id, .. } => {
                    accepted.insert(id);
                }
                Effect::Completed {
                    id, terminal: true, ..
                } => assert!(done.insert(id), "{id} ended twice"),
                Effect::Completed {
                    terminal: false, ..
                } => {}
                Effect::Rejected { .. } | Effect::Failed { .. } => {
                    panic!("{:?}", ev.effect)
                }
                _ => {}
            }
        }
    }
    assert_eq!(done, accepted);
    // Both shards removed the stopped invoker (a view without host 2).
    // (What an engine shows other threads is refreshed a few times a second.)
    for (k, s) in shards.iter().enumerate() {
        let h = s[1].as_ref().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let live = h.live();
            if live.view > 1 && !live.members.contains(&MemberId(2)) {
                break;
            }
            assert!(
                Instant::now() < until,
                "shard {k}: {:?} {:?}",
                live.view,
                live.members
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // What the stopped invokers held went back to their queues (and was done by the others).
    let requeued: u64 = shards
        .iter()
        .map(|s| s[1].as_ref().unwrap().live().requeued)
        .sum();
    assert!(requeued > 0, "nothing was requeued");
    // Shard 1's member 0 (host 0) was told of none of those runs: ids name shard 0's member.
    let host0_s1 = shards[1][0].as_ref().unwrap();
    while let Some(ev) = host0_s1.try_event() {
        assert!(
            !matches!(
                ev.effect,
                Effect::Completed { .. } | Effect::Accepted { .. } | Effect::Requeued { .. }
            ),
            "told in shard 1: {:?}",
            ev.effect
        );
    }
    stop.store(true, Ordering::Release);
    let stats: Vec<_> = forwarders.into_iter().map(|f| f.join().unwrap()).collect();
    // Each run crossed twice (shard 0 to 1, and back): 2n entries at least, and acknowledged.
    let sent: u64 = stats.iter().map(|s| s.sent).sum();
    eprintln!("forwarders: {stats:?}");
    assert!(sent >= 2 * n, "{stats:?}");
    assert!(stats.iter().map(|s| s.acks).sum::<u64>() > 0);
    let _ = trigger.stop();
    for s in shards {
        for h in s.into_iter().flatten() {
            let _ = h.stop();
        }
    }
}
