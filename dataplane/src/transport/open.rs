//! The one factory of the dataplane: a member's transport, opened from its [`TransportSpec`]
//! (which the group configuration builds), with the XDP program on its interface when one is
//! named and the injected impairments when asked for.
//!
//! Media that need system libraries are cargo features of this crate: `xdp` (libbpf, for the
//! XDP member filter and the `afxdp` transport), `dpdk` (DPDK 22.11) and `rdma` (libibverbs).
//! The `conveyor` binary has them all; a build without one says so by name when that medium is
//! asked for ([`OpenError::NotBuilt`]), and never falls back to another.

use super::dpdk::EalOptions;
use super::impair::{ImpairSpec, Impaired};
use super::rdma::IbvConfig;
use super::shm::{ShmConfig, ShmTransport};
use super::udp::UdpTransport;
use super::Transport;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every medium's name, as `group.transport` spells it.
pub const MEDIA: [&str; 5] = ["udp", "afxdp", "shm", "dpdk", "rdma"];

/// The cargo feature a medium needs, if it is not built into this binary.
pub fn missing_feature(medium: &str) -> Option<&'static str> {
    match medium {
        "afxdp" if !cfg!(feature = "xdp") => Some("xdp"),
        "dpdk" if !cfg!(feature = "dpdk") => Some("dpdk"),
        "rdma" if !cfg!(feature = "rdma") => Some("rdma"),
        _ => None,
    }
}

/// Whether the XDP member filter is built into this binary.
pub const XDP_FILTER: bool = cfg!(feature = "xdp");

/// A DPDK port's settings (the EAL's, the port's and its rings').
#[derive(Clone, Debug)]
pub struct DpdkSpec {
    pub eal: EalOptions,
    /// The port's name; `None`: the only port the EAL found.
    pub port: Option<String>,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    pub mbufs: u32,
    /// How often a parked member polls the port, microseconds.
    pub poll_us: u64,
}

/// The medium and what only it needs.
#[derive(Clone, Debug)]
pub enum Medium {
    Udp,
    /// Shared-memory inboxes in `dir`, named apart from other groups' by `tag`.
    Shm {
        dir: PathBuf,
        tag: String,
    },
    /// An AF_XDP socket on `interface`'s `queue` (needs `xdp` in the spec for steering).
    AfXdp {
        interface: String,
        queue: u32,
    },
    Dpdk(DpdkSpec),
    /// RDMA through the verbs device `ibv`; `tag` names the group on the side channel.
    Rdma {
        ibv: IbvConfig,
        poll_us: u64,
        tag: String,
    },
}

impl Medium {
    pub fn name(&self) -> &'static str {
        match self {
            Medium::Udp => "udp",
            Medium::Shm { .. } => "shm",
            Medium::AfXdp { .. } => "afxdp",
            Medium::Dpdk(_) => "dpdk",
            Medium::Rdma { .. } => "rdma",
        }
    }
}

/// The XDP program a member attaches (or shares) on its interface.
#[derive(Clone, Debug)]
pub struct XdpSpec {
    pub interface: String,
    /// The group id the program admits.
    pub group: u32,
}

/// Everything needed to open one member's transport.
#[derive(Clone, Debug)]
pub struct TransportSpec {
    /// The member's name and index (its peer index), for messages.
    pub name: String,
    pub me: usize,
    /// Every member's address, by index (this member's included).
    pub addresses: Vec<SocketAddr>,
    /// The largest frame the protocol sends.
    pub max_frame: usize,
    pub medium: Medium,
    /// The XDP program on the member's interface (its member filter; steering for afxdp).
    pub xdp: Option<XdpSpec>,
    /// Loss, duplication and delay to inject (already seeded for this member).
    pub impair: Option<ImpairSpec>,
    /// Member indices of the first view: the XDP member set before the first install.
    pub first_view: Vec<usize>,
    /// Several groups on one device (a sharded member's shards, see [`open_all`]): this
    /// member's UDP port toward each peer, by index (`dpdk`, `afxdp`). Empty: its address's.
    pub local_ports: Vec<u16>,
    /// Several groups on one device: the other groups' ids, which the XDP program admits too.
    pub also_groups: Vec<u32>,
}

