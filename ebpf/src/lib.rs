//! Conveyor's XDP program and its loader: the only user of libbpf-rs.
//!
//! [`XdpHook`] attaches `src/bpf/conveyor.bpf.c` to a member's interface. It does two jobs:
//! - the member filter: frames of the appliance's protocol (UDP, frame header with this
//!   group's id, or another admitted with it: a sharded member's shards) from anyone who is
//!   not a member of the current view are dropped in XDP and counted; candidates (members
//!   of the group file outside the view) may send control frames (join requests) only. The set is double-buffered in the kernel and switched with one
//!   4-byte write ([`XdpHook::set_members`]), so no member's frame is dropped in a window
//!   between two updates, and a removed member's frames are dropped from the switch on;
//! - steering for the `afxdp` transport: protocol frames for a registered UDP port go to the
//!   AF_XDP socket of the queue they arrived on ([`XdpHook::steer`]).
//!
//! Everything else passes untouched.
//!
//! Attachment is a BPF link: the kernel removes the program when the link's last descriptor
//! closes, which is when the process ends, however it ends (a crash included). Nothing is
//! pinned, so nothing outlives the member. Members of one group on one host share the program
//! the first of them attached: the others find it on the interface (by its id, no bpffs), use
//! its maps, and steer their own ports to their own sockets. When the owner ends, a guest
//! attaches a program of its own ([`XdpHook::follow`]); meanwhile frames take the kernel's path.
//! Any other program on the interface (another tool's, or Conveyor's for another group) is
//! refused with a message saying whose it is, never replaced.

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

mod sys;

// The skeleton libbpf-cargo generates (its unsafe code is libbpf's own API, not ours).
#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    dead_code,
    non_camel_case_types
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/conveyor.skel.rs"));
}
use skel::{ConveyorSkel, ConveyorSkelBuilder};
use sys::{attached_id, ifindex};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    #[error("interface {0} already has an XDP program attached: {1}; refusing to replace it")]
    Busy(String, String),
    #[error("queue {queue} of {ifname} is already served by another member's socket (port {port}); give each member of a host its own queue (member.queue) and steer its port there")]
    QueueTaken {
        ifname: String,
        queue: u32,
        port: u32,
    },
    #[error("loading the XDP program needs root (CAP_BPF and CAP_NET_ADMIN): {0}")]
    Permission(String),
    #[error("{0} members: the filter holds at most {MEMBERS_MAX}")]
    TooMany(usize),
    #[error("{0} more groups: the program admits at most {GROUPS_MAX}")]
    TooManyGroups(usize),
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
/// Group ids admitted beside the configured one (`GROUPS_MAX`): a sharded member's shards.
pub const GROUPS_MAX: usize = 64;
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

/// Who the member filter admits: the view's members (every frame kind) and the candidates,
/// members of the group file outside the view (join requests only). By IPv4 address and UDP
/// port; a source in both lists is a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSet {
    pub view: Vec<(Ipv4Addr, u16)>,
    pub candidates: Vec<(Ipv4Addr, u16)>,
}

