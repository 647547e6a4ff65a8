//! Transports: one batch-oriented trait, one implementation per medium, chosen at run time.
//!
//! A transport moves whole frames between the members of a group, addressed by peer index (the
//! member's rank in the configuration). It does not interpret frames: authentication and
//! ordering are the protocol core's. Frames from addresses that are not peers are reported with
//! `peer: None` so the engine can count and drop them.
//!
//! One folder per medium, each with its unsafe code in its `sys` module:
//! - [`udp`]: kernel sockets, sendmmsg/recvmmsg;
//! - [`shm`]: shared-memory rings between the members of one host;
//! - [`afxdp`]: AF_XDP sockets (the group's frames bypass the kernel's stack, steered to the
//!   socket by the XDP program), and the XDP member filter over any transport
//!   ([`afxdp::filter`], with the `xdp` feature);
//! - [`dpdk`]: a port driven by DPDK's poll-mode drivers (ConnectX through mlx5; virtual
//!   devices here), with the `dpdk` feature;
//! - [`rdma`]: one-sided RDMA WRITEs over reliable-connected queue pairs (libibverbs with the
//!   `rdma` feature, or an in-process emulation of the verbs, always).
//!
//! Beside them: [`shared`], one device (a DPDK port) shared by a sharded member's shards;
//! [`impair`], a wrapper over any transport that injects loss, duplication and
//! delay; `eth`, the Ethernet/IPv4/UDP framing afxdp and dpdk share; and [`open`], the one
//! factory that opens a member's transport from its [`open::TransportSpec`].

pub mod afxdp;
pub mod dpdk;
// Its ARP speaker serves the dpdk transport only.
#[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
mod eth;
pub mod impair;
pub mod open;
pub mod rdma;
pub mod shared;
pub mod shm;
pub mod udp;

pub use open::{open, open_all, Medium, OpenError, Opened, TransportSpec};

use std::io;
use std::os::fd::RawFd;

/// One received frame in a [`RecvBatch`].
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Index of the sending peer, or `None` if the source address is not a peer.
    pub peer: Option<usize>,
    pub len: usize,
    /// Which of the batch's buffers holds it.
    pub buf: usize,
}

/// Preallocated receive buffers, filled by [`Transport::recv`].
#[derive(Debug)]
pub struct RecvBatch {
    pub bufs: Vec<Vec<u8>>,
    pub frames: Vec<Received>,
}

impl RecvBatch {
    pub fn new(batch: usize, frame_size: usize) -> Self {
        RecvBatch {
            bufs: (0..batch).map(|_| vec![0u8; frame_size]).collect(),
            frames: Vec::with_capacity(batch),
        }
    }
    /// Appends a frame from `peer` with a copy of `bytes`, into the next buffer. `false` (and
    /// nothing appended) if that buffer is too small, or every buffer is taken.
    pub fn push(&mut self, peer: Option<usize>, bytes: &[u8]) -> bool {
        let buf = self.frames.len();
        let Some(dst) = self.bufs.get_mut(buf).filter(|d| d.len() >= bytes.len()) else {
            return false;
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        self.frames.push(Received {
            peer,
            len: bytes.len(),
            buf,
        });
        true
    }
    /// The received frames with their bytes.
    pub fn iter(&self) -> impl Iterator<Item = (Option<usize>, &[u8])> {
        self.frames
            .iter()
            .map(|r| (r.peer, &self.bufs[r.buf][..r.len]))
    }
}

/// Counters every transport keeps.
#[derive(Clone, Debug, Default)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub send_errors: u64,
    /// Frames from addresses that are not peers.
    pub unknown_source: u64,
    /// Frames larger than the receive buffers (truncated, dropped).
    pub oversized: u64,
    pub syscalls: u64,
    /// Frames dropped or duplicated on purpose by an `impair` wrapper.
    pub injected_loss: u64,
    pub injected_duplicates: u64,
    /// Frames the parser refused (not IPv4/UDP to this member, bad lengths): counted, dropped.
    pub malformed: u64,
    /// `afxdp`: frames that took the kernel's UDP path instead of the AF_XDP socket (a peer
    /// whose MAC address is not known yet, a peer on the same host, a full tx ring; received:
    /// frames the XDP program passed to the stack).
    pub kernel_path_sent: u64,
    pub kernel_path_received: u64,
    /// `dpdk`: frames on the medium that are not the group's (addressed to another host or
    /// port, ARP, IPv6, other protocols): ignored, counted.
    pub not_for_us: u64,
    /// `dpdk`: frames not sent because the peer's MAC address is not known yet (ARP pending;
    /// the protocol retransmits).
    pub unresolved: u64,
    /// A device shared by a member's shards ([`shared`]): frames dropped because their
    /// shard's engine had not taken the ones before them (its queue was full).
    pub shared_overflow: u64,
    /// Counters of the XDP program on the member's interface, by verdict (empty without one).
    pub xdp: Vec<(&'static str, u64)>,
    /// The device's own counters (`dpdk`: the port's rte_eth_stats).
    pub device: Vec<(&'static str, u64)>,
}

/// A medium that moves frames between peers.
pub trait Transport: Send {
    /// Name as configured (`udp`, ...), logged at start.
    fn name(&self) -> &'static str;
    /// Sends each `(peer, frame)`; never blocks. Frames the medium refuses are counted and
    /// dropped (the protocol retransmits).
    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()>;
    /// Receives what is waiting, without blocking, into `batch`; returns how many frames.
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize>;
    /// A file descriptor that becomes readable when frames arrive, for parking.
    fn poll_fd(&self) -> Option<RawFd>;
    /// When the transport needs to be polled again even if nothing arrives (host clock,
    /// microseconds), e.g. to send frames it holds back.
    fn next_deadline_us(&self) -> Option<u64> {
        None
    }
    fn stats(&self) -> TransportStats;
    /// The engine is about to park on [`poll_fd`](Self::poll_fd): a transport that must be
    /// told (to be woken by its peers) is told here. `false`: frames arrived meanwhile, do not
    /// park.
    fn prepare_park(&mut self) -> bool {
        true
    }
    /// A view was installed: `members` are the peer indices of its members. Called by the
    /// polling thread at the install, before it sends anything in the new view (the XDP member
    /// filter follows it here).
    fn view_installed(&mut self, _members: &[usize]) {}
}