/// An opened transport and what to log about it.
pub struct Opened {
    pub transport: Box<dyn Transport>,
    /// The medium, and for afxdp its mode and for XDP who attached the program.
    pub description: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("description", &self.description)
            .finish()
    }
}

/// Why a transport did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("member {member}: the {medium} transport is not built into this binary (build it with the cargo feature `{feature}`)")]
    NotBuilt {
        member: String,
        medium: &'static str,
        feature: &'static str,
    },
    #[error("member {member}: {message}")]
    Invalid { member: String, message: String },
    #[error("member {member}: {what}: {source}")]
    Io {
        member: String,
        what: String,
        #[source]
        source: io::Error,
    },
}

impl TransportSpec {
    fn io(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError + '_ {
        let what = what.into();
        move |source| OpenError::Io {
            member: self.name.clone(),
            what,
            source,
        }
    }
    fn invalid(&self, message: impl Into<String>) -> OpenError {
        OpenError::Invalid {
            member: self.name.clone(),
            message: message.into(),
        }
    }
    #[cfg_attr(
        all(feature = "xdp", feature = "dpdk", feature = "rdma"),
        allow(dead_code)
    )]
    fn not_built(&self, medium: &'static str, feature: &'static str) -> OpenError {
        OpenError::NotBuilt {
            member: self.name.clone(),
            medium,
            feature,
        }
    }
    fn local(&self) -> SocketAddr {
        self.addresses[self.me]
    }
    /// This member's address as IPv4, which the Ethernet-level media need.
    #[cfg_attr(not(any(feature = "xdp", feature = "dpdk")), allow(dead_code))]
    fn local_v4(&self) -> Result<std::net::SocketAddrV4, OpenError> {
        match self.local() {
            SocketAddr::V4(a) => Ok(a),
            a => Err(self.invalid(format!(
                "the {} transport speaks IPv4 only; member[{}].address is {a}",
                self.medium.name(),
                self.me
            ))),
        }
    }
}

/// Opens a sharded member's transports, one per shard (`specs[s]`: shard `s`'s, as
/// `GroupConfig::for_shard` makes them: the same members, each shard on its own ports). Media
/// that own a device per process (`dpdk`: one EAL, one port; `afxdp`: one socket per interface
/// queue, and one XDP program per interface) are opened once, with every shard's peers and
/// this member's port in each shard, and shared among the shards ([`super::shared`]); the
/// others are opened once per shard.
pub fn open_all(specs: &[TransportSpec]) -> Result<Vec<Opened>, OpenError> {
    let Some(first) = specs.first() else {
        return Ok(Vec::new());
    };
    if specs.len() == 1 || !matches!(first.medium, Medium::Dpdk(_) | Medium::AfXdp { .. }) {
        return specs.iter().map(open).collect();
    }
    let n = first.addresses.len();
    if specs
        .iter()
        .any(|s| s.addresses.len() != n || s.me != first.me)
    {
        return Err(first.invalid("the shards do not have the same members"));
    }
    // One spec for the device: shard s's member i is its peer s * n + i.
    let mut device = TransportSpec {
        addresses: Vec::with_capacity(n * specs.len()),
        local_ports: Vec::with_capacity(n * specs.len()),
        first_view: Vec::new(),
        impair: None,
        also_groups: Vec::new(),
        ..first.clone()
    };
    for (s, spec) in specs.iter().enumerate() {
        let port = spec.local_v4()?.port();
        device.local_ports.extend(std::iter::repeat_n(port, n));
        device.addresses.extend(spec.addresses.iter().copied());
        device
            .first_view
            .extend(spec.first_view.iter().map(|i| s * n + i));
        // The program is attached with shard 0's group; it admits the others' too.
        match &spec.xdp {
            Some(x) if s > 0 => device.also_groups.push(x.group),
            _ => {}
        }
    }
    let opened = open(&device)?;
    let ports = super::shared::split(
        opened.transport,
        specs.len(),
        n,
        first.max_frame + 64,
        &device.first_view,
    )
    .map_err(first.io("sharing the device among the shards"))?;
    Ok(ports
        .into_iter()
        .zip(specs)
        .map(|(port, spec)| {
            let t: Box<dyn Transport> = match &spec.impair {
                None => Box::new(port),
                Some(i) => Box::new(Impaired::new(Box::new(port), i.clone())),
            };
            Opened {
                transport: t,
                description: format!(
                    "{}, shared by {} shards (this one on port {})",
                    opened.description,
                    specs.len(),
                    spec.local().port()
                ),
            }
        })
        .collect())
}

