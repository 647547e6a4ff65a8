//! The `rdma` transport: one-sided RDMA WRITEs over reliable-connected queue pairs, Derecho's
//! way of moving frames and status (its SST, shared state table).
//!
//! Each member registers one memory region, laid out the same on every member (see [`Layout`]):
//! - a **receive ring** per peer (`SLOTS` slots): a peer writes each frame straight into the
//!   next slot of its ring in this member's memory, with an RDMA WRITE WITH IMMEDIATE whose
//!   immediate value is the frame's number; the completion tells this member which slot filled;
//! - a **status row** per peer: a peer writes there, with a plain RDMA WRITE (no completion at
//!   this end, no CPU involved), how many of this member's frames it has consumed. That is the
//!   credit of this member's ring at the peer: a sender never overwrites a slot its peer has not
//!   read;
//! - staging slots for this member's own writes.
//!
//! Queue pairs are set up over a TCP side channel on the member's address (the lower-indexed
//! member of each pair connects, the other accepts; both exchange queue pair numbers, LID/GID
//! and the region's address and rkey). A queue pair that fails (an error completion: the peer
//! died, a retry count ran out) is torn down, and its peer is connected again when it comes
//! back: the protocol above retransmits what was lost and removes peers that stay away.
//!
//! The verbs are behind [`Verbs`], with two implementations: `IbvDevice` (libibverbs through
//! `rdma-sys`, for ConnectX and any verbs device; `sys.rs`, built with the `rdma` feature only)
//! and [`emu::Fabric`], an in-process
//! emulation with the same semantics (in-order placement per queue pair, completions, error
//! completions, flushes, a dead peer), which the tests use: no RDMA device exists on the
//! machines this was written on.

pub mod emu;
#[cfg(feature = "rdma")]
mod sys;

#[cfg(feature = "rdma")]
pub use sys::{devices, IbvDevice};

use super::{Received, RecvBatch, Transport, TransportStats};

/// Which verbs device and port to use (the libibverbs implementation's settings).
#[derive(Clone, Debug, Default)]
pub struct IbvConfig {
    /// The device's name (`mlx5_0`); `None`: the first one.
    pub device: Option<String>,
    /// The port, from 1.
    pub port: u8,
    /// The GID index (RoCE: the one of the port's IPv4 address in RoCE v2; 0 otherwise).
    pub gid_index: u8,
}
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A memory region registered with the device.
pub type MrId = u32;
/// A queue pair, by its number.
pub type QpId = u32;

/// What a peer needs to connect its queue pair to ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub qpn: u32,
    pub lid: u16,
    /// RoCE and routed InfiniBand: the port's GID (all zero when the LID is enough).
    pub gid: [u8; 16],
    /// The first packet sequence number of the sender.
    pub psn: u32,
}

/// A region as a peer addresses it in RDMA operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMr {
    pub addr: u64,
    pub rkey: u32,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    /// One of this member's RDMA WRITEs completed.
    RdmaWrite,
    /// A peer's RDMA WRITE WITH IMMEDIATE landed in this member's memory.
    RecvRdmaWithImm,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    Success,
    /// The queue pair was in the error state: the request was not executed.
    Flushed,
    /// The peer did not answer (dead, unreachable): the transport retry count ran out.
    RetryExceeded,
    /// The peer refused the access (a bad rkey, out of bounds).
    RemoteAccess,
    /// The peer had no receive posted for an immediate, for too long.
    RnrRetryExceeded,
    Other(u32),
}

/// One work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub qp: QpId,
    pub status: WcStatus,
    pub opcode: WcOpcode,
    pub imm: Option<u32>,
}

