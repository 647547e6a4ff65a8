//! Conveyor's XDP program and its loader: the only user of libbpf-rs.
//!
//! [`XdpHook`] attaches `src/bpf/conveyor.bpf.c` to a member's interface. It does two jobs:
//! - the member filter: frames of the appliance's protocol (UDP, frame header with this
//!   group's id) from anyone who is not a member of the current view are dropped in XDP and
//!   counted; candidates (members of the group file outside the view) may send control frames
//!   (join requests) only. The set is double-buffered in the kernel and switched with one
//!   4-byte write ([`XdpHook::set_members`]), so no member's frame is dropped in a window
//!   between two updates, and a removed member's frames are dropped from the switch on;
//! - steering for the `afxdp` transport: protocol frames for a registered UDP port go to the
//!   AF_XDP socket of the queue they arrived on ([`XdpHook::steer`]).
//!
//! Everything else passes untouched.
//!
//! Attachment is a BPF link: the kernel removes the program when the link's last descriptor
//! closes, which is when the process ends, however it ends (a crash included). Nothing is
//! pinned, so nothing outlives the member. A second program on the same interface is refused by
//! the kernel (EBUSY) and reported as such, rather than replacing the first member's.

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, RawFd};

#[allow(
    clippy::all,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    dead_code,
    non_camel_case_types
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/conveyor.skel.rs"));
}
use skel::{ConveyorSkel, ConveyorSkelBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    #[error("interface {0} already has an XDP program attached (another member on this interface, or another tool); refusing to replace it")]
    Busy(String),
    #[error("loading the XDP program needs root (CAP_BPF and CAP_NET_ADMIN): {0}")]
    Permission(String),
    #[error("{0} members: the filter holds at most {MEMBERS_MAX}")]
    TooMany(usize),
    #[error("queue {0}: the program serves queues 0 to {max}", max = QUEUES_MAX - 1)]
    Queue(u32),
    #[error("this kernel cannot run the XDP program ({0}); Conveyor needs BPF and XDP (CONFIG_BPF_SYSCALL, CONFIG_XDP_SOCKETS for afxdp)")]
    Unsupported(String),
    #[error("eBPF: {0}")]
    Bpf(#[from] libbpf_rs::Error),
}

/// Entries of each member map (`MEMBERS_MAX` in conveyor.bpf.c).
pub const MEMBERS_MAX: usize = 1024;
/// Queues the steering maps cover (`QUEUES_MAX`).
pub const QUEUES_MAX: u32 = 64;
/// Member-map values: which frame kinds (bit `1 << kind`) a source may send.
const KINDS_ALL: u32 = 0xe;
const KINDS_CONTROL: u32 = 0x8;

/// What the program counted, by verdict and reason (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Protocol frames from members of the view: passed on.
    pub member: u64,
    /// Protocol frames from anyone else: dropped.
    pub not_member: u64,
    /// Not the appliance's protocol: passed.
    pub other: u64,
    /// The protocol with another group's id: passed (the stack's MAC check refuses them).
    pub other_group: u64,
    /// Control frames (join requests) from candidates: passed on.
    pub joiner: u64,
    /// Data or status frames from candidates (not in the view): dropped.
    pub not_in_view: u64,
    /// Handed to an AF_XDP socket.
    pub redirected: u64,
    /// For a socket of another queue: passed to the kernel's stack.
    pub missteered: u64,
    /// For a port whose queue has no socket: passed to the kernel's stack.
    pub no_socket: u64,
}

impl Stats {
    /// Every counter with its label (for `/metrics`).
    pub fn labelled(&self) -> [(&'static str, u64); 9] {
        [
            ("member", self.member),
            ("not_member", self.not_member),
            ("other", self.other),
            ("other_group", self.other_group),
            ("joiner", self.joiner),
            ("not_in_view", self.not_in_view),
            ("redirected", self.redirected),
            ("missteered", self.missteered),
            ("no_socket", self.no_socket),
        ]
    }
}

/// How the program is set up on an interface.
#[derive(Clone, Copy, Debug)]
pub struct HookConfig {
    /// The group id frames must carry.
    pub group: u32,
    /// Judge sources by the member set (until [`XdpHook::set_members`] every protocol frame of
    /// the group is dropped: nobody is a member yet).
    pub filter: bool,
}

/// The program attached to one interface; detached when dropped.
pub struct XdpHook {
    skel: ConveyorSkel<'static>,
    _link: Link,
    ifname: String,
    /// Which member map the program reads (0 or 1).
    active: u32,
}

impl std::fmt::Debug for XdpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpHook")
            .field("ifname", &self.ifname)
            .field("active", &self.active)
            .finish()
    }
}

/// The interface's index in the calling thread's network namespace.
fn ifindex(ifname: &str) -> Result<i32, Error> {
    let name =
        std::ffi::CString::new(ifname).map_err(|_| Error::NoInterface(ifname.to_string()))?;
    // SAFETY: `name` is a valid NUL-terminated string that lives across the call; the function
    // only reads it.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(Error::NoInterface(ifname.to_string()));
    }
    Ok(i as i32)
}

