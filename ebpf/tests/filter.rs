//! The member filter in XDP, over network namespaces (needs root; without it each test says it
//! did not run; CI runs as root). Three hosts on a bridge (`testbed/netns.sh`): host 0 runs the
//! filter on its interface and a protocol socket; host 1 is a member, host 2 is not. Both send
//! well-formed, correctly signed protocol frames of the group.

use conveyor_dataplane::types::{GroupId, MemberId, Seq, ViewId};
use conveyor_dataplane::wire::{Frame, FrameWriter, Header, Key, Kind, Row};
use conveyor_ebpf::{Error, MemberFilter, Stats};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

const GROUP: u32 = 7;
const PORT: u16 = 7000;

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
    };
    let row = Row {
        heartbeat: 1,
        delivered: 0,
        received: vec![0, 0, 0],
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
    let f = frame(sender);
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
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert!(Frame::parse(&key(), &buf[..n]).is_ok());
            match from.ip().to_string().as_str() {
                "10.77.0.2" => member += 1,
                _ => other += 1,
            }
        }
    }
    (member, other)
}

#[test]
fn non_members_frames_are_dropped_in_xdp_and_membership_changes_atomically() {
    if !is_root() {
        eprintln!("NOT RUN: non_members_frames_are_dropped_in_xdp_and_membership_changes_atomically needs root (namespaces, XDP)");
        return;
    }
    let hosts = Hosts::up(&format!("cvx{}", std::process::id() % 100_000));
    // Host 0: the filter on eth0 and a socket, created inside the namespace; the filter object
    // and the socket work from any thread afterwards.
    let (mut filter, sock) = within(&hosts.ns(0), || {
        let filter = MemberFilter::attach("eth0", GROUP).expect("attaching the filter");
        // A second program on the same interface is refused, the first one stays.
        match MemberFilter::attach("eth0", GROUP) {
            Err(Error::Busy(i)) => assert_eq!(i, "eth0"),
            other => panic!("a second attach must be refused: {other:?}"),
        }
        let sock = UdpSocket::bind(("10.77.0.1", PORT)).unwrap();
        (filter, sock)
    });
    filter
        .set_members(&[(Ipv4Addr::new(10, 77, 0, 2), 7001)])
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
        .set_members(&[(Ipv4Addr::new(10, 77, 0, 3), 7001)])
        .unwrap();
    let s1 = filter.stats().unwrap();
    send(&hosts, 1, 7001, 1, 20);
    send(&hosts, 2, 7001, 2, 20);
    let (member, other) = drain(&sock, Duration::from_millis(500));
    assert_eq!((member, other), (0, 20), "host 1 dropped, host 2 passed");
    let s2 = filter.stats().unwrap();
    assert_eq!(s2.not_member - s1.not_member, 20);
    assert_eq!(s2.member - s1.member, 20);

    // Detached when dropped: afterwards every frame passes again, and the interface is free.
    drop(filter);
    send(&hosts, 1, 7001, 1, 5);
    assert_eq!(drain(&sock, Duration::from_millis(300)), (5, 0));
    within(&hosts.ns(0), || {
        let again = MemberFilter::attach("eth0", GROUP).expect("the interface is free again");
        assert_eq!(again.stats().unwrap(), Stats::default());
    });
}

#[test]
fn a_missing_interface_is_named() {
    if !is_root() {
        eprintln!("NOT RUN: a_missing_interface_is_named needs root");
        return;
    }
    match MemberFilter::attach("no-such-if0", GROUP) {
        Err(Error::NoInterface(n)) => assert_eq!(n, "no-such-if0"),
        other => panic!("{other:?}"),
    }
}