/// The verbs the transport uses: one device context, protection domain and completion queue.
/// Implementations are shared between the polling thread and the side channel's thread.
pub trait Verbs: Send + Sync {
    /// The device and port, for the log.
    fn describe(&self) -> String;
    /// Allocates `len` zeroed bytes and registers them for local and remote writes.
    fn register(&self, len: usize) -> io::Result<(MrId, RemoteMr)>;
    /// Copies from the region (bytes a peer wrote: read after its completion).
    fn read(&self, mr: MrId, off: usize, out: &mut [u8]);
    /// Copies into the region (to stage this member's writes).
    fn write(&self, mr: MrId, off: usize, data: &[u8]);
    /// Reads an 8-byte, 8-aligned cell that peers write with RDMA (a status row).
    fn read_u64(&self, mr: MrId, off: usize) -> u64;
    /// A new reliable-connected queue pair on the completion queue, and its endpoint.
    fn create_qp(&self) -> io::Result<(QpId, Endpoint)>;
    /// Connects the queue pair to the peer's endpoint (INIT, RTR, RTS).
    fn connect(&self, qp: QpId, remote: &Endpoint) -> io::Result<()>;
    fn destroy_qp(&self, qp: QpId);
    /// Posts a signaled RDMA WRITE of `len` bytes at `off` in `mr` to `to_off` in the peer's
    /// region, with an immediate value if given.
    #[allow(clippy::too_many_arguments)]
    fn post_write(
        &self,
        qp: QpId,
        wr_id: u64,
        mr: MrId,
        off: usize,
        len: usize,
        to: RemoteMr,
        to_off: u64,
        imm: Option<u32>,
    ) -> io::Result<()>;
    /// Posts a receive (no buffer: it only takes a WRITE WITH IMMEDIATE's notification).
    fn post_recv(&self, qp: QpId, wr_id: u64) -> io::Result<()>;
    /// Takes up to `max` completions.
    fn poll(&self, out: &mut Vec<Completion>, max: usize);
}

/// Frames in flight per peer and direction.
pub const SLOTS: usize = 256;
/// Each slot starts with the frame's length and number (u32 each).
const SLOT_HEADER: usize = 8;
/// Status rows and credit cells are a cache line apart.
const CELL: usize = 64;
/// Frames waiting for credit, per peer, at most (beyond: dropped and counted; the protocol
/// retransmits).
const BACKLOG_MAX: usize = 4 * SLOTS;

/// Where everything is in a member's region; the same on every member of the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub members: usize,
    pub slot: usize,
}

impl Layout {
    pub fn new(members: usize, max_frame: usize) -> Layout {
        Layout {
            members,
            slot: (SLOT_HEADER + max_frame).div_ceil(CELL) * CELL,
        }
    }
    fn ring(&self) -> usize {
        SLOTS * self.slot
    }
    /// Slot `k` of the receive ring that member `from`'s frames land in.
    pub fn recv_slot(&self, from: usize, k: u64) -> usize {
        from * self.ring() + (k % SLOTS as u64) as usize * self.slot
    }
    /// The status cell member `from` writes its consumed count into.
    pub fn status(&self, from: usize) -> usize {
        self.members * self.ring() + from * CELL
    }
    /// Staging slot `k` of this member's writes to `to`.
    fn send_slot(&self, to: usize, k: u64) -> usize {
        self.members * (self.ring() + CELL)
            + to * self.ring()
            + (k % SLOTS as u64) as usize * self.slot
    }
    /// Staging cell of this member's consumed count for `to`.
    fn credit(&self, to: usize) -> usize {
        self.members * (2 * self.ring() + CELL) + to * CELL
    }
    /// The region's size, bytes.
    pub fn region_len(&self) -> usize {
        self.members * (2 * self.ring() + 2 * CELL)
    }
}

/// The side channel's handshake, one JSON line each way.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hello {
    /// Names the group (and its key): a member of another group is refused.
    group: String,
    from: usize,
    layout: Layout,
    endpoint: Endpoint,
    region: RemoteMr,
    /// Names this incarnation of the link (chosen by the connecting side): status rows written
    /// by an earlier one are not taken for this one's.
    epoch: u16,
}

const PENDING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

/// A queue pair, handed from the side channel to the polling thread *before* it is connected
/// (so that no completion of it can come before the polling thread knows it); `state` says
/// when it is ready, or that the handshake failed.
#[derive(Debug)]
struct Established {
    peer: usize,
    qp: QpId,
    region: RemoteMr,
    epoch: u16,
    state: Arc<AtomicU8>,
}

/// Work request ids: what completed.
const WR_FRAME: u64 = 1 << 62;
const WR_CREDIT: u64 = 2 << 62;
const WR_RECV: u64 = 3 << 62;
const WR_KIND: u64 = 3 << 62;

#[derive(Debug)]
struct Link {
    qp: QpId,
    region: RemoteMr,
    epoch: u16,
    state: Arc<AtomicU8>,
    /// Frames written to the peer, and how many of those writes completed.
    posted: u64,
    completed: u64,
    /// Frames of this member the peer has consumed (its status row here).
    consumed_by_peer: u64,
    /// Frames this member took from the peer, and the count last written to the peer.
    received: u64,
    reported: u64,
    credit_in_flight: bool,
}