#[cfg(feature = "dpdk")]
fn dpdk(spec: &TransportSpec, d: &DpdkSpec) -> Result<super::dpdk::DpdkTransport, OpenError> {
    use super::dpdk::{DpdkConfig, DpdkTransport};
    let dcfg = DpdkConfig {
        port: d.port.clone(),
        max_frame: spec.max_frame,
        rx_descriptors: d.rx_descriptors,
        tx_descriptors: d.tx_descriptors,
        mbufs: d.mbufs,
        poll_us: d.poll_us,
        local_ports: spec.local_ports.clone(),
        ..DpdkConfig::new(d.eal.clone(), spec.local_v4()?, spec.addresses.clone())
    };
    DpdkTransport::open(&dcfg).map_err(spec.io(format!(
        "starting the dpdk transport (member[{}].dpdk)",
        spec.me
    )))
}

/// Opens the member's transport as `spec` says. See the module docs.
pub fn open(spec: &TransportSpec) -> Result<Opened, OpenError> {
    if spec.me >= spec.addresses.len() {
        return Err(spec.invalid(format!(
            "member index {} beyond the {} addresses",
            spec.me,
            spec.addresses.len()
        )));
    }
    #[cfg(feature = "xdp")]
    let mut hook = match &spec.xdp {
        None => None,
        Some(x) => Some(xdp::attach(spec, x)?),
    };
    #[cfg(not(feature = "xdp"))]
    if spec.xdp.is_some() {
        return Err(spec.not_built("XDP member filter (member.interface)", "xdp"));
    }
    #[cfg(feature = "xdp")]
    let mut steering = None;
    let (inner, description): (Box<dyn Transport>, String) = match &spec.medium {
        Medium::Udp => {
            let udp = UdpTransport::bind(spec.local(), spec.addresses.clone())
                .map_err(spec.io("starting the udp transport"))?;
            (Box::new(udp), "udp".to_string())
        }
        Medium::Shm { dir, tag } => {
            let scfg = ShmConfig {
                dir: dir.clone(),
                tag: tag.clone(),
                me: spec.me,
                members: spec.addresses.len(),
                max_frame: spec.max_frame,
            };
            let t = ShmTransport::open(&scfg).map_err(spec.io("starting the shm transport"))?;
            let d = format!("shm (inbox {})", scfg.inbox_path(spec.me).display());
            (Box::new(t), d)
        }
        #[cfg(feature = "xdp")]
        Medium::AfXdp { interface, queue } => {
            let (t, d, s) = xdp::afxdp(spec, interface, *queue, hook.as_mut())?;
            steering = Some(s);
            (t, d)
        }
        #[cfg(not(feature = "xdp"))]
        Medium::AfXdp { .. } => return Err(spec.not_built("afxdp", "xdp")),
        #[cfg(feature = "dpdk")]
        Medium::Dpdk(d) => {
            let t = dpdk(spec, d)?;
            let d = format!("dpdk (port {})", t.describe());
            (Box::new(t), d)
        }
        #[cfg(not(feature = "dpdk"))]
        Medium::Dpdk(_) => return Err(spec.not_built("dpdk", "dpdk")),
        #[cfg(feature = "rdma")]
        Medium::Rdma { ibv, poll_us, tag } => {
            use super::rdma::{IbvDevice, RdmaConfig, RdmaTransport, Verbs};
            let dev = IbvDevice::open(ibv).map_err(spec.io(format!(
                "starting the rdma transport (member[{}].rdma)",
                spec.me
            )))?;
            let desc = dev.describe();
            let t = RdmaTransport::open(
                &RdmaConfig {
                    group: tag.clone(),
                    me: spec.me,
                    peers: spec.addresses.clone(),
                    max_frame: spec.max_frame,
                    poll_us: *poll_us,
                },
                std::sync::Arc::new(dev),
            )
            .map_err(spec.io("starting the rdma transport"))?;
            let d = format!("rdma ({desc}; side channel TCP {})", spec.local());
            (Box::new(t), d)
        }
        #[cfg(not(feature = "rdma"))]
        Medium::Rdma { .. } => return Err(spec.not_built("rdma", "rdma")),
    };
    let inner: Box<dyn Transport> = match &spec.impair {
        None => inner,
        Some(i) => {
            tracing::warn!(
                "member {}: IMPAIRED transport: loss {:.2}%, duplication {:.2}%, delay {} us + jitter {} us (group.impair)",
                spec.name,
                i.loss * 100.0,
                i.duplicate * 100.0,
                i.delay_us,
                i.jitter_us
            );
            Box::new(Impaired::new(inner, i.clone()))
        }
    };
    #[cfg(feature = "xdp")]
    if let Some(h) = hook {
        let (transport, filter) = xdp::wrap(spec, inner, h, steering);
        return Ok(Opened {
            transport,
            description: description + &filter,
        });
    }
    Ok(Opened {
        transport: inner,
        description,
    })
}

