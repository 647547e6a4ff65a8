//! A member's XDP program (`conveyor-ebpf`), kept in step with the view by the polling thread.
//!
//! [`Hooked`] wraps the member's transport: at every view install (called by the engine's
//! polling thread before it goes on, see `Transport::view_installed`) it makes the view's
//! members the set the program admits, and the group file's other members candidates that may
//! send join requests only. The switch is one write in the kernel, so a frame is judged by the
//! old view's set or the new one's. Frames a candidate sends before it is in the view (data,
//! status) are dropped in XDP; the protocol core would refuse them anyway. Join requests reach
//! the core, which authenticates them and admits or refuses (`control.admission`), so a removed
//! member can come back while its other frames are dropped from its removal on.
//!
//! Members of one group on one host share the program of the first (see `conveyor-ebpf`): the
//! owner keeps the member set, each member steers its own port. A guest checks every 250 ms
//! (from its polling thread) that the owner's program is still there, and takes over if not.

use crate::transport::{RecvBatch, Transport, TransportStats};
use conveyor_ebpf::{MemberSet, XdpHook};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub struct Hooked {
    inner: Box<dyn Transport>,
    hook: XdpHook,
    /// Every member's (address, port), by index; `None` for IPv6 (the program is IPv4 only).
    addrs: Vec<Option<(Ipv4Addr, u16)>>,
    /// The ports, queue and AF_XDP socket this member steers (afxdp), registered again when
    /// the hook changes.
    steering: Option<(Vec<u16>, u32, RawFd)>,
    /// The last view installed (member indices).
    view: Vec<usize>,
    checked_at: Instant,
    update_failures: u64,
    takeovers: u64,
    /// The last reason a takeover failed (logged once).
    follow_error: Option<String>,
}

/// How often a member sharing another member's program checks that it is still there.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").field("hook", &self.hook).finish()
    }
}

/// Every member's (address, port), by index; `None` for IPv6 (the program is IPv4 only).
fn v4_addrs(addresses: &[SocketAddr]) -> Vec<Option<(Ipv4Addr, u16)>> {
    addresses
        .iter()
        .map(|a| match a {
            SocketAddr::V4(a) => Some((*a.ip(), a.port())),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// The view's members and the candidates (everyone else in the group file), from the group
/// file's addresses and the view's member indices.
pub fn member_set(addresses: &[SocketAddr], view: &[usize]) -> MemberSet {
    sets(&v4_addrs(addresses), view)
}

fn sets(addrs: &[Option<(Ipv4Addr, u16)>], view: &[usize]) -> MemberSet {
    let mut m = MemberSet::default();
    for (i, a) in addrs.iter().enumerate() {
        if let Some(a) = a {
            if view.contains(&i) {
                m.view.push(*a);
            } else {
                m.candidates.push(*a);
            }
        }
    }
    m
}

impl Hooked {
    /// Wraps `inner`, whose frames `hook` (attached with the first view's set) judges;
    /// `steering` is what the member registered with [`XdpHook::steer`].
    pub fn new(
        inner: Box<dyn Transport>,
        hook: XdpHook,
        addresses: &[SocketAddr],
        view: &[usize],
        steering: Option<(Vec<u16>, u32, RawFd)>,
    ) -> Hooked {
        Hooked {
            inner,
            hook,
            addrs: v4_addrs(addresses),
            steering,
            view: view.to_vec(),
            checked_at: Instant::now(),
            update_failures: 0,
            takeovers: 0,
            follow_error: None,
        }
    }

    /// A member sharing another member's program: if that member ended (its program went
    /// with it), attach one (or share a newer one), steer again, and set the member set.
    fn follow(&mut self) {
        if self.hook.is_owner() || self.checked_at.elapsed() < FOLLOW_EVERY {
            return;
        }
        self.checked_at = Instant::now();
        let set = sets(&self.addrs, &self.view);
        match self.hook.follow(&set) {
            Ok(false) => {}
            Ok(true) => {
                self.follow_error = None;
                self.takeovers += 1;
                tracing::warn!(
                    "the XDP program on {} went with the member that attached it; {} now",
                    self.hook.interface(),
                    if self.hook.is_owner() {
                        "this member attached its own"
                    } else {
                        "sharing another member's"
                    }
                );
                if let Some((ports, queue, fd)) = &self.steering {
                    if let Err(e) = self.hook.steer_ports(ports, *queue, *fd) {
                        tracing::error!("steering ports {ports:?} to queue {queue} again: {e}");
                    }
                }
                let view = self.view.clone();
                self.set_view(&view);
            }
            Err(e) => {
                // Said once per cause, not every 250 ms.
                let said = e.to_string();
                if self.follow_error.as_deref() != Some(said.as_str()) {
                    tracing::error!(
                        "the XDP program on {} is gone and cannot be replaced ({said}); frames take the kernel's path",
                        self.hook.interface()
                    );
                    self.follow_error = Some(said);
                }
            }
        }
    }

    fn set_view(&mut self, members: &[usize]) {
        self.view = members.to_vec();
        if let Err(e) = self.hook.set_members(&sets(&self.addrs, members)) {
            // The program keeps the previous view's set: its members still pass, a joiner's
            // frames are dropped until the next update succeeds. Loud, because it should not
            // happen (the maps are sized for the largest group).
            self.update_failures += 1;
            tracing::error!(
                "the XDP member filter on {} could not follow the view: {e}",
                self.hook.interface()
            );
        }
    }
}

impl Transport for Hooked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        self.inner.send(batch)
    }
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.follow();
        self.inner.recv(batch)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        self.inner.poll_fd()
    }
    fn next_deadline_us(&self) -> Option<u64> {
        self.inner.next_deadline_us()
    }
    fn prepare_park(&mut self) -> bool {
        self.inner.prepare_park()
    }
    fn stats(&self) -> TransportStats {
        let mut s = self.inner.stats();
        match self.hook.stats() {
            Ok(x) => s.xdp.extend(x.labelled()),
            Err(e) => tracing::warn!("reading the XDP program's counters: {e}"),
        }
        s.xdp
            .push(("member_set_update_failures", self.update_failures));
        s.xdp.push(("program_takeovers", self.takeovers));
        s
    }
    fn view_installed(&mut self, members: &[usize]) {
        self.inner.view_installed(members);
        self.set_view(members);
    }
}