fn key(addr: Ipv4Addr, port: u16) -> [u8; 8] {
    let mut k = [0u8; 8];
    // Network byte order, as the program reads them from the headers.
    k[0..4].copy_from_slice(&addr.octets());
    k[4..6].copy_from_slice(&port.to_be_bytes());
    k
}

impl XdpHook {
    /// Loads the program and attaches it to `ifname` (in the calling thread's network
    /// namespace).
    pub fn attach(ifname: &str, cfg: HookConfig) -> Result<XdpHook, Error> {
        let index = ifindex(ifname)?;
        // The skeleton borrows its object storage for its whole life; one small allocation per
        // filter, kept for the process's life.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = ConveyorSkelBuilder::default().open(storage)?;
        let skel = open.load().map_err(|e| match e.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => Error::Permission(e.to_string()),
            libbpf_rs::ErrorKind::Unsupported => Error::Unsupported(e.to_string()),
            _ => Error::Bpf(e),
        })?;
        let mut c = [0u8; 8];
        c[0..4].copy_from_slice(&cfg.group.to_ne_bytes());
        c[4..8].copy_from_slice(&u32::from(cfg.filter).to_ne_bytes());
        skel.maps
            .config
            .update(&0u32.to_ne_bytes(), &c, MapFlags::ANY)?;
        skel.maps
            .active
            .update(&0u32.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)?;
        let prog = &skel.progs.conveyor_xdp;
        let attached = |index| {
            libbpf_rs::Xdp::new(prog.as_fd())
                .query_id(index, libbpf_rs::XdpFlags::NONE)
                .unwrap_or(0)
        };
        if attached(index) != 0 {
            return Err(Error::Busy(ifname.to_string()));
        }
        let link = prog.attach_xdp(index).map_err(|e| {
            if attached(index) != 0 {
                Error::Busy(ifname.to_string())
            } else {
                Error::Bpf(e)
            }
        })?;
        Ok(XdpHook {
            skel,
            _link: link,
            ifname: ifname.to_string(),
            active: 0,
        })
    }

    /// Makes `view` (source address and UDP port of each member of the new view) the set the
    /// program admits, with `candidates` (who may ask to join) allowed control frames only:
    /// fills the map the program is not reading, then switches to it with one 4-byte write. A
    /// frame is judged by the old set or the new one, never a mix. A source in both lists is a
    /// member.
    pub fn set_members(
        &mut self,
        view: &[(Ipv4Addr, u16)],
        candidates: &[(Ipv4Addr, u16)],
    ) -> Result<(), Error> {
        if view.len() + candidates.len() > MEMBERS_MAX {
            return Err(Error::TooMany(view.len() + candidates.len()));
        }
        let next = 1 - self.active;
        let map = if next == 0 {
            &self.skel.maps.members0
        } else {
            &self.skel.maps.members1
        };
        // Empty the inactive map (left from two views ago), then fill it.
        let old: Vec<Vec<u8>> = map.keys().collect();
        for k in old {
            map.delete(&k)?;
        }
        for (addr, port) in candidates {
            map.update(
                &key(*addr, *port),
                &KINDS_CONTROL.to_ne_bytes(),
                MapFlags::ANY,
            )?;
        }
        for (addr, port) in view {
            map.update(&key(*addr, *port), &KINDS_ALL.to_ne_bytes(), MapFlags::ANY)?;
        }
        self.skel
            .maps
            .active
            .update(&0u32.to_ne_bytes(), &next.to_ne_bytes(), MapFlags::ANY)?;
        self.active = next;
        Ok(())
    }

    /// Steers the protocol's frames for UDP `port` to the AF_XDP socket `xsk` (a descriptor),
    /// bound to receive queue `queue` of this interface. The socket is registered before the
    /// port, so no frame is redirected to a queue without one.
    pub fn steer(&mut self, port: u16, queue: u32, xsk: RawFd) -> Result<(), Error> {
        if queue >= QUEUES_MAX {
            return Err(Error::Queue(queue));
        }
        self.skel
            .maps
            .xsks
            .update(&queue.to_ne_bytes(), &xsk.to_ne_bytes(), MapFlags::ANY)?;
        self.skel.maps.ports.update(
            &u32::from(port).to_ne_bytes(),
            &queue.to_ne_bytes(),
            MapFlags::ANY,
        )?;
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let read = |i: u32| -> Result<u64, Error> {
            let per_cpu = self
                .skel
                .maps
                .stats
                .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)?
                .unwrap_or_default();
            Ok(per_cpu
                .iter()
                .filter_map(|v| v.get(0..8))
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                .sum())
        };
        Ok(Stats {
            member: read(0)?,
            not_member: read(1)?,
            other: read(2)?,
            other_group: read(3)?,
            joiner: read(4)?,
            not_in_view: read(5)?,
            redirected: read(6)?,
            missteered: read(7)?,
            no_socket: read(8)?,
        })
    }

    pub fn interface(&self) -> &str {
        &self.ifname
    }
}
