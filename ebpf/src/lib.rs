//! Conveyor's XDP programs and their loader: the only user of libbpf-rs.
//!
//! [`MemberFilter`]: frames of the appliance's protocol (UDP, frame header with this group's
//! id) from anyone who is not a member of the current view are dropped in XDP and counted;
//! everything else passes untouched. The member set is double-buffered in the kernel and
//! switched with one 4-byte write ([`MemberFilter::set_members`]), so no member's frame is
//! dropped in a window between two updates, and a removed member's frames are dropped from the
//! switch on.
//!
//! Attachment is a BPF link: the kernel removes the program when the link's last descriptor
//! closes, which is when the process ends, however it ends (a crash included). Nothing is
//! pinned, so nothing outlives the member. A second program on the same interface is refused by
//! the kernel (EBUSY) and reported as such, rather than replacing the first member's.

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags};
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

#[allow(
    clippy::all,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    dead_code,
    non_camel_case_types
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/filter.skel.rs"));
}
use skel::{FilterSkel, FilterSkelBuilder};

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
    #[error("eBPF: {0}")]
    Bpf(#[from] libbpf_rs::Error),
}

/// Entries of each member map (`MEMBERS_MAX` in filter.bpf.c).
pub const MEMBERS_MAX: usize = 1024;

/// What the filter counted, by verdict and reason (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Protocol frames from members: passed.
    pub member: u64,
    /// Protocol frames from anyone else: dropped.
    pub not_member: u64,
    /// Not the appliance's protocol: passed.
    pub other: u64,
    /// The protocol with another group's id: passed (the stack's MAC check refuses them).
    pub other_group: u64,
}

/// The member filter attached to one interface; detached when dropped.
pub struct MemberFilter {
    skel: FilterSkel<'static>,
    _link: Link,
    ifname: String,
    /// Which member map the program reads (0 or 1).
    active: u32,
}

impl std::fmt::Debug for MemberFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberFilter")
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

impl MemberFilter {
    /// Loads the program and attaches it to `ifname` (in the calling thread's network
    /// namespace) for group `group`. Until [`set_members`](Self::set_members) is called every
    /// protocol frame of the group is dropped: nobody is a member yet.
    pub fn attach(ifname: &str, group: u32) -> Result<MemberFilter, Error> {
        let index = ifindex(ifname)?;
        // The skeleton borrows its object storage for its whole life; one small allocation per
        // filter, kept for the process's life.
        let storage: &'static mut MaybeUninit<libbpf_rs::OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = FilterSkelBuilder::default().open(storage)?;
        let skel = open.load().map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::PermissionDenied {
                Error::Permission(e.to_string())
            } else {
                Error::Bpf(e)
            }
        })?;
        let mut cfg = [0u8; 8];
        cfg[0..4].copy_from_slice(&group.to_ne_bytes());
        cfg[4..8].copy_from_slice(&1u32.to_ne_bytes());
        skel.maps
            .config
            .update(&0u32.to_ne_bytes(), &cfg, MapFlags::ANY)?;
        skel.maps
            .active
            .update(&0u32.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)?;
        let prog = &skel.progs.conveyor_member_filter;
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
        Ok(MemberFilter {
            skel,
            _link: link,
            ifname: ifname.to_string(),
            active: 0,
        })
    }

    /// Makes `members` (source address and UDP port of each member of the new view) the set
    /// the program admits: fills the map the program is not reading, then switches to it with
    /// one 4-byte write. A frame is judged by the old set or the new one, never a mix.
    pub fn set_members(&mut self, members: &[(Ipv4Addr, u16)]) -> Result<(), Error> {
        if members.len() > MEMBERS_MAX {
            return Err(Error::TooMany(members.len()));
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
        for (i, (addr, port)) in members.iter().enumerate() {
            map.update(&key(*addr, *port), &(i as u32).to_ne_bytes(), MapFlags::ANY)?;
        }
        self.skel
            .maps
            .active
            .update(&0u32.to_ne_bytes(), &next.to_ne_bytes(), MapFlags::ANY)?;
        self.active = next;
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
        })
    }

    pub fn interface(&self) -> &str {
        &self.ifname
    }
}
