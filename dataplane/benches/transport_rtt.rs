//! Round trip of one 64-byte frame between two members, each busy-polling on a core of its
//! own: what a transport costs when wake-ups are out of the picture. udp (loopback) is the
//! baseline measured in the same run; compare the ratios, not the absolute figures.
//!
//!     cargo bench -p conveyor-dataplane --bench transport_rtt

use conveyor_dataplane::transport::shm::{ShmConfig, ShmTransport};
use conveyor_dataplane::transport::udp::UdpTransport;
use conveyor_dataplane::transport::{RecvBatch, Transport};
use criterion::{criterion_group, criterion_main, Criterion};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cores the process may use, read once (after a thread pins itself, the list it reads is
/// its own single core).
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

fn pin(core: usize) {
    let ids = cores();
    if let Some(id) = ids.get(core % ids.len().max(1)) {
        core_affinity::set_for_current(*id);
    }
}

/// Measures round trips from `a` (member 0) through an echoing `b` (member 1).
fn rtt(c: &mut Criterion, name: &str, mut a: Box<dyn Transport>, mut b: Box<dyn Transport>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let echo = std::thread::spawn(move || {
        pin(1);
        let mut rb = RecvBatch::new(64, 2048);
        while !s.load(Ordering::Relaxed) {
            if b.recv(&mut rb).unwrap_or(0) == 0 {
                continue;
            }
            let frames: Vec<Vec<u8>> = rb.iter().map(|(_, f)| f.to_vec()).collect();
            let out: Vec<(usize, &[u8])> = frames.iter().map(|f| (0, f.as_slice())).collect();
            b.send(&out).unwrap();
        }
    });
    pin(0);
    let mut rb = RecvBatch::new(64, 2048);
    let frame = [7u8; 64];
    c.bench_function(name, |bn| {
        bn.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                a.send(&[(1, &frame)]).unwrap();
                let t = Instant::now();
                while a.recv(&mut rb).unwrap() == 0 {
                    assert!(t.elapsed() < Duration::from_secs(5), "{name}: no echo");
                }
            }
            start.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}

fn udp_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
    let free = || {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let addrs: Vec<SocketAddr> = vec![free(), free()];
    (
        Box::new(UdpTransport::bind(addrs[0], addrs.clone()).unwrap()),
        Box::new(UdpTransport::bind(addrs[1], addrs.clone()).unwrap()),
    )
}

fn shm_pair() -> (Box<dyn Transport>, Box<dyn Transport>) {
    let dir = std::path::PathBuf::from("/dev/shm")
        .join(format!("conveyor-bench-shm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |me| ShmConfig {
        dir: dir.clone(),
        tag: "bench".into(),
        me,
        members: 2,
        max_frame: 1472,
    };
    (
        Box::new(ShmTransport::open(&cfg(0)).unwrap()),
        Box::new(ShmTransport::open(&cfg(1)).unwrap()),
    )
}

fn transports(c: &mut Criterion) {
    assert!(
        cores().len() >= 2,
        "the round trip needs two cores, one per member"
    );
    let (a, b) = udp_pair();
    rtt(c, "rtt/udp", a, b);
    let (a, b) = shm_pair();
    rtt(c, "rtt/shm", a, b);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = transports
}
criterion_main!(benches);
