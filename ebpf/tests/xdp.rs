//! The XDP program over network namespaces (needs root; without it each test says it did not
//! run; CI runs as root). Three hosts on a bridge (`testbed/netns.sh`).
//! - The member filter: host 0 runs it on its interface and a protocol socket; host 1 is a
//!   member, host 2 is not. Both send well-formed, correctly signed protocol frames of the group.
//! - The `afxdp` transport: host 0 receives through an AF_XDP socket the program steers to, and
//!   sends through its tx ring; hosts 1 and 2 use kernel sockets.

use conveyor_core::types::{GroupId, MemberId, Seq, ViewId};
use conveyor_core::wire::{Frame, FrameWriter, Header, Key, Kind, Row};
use conveyor_ebpf::{Error, HookConfig, MemberSet, Stats, XdpHook};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

const GROUP: u32 = 7;
const PORT: u16 = 7000;
fn ms(view: &[(Ipv4Addr, u16)], candidates: &[(Ipv4Addr, u16)]) -> MemberSet {
    MemberSet {
        view: view.to_vec(),
        candidates: candidates.to_vec(),
    }
}

const CFG: HookConfig = HookConfig {
    group: GROUP,
    filter: true,
};

/// Tests that need root are `#[ignore = "needs root"]`: `cargo test -- --ignored`, as root,
/// runs them (CI does). Run without root, they fail here saying so.
fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, XDP, AF_XDP): run it as root"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn netns_sh(args: &[&str]) {
    let out = Command::new("bash")
        .arg(format!(
            "{}/../testbed/netns.sh",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "netns.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace hosts, removed when dropped.
struct Hosts(String);
impl Hosts {
    fn up(prefix: &str) -> Hosts {
        netns_sh(&["up", "3", "--prefix", prefix]);
        Hosts(prefix.to_string())
    }
    fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.0)
    }
}
impl Drop for Hosts {
    fn drop(&mut self) {
        netns_sh(&["down", "--prefix", &self.0]);
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn within<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
            conveyor_dataplane::sys::set_net_namespace(&file).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn key() -> Key {
    Key::from_bytes([3u8; 32])
}

/// A signed status frame of the group from `sender`.
fn frame(sender: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    let header = Header {
        kind: Kind::Status,
        group: GroupId(GROUP),
        view: ViewId(1),
        sender: MemberId(sender),
        count: 0,
        seq: Seq(0),
        flags: 0,
        incarnation: 1,
    };
    let row = Row {
        heartbeat: 1,
        delivered: 0,
        persisted: 0,
        received: vec![0, 0, 0],
        incarnations: Vec::new(),
    };
    let w = FrameWriter::new(&mut buf, 1400, &header, &row);
    let n = w.finish(&key());
    buf.truncate(n);
    assert!(
        Frame::parse(&key(), &buf).is_ok(),
        "the test frame is well formed"
    );
    buf
}

/// Sends `n` frames from host `from` (source port `sport`) to host 0.
fn send(hosts: &Hosts, from: usize, sport: u16, sender: u16, n: usize) {
    send_frames(hosts, from, sport, frame(sender), n)
}

/// Sends `n` frames of `kind` (a status frame with its kind byte changed: the program judges
/// headers, the MAC is the stack's).
fn send_kind(hosts: &Hosts, from: usize, sport: u16, kind: Kind, n: usize) {
    let mut f = frame(from as u16);
    f[3] = kind as u8;
    send_frames(hosts, from, sport, f, n)
}

fn send_frames(hosts: &Hosts, from: usize, sport: u16, f: Vec<u8>, n: usize) {
    within(&hosts.ns(from), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, sport)).unwrap();
        for _ in 0..n {
            s.send_to(&f, ("10.77.0.1", PORT)).unwrap();
        }
    });
}

/// Counts the frames host 0's socket receives from each source address, for `wait`.
fn drain(sock: &UdpSocket, wait: Duration) -> (usize, usize) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let (mut member, mut other) = (0, 0);
    let mut buf = [0u8; 2048];
    let until = std::time::Instant::now() + wait;
    while std::time::Instant::now() < until {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            match from.ip().to_string().as_str() {
                "10.77.0.2" => member += 1,
                _ => other += 1,
            }
        }
    }
    (member, other)
}

