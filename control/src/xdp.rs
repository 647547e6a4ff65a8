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

use conveyor_dataplane::transport::{RecvBatch, Transport, TransportStats};
use conveyor_ebpf::XdpHook;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;

pub struct Hooked {
    inner: Box<dyn Transport>,
    hook: XdpHook,
    /// Every member's (address, port), by index; `None` for IPv6 (the program is IPv4 only).
    addrs: Vec<Option<(Ipv4Addr, u16)>>,
    update_failures: u64,
}

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

/// Sources the program knows: IPv4 address and UDP port.
type Sources = Vec<(Ipv4Addr, u16)>;

/// The view's members and the candidates (everyone else in the group file).
fn sets(addrs: &[Option<(Ipv4Addr, u16)>], view: &[usize]) -> (Sources, Sources) {
    let (mut v, mut c) = (Vec::new(), Vec::new());
    for (i, a) in addrs.iter().enumerate() {
        if let Some(a) = a {
            if view.contains(&i) {
                v.push(*a);
            } else {
                c.push(*a);
            }
        }
    }
    (v, c)
}

impl Hooked {
    /// Gives a freshly attached program the group file's first view (`view`, member indices),
    /// before the transport is opened.
    pub fn first_view(
        mut hook: XdpHook,
        addresses: &[SocketAddr],
        view: &[usize],
    ) -> Result<XdpHook, conveyor_ebpf::Error> {
        let (v, c) = sets(&v4_addrs(addresses), view);
        hook.set_members(&v, &c)?;
        Ok(hook)
    }

    /// Wraps `inner`, whose frames `hook` (set up by [`first_view`](Self::first_view)) judges.
    pub fn new(inner: Box<dyn Transport>, hook: XdpHook, addresses: &[SocketAddr]) -> Hooked {
        Hooked {
            inner,
            hook,
            addrs: v4_addrs(addresses),
            update_failures: 0,
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
        self.inner.recv(batch)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        self.inner.poll_fd()
    }
    fn next_deadline_us(&self) -> Option<u64> {
        self.inner.next_deadline_us()
    }
    fn stats(&self) -> TransportStats {
        let mut s = self.inner.stats();
        match self.hook.stats() {
            Ok(x) => s.xdp.extend(x.labelled()),
            Err(e) => tracing::warn!("reading the XDP program's counters: {e}"),
        }
        s.xdp
            .push(("member_set_update_failures", self.update_failures));
        s
    }
    fn view_installed(&mut self, members: &[usize]) {
        self.inner.view_installed(members);
        let (v, c) = sets(&self.addrs, members);
        if let Err(e) = self.hook.set_members(&v, &c) {
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