impl MemberSet {
    pub fn len(&self) -> usize {
        self.view.len() + self.candidates.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Empties `map` and fills it with `members`.
fn fill(map: &MapHandle, members: &MemberSet) -> Result<(), Error> {
    if members.len() > MEMBERS_MAX {
        return Err(Error::TooMany(members.len()));
    }
    let old: Vec<Vec<u8>> = map.keys().collect();
    for k in old {
        map.delete(&k)?;
    }
    for (addr, port) in &members.candidates {
        map.update(
            &key(*addr, *port),
            &KINDS_CONTROL.to_ne_bytes(),
            MapFlags::ANY,
        )?;
    }
    for (addr, port) in &members.view {
        map.update(&key(*addr, *port), &KINDS_ALL.to_ne_bytes(), MapFlags::ANY)?;
    }
    Ok(())
}

/// How the program is set up on an interface.
#[derive(Clone, Copy, Debug)]
pub struct HookConfig {
    /// The group id frames must carry.
    pub group: u32,
    /// Judge sources by the member set.
    pub filter: bool,
}

/// The program's maps, by handle (the same whether this process loaded the program or found
/// it on the interface).
struct Maps {
    members: [MapHandle; 2],
    active: MapHandle,
    config: MapHandle,
    groups: MapHandle,
    ports: MapHandle,
    xsks: MapHandle,
    stats: MapHandle,
}

/// How this hook holds the program.
enum Hold {
    /// Loaded and attached here: detached when the last descriptor of the link closes.
    Owner {
        _skel: Box<ConveyorSkel<'static>>,
        _link: Link,
    },
    /// Another member of the same group on this host attached it; this hook uses its maps.
    Guest { prog_id: u32 },
}

/// The program on one interface, attached by this hook (the owner) or shared with the member
/// that attached it (a guest); the owner's program is detached when it is dropped.
pub struct XdpHook {
    hold: Hold,
    maps: Maps,
    ifname: String,
    ifindex: i32,
    cfg: HookConfig,
    /// More group ids admitted ([`admit_groups`](XdpHook::admit_groups)), written again
    /// into a program this hook attaches when it takes over.
    also: Vec<u32>,
    /// Which member map the program reads (0 or 1).
    active: u32,
}

impl std::fmt::Debug for XdpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpHook")
            .field("ifname", &self.ifname)
            .field("owner", &self.is_owner())
            .field("active", &self.active)
            .finish()
    }
}

fn key(addr: Ipv4Addr, port: u16) -> [u8; 8] {
    let mut k = [0u8; 8];
    // Network byte order, as the program reads them from the headers.
    k[0..4].copy_from_slice(&addr.octets());
    k[4..6].copy_from_slice(&port.to_be_bytes());
    k
}

fn load_error(e: libbpf_rs::Error) -> Error {
    match e.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => Error::Permission(e.to_string()),
        libbpf_rs::ErrorKind::Unsupported => Error::Unsupported(e.to_string()),
        _ => Error::Bpf(e),
    }
}

impl XdpHook {
    /// Attaches the program to `ifname` (in the calling thread's network namespace), or, if
    /// another member of the same group on this host attached it already, shares it: each
    /// member then steers its own port to its own socket ([`steer`](Self::steer)), and the
    /// member set is the owner's to keep. Any other XDP program on the interface (another
    /// tool's, or Conveyor's for another group) is refused, never replaced.
    ///
    /// `members` is the member set to start with (the view's members and the candidates); an
    /// attaching owner writes it before the program goes live, so no member's frame is dropped
    /// while the member starts or takes over.
    pub fn attach(ifname: &str, cfg: HookConfig, members: &MemberSet) -> Result<XdpHook, Error> {
        let index = ifindex(ifname)?;
        match attached_id(index) {
            0 => match XdpHook::own(ifname, index, cfg, members) {
                // Another member of the host attached in between: share its program.
                Err(Error::Busy(..)) if attached_id(index) != 0 => {
                    XdpHook::join(ifname, index, cfg, attached_id(index))
                }
                r => r,
            },
            id => XdpHook::join(ifname, index, cfg, id),
        }
    }

