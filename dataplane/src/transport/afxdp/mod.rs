//! The `afxdp` transport: the group's frames bypass the kernel's network stack through an
//! AF_XDP socket bound to one queue of the member's interface.
//!
//! Receiving: an XDP program on the interface (attached by the control plane, `conveyor-ebpf`)
//! redirects the frames of the appliance's protocol addressed to this member's UDP port into
//! the socket's rx ring; everything else (ssh, ARP, other traffic) goes on to the kernel.
//! Sending: each frame is written as Ethernet + IPv4 + UDP straight into a UMEM chunk and put on
//! the tx ring, batched, with one wake-up per batch. On the wire the frames are ordinary UDP
//! datagrams, so an `afxdp` member and a `udp` member interoperate.
//!
//! Zero-copy where the driver supports it (mlx5 on ConnectX, ice, i40e), copy mode otherwise
//! (veth, virtio): [`AfXdpTransport::zero_copy`] says which, and the member logs it.
//!
//! The kernel's UDP socket on the same address stays open beside the AF_XDP socket, for what
//! the bypass cannot carry: frames to a peer whose MAC address is not known yet (the kernel
//! resolves it with ARP, and the transport learns it from the neighbour table or from the
//! peer's first frame), frames to a peer on this same host, frames that find the tx ring full,
//! and frames the XDP program passed to the stack (no socket registered yet, another queue).
//! Both paths are counted (`kernel_path_sent`, `kernel_path_received`). IPv4 only; peers are on
//! the interface's link or behind its router (the neighbour table names the next hop).

#[cfg(feature = "xdp")]
pub mod filter;
mod sys;

pub use super::eth::HEADERS;
use super::eth::{parse, write_headers, ETH};
use super::udp::UdpTransport;
use super::{RecvBatch, Transport, TransportStats};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use sys::{Interface, Xsk, XskSizes};

/// What the kernel keeps in front of a received frame in its UMEM chunk (XDP_PACKET_HEADROOM).
const XDP_HEADROOM: usize = 256;
/// The largest frame (UDP payload) the transport carries: a 4096-byte chunk less the kernel's
/// headroom and the headers; the interface's MTU may allow less.
pub const MAX_FRAME: usize = 4096 - XDP_HEADROOM - HEADERS;
const BATCH: usize = 64;
const SIZES: XskSizes = XskSizes {
    frames: 4096,
    frame_size: 4096,
    ring: 2048,
    fill_ring: 4096,
};
/// How often the neighbour table is read while a peer's MAC address is unknown.
const NEIGHBOUR_POLL: Duration = Duration::from_millis(50);

/// Where the member's AF_XDP socket goes.
#[derive(Clone, Debug)]
pub struct AfXdpConfig {
    /// The interface (in the calling thread's network namespace).
    pub interface: String,
    /// The interface queue to bind (the one the NIC steers this member's frames to).
    pub queue: u32,
    /// This member's address: an address of the interface, and the UDP port of the group.
    pub local: SocketAddrV4,
    /// Every member's address, by index (this member's included).
    pub peers: Vec<SocketAddr>,
    /// Several groups on the socket (a sharded member's shards, see `transport::shared`): the
    /// UDP port of this member that each peer talks to (sends from, receives at), by peer
    /// index; each such port gets its kernel socket too. Empty: `local`'s port for every peer.
    pub local_ports: Vec<u16>,
    /// The largest frame the protocol sends (`max_frame`): checked against the MTU.
    pub max_frame: usize,
    /// Do not try zero-copy (for drivers whose zero-copy mode misbehaves).
    pub force_copy: bool,
}

/// How frames reach a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Through the AF_XDP socket, to this MAC address (the peer's, or its router's).
    Bypass([u8; 6]),
    /// Through the kernel's UDP socket: the MAC address is not known yet.
    Unresolved,
    /// Through the kernel's UDP socket: the peer is on this host (the wire never sees it).
    Local,
}

pub struct AfXdpTransport {
    xsk: Xsk,
    /// The kernel's UDP socket on each of `locals`.
    kernels: Vec<UdpTransport>,
    /// Which of `kernels` carries each peer's frames.
    kernel_of: Vec<usize>,
    kernel_batch: RecvBatch,
    poll: crate::sys::Epoll,
    interface: String,
    mac: [u8; 6],
    /// Every address of this member (one per group on the socket; the first is `local`).
    locals: Vec<SocketAddrV4>,
    peers: Vec<SocketAddrV4>,
    /// This member's address toward each peer.
    sources: Vec<SocketAddrV4>,
    routes: Vec<Route>,
    by_addr: HashMap<SocketAddrV4, usize>,
    /// UMEM chunks free for sending.
    free_tx: Vec<u64>,
    rx_descs: Vec<libc::xdp_desc>,
    tx_descs: Vec<libc::xdp_desc>,
    /// The batch entry of each of `tx_descs`.
    tx_index: Vec<usize>,
    done: Vec<u64>,
    /// Receive chunks to give back to the fill ring (kept across calls if it had no room).
    refill: Vec<u64>,
    kernel_out: Vec<(usize, usize)>,
    ip_id: u16,
    neighbours_at: Option<Instant>,
    /// The neighbour table of the network namespace the transport was opened in (an open
    /// `/proc` file stays bound to its namespace, whatever thread reads it later).
    arp: Option<std::fs::File>,
    max_payload: usize,
    stats: TransportStats,
}

