//! The `dpdk` transport: the member drives one Ethernet port through DPDK's poll-mode drivers,
//! with no kernel on the path.
//!
//! On a ConnectX NIC the port is the mlx5 PMD's (bifurcated: the NIC stays bound to mlx5_core,
//! nothing is unbound, and the kernel keeps the rest of the traffic). Here, with no NIC, it is a
//! DPDK virtual device: `net_af_packet` on a namespace host's veth, or two `net_ring` ports
//! wired together inside one process (tests).
//!
//! Frames are written as Ethernet + IPv4 + UDP into mbufs and sent in bursts; on the wire they
//! are ordinary UDP datagrams. With no kernel to resolve addresses, the transport speaks ARP
//! itself: it answers requests for its address, asks for each peer's MAC address at start and
//! again every [`ARP_RETRY_US`] until it is known, and learns it from any frame the peer sends.
//! Frames for a peer whose address is not known yet are counted (`unresolved`) and dropped: the
//! protocol retransmits them. What the port cannot take at once waits in a bounded queue (sent
//! before anything else on the next call); beyond it, frames are counted as send errors.
//!
//! Poll-mode drivers have no file descriptor to sleep on. A parked member polls the port every
//! `poll_us` microseconds (the engine's timed park); `[idle] spin_us` keeps it busy-polling, as
//! DPDK is meant to run on a dedicated core.
//!
//! The EAL starts once per process, with the options of [`EalOptions`]; it does not pin threads
//! it does not own (the starting thread's CPU affinity is restored, and the main lcore may run
//! on every CPU the process may use).

//!
//! The configuration types here are always built; the port itself (`port.rs`) and its
//! bindings (`sys.rs`, over the workspace's `dpdk-sys`) only with the `dpdk` feature: a build
//! without it says so by name when the transport is asked for.

#[cfg(feature = "dpdk")]
mod port;
#[cfg(feature = "dpdk")]
mod sys;

#[cfg(feature = "dpdk")]
pub use port::{start_eal, DpdkTransport};

use super::eth::HEADERS;
use std::net::{SocketAddr, SocketAddrV4};

/// How long to wait for an ARP reply before asking again.
pub const ARP_RETRY_US: u64 = 50_000;
/// The mbufs' data room: an Ethernet frame of up to 2048 bytes.
pub(crate) const DATA_ROOM: u16 = 2048;
/// The largest frame (UDP payload) the transport carries in one mbuf; the port's MTU may allow
/// less.
pub const MAX_FRAME: usize = DATA_ROOM as usize - HEADERS;

/// The EAL's options, from the member's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EalOptions {
    /// `--lcores`; default: lcore 0 on every CPU the process may use (no pinning).
    pub lcores: Option<String>,
    /// PCI devices to use (`-a`), for example a ConnectX port `0000:3b:00.0`. Without any,
    /// the EAL probes no PCI device.
    pub allow: Vec<String>,
    /// Virtual devices (`--vdev`), for example `net_af_packet0,iface=eth0`.
    pub vdevs: Vec<String>,
    /// Use hugepages (production), or ordinary memory (`--no-huge`).
    pub hugepages: bool,
    /// Memory for the EAL, MiB (`-m`).
    pub memory_mb: u32,
    /// More EAL arguments, appended as given.
    pub extra: Vec<String>,
}

impl Default for EalOptions {
    fn default() -> Self {
        EalOptions {
            lcores: None,
            allow: Vec::new(),
            vdevs: Vec::new(),
            hugepages: true,
            memory_mb: 256,
            extra: Vec::new(),
        }
    }
}

/// The CPUs the calling thread may run on, as an EAL cpu list (`0,1,2`).
fn allowed_cpus() -> String {
    let cpus: Vec<String> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    if cpus.is_empty() {
        "0".into()
    } else {
        cpus.join(",")
    }
}

impl EalOptions {
    /// The EAL's argv (argv[0] included). With hugepages `--in-memory` (no files in /var/run or
    /// hugetlbfs); without, no shared config and a runtime directory named by the process id:
    /// either way several members on a host never collide.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["conveyor".to_string()];
        if self.hugepages {
            a.push("--in-memory".into());
        } else {
            // --no-huge cannot be --in-memory: no shared config instead, and a runtime
            // directory of this process's own.
            a.push("--no-shconf".into());
            a.push(format!("--file-prefix=conveyor-{}", std::process::id()));
            a.push("--no-huge".into());
        }
        a.extend([
            "--no-telemetry".into(),
            "--log-level=*:warning".into(),
            "--lcores".into(),
            self.lcores
                .clone()
                .unwrap_or_else(|| format!("0@({})", allowed_cpus())),
            "-m".into(),
            self.memory_mb.to_string(),
        ]);
        if self.allow.is_empty() {
            a.push("--no-pci".into());
        }
        for d in &self.allow {
            a.push("-a".into());
            a.push(d.clone());
        }
        for v in &self.vdevs {
            a.push("--vdev".into());
            a.push(v.clone());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// The member's port and addresses.
#[derive(Clone, Debug)]
pub struct DpdkConfig {
    pub eal: EalOptions,
    /// The port's name (`net_af_packet0`, a PCI address); `None`: the only port the EAL found.
    pub port: Option<String>,
    /// This member's address: the port's IPv4 address, and the group's UDP port.
    pub local: SocketAddrV4,
    /// Every member's address, by index (this member's included).
    pub peers: Vec<SocketAddr>,
    /// Several groups on the port (a sharded member's shards, see `transport::shared`): the
    /// UDP port of this member that each peer talks to (sends from, receives at), by peer
    /// index. Empty: `local`'s port for every peer.
    pub local_ports: Vec<u16>,
    /// The largest frame the protocol sends (`max_frame`): checked against the port's MTU.
    pub max_frame: usize,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Mbufs in the pool (receive ring, transmit queue and the frames in flight).
    pub mbufs: u32,
    /// How often a parked member polls the port, microseconds (0: never park).
    pub poll_us: u64,
    /// Bind a kernel UDP socket on `local` and never read it: where the kernel also sees the
    /// port's frames (af_packet, a bifurcated mlx5 port without flow isolation), it then
    /// does not answer them with ICMP port-unreachable, and no other program takes the port.
    pub reserve_port: bool,
}

impl DpdkConfig {
    /// Defaults for everything but the addresses.
    pub fn new(eal: EalOptions, local: SocketAddrV4, peers: Vec<SocketAddr>) -> DpdkConfig {
        DpdkConfig {
            eal,
            port: None,
            local,
            peers,
            local_ports: Vec::new(),
            max_frame: 1400,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mbufs: 8191,
            poll_us: 50,
            reserve_port: true,
        }
    }
}