impl Link {
    fn ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }
    fn room(&self) -> bool {
        let freed = self.completed.min(self.consumed_by_peer);
        self.ready() && self.posted - freed < SLOTS as u64
    }
}

/// A status row: the link's epoch over the count.
fn status_value(epoch: u16, count: u64) -> u64 {
    (u64::from(epoch) << 48) | (count & ((1 << 48) - 1))
}

/// The transport's settings.
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    /// Names the group on the side channel.
    pub group: String,
    pub me: usize,
    /// Every member's address (the side channel listens on this member's, TCP).
    pub peers: Vec<SocketAddr>,
    pub max_frame: usize,
    /// How often a parked member polls the completion queue, microseconds.
    pub poll_us: u64,
}

pub struct RdmaTransport {
    verbs: Arc<dyn Verbs>,
    mr: MrId,
    layout: Layout,
    me: usize,
    links: Vec<Option<Link>>,
    by_qp: HashMap<QpId, usize>,
    backlog: Vec<VecDeque<Vec<u8>>>,
    established: mpsc::Receiver<Established>,
    /// Peers whose link failed: the side channel connects them again.
    wanted: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    side: Option<JoinHandle<()>>,
    completions: Vec<Completion>,
    max_frame: usize,
    poll_us: u64,
    link_failures: u64,
    links_established: u64,
    stats: TransportStats,
}

impl std::fmt::Debug for RdmaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTransport")
            .field("device", &self.verbs.describe())
            .field("me", &self.me)
            .finish()
    }
}