impl std::fmt::Debug for AfXdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpTransport")
            .field("interface", &self.interface)
            .field("locals", &self.locals)
            .field("zero_copy", &self.xsk.zero_copy)
            .finish()
    }
}

fn v4(a: &SocketAddr) -> io::Result<SocketAddrV4> {
    super::eth::ipv4(a, "afxdp")
}

/// The complete entries of a `/proc/net/arp` table for `interface`: address to MAC.
fn neighbours(table: &str, interface: &str) -> HashMap<Ipv4Addr, [u8; 6]> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP address, HW type, Flags, HW address, Mask, Device. Flag 0x2: complete.
            if f.len() < 6 || f[5] != interface {
                return None;
            }
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None;
            }
            let mut mac = [0u8; 6];
            let parts: Vec<&str> = f[3].split(':').collect();
            if parts.len() != 6 {
                return None;
            }
            for (m, p) in mac.iter_mut().zip(parts) {
                *m = u8::from_str_radix(p, 16).ok()?;
            }
            Some((f[0].parse().ok()?, mac))
        })
        .collect()
}

impl AfXdpTransport {
    /// Opens the socket on `cfg.interface` queue `cfg.queue` and the kernel socket on
    /// `cfg.local`. The XDP program that feeds the socket is attached by the caller (it lives
    /// in `conveyor-ebpf`): register [`fd`](Self::fd) in its socket map.
    pub fn open(cfg: &AfXdpConfig) -> io::Result<AfXdpTransport> {
        let peers: Vec<SocketAddrV4> = cfg.peers.iter().map(v4).collect::<io::Result<_>>()?;
        let ifc = Interface::lookup(&cfg.interface)?;
        let room = (SIZES.frame_size as usize - XDP_HEADROOM)
            .min(ifc.mtu as usize + ETH)
            .saturating_sub(HEADERS);
        if cfg.max_frame > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "group.max_frame {} does not fit one Ethernet frame on {} (MTU {}): at most {room} with the afxdp transport (set group.max_frame = {room}, or raise the MTU: ip link set {} mtu 3800)",
                    cfg.max_frame, cfg.interface, ifc.mtu, cfg.interface
                ),
            ));
        }
        let (sources, locals) =
            crate::transport::eth::local_addresses(cfg.local, &cfg.local_ports, peers.len())?;
        let kernels = locals
            .iter()
            .map(|l| UdpTransport::bind(SocketAddr::V4(*l), cfg.peers.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let kernel_of = sources
            .iter()
            .map(|s| locals.iter().position(|l| l == s).unwrap_or(0))
            .collect();
        let xsk = Xsk::open(ifc.index, cfg.queue, SIZES, cfg.force_copy).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("afxdp on {} queue {}: {e}", cfg.interface, cfg.queue),
            )
        })?;
        let mut fds = vec![xsk.fd()];
        fds.extend(kernels.iter().map(UdpTransport::fd));
        let poll = crate::sys::Epoll::new(&fds)?;
        let by_addr = peers.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        let routes = peers
            .iter()
            .map(|p| {
                if p.ip() == cfg.local.ip() || p.ip().is_loopback() {
                    Route::Local
                } else {
                    Route::Unresolved
                }
            })
            .collect();
        let half = u64::from(SIZES.frames / 2);
        let chunk = u64::from(SIZES.frame_size);
        let mut t = AfXdpTransport {
            xsk,
            kernels,
            kernel_of,
            kernel_batch: RecvBatch::new(BATCH, cfg.max_frame + 64),
            poll,
            interface: cfg.interface.clone(),
            mac: ifc.mac,
            locals,
            peers,
            sources,
            routes,
            by_addr,
            free_tx: (half..u64::from(SIZES.frames)).map(|i| i * chunk).collect(),
            rx_descs: Vec::with_capacity(BATCH),
            tx_descs: Vec::with_capacity(BATCH),
            tx_index: Vec::with_capacity(BATCH),
            done: Vec::with_capacity(SIZES.ring as usize),
            refill: Vec::with_capacity(SIZES.frames as usize / 2),
            kernel_out: Vec::with_capacity(BATCH),
            ip_id: 0,
            neighbours_at: None,
            arp: std::fs::File::open("/proc/thread-self/net/arp").ok(),
            max_payload: cfg.max_frame,
            stats: TransportStats::default(),
        };
        // The first half of the UMEM receives: all of it on the fill ring at once.
        let rx: Vec<u64> = (0..half).map(|i| i * chunk).collect();
        let filled = t.xsk.fill(&rx);
        if filled != rx.len() {
            return Err(io::Error::other(format!(
                "the fill ring took {filled} of {} chunks",
                rx.len()
            )));
        }
        t.resolve();
        Ok(t)
    }

    /// The AF_XDP socket, for the XDP program's socket map.
    pub fn fd(&self) -> RawFd {
        self.xsk.fd()
    }
    /// The UDP ports of this member the socket serves (one per group on it), to steer to it.
    pub fn ports(&self) -> Vec<u16> {
        self.locals.iter().map(SocketAddrV4::port).collect()
    }
    /// Whether the socket runs in zero-copy mode (else copy mode).
    pub fn zero_copy(&self) -> bool {
        self.xsk.zero_copy
    }
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Learns peers' MAC addresses from the neighbour table, at most every `NEIGHBOUR_POLL`
    /// and only while some are unknown.
    fn resolve(&mut self) {
        if !self.routes.contains(&Route::Unresolved) {
            return;
        }
        if self
            .neighbours_at
            .is_some_and(|t| t.elapsed() < NEIGHBOUR_POLL)
        {
            return;
        }
        self.neighbours_at = Some(Instant::now());
        use std::io::{Read, Seek};
        let mut table = String::new();
        let Some(f) = self.arp.as_mut() else {
            return;
        };
        if f.rewind().is_err() || f.read_to_string(&mut table).is_err() {
            return;
        }
        let known = neighbours(&table, &self.interface);
        for (i, p) in self.peers.iter().enumerate() {
            if self.routes[i] == Route::Unresolved {
                if let Some(mac) = known.get(p.ip()) {
                    self.routes[i] = Route::Bypass(*mac);
                }
            }
        }
    }

    /// Wakes the kernel until it took every frame of the tx ring (copy mode sends a bounded
    /// number per wake-up), a few times at most; what is left goes at the next call, which
    /// `next_deadline_us` asks for at once.
    fn flush_tx(&mut self) -> io::Result<()> {
        for _ in 0..8 {
            if !self.xsk.tx_backlog() {
                break;
            }
            if !self.xsk.kick_tx()? {
                break;
            }
            self.stats.syscalls += 1;
        }
        Ok(())
    }

    /// Takes back the chunks whose transmission completed.
    fn reclaim(&mut self) {
        self.done.clear();
        self.xsk.completed(&mut self.done, SIZES.ring as usize);
        self.free_tx.extend_from_slice(&self.done);
    }
}