#[test]
#[ignore = "needs root"]
fn non_members_frames_are_dropped_in_xdp_and_membership_changes_atomically() {
    require_root();
    let hosts = Hosts::up(&format!("cvx{}", std::process::id() % 100_000));
    // Host 0: the filter on eth0 and a socket, created inside the namespace; the filter object
    // and the socket work from any thread afterwards.
    let (mut filter, sock) = within(&hosts.ns(0), || {
        let filter =
            XdpHook::attach("eth0", CFG, &MemberSet::default()).expect("attaching the filter");
        assert!(filter.is_owner());
        // Another group's member on the same interface is refused, the first program stays.
        let other_group = HookConfig {
            group: GROUP + 1,
            filter: true,
        };
        match XdpHook::attach("eth0", other_group, &MemberSet::default()) {
            Err(e @ Error::Busy(..)) => {
                let m = e.to_string();
                assert!(m.contains("eth0") && m.contains("another group"), "{m}");
            }
            other => panic!("another group's attach must be refused: {other:?}"),
        }
        // A member of the same group shares it (a guest), and leaves the member set alone.
        let mut guest =
            XdpHook::attach("eth0", CFG, &MemberSet::default()).expect("sharing the program");
        assert!(!guest.is_owner());
        guest.set_members(&ms(&[], &[])).unwrap();
        drop(guest);
        let sock = UdpSocket::bind(("10.77.0.1", PORT)).unwrap();
        (filter, sock)
    });
    filter
        .set_members(&ms(&[(Ipv4Addr::new(10, 77, 0, 2), 7001)], &[]))
        .unwrap();
    let before = filter.stats().unwrap();

    // The non-member (host 2) and the member (host 1) send 50 frames each.
    send(&hosts, 2, 7001, 2, 50);
    send(&hosts, 1, 7001, 1, 50);
    let (member, other) = drain(&sock, Duration::from_millis(500));
    let after = filter.stats().unwrap();
    assert_eq!(other, 0, "no non-member frame reached the socket");
    assert_eq!(member, 50, "every member frame reached the socket");
    assert_eq!(after.not_member - before.not_member, 50, "{after:?}");
    assert_eq!(after.member - before.member, 50, "{after:?}");

    // The member's wrong port is not the member: the set is (address, port).
    send(&hosts, 1, 7002, 1, 10);
    assert_eq!(drain(&sock, Duration::from_millis(300)), (0, 0));
    assert_eq!(filter.stats().unwrap().not_member - after.not_member, 10);

    // Another group's frames pass unjudged (`other_group`) until the program admits that
    // group too (a sharded member's other shards): then they are judged as this group's.
    let mut shard1 = frame(2);
    shard1[4..8].copy_from_slice(&(GROUP + 1).to_le_bytes());
    let g0 = filter.stats().unwrap();
    send_frames(&hosts, 2, 7001, shard1.clone(), 10);
    assert_eq!(drain(&sock, Duration::from_millis(300)), (0, 10));
    let g1 = filter.stats().unwrap();
    assert_eq!(g1.other_group - g0.other_group, 10, "{g1:?}");
    filter.admit_groups(&[GROUP + 1]).unwrap();
    send_frames(&hosts, 2, 7001, shard1.clone(), 10);
    send_frames(&hosts, 1, 7001, shard1, 10);
    assert_eq!(drain(&sock, Duration::from_millis(300)), (10, 0));
    let g2 = filter.stats().unwrap();
    assert_eq!(g2.other_group, g1.other_group, "{g2:?}");
    assert_eq!(g2.not_member - g1.not_member, 10, "{g2:?}");
    assert_eq!(g2.member - g1.member, 10, "{g2:?}");

    // Traffic that is not the appliance's protocol passes: a plain datagram from host 2.
    within(&hosts.ns(2), || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7001)).unwrap();
        s.send_to(b"hello, not a frame", ("10.77.0.1", PORT))
            .unwrap();
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("the plain datagram passes");
    assert_eq!(
        (&buf[..n], from.ip().to_string().as_str()),
        (&b"hello, not a frame"[..], "10.77.0.3")
    );

    // A new view: host 2 joins, host 1 leaves. From the switch on, host 2 passes and host 1
    // is dropped; the switch is one write, so nothing in between.
    filter
        .set_members(&ms(&[(Ipv4Addr::new(10, 77, 0, 3), 7001)], &[]))
        .unwrap();
    let s1 = filter.stats().unwrap();
    send(&hosts, 1, 7001, 1, 20);
    send(&hosts, 2, 7001, 2, 20);
    let (member, other) = drain(&sock, Duration::from_millis(500));
    assert_eq!((member, other), (0, 20), "host 1 dropped, host 2 passed");
    let s2 = filter.stats().unwrap();
    assert_eq!(s2.not_member - s1.not_member, 20);
    assert_eq!(s2.member - s1.member, 20);

    // Host 1 becomes a candidate (a removed member that may ask to join again): its status
    // frames are dropped, its control frames (join requests) pass on to the stack.
    filter
        .set_members(&ms(
            &[(Ipv4Addr::new(10, 77, 0, 3), 7001)],
            &[(Ipv4Addr::new(10, 77, 0, 2), 7001)],
        ))
        .unwrap();
    let s3 = filter.stats().unwrap();
    send(&hosts, 1, 7001, 1, 10);
    send_kind(&hosts, 1, 7001, Kind::Control, 7);
    assert_eq!(drain(&sock, Duration::from_millis(500)), (7, 0));
    let s4 = filter.stats().unwrap();
    assert_eq!(s4.not_in_view - s3.not_in_view, 10, "{s4:?}");
    assert_eq!(s4.joiner - s3.joiner, 7, "{s4:?}");
    assert_eq!(s4.not_member, s3.not_member);

    // Detached when dropped: afterwards every frame passes again, and the interface is free.
    drop(filter);
    send(&hosts, 1, 7001, 1, 5);
    assert_eq!(drain(&sock, Duration::from_millis(300)), (5, 0));
    within(&hosts.ns(0), || {
        let again = XdpHook::attach("eth0", CFG, &MemberSet::default())
            .expect("the interface is free again");
        // A fresh program with fresh counters (the host's own traffic, IPv6 neighbour
        // discovery for one, may already count as `other`).
        let s = again.stats().unwrap();
        assert_eq!(Stats { other: 0, ..s }, Stats::default());
    });
}