impl RdmaTransport {
    /// Registers the member's region on `verbs`, listens on the side channel and starts
    /// connecting to the peers (in the background: peers may start later).
    pub fn open(cfg: &RdmaConfig, verbs: Arc<dyn Verbs>) -> io::Result<RdmaTransport> {
        let n = cfg.peers.len();
        if cfg.me >= n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "member index out of range",
            ));
        }
        let layout = Layout::new(n, cfg.max_frame);
        let (mr, region) = verbs.register(layout.region_len())?;
        let listener = TcpListener::bind(cfg.peers[cfg.me]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the rdma side channel listens on TCP {}: {e}",
                    cfg.peers[cfg.me]
                ),
            )
        })?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let wanted = Arc::new(Mutex::new((0..n).map(|i| i != cfg.me).collect::<Vec<_>>()));
        let stop = Arc::new(AtomicBool::new(false));
        let side = Side {
            verbs: verbs.clone(),
            listener,
            me: cfg.me,
            peers: cfg.peers.clone(),
            hello: Hello {
                group: cfg.group.clone(),
                from: cfg.me,
                layout,
                endpoint: Endpoint {
                    qpn: 0,
                    lid: 0,
                    gid: [0; 16],
                    psn: 0,
                },
                region,
                epoch: 0,
            },
            tx,
            wanted: wanted.clone(),
            stop: stop.clone(),
        };
        let side = std::thread::Builder::new()
            .name("conveyor-rdma-cm".into())
            .spawn(move || side.run())?;
        Ok(RdmaTransport {
            verbs,
            mr,
            layout,
            me: cfg.me,
            links: (0..n).map(|_| None).collect(),
            by_qp: HashMap::new(),
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            established: rx,
            wanted,
            stop,
            side: Some(side),
            completions: Vec::with_capacity(64),
            max_frame: cfg.max_frame,
            poll_us: cfg.poll_us,
            link_failures: 0,
            links_established: 0,
            stats: TransportStats::default(),
        })
    }

    /// The device, for the log.
    pub fn describe(&self) -> String {
        self.verbs.describe()
    }

    /// Whether a queue pair to `peer` is up.
    pub fn connected(&self, peer: usize) -> bool {
        self.links.get(peer).is_some_and(|l| l.is_some())
    }

    fn take_established(&mut self) {
        while let Ok(e) = self.established.try_recv() {
            if let Some(old) = self.links[e.peer].take() {
                self.by_qp.remove(&old.qp);
                self.verbs.destroy_qp(old.qp);
            }
            self.by_qp.insert(e.qp, e.peer);
            self.links[e.peer] = Some(Link {
                qp: e.qp,
                region: e.region,
                epoch: e.epoch,
                state: e.state,
                posted: 0,
                completed: 0,
                consumed_by_peer: 0,
                received: 0,
                reported: 0,
                credit_in_flight: false,
            });
            self.links_established += 1;
        }
    }

    /// The link to `peer` failed: tear it down, count what it held, connect again later.
    fn fail(&mut self, peer: usize) {
        if let Some(l) = self.links[peer].take() {
            self.by_qp.remove(&l.qp);
            self.verbs.destroy_qp(l.qp);
            self.link_failures += 1;
            self.stats.send_errors += self.backlog[peer].len() as u64;
            self.backlog[peer].clear();
            if let Ok(mut w) = self.wanted.lock() {
                w[peer] = true;
            }
        }
    }

    /// Writes one frame to `peer`'s ring (there is room and a link).
    fn write_frame(&mut self, peer: usize, frame: &[u8]) -> bool {
        let (qp, region, k) = match &self.links[peer] {
            Some(l) => (l.qp, l.region, l.posted),
            None => return false,
        };
        let off = self.layout.send_slot(peer, k);
        let mut head = [0u8; SLOT_HEADER];
        head[..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&(k as u32).to_le_bytes());
        self.verbs.write(self.mr, off, &head);
        self.verbs.write(self.mr, off + SLOT_HEADER, frame);
        let to = self.layout.recv_slot(self.me, k) as u64;
        let r = self.verbs.post_write(
            qp,
            WR_FRAME | peer as u64,
            self.mr,
            off,
            SLOT_HEADER + frame.len(),
            region,
            to,
            Some(k as u32),
        );
        match r {
            Ok(()) => {
                if let Some(l) = &mut self.links[peer] {
                    l.posted += 1;
                }
                self.stats.frames_sent += 1;
                true
            }
            Err(_) => {
                self.stats.send_errors += 1;
                self.fail(peer);
                false
            }
        }
    }

    /// Sends what waits for credit, in order, as far as the ring allows.
    fn drain_backlog(&mut self, peer: usize) {
        while self.links[peer].as_ref().is_some_and(Link::room) {
            let Some(f) = self.backlog[peer].pop_front() else {
                break;
            };
            if !self.write_frame(peer, &f) {
                break;
            }
        }
    }

    /// Tells each peer how many of its frames this member consumed (one write in flight per
    /// peer), and reads what the peers said in this member's status rows.
    fn exchange_status(&mut self) {
        for p in 0..self.links.len() {
            let Some(l) = &self.links[p] else { continue };
            match l.state.load(Ordering::Acquire) {
                READY => {}
                FAILED => {
                    self.fail(p);
                    continue;
                }
                _ => continue,
            }
            let seen = self.verbs.read_u64(self.mr, self.layout.status(p));
            let (qp, region, epoch, received, send) = (
                l.qp,
                l.region,
                l.epoch,
                l.received,
                l.received > l.reported && !l.credit_in_flight,
            );
            if let Some(l) = &mut self.links[p] {
                // A row written by an earlier incarnation of the link is not this one's.
                if seen >> 48 == u64::from(epoch) {
                    let n = seen & ((1 << 48) - 1);
                    if n <= l.posted {
                        l.consumed_by_peer = l.consumed_by_peer.max(n);
                    }
                }
            }
            if send {
                let off = self.layout.credit(p);
                self.verbs
                    .write(self.mr, off, &status_value(epoch, received).to_le_bytes());
                let r = self.verbs.post_write(
                    qp,
                    WR_CREDIT | p as u64,
                    self.mr,
                    off,
                    8,
                    region,
                    self.layout.status(self.me) as u64,
                    None,
                );
                match r {
                    Ok(()) => {
                        if let Some(l) = &mut self.links[p] {
                            l.reported = received;
                            l.credit_in_flight = true;
                        }
                    }
                    Err(_) => self.fail(p),
                }
            }
            self.drain_backlog(p);
        }
    }
}