impl Transport for AfXdpTransport {
    fn name(&self) -> &'static str {
        "afxdp"
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        self.reclaim();
        self.resolve();
        self.tx_descs.clear();
        self.tx_index.clear();
        self.kernel_out.clear();
        for (i, &(peer, frame)) in batch.iter().enumerate() {
            if frame.len() > self.max_payload || peer >= self.peers.len() {
                self.stats.send_errors += 1;
                continue;
            }
            let mac = match self.routes[peer] {
                Route::Bypass(mac) => mac,
                Route::Unresolved | Route::Local => {
                    self.kernel_out.push((i, peer));
                    continue;
                }
            };
            let Some(addr) = self.free_tx.pop() else {
                self.kernel_out.push((i, peer));
                continue;
            };
            let len = HEADERS + frame.len();
            let (src_mac, src, dst, id) =
                (self.mac, self.sources[peer], self.peers[peer], self.ip_id);
            self.ip_id = self.ip_id.wrapping_add(1);
            match self.xsk.frame_mut(addr, len) {
                Some(out) => {
                    write_headers(out, mac, src_mac, src, dst, id, frame.len());
                    out[HEADERS..].copy_from_slice(frame);
                    self.tx_descs.push(libc::xdp_desc {
                        addr,
                        len: len as u32,
                        options: 0,
                    });
                    self.tx_index.push(i);
                }
                None => {
                    self.free_tx.push(addr);
                    self.kernel_out.push((i, peer));
                }
            }
        }
        let queued = self.xsk.transmit(&self.tx_descs);
        // What did not fit the tx ring goes through the kernel: never dropped for lack of room.
        for (d, &i) in self.tx_descs[queued..].iter().zip(&self.tx_index[queued..]) {
            self.free_tx.push(d.addr);
            self.kernel_out.push((i, batch[i].0));
        }
        self.stats.frames_sent += queued as u64;
        self.flush_tx()?;
        if !self.kernel_out.is_empty() {
            self.stats.kernel_path_sent += self.kernel_out.len() as u64;
            // Each through the kernel socket of this member's address toward that peer.
            for k in 0..self.kernels.len() {
                let slow: Vec<(usize, &[u8])> = self
                    .kernel_out
                    .iter()
                    .filter(|&&(_, p)| self.kernel_of[p] == k)
                    .map(|&(i, p)| (p, batch[i].1))
                    .collect();
                if !slow.is_empty() {
                    self.kernels[k].send(&slow)?;
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        let room = batch.bufs.len();
        self.rx_descs.clear();
        self.xsk.received(&mut self.rx_descs, room);
        let chunk = u64::from(SIZES.frame_size);
        for d in &self.rx_descs {
            self.refill.push(d.addr - d.addr % chunk);
            let Some(f) = self.xsk.frame(d.addr, d.len as usize) else {
                self.stats.malformed += 1;
                continue;
            };
            let Some(p) = parse(f) else {
                self.stats.malformed += 1;
                continue;
            };
            if !self.locals.contains(&p.dst) {
                self.stats.malformed += 1;
                continue;
            }
            // A peer's frame to another of this member's ports (another group's) is not that
            // peer's: an unknown source.
            let peer = self
                .by_addr
                .get(&p.src)
                .copied()
                .filter(|&i| self.sources[i] == p.dst);
            match peer {
                None => self.stats.unknown_source += 1,
                // The peer's first frame tells its MAC address (or its router's).
                Some(i) if self.routes[i] == Route::Unresolved => {
                    self.routes[i] = Route::Bypass(p.src_mac)
                }
                Some(_) => {}
            }
            if !batch.push(peer, &f[p.payload]) {
                self.stats.oversized += 1;
            }
        }
        self.stats.frames_received += batch.frames.len() as u64;
        if !self.refill.is_empty() {
            let given = self.xsk.fill(&self.refill);
            // The fill ring has room for every receive chunk, so this keeps none back; if the
            // kernel ever lags in publishing what it took, the rest waits for the next call.
            self.refill.drain(..given);
        }
        self.xsk.kick_rx();
        self.flush_tx()?;
        // The kernel's path: frames the XDP program passed to the stack.
        for kernel in 0..self.kernels.len() {
            if batch.frames.len() >= room {
                break;
            }
            // Never take from the socket more than the batch has room for (what is taken
            // and not delivered would be lost): the other buffers are set aside meanwhile.
            let left = room - batch.frames.len();
            let aside = (left < self.kernel_batch.bufs.len())
                .then(|| self.kernel_batch.bufs.split_off(left));
            let got = self.kernels[kernel].recv(&mut self.kernel_batch);
            if let Some(mut a) = aside {
                self.kernel_batch.bufs.append(&mut a);
            }
            let k = got?;
            for r in self.kernel_batch.frames.iter().take(k) {
                let local = self.locals[kernel];
                let peer = r.peer.filter(|&i| self.sources[i] == local);
                if r.peer.is_some() && peer.is_none() {
                    self.stats.unknown_source += 1;
                }
                if batch.push(peer, &self.kernel_batch.bufs[r.buf][..r.len]) {
                    self.stats.kernel_path_received += 1;
                } else {
                    self.stats.oversized += 1;
                }
            }
        }
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.poll.fd())
    }

    fn next_deadline_us(&self) -> Option<u64> {
        // Frames still on the tx ring: come back at once rather than park on them.
        self.xsk.tx_backlog().then(crate::sys::monotonic_us)
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.stats.clone();
        for k in self.kernels.iter().map(UdpTransport::stats) {
            s.frames_sent += k.frames_sent;
            s.frames_received += k.frames_received;
            s.send_errors += k.send_errors;
            s.unknown_source += k.unknown_source;
            s.oversized += k.oversized;
            s.syscalls += k.syscalls;
        }
        if let Ok(x) = self.xsk.statistics() {
            s.xdp.push(("socket_rx_dropped", x.rx_dropped));
            s.xdp.push(("socket_rx_ring_full", x.rx_ring_full));
            s.xdp
                .push(("socket_fill_ring_empty", x.rx_fill_ring_empty_descs));
            s.xdp.push((
                "socket_invalid_descs",
                x.rx_invalid_descs + x.tx_invalid_descs,
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_neighbour_table_gives_complete_entries_of_the_interface() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.77.0.2        0x1         0x2         aa:bb:cc:dd:ee:01     *        eth0\n\
                 10.77.0.3        0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                 10.77.0.4        0x1         0x2         aa:bb:cc:dd:ee:04     *        eth1\n\
                 garbage line\n";
        let n = neighbours(t, "eth0");
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[&"10.77.0.2".parse::<Ipv4Addr>().unwrap()],
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 1]
        );
    }
}