#[test]
#[ignore = "needs root"]
fn a_missing_interface_is_named() {
    require_root();
    match XdpHook::attach("no-such-if0", CFG, &MemberSet::default()) {
        Err(Error::NoInterface(n)) => assert_eq!(n, "no-such-if0"),
        other => panic!("{other:?}"),
    }
}

/// The `afxdp` transport on host 0: frames from hosts 1 and 2 (kernel UDP sockets) are steered
/// by the program to the AF_XDP socket and identified by peer; frames host 0 sends reach them,
/// first through the kernel (the peer's MAC is not known yet), then through the tx ring.
#[test]
#[ignore = "needs root"]
fn the_afxdp_transport_receives_through_the_program_and_sends_through_its_ring() {
    use conveyor_dataplane::transport::afxdp::{AfXdpConfig, AfXdpTransport};
    use conveyor_dataplane::transport::{RecvBatch, Transport};
    require_root();
    let hosts = Hosts::up(&format!("cva{}", std::process::id() % 100_000));
    let peers: Vec<std::net::SocketAddr> = vec![
        format!("10.77.0.1:{PORT}").parse().unwrap(),
        "10.77.0.2:7001".parse().unwrap(),
        "10.77.0.3:7001".parse().unwrap(),
    ];
    let (mut hook, mut t) = within(&hosts.ns(0), || {
        let mut hook = XdpHook::attach("eth0", CFG, &MemberSet::default()).unwrap();
        let t = AfXdpTransport::open(&AfXdpConfig {
            interface: "eth0".into(),
            queue: 0,
            local: format!("10.77.0.1:{PORT}").parse().unwrap(),
            peers: peers.clone(),
            max_frame: 1400,
            local_ports: Vec::new(),
            force_copy: false,
        })
        .expect("opening the AF_XDP socket");
        assert!(!t.zero_copy(), "veth has no zero-copy mode");
        hook.steer(PORT, 0, t.fd()).unwrap();
        (hook, t)
    });
    hook.set_members(&ms(
        &[
            (Ipv4Addr::new(10, 77, 0, 1), PORT),
            (Ipv4Addr::new(10, 77, 0, 2), 7001),
        ],
        &[],
    ))
    .unwrap();
    // Hosts 1 and 2 listen with kernel sockets (bound before anyone sends).
    let listeners: Vec<UdpSocket> = (1..3)
        .map(|h| {
            within(&hosts.ns(h), || {
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7001)).unwrap()
            })
        })
        .collect();
    for l in &listeners {
        l.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    // Member host 1 sends 40 frames; non-member host 2 sends 40 (dropped in XDP).
    let f1 = frame(1);
    for _ in 0..40 {
        listeners[0].send_to(&f1, ("10.77.0.1", PORT)).unwrap();
        listeners[1]
            .send_to(&frame(2), ("10.77.0.1", PORT))
            .unwrap();
    }
    let mut rb = RecvBatch::new(64, 2048);
    let mut got = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while got.len() < 40 && std::time::Instant::now() < until {
        t.recv(&mut rb).unwrap();
        got.extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    t.recv(&mut rb).unwrap();
    got.extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
    assert_eq!(got.len(), 40, "every member frame arrives, nothing else");
    assert!(got.iter().all(|(p, b)| *p == Some(1) && *b == f1));
    let s = hook.stats().unwrap();
    assert_eq!(s.redirected, 40, "{s:?}");
    assert_eq!(s.not_member, 40, "{s:?}");
    let ts = t.stats();
    assert_eq!(ts.kernel_path_received, 0, "{ts:?}");

    // Forget what ARP taught host 0's kernel while hosts 1 and 2 sent, so that host 1 is
    // known only from its frames and host 2 not at all.
    let flush = Command::new("ip")
        .args(["-n", &hosts.ns(0), "neigh", "flush", "dev", "eth0"])
        .status()
        .unwrap();
    assert!(flush.success());

    // Host 0 sends 30 frames to host 1: it learned host 1's MAC from its frames, so they go
    // through the tx ring, and host 1's kernel socket takes them as ordinary datagrams.
    let payloads: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i; 100 + i as usize]).collect();
    let batch: Vec<(usize, &[u8])> = payloads.iter().map(|p| (1, p.as_slice())).collect();
    t.send(&batch).unwrap();
    let mut buf = [0u8; 2048];
    let mut seen = Vec::new();
    while let Ok((n, from)) = listeners[0].recv_from(&mut buf) {
        assert_eq!(from.to_string(), format!("10.77.0.1:{PORT}"));
        seen.push(buf[..n].to_vec());
    }
    assert_eq!(seen, payloads, "all 30, in order, intact");
    let ts = t.stats();
    assert_eq!(ts.kernel_path_sent, 0, "{ts:?}");
    assert_eq!(ts.frames_sent, 30, "{ts:?}");

    // Host 2's MAC is unknown (its frames were dropped before the socket, the neighbour table
    // was flushed): the kernel path
    // carries the first frames (and resolves the address), nothing is lost.
    t.send(&[(2, b"to host 2".as_slice())]).unwrap();
    let (n, _) = listeners[1].recv_from(&mut buf).expect("host 2 receives");
    assert_eq!(&buf[..n], b"to host 2");
    assert_eq!(t.stats().kernel_path_sent, 1);
    // Once the kernel resolved it, the neighbour table gives it and the ring carries frames.
    std::thread::sleep(Duration::from_millis(100));
    t.send(&[(2, b"again".as_slice())]).unwrap();
    let (n, _) = listeners[1]
        .recv_from(&mut buf)
        .expect("host 2 receives again");
    assert_eq!(&buf[..n], b"again");
    assert_eq!(t.stats().kernel_path_sent, 1, "{:?}", t.stats());
}

