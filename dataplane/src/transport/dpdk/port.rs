//! A port driven by DPDK's poll-mode drivers: EAL start-up, finding the port, and the
//! [`Transport`] over it (see the module docs of [`super`]).

use super::sys::{self, Mbuf, Pool, Port, PortInfo};
use super::{DpdkConfig, EalOptions, ARP_RETRY_US, DATA_ROOM, MAX_FRAME};
use crate::transport::eth::{
    parse, write_headers, Arp, ARP_FRAME, ETH, ETHERTYPE_ARP, ETHERTYPE_IPV4, HEADERS,
};
use crate::transport::{RecvBatch, Transport, TransportStats};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Frames waiting for room on the port, at most.
const TX_QUEUE_MAX: usize = 4096;
const BATCH: usize = 64;

/// Free hugepage memory on the host, MiB (all page sizes).
fn free_hugepages_mb() -> u64 {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let free: u64 = std::fs::read_to_string(e.path().join("free_hugepages"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(free * kb / 1024)
        })
        .sum()
}

/// Starts the EAL with `eal`, or says what to do when it cannot start.
pub fn start_eal(eal: &EalOptions) -> io::Result<()> {
    let args = eal.args();
    if sys::eal_running() {
        return sys::eal_init(&args).map_err(io::Error::other);
    }
    if eal.hugepages {
        let free = free_hugepages_mb();
        if free < u64::from(eal.memory_mb) {
            return Err(io::Error::other(format!(
                "DPDK was asked for {} MiB of hugepages (member.dpdk.hugepages = true, memory_mb = {}) and the host has {free} MiB free: reserve them (for example echo {} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, or hugepages= on the kernel command line), or set member.dpdk.hugepages = false to run on ordinary memory",
                eal.memory_mb,
                eal.memory_mb,
                eal.memory_mb.div_ceil(2) + 64
            )));
        }
    }
    sys::eal_init(&args).map_err(|e| {
        io::Error::other(format!(
            "DPDK's EAL did not start ({}): {e}{}",
            args[1..].join(" "),
            probe_hints(eal)
        ))
    })
}

/// Why the EAL may have failed to open the configured devices (it logs the failure and goes
/// on without them): what to check, for the error message.
fn probe_hints(eal: &EalOptions) -> String {
    let mut hints = Vec::new();
    for v in &eal.vdevs {
        if !v.starts_with("net_af_packet") {
            continue;
        }
        let iface = v
            .split(',')
            .find_map(|kv| kv.strip_prefix("iface="))
            .unwrap_or("");
        if iface.is_empty() {
            hints.push(format!("{v:?} names no interface (iface=)"));
        } else if !std::path::Path::new("/sys/class/net").join(iface).exists() {
            hints.push(format!(
                "{v:?}: there is no interface {iface:?} in this network namespace"
            ));
        } else {
            hints.push(format!(
                "{v:?}: af_packet needs CAP_NET_RAW (run the member as root or grant it cap_net_raw)"
            ));
        }
    }
    if !eal.allow.is_empty() {
        hints.push("a ConnectX port (mlx5) stays bound to mlx5_core and needs rdma-core's libibverbs and libmlx5 and the DPDK package's mlx5 PMD; other NICs must be bound to vfio-pci (dpdk-devbind.py --status)".into());
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!("; check: {}", hints.join("; "))
    }
}