    /// Loads the program, writes its configuration and member set, and attaches it.
    fn own(
        ifname: &str,
        index: i32,
        cfg: HookConfig,
        members: &MemberSet,
    ) -> Result<XdpHook, Error> {
        // The skeleton borrows its object storage for its whole life; one small allocation per
        // attach, kept for the process's life.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = ConveyorSkelBuilder::default().open(storage)?;
        let skel = open.load().map_err(load_error)?;
        let mut c = [0u8; 8];
        c[0..4].copy_from_slice(&cfg.group.to_ne_bytes());
        c[4..8].copy_from_slice(&u32::from(cfg.filter).to_ne_bytes());
        skel.maps
            .config
            .update(&0u32.to_ne_bytes(), &c, MapFlags::ANY)?;
        skel.maps
            .active
            .update(&0u32.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)?;
        let maps = Maps {
            members: [
                MapHandle::try_from(&skel.maps.members0)?,
                MapHandle::try_from(&skel.maps.members1)?,
            ],
            active: MapHandle::try_from(&skel.maps.active)?,
            config: MapHandle::try_from(&skel.maps.config)?,
            groups: MapHandle::try_from(&skel.maps.groups)?,
            ports: MapHandle::try_from(&skel.maps.ports)?,
            xsks: MapHandle::try_from(&skel.maps.xsks)?,
            stats: MapHandle::try_from(&skel.maps.stats)?,
        };
        fill(&maps.members[0], members)?;
        let link = skel.progs.conveyor_xdp.attach_xdp(index).map_err(|e| {
            // Another member attached in between: try again as its guest.
            if attached_id(index) != 0 {
                Error::Busy(ifname.to_string(), "attached while this one loaded".into())
            } else {
                Error::Bpf(e)
            }
        })?;
        Ok(XdpHook {
            hold: Hold::Owner {
                _skel: Box::new(skel),
                _link: link,
            },
            maps,
            ifname: ifname.to_string(),
            ifindex: index,
            cfg,
            also: Vec::new(),
            active: 0,
        })
    }