/// Steering with two sockets on one host: host B runs two "invokers" in one interface, one
/// AF_XDP socket each, on receive queues 0 and 1 (ports 7400 and 7401). The NIC's ntuple rule
/// (`ethtool -N ... dst-port 7401 action 1`) is emulated by the sender: host A's AF_XDP
/// sockets transmit on queues 0 and 1 of a direct veth pair, and veth delivers a frame on the
/// peer's receive queue of the queue it was sent on (veth has no flow steering, and this kernel
/// has no tc skbedit). Each frame lands on the socket of its port only; a frame that arrives
/// on the other queue is passed to the stack and reaches the right member through its kernel
/// socket, never the other socket.
#[test]
#[ignore = "needs root"]
fn steering_puts_each_port_on_its_own_socket() {
    use conveyor_dataplane::transport::afxdp::{AfXdpConfig, AfXdpTransport};
    use conveyor_dataplane::transport::{RecvBatch, Transport};
    require_root();
    let p = format!("cvs{}", std::process::id() % 100_000);
    let (a, b) = (format!("{p}-a"), format!("{p}-b"));
    struct Gone(Vec<String>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }
    let _gone = Gone(vec![a.clone(), b.clone()]);
    let sh = |cmd: String| {
        let ok = Command::new("sh").args(["-c", &cmd]).status().unwrap();
        assert!(ok.success(), "{cmd}");
    };
    sh(format!("ip netns add {a} && ip netns add {b}"));
    sh(format!("ip link add eth0 netns {a} numtxqueues 2 numrxqueues 2 type veth peer name eth0 netns {b} numtxqueues 2 numrxqueues 2"));
    for (ns, ip) in [(&a, "10.78.0.1"), (&b, "10.78.0.2")] {
        sh(format!("ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"));
    }
    let a_addr = |q: u32| format!("10.78.0.1:{}", 7000 + q);
    let b_addr = |q: u32| format!("10.78.0.2:{}", 7400 + q);
    // Everyone knows everyone: peers 0, 1 are A's sockets, 2, 3 are B's.
    let peers: Vec<std::net::SocketAddr> = (0..2)
        .map(|q| a_addr(q).parse().unwrap())
        .chain((0..2).map(|q| b_addr(q).parse().unwrap()))
        .collect();
    let open = |local: String, q: u32| {
        AfXdpTransport::open(&AfXdpConfig {
            interface: "eth0".into(),
            queue: q,
            local: local.parse().unwrap(),
            peers: peers.clone(),
            max_frame: 1400,
            local_ports: Vec::new(),
            force_copy: false,
        })
        .unwrap()
    };
    let everyone: Vec<(Ipv4Addr, u16)> = peers
        .iter()
        .map(|p| match p {
            std::net::SocketAddr::V4(v) => (*v.ip(), v.port()),
            _ => unreachable!(),
        })
        .collect();
    // Host A: a program steering each of its ports to its socket, so it can send on queue q.
    let (mut hook_a, mut senders) = within(&a, || {
        let mut h = XdpHook::attach("eth0", CFG, &MemberSet::default()).unwrap();
        let s: Vec<AfXdpTransport> = (0..2).map(|q| open(a_addr(q), q)).collect();
        for (q, t) in s.iter().enumerate() {
            h.steer(7000 + q as u16, q as u32, t.fd()).unwrap();
        }
        (h, s)
    });
    hook_a.set_members(&ms(&everyone, &[])).unwrap();
    // Host B: two members, each with its own hook as separate member processes have; the
    // second shares the program the first attached.
    let (mut hook_b, mut guest_b, mut invokers) = within(&b, || {
        let mut h = XdpHook::attach("eth0", CFG, &MemberSet::default()).unwrap();
        let mut g = XdpHook::attach("eth0", CFG, &MemberSet::default()).unwrap();
        assert!(h.is_owner() && !g.is_owner());
        let s: Vec<AfXdpTransport> = (0..2).map(|q| open(b_addr(q), q)).collect();
        h.steer(7400, 0, s[0].fd()).unwrap();
        g.steer(7401, 1, s[1].fd()).unwrap();
        // A third member on a taken queue is refused, by name.
        match g.steer(7402, 1, s[1].fd()) {
            Err(e) => assert!(
                e.to_string().contains("queue 1 of eth0 is already served"),
                "{e}"
            ),
            Ok(()) => panic!("two sockets on one queue"),
        }
        (h, g, s)
    });
    hook_b.set_members(&ms(&everyone, &[])).unwrap();

    // Let each side learn the other's MAC address (first frames take the kernel's path), then
    // start counting.
    let collect = |ts: &mut Vec<AfXdpTransport>| -> Vec<Vec<(Option<usize>, Vec<u8>)>> {
        let mut rb = RecvBatch::new(64, 2048);
        let mut got = vec![Vec::new(), Vec::new()];
        let until = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < until {
            for (i, t) in ts.iter_mut().enumerate() {
                t.recv(&mut rb).unwrap();
                got[i].extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        got
    };
    for q in 0..2 {
        senders[q].send(&[(2 + q, b"hello".as_slice())]).unwrap();
        invokers[q].send(&[(q, b"hello".as_slice())]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    collect(&mut invokers);
    collect(&mut senders);
    let before = hook_b.stats().unwrap();
    let kernel_before: Vec<u64> = invokers
        .iter()
        .map(|t| t.stats().kernel_path_received)
        .collect();

    // A's queue-q socket sends 50 protocol frames to B's port 740q: the "NIC" puts them on
    // B's queue q.
    for (q, sender) in senders.iter_mut().enumerate() {
        let frames: Vec<Vec<u8>> = (0..50).map(|_| frame(100 + q as u16)).collect();
        let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (2 + q, f.as_slice())).collect();
        sender.send(&batch).unwrap();
    }
    let got = collect(&mut invokers);
    for (q, g) in got.iter().enumerate() {
        assert_eq!(g.len(), 50, "socket {q}");
        assert!(
            g.iter()
                .all(|(p, f)| *p == Some(q) && *f == frame(100 + q as u16)),
            "socket {q} got only its port's frames"
        );
    }
    let after = hook_b.stats().unwrap();
    assert_eq!(after.redirected - before.redirected, 100, "{after:?}");
    assert_eq!(after.missteered, before.missteered, "{after:?}");

    // Mis-steered: A's queue-0 socket sends 20 frames to B's port 7401 (socket 1's); they
    // arrive on queue 0, the program passes them to the stack, and socket 1's member gets them
    // through its kernel socket; socket 0 gets nothing.
    let frames: Vec<Vec<u8>> = (0..20).map(|_| frame(99)).collect();
    let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (3, f.as_slice())).collect();
    senders[0].send(&batch).unwrap();
    let got = collect(&mut invokers);
    assert!(got[0].is_empty(), "{:?}", got[0]);
    assert_eq!(got[1].len(), 20);
    assert!(got[1].iter().all(|(p, f)| *p == Some(0) && *f == frame(99)));
    let last = hook_b.stats().unwrap();
    assert_eq!(last.missteered - after.missteered, 20, "{last:?}");
    assert_eq!(last.redirected, after.redirected);
    assert_eq!(
        invokers[1].stats().kernel_path_received - kernel_before[1],
        20
    );
    assert_eq!(invokers[0].stats().kernel_path_received, kernel_before[0]);

    // The owner's member ends: its program goes with it, and B's frames take the kernel's path
    // (still delivered). The guest notices, attaches a program of its own, and steers again.
    drop(hook_b);
    let frames: Vec<Vec<u8>> = (0..10).map(|_| frame(101)).collect();
    let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (3, f.as_slice())).collect();
    senders[1].send(&batch).unwrap();
    let got = collect(&mut invokers);
    assert_eq!(got[1].len(), 10, "delivered by the kernel's path meanwhile");
    let k1 = invokers[1].stats().kernel_path_received;
    let fd1 = invokers[1].fd();
    within(&b, || {
        assert!(
            guest_b.follow(&ms(&everyone, &[])).unwrap(),
            "the guest takes over"
        );
        assert!(guest_b.is_owner());
        guest_b.steer(7401, 1, fd1).unwrap();
    });
    guest_b.set_members(&ms(&everyone, &[])).unwrap();
    senders[1].send(&batch).unwrap();
    let got = collect(&mut invokers);
    assert_eq!(got[1].len(), 10);
    assert_eq!(
        invokers[1].stats().kernel_path_received,
        k1,
        "through the socket again"
    );
    assert_eq!(guest_b.stats().unwrap().redirected, 10);
}