/// The port the config names, or the only one there is.
fn find_port(cfg: &DpdkConfig) -> io::Result<u16> {
    let count = sys::port_count();
    match &cfg.port {
        Some(name) => sys::port_by_name(name).ok_or_else(|| {
            io::Error::other(format!(
                "DPDK has no port named {name:?} ({count} ports; vdevs {:?}, allowed devices {:?}){}",
                cfg.eal.vdevs,
                cfg.eal.allow,
                probe_hints(&cfg.eal)
            ))
        }),
        None => match count {
            0 if cfg.eal.vdevs.is_empty() && cfg.eal.allow.is_empty() => Err(io::Error::other(
                "DPDK found no port and none is configured: name a device in member.dpdk.allow (a ConnectX port's PCI address; mlx5 needs no unbinding) or a virtual device in member.dpdk.vdevs",
            )),
            0 => Err(io::Error::other(format!(
                "DPDK could not open any configured device (vdevs {:?}, allowed devices {:?}; the EAL's own lines above say how it failed){}",
                cfg.eal.vdevs,
                cfg.eal.allow,
                probe_hints(&cfg.eal)
            ))),
            1 => sys::first_port().ok_or_else(|| io::Error::other("DPDK's only port vanished")),
            n => Err(io::Error::other(format!(
                "DPDK found {n} ports: name the member's in member.dpdk.port"
            ))),
        },
    }
}

pub struct DpdkTransport {
    /// Declared first: dropped (stopped, closed) before the mbufs and the pool.
    port: Port,
    info: PortInfo,
    local: SocketAddrV4,
    peers: Vec<SocketAddrV4>,
    /// This member's address toward each peer (its group's port: see `local_ports`).
    sources: Vec<SocketAddrV4>,
    /// Every address of this member (one per group on the port).
    locals: Vec<SocketAddrV4>,
    by_addr: HashMap<SocketAddrV4, usize>,
    /// Each peer's MAC address, once known (None for this member itself too).
    macs: Vec<Option<[u8; 6]>>,
    /// When each peer's address was last asked for (host clock, us).
    asked_at: Vec<Option<u64>>,
    /// Frames waiting for room on the port, in order.
    tx: VecDeque<Mbuf>,
    rx: Vec<Mbuf>,
    fresh: Vec<Mbuf>,
    ip_id: u16,
    max_payload: usize,
    poll_us: u64,
    _reserved: Vec<std::net::UdpSocket>,
    stats: TransportStats,
    /// Declared last: freed after everything that holds its mbufs.
    pool: Pool,
}

impl std::fmt::Debug for DpdkTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkTransport")
            .field("port", &self.info.name)
            .field("driver", &self.info.driver)
            .field("local", &self.local)
            .finish()
    }
}

fn v4(a: &SocketAddr) -> io::Result<SocketAddrV4> {
    crate::transport::eth::ipv4(a, "dpdk")
}

impl DpdkTransport {
    /// Starts the EAL (once per process) and opens the configured port.
    pub fn open(cfg: &DpdkConfig) -> io::Result<DpdkTransport> {
        start_eal(&cfg.eal)?;
        let id = find_port(cfg)?;
        Self::on_port(Port::new(id), cfg)
    }