impl Drop for RdmaTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.side.take() {
            let _ = h.join();
        }
        for l in self.links.iter_mut().filter_map(Option::take) {
            self.verbs.destroy_qp(l.qp);
        }
    }
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        "rdma"
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        self.take_established();
        for &(peer, frame) in batch {
            if frame.len() > self.max_frame || peer >= self.links.len() || peer == self.me {
                self.stats.send_errors += 1;
                continue;
            }
            let Some(l) = &self.links[peer] else {
                // Not connected (yet, or again): the protocol retransmits.
                self.stats.unresolved += 1;
                continue;
            };
            if self.backlog[peer].is_empty() && l.room() {
                // (A link still being connected has no room: its frames wait in the backlog.)
                self.write_frame(peer, frame);
            } else if self.backlog[peer].len() < BACKLOG_MAX {
                self.backlog[peer].push_back(frame.to_vec());
            } else {
                self.stats.send_errors += 1;
            }
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        self.take_established();
        let room = batch.bufs.len();
        let mut wcs = std::mem::take(&mut self.completions);
        loop {
            wcs.clear();
            // Never more completions than frames that fit: a taken completion is not put back.
            let want = room - batch.frames.len();
            if want == 0 {
                break;
            }
            self.verbs.poll(&mut wcs, want.min(64));
            if wcs.is_empty() {
                break;
            }
            for wc in &wcs {
                if !self.by_qp.contains_key(&wc.qp) {
                    // A link handed over since this call began (its completions can come
                    // before the polling thread took it).
                    self.take_established();
                }
                let Some(&peer) = self.by_qp.get(&wc.qp) else {
                    // A torn-down queue pair's flush.
                    continue;
                };
                if wc.status != WcStatus::Success {
                    self.fail(peer);
                    continue;
                }
                match (wc.wr_id & WR_KIND, wc.opcode) {
                    (WR_FRAME, WcOpcode::RdmaWrite) => {
                        if let Some(l) = &mut self.links[peer] {
                            l.completed += 1;
                        }
                    }
                    (WR_CREDIT, WcOpcode::RdmaWrite) => {
                        if let Some(l) = &mut self.links[peer] {
                            l.credit_in_flight = false;
                        }
                    }
                    (WR_RECV, WcOpcode::RecvRdmaWithImm) => {
                        let Some(l) = &self.links[peer] else { continue };
                        let (qp, k) = (l.qp, l.received);
                        let off = self.layout.recv_slot(peer, k);
                        let mut head = [0u8; SLOT_HEADER];
                        self.verbs.read(self.mr, off, &mut head);
                        let len =
                            u32::from_le_bytes(head[..4].try_into().unwrap_or([0; 4])) as usize;
                        let num = u32::from_le_bytes(head[4..].try_into().unwrap_or([0; 4]));
                        if let Some(l) = &mut self.links[peer] {
                            l.received += 1;
                        }
                        if self.verbs.post_recv(qp, WR_RECV | peer as u64).is_err() {
                            self.fail(peer);
                        }
                        // The slot must hold the frame the immediate names, whole.
                        if wc.imm != Some(k as u32) || num != k as u32 || len > self.max_frame {
                            self.stats.malformed += 1;
                            continue;
                        }
                        let buf = batch.frames.len();
                        if len > batch.bufs[buf].len() {
                            self.stats.oversized += 1;
                            continue;
                        }
                        self.verbs
                            .read(self.mr, off + SLOT_HEADER, &mut batch.bufs[buf][..len]);
                        batch.frames.push(Received {
                            peer: Some(peer),
                            len,
                            buf,
                        });
                    }
                    _ => self.stats.malformed += 1,
                }
            }
        }
        self.completions = wcs;
        self.stats.frames_received += batch.frames.len() as u64;
        self.exchange_status();
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn next_deadline_us(&self) -> Option<u64> {
        Some(crate::sys::monotonic_us() + self.poll_us)
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.stats.clone();
        s.device = vec![
            ("links_established", self.links_established),
            ("link_failures", self.link_failures),
            ("backlog", self.backlog.iter().map(|b| b.len() as u64).sum()),
        ];
        s
    }
}