/// The XDP program: attaching or sharing it, steering for afxdp, the member filter.
#[cfg(feature = "xdp")]
mod xdp {
    use super::{OpenError, Transport, TransportSpec, XdpSpec};
    use crate::transport::afxdp::filter::{member_set, Hooked};
    use crate::transport::afxdp::{AfXdpConfig, AfXdpTransport};
    use conveyor_ebpf::{HookConfig, XdpHook};
    use std::os::fd::RawFd;

    pub(super) fn attach(spec: &TransportSpec, x: &XdpSpec) -> Result<XdpHook, OpenError> {
        // The first view's set is written before the program goes live: peers already
        // running are not dropped while this member starts.
        XdpHook::attach(
            &x.interface,
            HookConfig {
                group: x.group,
                filter: true,
            },
            &member_set(&spec.addresses, &spec.first_view),
        )
        .and_then(|mut h| h.admit_groups(&spec.also_groups).map(|()| h))
        .map_err(|e| OpenError::Invalid {
            member: spec.name.clone(),
            message: format!(
                "member[{}].interface = {:?}: attaching the XDP program: {e}",
                spec.me, x.interface
            ),
        })
    }

    /// What the member filter re-registers when it takes over the program: the ports, the
    /// queue and the AF_XDP socket.
    pub(super) type Steering = (Vec<u16>, u32, RawFd);

    /// An AF_XDP socket on `interface`'s `queue`, with the member's port (a sharded member's
    /// port in each shard) steered to it.
    pub(super) fn afxdp(
        spec: &TransportSpec,
        interface: &str,
        queue: u32,
        hook: Option<&mut XdpHook>,
    ) -> Result<(Box<dyn Transport>, String, Steering), OpenError> {
        let local4 = spec.local_v4()?;
        let t = AfXdpTransport::open(&AfXdpConfig {
            interface: interface.to_string(),
            queue,
            local: local4,
            peers: spec.addresses.clone(),
            local_ports: spec.local_ports.clone(),
            max_frame: spec.max_frame,
            force_copy: false,
        })
        .map_err(spec.io("starting the afxdp transport"))?;
        let h = hook.ok_or_else(|| spec.invalid("afxdp without an XDP program"))?;
        let ports = t.ports();
        h.steer_ports(&ports, queue, t.fd())
            .map_err(|e| OpenError::Invalid {
                member: spec.name.clone(),
                message: format!("steering ports {ports:?} to the AF_XDP socket: {e}"),
            })?;
        let d = format!(
            "afxdp ({} mode, {interface} queue {queue})",
            if t.zero_copy() { "zero-copy" } else { "copy" },
        );
        let steering = (ports, queue, t.fd());
        Ok((Box::new(t), d, steering))
    }

    /// The member filter over `inner`; returns it with what to add to the description.
    pub(super) fn wrap(
        spec: &TransportSpec,
        inner: Box<dyn Transport>,
        hook: XdpHook,
        steering: Option<Steering>,
    ) -> (Box<dyn Transport>, String) {
        let d = format!(
            ", XDP member filter on {} ({})",
            hook.interface(),
            if hook.is_owner() {
                "attached by this member"
            } else {
                "shared with the member that attached it"
            }
        );
        let hooked = Hooked::new(inner, hook, &spec.addresses, &spec.first_view, steering);
        (Box::new(hooked), d)
    }
}