    /// Opens the transport on a port the EAL already has (tests wire ring ports).
    fn on_port(mut port: Port, cfg: &DpdkConfig) -> io::Result<DpdkTransport> {
        let peers = cfg.peers.iter().map(v4).collect::<io::Result<Vec<_>>>()?;
        let (sources, locals) =
            crate::transport::eth::local_addresses(cfg.local, &cfg.local_ports, peers.len())?;
        if let Some((i, p)) = peers
            .iter()
            .enumerate()
            .find(|(_, p)| !locals.contains(p) && p.ip() == cfg.local.ip())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "member[{i}] ({p}) is on this member's IP address: the dpdk transport carries frames between hosts (one member per port); members of one host use the shm transport"
                ),
            ));
        }
        if cfg.max_frame > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("group.max_frame {} does not fit one mbuf of the dpdk transport: at most {MAX_FRAME}", cfg.max_frame),
            ));
        }
        let info = port.info()?;
        let fits = usize::from(info.mtu).saturating_sub(HEADERS - ETH);
        if cfg.max_frame > fits {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "group.max_frame {} does not fit one Ethernet frame on {} (MTU {}): at most {fits}",
                    cfg.max_frame, info.name, info.mtu
                ),
            ));
        }
        let reserved = if cfg.reserve_port {
            locals
                .iter()
                .map(|l| {
                    std::net::UdpSocket::bind(l).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("reserving UDP port {l} in the kernel: {e} (another program, or another member, has it)"),
                        )
                    })
                })
                .collect::<io::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let pool = Pool::new(
            &format!("conveyor-{}", port.id()),
            cfg.mbufs,
            DATA_ROOM + 128,
        )?;
        port.start(&pool, cfg.rx_descriptors, cfg.tx_descriptors)
            .map_err(|e| {
                io::Error::other(format!(
                    "starting DPDK port {} ({}): {e}",
                    info.name, info.driver
                ))
            })?;
        let by_addr = peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let n = peers.len();
        let mut t = DpdkTransport {
            port,
            info,
            local: cfg.local,
            peers,
            sources,
            locals,
            by_addr,
            macs: vec![None; n],
            asked_at: vec![None; n],
            tx: VecDeque::new(),
            rx: Vec::with_capacity(BATCH),
            fresh: Vec::with_capacity(BATCH),
            ip_id: 0,
            max_payload: cfg.max_frame,
            poll_us: cfg.poll_us,
            _reserved: reserved,
            stats: TransportStats::default(),
            pool,
        };
        t.resolve(crate::sys::monotonic_us());
        t.flush();
        Ok(t)
    }

    /// The port's name and driver, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{}, driver {}, MAC {}",
            self.info.name,
            self.info.driver,
            self.info
                .mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        )
    }

    fn is_me(&self, i: usize) -> bool {
        self.locals.contains(&self.peers[i])
    }

    /// Takes one fresh mbuf (refilling the small stock in bulk).
    fn mbuf(&mut self) -> Option<Mbuf> {
        if self.fresh.is_empty() && !self.pool.alloc(&mut self.fresh, BATCH) {
            // The pool is nearly empty: take what single buffers remain.
            self.pool.alloc(&mut self.fresh, 1);
        }
        self.fresh.pop()
    }

    fn queue(&mut self, m: Mbuf) -> bool {
        if self.tx.len() >= TX_QUEUE_MAX {
            self.stats.send_errors += 1;
            return false;
        }
        self.tx.push_back(m);
        true
    }

    fn send_arp(&mut self, arp: Arp) {
        let Some(mut m) = self.mbuf() else {
            self.stats.send_errors += 1;
            return;
        };
        match m.set_len(ARP_FRAME) {
            Some(out) => arp.write(out),
            None => return,
        }
        self.queue(m);
    }

    /// Asks for the MAC address of every peer not resolved and not asked recently.
    fn resolve(&mut self, now: u64) {
        let mut asked: Vec<Ipv4Addr> = Vec::new();
        for i in 0..self.peers.len() {
            if self.is_me(i) || self.macs[i].is_some() {
                continue;
            }
            if self.asked_at[i].is_some_and(|t| now.saturating_sub(t) < ARP_RETRY_US) {
                continue;
            }
            self.asked_at[i] = Some(now);
            let ip = *self.peers[i].ip();
            if asked.contains(&ip) {
                continue;
            }
            asked.push(ip);
            self.send_arp(Arp {
                op: Arp::REQUEST,
                sender_mac: self.info.mac,
                sender_ip: *self.local.ip(),
                target_mac: [0; 6],
                target_ip: ip,
            });
        }
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        for i in 0..self.peers.len() {
            if *self.peers[i].ip() == ip && !self.is_me(i) {
                self.macs[i] = Some(mac);
            }
        }
    }

    fn on_arp(&mut self, arp: Arp) {
        if arp.sender_ip == *self.local.ip() {
            return;
        }
        self.learn(arp.sender_ip, arp.sender_mac);
        if arp.op == Arp::REQUEST && arp.target_ip == *self.local.ip() {
            self.send_arp(Arp {
                op: Arp::REPLY,
                sender_mac: self.info.mac,
                sender_ip: *self.local.ip(),
                target_mac: arp.sender_mac,
                target_ip: arp.sender_ip,
            });
        }
    }

    /// Gives the port what waits, in order.
    fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        self.port.tx_burst(&mut self.tx);
    }
}