/// The side channel: accepts connections from lower-indexed peers and makes them to
/// higher-indexed ones, sets up a queue pair for each, and hands it to the polling thread.
struct Side {
    verbs: Arc<dyn Verbs>,
    listener: TcpListener,
    me: usize,
    peers: Vec<SocketAddr>,
    hello: Hello,
    tx: mpsc::Sender<Established>,
    wanted: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(100);

impl Side {
    fn run(self) {
        let mut tried: Vec<Option<Instant>> = vec![None; self.peers.len()];
        while !self.stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if let Err(e) = self.accept(s) {
                        tracing::debug!("rdma side channel: refused a connection: {e}");
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::debug!("rdma side channel: accept: {e}"),
            }
            let wanted: Vec<bool> = match self.wanted.lock() {
                Ok(w) => w.clone(),
                Err(_) => return,
            };
            for j in (self.me + 1)..self.peers.len() {
                if !wanted[j] || tried[j].is_some_and(|t| t.elapsed() < RETRY) {
                    continue;
                }
                tried[j] = Some(Instant::now());
                match self.connect(j) {
                    Ok(()) => {
                        if let Ok(mut w) = self.wanted.lock() {
                            w[j] = false;
                        }
                    }
                    Err(e) => tracing::trace!("rdma side channel: member {j}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A fresh queue pair with its receives posted.
    fn new_qp(&self, peer: usize) -> io::Result<(QpId, Endpoint)> {
        let (qp, ep) = self.verbs.create_qp()?;
        for _ in 0..SLOTS {
            if let Err(e) = self.verbs.post_recv(qp, WR_RECV | peer as u64) {
                self.verbs.destroy_qp(qp);
                return Err(e);
            }
        }
        Ok((qp, ep))
    }

    fn check(&self, h: &Hello, expect: Option<usize>) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidData, m));
        if h.group != self.hello.group {
            return bad("another group".into());
        }
        if h.layout != self.hello.layout {
            return bad(format!("another layout {:?}", h.layout));
        }
        if h.from >= self.peers.len() || h.from == self.me || expect.is_some_and(|e| e != h.from) {
            return bad(format!("unexpected member {}", h.from));
        }
        Ok(())
    }

    fn exchange(s: &TcpStream, mine: &Hello) -> io::Result<Hello> {
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut line = serde_json::to_string(mine).map_err(io::Error::other)?;
        line.push('\n');
        (&*s).write_all(line.as_bytes())?;
        let mut theirs = String::new();
        BufReader::new(s).take_line(&mut theirs)?;
        serde_json::from_str(&theirs).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn accept(&self, s: TcpStream) -> io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&s).take_line(&mut line)?;
        let theirs: Hello = serde_json::from_str(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.check(&theirs, None)?;
        let (qp, ep) = self.new_qp(theirs.from)?;
        let state = self.hand_over(theirs.from, qp, theirs.region, theirs.epoch);
        let result = (|| {
            self.verbs.connect(qp, &theirs.endpoint)?;
            // Ready before the peer hears back: it may write at once.
            state.store(READY, Ordering::Release);
            let mine = Hello {
                endpoint: ep,
                epoch: theirs.epoch,
                ..self.hello.clone()
            };
            let mut out = serde_json::to_string(&mine).map_err(io::Error::other)?;
            out.push('\n');
            (&s).write_all(out.as_bytes())
        })();
        if result.is_err() {
            state.store(FAILED, Ordering::Release);
        }
        result
    }

    fn connect(&self, j: usize) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&self.peers[j], Duration::from_millis(200))?;
        let (qp, ep) = self.new_qp(j)?;
        let epoch = next_epoch();
        let mine = Hello {
            endpoint: ep,
            epoch,
            ..self.hello.clone()
        };
        // Handed over unconnected: the peer connects its end first and may write at once.
        let mut state = None;
        let result = Self::exchange(&s, &mine).and_then(|theirs| {
            self.check(&theirs, Some(j))?;
            let st = self.hand_over(j, qp, theirs.region, epoch);
            state = Some(st.clone());
            self.verbs.connect(qp, &theirs.endpoint)?;
            st.store(READY, Ordering::Release);
            Ok(())
        });
        if result.is_err() {
            match state {
                Some(st) => st.store(FAILED, Ordering::Release),
                None => self.verbs.destroy_qp(qp),
            }
        }
        result
    }

    /// Gives the polling thread the queue pair (it owns it from here on, and destroys it).
    fn hand_over(&self, peer: usize, qp: QpId, region: RemoteMr, epoch: u16) -> Arc<AtomicU8> {
        let state = Arc::new(AtomicU8::new(PENDING));
        let e = Established {
            peer,
            qp,
            region,
            epoch,
            state: state.clone(),
        };
        if self.tx.send(e).is_err() {
            // The transport is gone.
            state.store(FAILED, Ordering::Release);
        }
        state
    }
}

/// A link epoch: different from the last ones on this host with high probability.
fn next_epoch() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u16;
    t.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)) | 1
}

/// Reads one line, at most 4 KiB (a handshake is far smaller).
trait TakeLine {
    fn take_line(&mut self, out: &mut String) -> io::Result<()>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, out: &mut String) -> io::Result<()> {
        use std::io::Read;
        let n = self.by_ref().take(4096).read_line(out)?;
        if n == 0 || !out.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the handshake ended early",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
