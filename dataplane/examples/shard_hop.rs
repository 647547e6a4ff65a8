//! The cost of a cross-shard hop against an in-shard hop, same sitting: two shards of three
//! engines over loopback UDP (member `i` of each on "host" `i`, its forwarders
//! `conveyor_dataplane::shard::Forwarders` polling every `FWD_IDLE_US`, default 20), a
//! three-step chain of 20 us functions, one run at a time (push, wait for its end at the
//! pusher). Phases alternate the shard map: every step in shard 0 (in-shard), then the steps
//! alternating shards 0, 1, 0 (two cross-shard hops per run: the continuation into shard 1,
//! and the one back), each map a new version applied to both shards. Prints each phase's p50
//! and p99, the medians over the phases, and the cross/in-shard ratio.
//!
//!   cargo run --release -p conveyor-dataplane --example shard_hop -- [RUNS_PER_PHASE] [PHASES]

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::ProtoConfig;
use conveyor_core::queue::{Effect, Meta, Op};
use conveyor_core::shard::{ForwarderConfig, ShardId, ShardMap};
use conveyor_core::types::{GroupId, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_dataplane::engine::{Clock, EngineConfig, EngineHandle, IdlePolicy};
use conveyor_dataplane::invoker::InvokerApp;
use conveyor_dataplane::shard::{Forwarders, ShardMember};
use conveyor_dataplane::transport::udp::UdpTransport;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs before each phase's measured ones (the new map applied, caches warm).
const WARM_UP: u64 = 100;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(2000).max(1);
    let phases = args.get(1).copied().unwrap_or(3).max(1);
    let fwd_idle = Duration::from_micros(
        std::env::var("FWD_IDLE_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let key = Key::from_bytes([0x45; 32]);
    let pipeline = Pipeline::chain("hop", 3, 20);
    let queues: Vec<String> = pipeline.queue_specs().into_iter().map(|q| q.name).collect();
    let shards: Vec<Vec<EngineHandle>> =
        (0..2u16).map(|s| start_shard(s, &key, &pipeline)).collect();
    for hs in &shards {
        hs[0].wait_ready(Duration::from_secs(10)).expect("ready");
        for q in pipeline.queue_specs() {
            hs[0].submit(&Op::Create(q)).expect("create");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Clock::new();
    let threads: Vec<_> = (0..3)
        .map(|host| {
            let members: Vec<ShardMember> = (0..2)
                .map(|s| ShardMember {
                    shard: ShardId(s as u16),
                    me: MemberId(host as u16),
                    probe: shards[s][host].probe(),
                    submitter: shards[s][host].submitter(),
                })
                .collect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                Forwarders::new(members, ForwarderConfig::default()).run(&clock, fwd_idle, &stop)
            })
        })
        .collect();
    let trigger = &shards[0][0];
    let mut next_id = 1u64;
    let mut results: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for phase in 0..2 * phases {
        let cross = phase % 2 == 1;
        let mut map = ShardMap::hashed(phase + 1, 2);
        for (k, q) in queues.iter().enumerate() {
            let owner = if cross { (k % 2) as u16 } else { 0 };
            map = map.with_override(q, ShardId(owner));
        }
        for (s, hs) in shards.iter().enumerate() {
            hs[0]
                .submit(&Op::ShardMap {
                    by: MemberId(0),
                    me: ShardId(s as u16),
                    map: map.clone(),
                })
                .expect("map");
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut lat = Vec::with_capacity(runs as usize);
        for i in 0..runs + WARM_UP {
            let id = RequestId::new(MemberId(0), next_id);
            next_id += 1;
            let req = pipeline.entry_request(id, vec![1; 32], Meta::default());
            let t0 = Instant::now();
            trigger
                .submit(&Op::Push {
                    pusher: MemberId(0),
                    req,
                })
                .expect("push");
            loop {
                let ev = trigger
                    .next_event(Duration::from_secs(5))
                    .unwrap_or_else(|| panic!("run {id} not done in 5 s: {}", trigger.status()));
                match ev.effect {
                    Effect::Completed {
                        id: done,
                        terminal: true,
                        ..
                    } if done == id => break,
                    Effect::Rejected { .. } | Effect::Failed { .. } => panic!("{:?}", ev.effect),
                    _ => {}
                }
            }
            if i >= WARM_UP {
                lat.push(t0.elapsed().as_micros() as u64);
            }
        }
        lat.sort_unstable();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        let (p50, p99) = (p(0.5), p(0.99));
        println!(
            "phase {phase}: {:9} p50 {p50:6} us  p99 {p99:6} us  ({runs} runs)",
            if cross { "cross" } else { "in-shard" }
        );
        results[usize::from(cross)].push((p50, p99));
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let m: Vec<(u64, u64)> = results
        .iter()
        .map(|r| {
            (
                median(r.iter().map(|x| x.0).collect()),
                median(r.iter().map(|x| x.1).collect()),
            )
        })
        .collect();
    println!(
        "medians of {phases} phases each: in-shard p50 {} us p99 {} us; cross (2 hops a run) p50 {} us p99 {} us; ratio p50 {:.2}, p99 {:.2}; each cross hop adds {} us at p50 (forwarders poll every {} us)",
        m[0].0,
        m[0].1,
        m[1].0,
        m[1].1,
        m[1].0 as f64 / m[0].0 as f64,
        m[1].1 as f64 / m[0].1 as f64,
        (m[1].0 as i64 - m[0].0 as i64) / 2,
        fwd_idle.as_micros()
    );
    stop.store(true, Ordering::Release);
    for t in threads {
        let _ = t.join();
    }
}

fn cfg(shard: u16, me: u16, key: &Key) -> EngineConfig {
    EngineConfig {
        proto: ProtoConfig::default(),
        key: key.clone(),
        group: GroupId(60 + u32::from(shard)),
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

/// One shard's engines: member 0 the trigger, members 1 and 2 invokers.
fn start_shard(shard: u16, key: &Key, pipeline: &Pipeline) -> Vec<EngineHandle> {
    let socks: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("port"))
        .collect();
    let a: Vec<SocketAddr> = socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    drop(socks);
    (0..3u16)
        .map(|me| {
            let t = UdpTransport::bind(a[me as usize], a.clone()).expect("bind");
            let app = (me > 0).then(|| {
                Box::new(InvokerApp::new(
                    MemberId(me),
                    vec![pipeline.clone()],
                    4,
                    4096,
                )) as Box<dyn conveyor_dataplane::engine::InlineApp>
            });
            EngineHandle::start_with(cfg(shard, me, key), Box::new(t), Clock::new(), app)
                .expect("engine")
        })
        .collect()
}