impl Transport for DpdkTransport {
    fn name(&self) -> &'static str {
        "dpdk"
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        self.flush();
        self.resolve(crate::sys::monotonic_us());
        for &(peer, frame) in batch {
            if frame.len() > self.max_payload || peer >= self.peers.len() || self.is_me(peer) {
                self.stats.send_errors += 1;
                continue;
            }
            let Some(mac) = self.macs[peer] else {
                self.stats.unresolved += 1;
                continue;
            };
            let Some(mut m) = self.mbuf() else {
                self.stats.send_errors += 1;
                continue;
            };
            let (src_mac, src, dst, id) = (
                self.info.mac,
                self.sources[peer],
                self.peers[peer],
                self.ip_id,
            );
            self.ip_id = self.ip_id.wrapping_add(1);
            let Some(out) = m.set_len(HEADERS + frame.len()) else {
                self.stats.send_errors += 1;
                continue;
            };
            write_headers(out, mac, src_mac, src, dst, id, frame.len());
            out[HEADERS..].copy_from_slice(frame);
            if self.queue(m) {
                self.stats.frames_sent += 1;
            }
        }
        self.flush();
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        self.flush();
        let room = batch.bufs.len();
        let mut rx = std::mem::take(&mut self.rx);
        self.port.rx_burst(&mut rx, room);
        let mine = *self.local.ip();
        for m in rx.drain(..) {
            let Some(f) = m.data() else {
                // Several segments: never a frame of ours (they fit one mbuf).
                self.stats.malformed += 1;
                continue;
            };
            if f.len() < ETH {
                self.stats.malformed += 1;
                continue;
            }
            if f[12..14] == ETHERTYPE_ARP {
                match Arp::parse(f) {
                    Some(a) => self.on_arp(a),
                    None => self.stats.not_for_us += 1,
                }
                continue;
            }
            // IPv4 and UDP to this member's address, or someone else's traffic.
            if f[12..14] != ETHERTYPE_IPV4
                || f.len() < HEADERS
                || f[ETH + 9] != 17
                || f[ETH + 16..ETH + 20] != mine.octets()
            {
                self.stats.not_for_us += 1;
                continue;
            }
            let Some(p) = parse(f) else {
                self.stats.malformed += 1;
                continue;
            };
            if !self.locals.contains(&p.dst) {
                self.stats.not_for_us += 1;
                continue;
            }
            // A peer's frame to another of this member's ports (another group's) is not
            // that peer's: an unknown source.
            let peer = self
                .by_addr
                .get(&p.src)
                .copied()
                .filter(|&i| self.sources[i] == p.dst);
            match peer {
                None => self.stats.unknown_source += 1,
                // A peer's frame tells its MAC address (again, if it restarted on another).
                Some(i) => {
                    if self.macs[i] != Some(p.src_mac) {
                        self.learn(*p.src.ip(), p.src_mac);
                    }
                }
            }
            if !batch.push(peer, &f[p.payload]) {
                self.stats.oversized += 1;
            }
        }
        self.rx = rx;
        self.stats.frames_received += batch.frames.len() as u64;
        self.resolve(crate::sys::monotonic_us());
        self.flush();
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        // A poll-mode driver has nothing to sleep on: see next_deadline_us.
        None
    }

    fn next_deadline_us(&self) -> Option<u64> {
        let now = crate::sys::monotonic_us();
        if !self.tx.is_empty() {
            return Some(now);
        }
        Some(now + self.poll_us)
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.stats.clone();
        let p = self.port.stats();
        s.device = vec![
            ("rx_packets", p.ipackets),
            ("tx_packets", p.opackets),
            ("rx_missed", p.imissed),
            ("rx_errors", p.ierrors),
            ("tx_errors", p.oerrors),
            ("rx_no_mbuf", p.rx_nombuf),
        ];
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eal() -> EalOptions {
        EalOptions {
            hugepages: false,
            memory_mb: 256,
            ..EalOptions::default()
        }
    }

    #[test]
    fn eal_arguments_follow_the_options() {
        let a = eal().args();
        assert!(a.contains(&"--no-huge".to_string()));
        assert!(a.contains(&"--no-pci".to_string()));
        assert!(a.contains(&"--no-shconf".to_string()));
        let i = a.iter().position(|x| x == "--lcores").unwrap();
        assert!(a[i + 1].starts_with("0@("), "{}", a[i + 1]);
        let prod = EalOptions {
            allow: vec!["0000:3b:00.0".into()],
            vdevs: vec!["net_af_packet0,iface=eth0".into()],
            lcores: Some("0@2".into()),
            ..EalOptions::default()
        }
        .args();
        assert!(!prod.contains(&"--no-huge".to_string()));
        assert!(!prod.contains(&"--no-pci".to_string()));
        assert!(prod.contains(&"--in-memory".to_string()));
        assert!(prod.windows(2).any(|w| w == ["-a", "0000:3b:00.0"]));
        assert!(prod
            .windows(2)
            .any(|w| w == ["--vdev", "net_af_packet0,iface=eth0"]));
        assert!(prod.windows(2).any(|w| w == ["--lcores", "0@2"]));
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    /// Two members on two ring ports wired to each other, in this process.
    fn pair(tag: &str) -> (DpdkTransport, DpdkTransport) {
        start_eal(&eal()).expect("the EAL starts without hugepages");
        let (pa, pb) = sys::ring_link(&format!("net_ring_{tag}a"), &format!("net_ring_{tag}b"))
            .expect("ring ports");
        let peers: Vec<SocketAddr> = vec![
            SocketAddr::V4(a("10.9.0.1:7400")),
            SocketAddr::V4(a("10.9.0.2:7400")),
        ];
        // Small pools: the tests' transports share the EAL's fixed memory.
        let cfg = |me: &str| DpdkConfig {
            reserve_port: false,
            mbufs: 2047,
            rx_descriptors: 512,
            tx_descriptors: 512,
            ..DpdkConfig::new(eal(), a(me), peers.clone())
        };
        let ta = DpdkTransport::on_port(pa, &cfg("10.9.0.1:7400")).unwrap();
        let tb = DpdkTransport::on_port(pb, &cfg("10.9.0.2:7400")).unwrap();
        (ta, tb)
    }

    fn recv_all(
        t: &mut DpdkTransport,
        rb: &mut RecvBatch,
        out: &mut Vec<(Option<usize>, Vec<u8>)>,
    ) {
        t.recv(rb).unwrap();
        out.extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
    }

    #[test]
    fn ring_ports_resolve_each_other_and_carry_frames_in_order() {
        let (mut ta, mut tb) = pair("order");
        let mut rb = RecvBatch::new(BATCH, 2048);
        let mut got = Vec::new();
        // Before ARP has run, frames are counted as unresolved, not sent.
        ta.send(&[(1, b"early")]).unwrap();
        assert_eq!(ta.stats().unresolved, 1);
        // Each side asked at start; answering takes a receive on each side.
        for _ in 0..4 {
            recv_all(&mut ta, &mut rb, &mut got);
            recv_all(&mut tb, &mut rb, &mut got);
        }
        assert!(got.is_empty(), "no data yet: {got:?}");
        assert_eq!(ta.macs[1], Some(tb.info.mac));
        assert_eq!(tb.macs[0], Some(ta.info.mac));
        for i in 0..3000u32 {
            ta.send(&[(1, &i.to_be_bytes())]).unwrap();
            if i % 50 == 0 {
                recv_all(&mut tb, &mut rb, &mut got);
            }
        }
        for _ in 0..200 {
            recv_all(&mut tb, &mut rb, &mut got);
            ta.send(&[]).unwrap();
        }
        let seq: Vec<u32> = got
            .iter()
            .map(|(p, b)| {
                assert_eq!(*p, Some(0));
                u32::from_be_bytes(b[..4].try_into().unwrap())
            })
            .collect();
        assert_eq!(seq, (0..3000).collect::<Vec<_>>());
        let s = tb.stats();
        assert_eq!(s.malformed, 0);
        assert_eq!(s.frames_received, 3000);
        assert!(s
            .device
            .iter()
            .any(|&(k, v)| k == "rx_packets" && v >= 3000));
        // Both directions.
        tb.send(&[(0, b"back")]).unwrap();
        let mut back = Vec::new();
        recv_all(&mut ta, &mut rb, &mut back);
        assert_eq!(back, vec![(Some(1), b"back".to_vec())]);
    }

    #[test]
    fn bad_frames_are_counted_and_dropped() {
        let (mut ta, mut tb) = pair("bad");
        let mut rb = RecvBatch::new(BATCH, 2048);
        let mut got = Vec::new();
        for _ in 0..4 {
            recv_all(&mut ta, &mut rb, &mut got);
            recv_all(&mut tb, &mut rb, &mut got);
        }
        // Raw frames straight onto a's port: truncated, a bad length, another host's, not IP.
        let good = {
            let mut f = vec![0u8; HEADERS + 4];
            write_headers(
                &mut f,
                tb.info.mac,
                ta.info.mac,
                a("10.9.0.1:7400"),
                a("10.9.0.2:7400"),
                1,
                4,
            );
            f
        };
        let mut bad_len = good.clone();
        bad_len[ETH + 2..ETH + 4].copy_from_slice(&9000u16.to_be_bytes());
        let mut other_host = good.clone();
        other_host[ETH + 16..ETH + 20].copy_from_slice(&[10, 9, 0, 7]);
        let mut other_port = good.clone();
        other_port[ETH + IPV4_UDP_DST..ETH + IPV4_UDP_DST + 2].copy_from_slice(&9u16.to_be_bytes());
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        let frames: Vec<Vec<u8>> = vec![
            good[..10].to_vec(),
            bad_len,
            other_host,
            other_port,
            ipv6,
            good,
        ];
        for f in &frames {
            let mut m = ta.mbuf().unwrap();
            m.set_len(f.len()).unwrap().copy_from_slice(f);
            ta.queue(m);
        }
        ta.flush();
        recv_all(&mut tb, &mut rb, &mut got);
        let s = tb.stats();
        assert_eq!(s.malformed, 2, "{s:?}");
        assert_eq!(s.not_for_us, 3, "{s:?}");
        assert_eq!(got, vec![(Some(0), vec![0u8; 4])]);
    }

    const IPV4_UDP_DST: usize = 20 + 2;

    /// Two members sharing their ports between two shards (`transport::shared`): each
    /// shard's frames leave from and arrive at its own UDP port, and reach that shard only.
    #[test]
    fn shards_share_a_port_each_on_its_own_udp_port() {
        start_eal(&eal()).unwrap();
        let (pa, pb) = sys::ring_link("net_ring_sharda", "net_ring_shardb").unwrap();
        let addr = |s: &str| SocketAddr::V4(a(s));
        let peers = vec![
            addr("10.9.0.1:7400"),
            addr("10.9.0.2:7400"),
            addr("10.9.0.1:7500"),
            addr("10.9.0.2:7500"),
        ];
        let cfg = |me: &str| DpdkConfig {
            reserve_port: false,
            mbufs: 2047,
            rx_descriptors: 512,
            tx_descriptors: 512,
            local_ports: vec![7400, 7400, 7500, 7500],
            ..DpdkConfig::new(eal(), a(me), peers.clone())
        };
        let ta = DpdkTransport::on_port(pa, &cfg("10.9.0.1:7400")).unwrap();
        let tb = DpdkTransport::on_port(pb, &cfg("10.9.0.2:7400")).unwrap();
        let mut sa =
            crate::transport::shared::split(Box::new(ta), 2, 2, 2048, &[0, 1, 2, 3]).unwrap();
        let mut sb =
            crate::transport::shared::split(Box::new(tb), 2, 2, 2048, &[0, 1, 2, 3]).unwrap();
        let mut rb = RecvBatch::new(BATCH, 2048);
        let mut got: Vec<Vec<(Option<usize>, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
        let mut poll = |ports: &mut Vec<crate::transport::shared::ShardPort>,
                        got: &mut Vec<Vec<(Option<usize>, Vec<u8>)>>| {
            for (s, p) in ports.iter_mut().enumerate() {
                p.recv(&mut rb).unwrap();
                got[s].extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
            }
        };
        // ARP (one speaker for both shards), then 500 frames in each shard, a to b.
        let mut none = vec![Vec::new(), Vec::new()];
        for _ in 0..4 {
            poll(&mut sa, &mut none);
            poll(&mut sb, &mut none);
        }
        for i in 0..500u32 {
            sa[0].send(&[(1, &i.to_be_bytes())]).unwrap();
            sa[1].send(&[(1, &(10_000 + i).to_be_bytes())]).unwrap();
            if i % 40 == 0 {
                poll(&mut sb, &mut got);
            }
        }
        for _ in 0..100 {
            poll(&mut sb, &mut got);
            sa[0].send(&[]).unwrap();
        }
        for (s, base) in [(0usize, 0u32), (1, 10_000)] {
            let seq: Vec<u32> = got[s]
                .iter()
                .map(|(p, b)| {
                    assert_eq!(*p, Some(0), "shard {s}: from member 0 of the shard");
                    u32::from_be_bytes(b[..4].try_into().unwrap())
                })
                .collect();
            assert_eq!(seq, (base..base + 500).collect::<Vec<_>>(), "shard {s}");
        }
        // Shard 1 answers on its own port: b's shard 1 to a's shard 1 only.
        sb[1].send(&[(0, b"back")]).unwrap();
        let mut back = vec![Vec::new(), Vec::new()];
        for _ in 0..4 {
            poll(&mut sa, &mut back);
        }
        assert_eq!(back[0], vec![]);
        assert_eq!(back[1], vec![(Some(1), b"back".to_vec())]);
        let (s0, s1) = (sb[0].stats(), sb[1].stats());
        assert_eq!((s0.frames_received, s1.frames_received), (500, 500));
        assert_eq!(
            s0.malformed + s0.unknown_source + s0.not_for_us,
            0,
            "{s0:?}"
        );
    }

    #[test]
    fn members_of_one_address_and_oversized_frames_are_refused() {
        start_eal(&eal()).unwrap();
        let (pa, _pb) = sys::ring_link("net_ring_samea", "net_ring_sameb").unwrap();
        let peers = vec![
            SocketAddr::V4(a("10.9.0.1:7400")),
            SocketAddr::V4(a("10.9.0.1:7401")),
        ];
        let cfg = DpdkConfig {
            reserve_port: false,
            ..DpdkConfig::new(eal(), a("10.9.0.1:7400"), peers.clone())
        };
        let e = DpdkTransport::on_port(pa, &cfg).unwrap_err().to_string();
        assert!(e.contains("shm"), "{e}");
        let (pa, _pb) = sys::ring_link("net_ring_biga", "net_ring_bigb").unwrap();
        let cfg = DpdkConfig {
            reserve_port: false,
            max_frame: MAX_FRAME + 1,
            ..DpdkConfig::new(eal(), a("10.9.0.1:7400"), vec![peers[0]])
        };
        let e = DpdkTransport::on_port(pa, &cfg).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
        // A second start with other options is refused by name.
        let e = start_eal(&EalOptions {
            memory_mb: 64,
            ..eal()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("once per process"), "{e}");
    }
}