    /// Shares the program `prog_id` found on the interface, if it is Conveyor's for this group.
    fn join(ifname: &str, index: i32, cfg: HookConfig, prog_id: u32) -> Result<XdpHook, Error> {
        let busy = |why: String| Error::Busy(ifname.to_string(), why);
        let info = libbpf_rs::query::ProgInfoIter::with_query_opts(
            libbpf_rs::query::ProgInfoQueryOptions::default().include_map_ids(true),
        )
        .find(|p| p.id == prog_id)
        .ok_or_else(|| {
            busy(format!(
                "program id {prog_id}, which this process cannot inspect"
            ))
        })?;
        let name = info.name.to_string_lossy().to_string();
        if name != "conveyor_xdp" {
            return Err(busy(format!(
                "program {name:?} (id {prog_id}), not Conveyor's"
            )));
        }
        let mut found: Vec<(String, MapHandle)> = Vec::new();
        for id in &info.map_ids {
            let h = MapHandle::from_map_id(*id)?;
            found.push((h.name().to_string_lossy().to_string(), h));
        }
        let mut take = |n: &str| -> Result<MapHandle, Error> {
            let i = found.iter().position(|(m, _)| m == n).ok_or_else(|| {
                busy(format!(
                    "Conveyor's program (id {prog_id}) of another version: it has no map {n:?}"
                ))
            })?;
            Ok(found.swap_remove(i).1)
        };
        let maps = Maps {
            members: [take("members0")?, take("members1")?],
            active: take("active")?,
            config: take("config")?,
            groups: take("groups")?,
            ports: take("ports")?,
            xsks: take("xsks")?,
            stats: take("stats")?,
        };
        let c = maps
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .unwrap_or_default();
        let group = c
            .get(0..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        if group != cfg.group {
            return Err(busy(format!(
                "Conveyor's program for another group (id {group:#x}, this member's is {:#x})",
                cfg.group
            )));
        }
        let active = maps
            .active
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .and_then(|v| {
                v.get(0..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .unwrap_or(0);
        Ok(XdpHook {
            hold: Hold::Guest { prog_id },
            maps,
            ifname: ifname.to_string(),
            ifindex: index,
            cfg,
            also: Vec::new(),
            active,
        })
    }

    /// Whether this hook attached the program (else it shares another member's).
    pub fn is_owner(&self) -> bool {
        matches!(self.hold, Hold::Owner { .. })
    }

    /// For a guest: whether the program it shares is still the one on the interface. When its
    /// owner ended, the program went with it (frames meanwhile take the kernel's path, nothing
    /// is lost): the guest attaches a program of its own, or shares the one another guest
    /// attached first. Returns `true` when the hook changed, so that the caller registers its
    /// socket again and, if it became the owner, sets the member set.
    pub fn follow(&mut self, members: &MemberSet) -> Result<bool, Error> {
        let Hold::Guest { prog_id } = self.hold else {
            return Ok(false);
        };
        let now = attached_id(self.ifindex);
        if now == prog_id {
            return Ok(false);
        }
        let next = match now {
            0 => XdpHook::own(&self.ifname, self.ifindex, self.cfg, members)
                .or_else(|_| XdpHook::attach(&self.ifname, self.cfg, members))?,
            id => XdpHook::join(&self.ifname, self.ifindex, self.cfg, id)?,
        };
        let also = std::mem::take(&mut self.also);
        *self = next;
        self.admit_groups(&also)?;
        Ok(true)
    }

    /// Admits frames of these group ids too, beside the configured one (a sharded member's
    /// other shards, each a group of its own on its own ports): the member filter and the
    /// steering then judge them as the configured group's.
    pub fn admit_groups(&mut self, groups: &[u32]) -> Result<(), Error> {
        if groups.len() > GROUPS_MAX {
            return Err(Error::TooManyGroups(groups.len()));
        }
        for g in groups {
            self.maps
                .groups
                .update(&g.to_ne_bytes(), &1u32.to_ne_bytes(), MapFlags::ANY)?;
            if !self.also.contains(g) {
                self.also.push(*g);
            }
        }
        Ok(())
    }

    /// Makes `members` the set the program admits: fills the map the program is not reading,
    /// then switches to it with one 4-byte write. A frame is judged by the old set or the new
    /// one, never a mix. Only the owner writes the set (one writer keeps the double buffer
    /// consistent); for a guest this does nothing, the members of one group on one host
    /// installing the same views.
    pub fn set_members(&mut self, members: &MemberSet) -> Result<(), Error> {
        if members.len() > MEMBERS_MAX {
            return Err(Error::TooMany(members.len()));
        }
        if !self.is_owner() {
            return Ok(());
        }
        let next = 1 - self.active;
        fill(&self.maps.members[next as usize], members)?;
        self.maps
            .active
            .update(&0u32.to_ne_bytes(), &next.to_ne_bytes(), MapFlags::ANY)?;
        self.active = next;
        Ok(())
    }

    /// Steers the protocol's frames for UDP `port` to the AF_XDP socket `xsk` (a descriptor),
    /// bound to receive queue `queue` of this interface. The socket is registered before the
    /// port, so no frame is redirected to a queue without one.
    pub fn steer(&mut self, port: u16, queue: u32, xsk: RawFd) -> Result<(), Error> {
        self.steer_ports(&[port], queue, xsk)
    }

    /// [`steer`](Self::steer) for several ports served by one socket (a sharded member's
    /// shards, each on its own port).
    pub fn steer_ports(&mut self, ports: &[u16], queue: u32, xsk: RawFd) -> Result<(), Error> {
        if queue >= QUEUES_MAX {
            return Err(Error::Queue(queue));
        }
        // One socket per queue: another member's port on this queue means its socket is there.
        for k in self.maps.ports.keys() {
            let other = k
                .get(0..4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            if ports.iter().any(|&p| u32::from(p) == other) {
                continue;
            }
            let q = self.maps.ports.lookup(&k, MapFlags::ANY)?.and_then(|v| {
                v.get(0..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            });
            if q == Some(queue) {
                return Err(Error::QueueTaken {
                    ifname: self.ifname.clone(),
                    queue,
                    port: other,
                });
            }
        }
        self.maps
            .xsks
            .update(&queue.to_ne_bytes(), &xsk.to_ne_bytes(), MapFlags::ANY)?;
        for port in ports {
            self.maps.ports.update(
                &u32::from(*port).to_ne_bytes(),
                &queue.to_ne_bytes(),
                MapFlags::ANY,
            )?;
        }
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, Error> {
        let read = |i: u32| -> Result<u64, Error> {
            let per_cpu = self
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
