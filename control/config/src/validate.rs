//! The group file's checks beyond its schema: each names the offending field. They run in
//! this order, and the first that fails is reported.

use crate::schema::{GroupFile, Role, MAX_AFXDP_FRAME, MAX_DPDK_FRAME, MAX_SHARDS};
use conveyor_core::wire::{self, Key};
use conveyor_dataplane::transport::impair::ImpairSpec;
use conveyor_dataplane::transport::open::MEDIA;
use std::net::SocketAddr;

/// A field and what is wrong with it.
#[derive(Debug)]
pub(crate) struct Bad {
    pub(crate) field: String,
    pub(crate) message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> Bad {
    Bad {
        field: field.into(),
        message: message.into(),
    }
}

/// What the checks established.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) key: Key,
    pub(crate) addresses: Vec<SocketAddr>,
    pub(crate) impair: Option<ImpairSpec>,
}

/// Checks the whole file (resolving the frame sizes it leaves out).
pub(crate) fn check(file: &mut GroupFile) -> Result<Checked, Bad> {
    let key = Key::from_hex(&file.group.key).map_err(|e| bad("group.key", e.to_string()))?;
    group(file)?;
    joins(file)?;
    control(file)?;
    shards(file)?;
    media(file)?;
    gateways(file)?;
    one_host(file)?;
    let addresses = addresses(file)?;
    let impair = impair(file)?;
    Ok(Checked {
        key,
        addresses,
        impair,
    })
}

/// The group's own settings: name, transport, sizes and timers (frame sizes left out take the transport's defaults here).
fn group(file: &mut GroupFile) -> Result<(), Bad> {
    if file.group.name.is_empty() {
        return Err(bad("group.name", "must not be empty"));
    }
    let t = file.group.transport.as_str();
    if !MEDIA.contains(&t) {
        return Err(bad(
            "group.transport",
            format!(
                "there is no transport {t:?}; the transports are {}",
                MEDIA.join(", ")
            ),
        ));
    }
    if file.members.is_empty() {
        return Err(bad("member", "at least one [[member]] is needed"));
    }
    if file.members.len() > wire::MAX_MEMBERS {
        return Err(bad(
            "member",
            format!("at most {} members", wire::MAX_MEMBERS),
        ));
    }
    file.resolve_frame_sizes();
    let g = &file.group;
    if g.window == 0 {
        return Err(bad("group.window", "must be at least 1"));
    }
    if !(512..=65_000).contains(&g.max_frame) {
        return Err(bad(
            "group.max_frame",
            "must be between 512 and 65000 bytes",
        ));
    }
    let fits = wire::max_payload_for(g.max_frame, file.members.len());
    if g.max_payload > fits {
        return Err(bad(
            "group.max_payload",
            format!(
                "{} does not fit a frame of {} bytes for {} members; at most {fits}",
                g.max_payload,
                g.max_frame,
                file.members.len()
            ),
        ));
    }
    for (field, v) in [
        ("group.status_interval_us", g.status_interval_us),
        ("group.heartbeat_ms", g.heartbeat_ms),
        ("group.failure_timeout_ms", g.failure_timeout_ms),
        ("group.rto_us", g.rto_us),
        ("group.rto_max_ms", g.rto_max_ms),
        ("group.startup_timeout_s", g.startup_timeout_s),
    ] {
        if v == 0 {
            return Err(bad(field, "must be greater than 0"));
        }
    }
    if g.failure_timeout_ms < 3 * g.heartbeat_ms {
        return Err(bad(
            "group.failure_timeout_ms",
            format!(
                "{} ms is less than three heartbeats ({} ms each): members would be suspected while alive",
                g.failure_timeout_ms, g.heartbeat_ms
            ),
        ));
    }
    Ok(())
}

/// Who starts the group and who joins it later.
fn joins(file: &GroupFile) -> Result<(), Bad> {
    if !file.members.is_empty() && file.members.iter().all(|m| m.join) {
        return Err(bad(
            "member[0].join",
            "every member has join = true: at least one must start the group",
        ));
    }
    if let Some(i) = file
        .members
        .iter()
        .position(|m| m.join && m.role == Role::Trigger)
    {
        return Err(bad(
            format!("member[{i}].join"),
            "a trigger cannot join later (it starts the run); only invokers",
        ));
    }
    Ok(())
}

/// The control plane's section.
fn control(file: &GroupFile) -> Result<(), Bad> {
    if let Some(c) = &file.control {
        if c.token.len() < 16 {
            return Err(bad(
                "control.token",
                "must be at least 16 characters (it guards every change)",
            ));
        }
        if c.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "control.address",
                format!("{:?} is not host:port", c.address),
            ));
        }
        if let Some(t) = &c.join_token {
            if t.len() < 16 || *t == c.token {
                return Err(bad(
                    "control.join_token",
                    "must be at least 16 characters and differ from control.token",
                ));
            }
        }
        for (i, n) in c.admit.iter().flatten().enumerate() {
            if !file.members.iter().any(|m| &m.name == n) {
                return Err(bad(
                    format!("control.admit[{i}]"),
                    format!("{n:?} is not a member of the group file"),
                ));
            }
        }
    }
    Ok(())
}

/// What each medium needs of the members: an interface for afxdp, a port for dpdk, no settings of another medium.
fn media(file: &GroupFile) -> Result<(), Bad> {
    let g = &file.group;
    for (i, m) in file.members.iter().enumerate() {
        if file.group.transport == "afxdp" && m.interface.is_none() {
            return Err(bad(
                format!("member[{i}].interface"),
                format!("the afxdp transport binds an AF_XDP socket to the interface that carries the member's address; name it (for example interface = \"eth0\") for {:?}", m.name),
            ));
        }
        if m.interface.as_deref() == Some("") {
            return Err(bad(format!("member[{i}].interface"), "must not be empty"));
        }
        if m.queue >= 64 {
            return Err(bad(
                format!("member[{i}].queue"),
                "the XDP program serves queues 0 to 63",
            ));
        }
    }
    if file.group.transport == "dpdk" {
        let ip = |a: &str| a.parse::<SocketAddr>().ok().map(|s| s.ip());
        for (i, m) in file.members.iter().enumerate() {
            let Some(d) = &m.dpdk else {
                return Err(bad(
                    format!("member[{i}].dpdk"),
                    format!("the dpdk transport drives a port of {:?}: name it with allow = [\"<PCI address>\"] (a ConnectX port) or vdevs = [\"net_af_packet0,iface=eth0\"]", m.name),
                ));
            };
            if d.allow.is_empty() && d.vdevs.is_empty() {
                return Err(bad(
                    format!("member[{i}].dpdk"),
                    "names no device: give allow (PCI addresses) or vdevs (virtual devices)",
                ));
            }
            if d.mbufs < u32::from(d.rx_descriptors) + u32::from(d.tx_descriptors) + 1024 {
                return Err(bad(
                    format!("member[{i}].dpdk.mbufs"),
                    format!(
                        "{} cannot fill the rx ring ({}) and the tx ring ({}) with 1024 to spare",
                        d.mbufs, d.rx_descriptors, d.tx_descriptors
                    ),
                ));
            }
            if d.memory_mb < 64 {
                return Err(bad(
                    format!("member[{i}].dpdk.memory_mb"),
                    "the EAL needs at least 64 MiB",
                ));
            }
            if let Some(j) = file.members[..i]
                .iter()
                .position(|o| ip(&o.address) == ip(&m.address))
            {
                return Err(bad(
                    format!("member[{i}].address"),
                    format!("is on member[{j}]'s IP address: the dpdk transport runs one member per port and address (members of one host use shm)"),
                ));
            }
        }
        if g.max_frame > MAX_DPDK_FRAME {
            return Err(bad(
                "group.max_frame",
                format!("{} bytes do not fit one mbuf of the dpdk transport: at most {MAX_DPDK_FRAME} (1472 on a 1500-byte MTU; the member checks its port's MTU at start)", g.max_frame),
            ));
        }
    } else if let Some(i) = file.members.iter().position(|m| m.dpdk.is_some()) {
        return Err(bad(
            format!("member[{i}].dpdk"),
            format!(
                "is for the dpdk transport; the group's transport is {:?}",
                file.group.transport
            ),
        ));
    }
    if file.group.transport != "rdma" {
        if let Some(i) = file.members.iter().position(|m| m.rdma.is_some()) {
            return Err(bad(
                format!("member[{i}].rdma"),
                format!(
                    "is for the rdma transport; the group's transport is {:?}",
                    file.group.transport
                ),
            ));
        }
    }
    Ok(())
}

/// The trigger's gateway, its Redis protocol server, and the rdma port numbers.
fn gateways(file: &GroupFile) -> Result<(), Bad> {
    for (i, m) in file.members.iter().enumerate() {
        if let Some(r) = &m.resp {
            let Ok(a) = r.address.parse::<SocketAddr>() else {
                return Err(bad(
                    format!("member[{i}].resp.address"),
                    format!(
                        "expected host:port with an IP address, found {:?}",
                        r.address
                    ),
                ));
            };
            match &r.token {
                Some(t) if t.len() < 16 => {
                    return Err(bad(
                        format!("member[{i}].resp.token"),
                        "at least 16 characters",
                    ))
                }
                None if !a.ip().is_loopback() => {
                    return Err(bad(
                        format!("member[{i}].resp.token"),
                        format!(
                            "needed to serve on {a}, which is not a loopback address (clients then AUTH with it)"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if let Some(g) = &m.gateway {
            if m.role != Role::Trigger {
                return Err(bad(
                    format!("member[{i}].gateway"),
                    "only a trigger serves the gateway (it pushes the requests)",
                ));
            }
            if g.address.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    format!("member[{i}].gateway.address"),
                    format!(
                        "expected host:port with an IP address, found {:?}",
                        g.address
                    ),
                ));
            }
            if g.timeout_s == 0 {
                return Err(bad(
                    format!("member[{i}].gateway.timeout_s"),
                    "must be at least 1",
                ));
            }
            if g.write_timeout_s == 0 {
                return Err(bad(
                    format!("member[{i}].gateway.write_timeout_s"),
                    "must be at least 1",
                ));
            }
            if g.read_timeout_s == 0 {
                return Err(bad(
                    format!("member[{i}].gateway.read_timeout_s"),
                    "must be at least 1",
                ));
            }
            if !(1..=256).contains(&g.workers) {
                return Err(bad(
                    format!("member[{i}].gateway.workers"),
                    "between 1 and 256",
                ));
            }
            match (&g.basic_auth_user, &g.basic_auth_password_file) {
                (Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                    return Err(bad(
                        format!("member[{i}].gateway.basic_auth_user"),
                        "a user name without ':' is needed",
                    ));
                }
                (Some(_), None) => {
                    return Err(bad(
                        format!("member[{i}].gateway.basic_auth_password_file"),
                        "basic_auth_user needs the file holding its password",
                    ));
                }
                (None, Some(_)) => {
                    return Err(bad(
                        format!("member[{i}].gateway.basic_auth_user"),
                        "basic_auth_password_file needs the user it is the password of",
                    ));
                }
                _ => {}
            }
        }
        if let Some(a) = &m.metrics_address {
            if a.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    format!("member[{i}].metrics_address"),
                    format!("expected host:port with an IP address, found {a:?}"),
                ));
            }
        }
        if m.rdma.as_ref().is_some_and(|r| r.port == 0) {
            return Err(bad(
                format!("member[{i}].rdma.port"),
                "ports are numbered from 1",
            ));
        }
    }
    Ok(())
}

/// Media bound to one host (shm), and afxdp's frame limit.
fn one_host(file: &GroupFile) -> Result<(), Bad> {
    let g = &file.group;
    if file.group.transport == "shm" {
        let ip = |a: &str| a.parse::<SocketAddr>().ok().map(|s| s.ip());
        let first = file.members.first().and_then(|m| ip(&m.address));
        if let Some(i) = file.members.iter().position(|m| ip(&m.address) != first) {
            return Err(bad(
                format!("member[{i}].address"),
                format!(
                    "the shm transport joins the members of one host through shared memory; {:?} is not on member[0]'s address ({})",
                    file.members[i].address, file.members[0].address
                ),
            ));
        }
    }
    if file.group.transport == "afxdp" && g.max_frame > MAX_AFXDP_FRAME {
        return Err(bad(
            "group.max_frame",
            format!(
                "{} bytes do not fit one Ethernet frame of the afxdp transport: at most {MAX_AFXDP_FRAME} (1472 on a 1500-byte MTU; the member checks its interface's MTU at start)",
                g.max_frame
            ),
        ));
    }
    Ok(())
}

/// `[shards]`: a count in range, ports that exist, transports and roles that run sharded (the
/// placements' queue names are checked against the pipelines once they are loaded).
fn shards(file: &GroupFile) -> Result<(), Bad> {
    let Some(sh) = &file.shards else {
        return Ok(());
    };
    if !(1..=MAX_SHARDS).contains(&sh.count) {
        return Err(bad("shards.count", format!("between 1 and {MAX_SHARDS}")));
    }
    if sh.port_stride == 0 {
        return Err(bad("shards.port_stride", "must be at least 1"));
    }
    for (q, &s) in &sh.place {
        if s >= sh.count {
            return Err(bad(
                format!("shards.place.{q}"),
                format!("there is no shard {s}: shards are 0 to {}", sh.count - 1),
            ));
        }
    }
    if sh.count == 1 {
        return Ok(());
    }
    // Every medium runs sharded (dpdk and afxdp share the member's device among its shards).
    let t = file.group.transport.as_str();
    for (i, m) in file.members.iter().enumerate() {
        let last = usize::from(sh.port_stride) * usize::from(sh.count - 1);
        if let Ok(a) = m.address.parse::<SocketAddr>() {
            if usize::from(a.port()) + last > 65_535 {
                return Err(bad(
                    format!("member[{i}].address"),
                    format!(
                        "shard {} would listen on port {}: past 65535",
                        sh.count - 1,
                        usize::from(a.port()) + last
                    ),
                ));
            }
        }
        if m.interface.is_some() && t != "afxdp" {
            return Err(bad(
                format!("member[{i}].interface"),
                format!("the XDP member filter of a sharded group is built for the afxdp transport (its shards share the socket and the program); over {t} each shard's transport would need the program for itself"),
            ));
        }
    }
    Ok(())
}

/// Names and addresses are unique and well formed; credits are given.
fn addresses(file: &GroupFile) -> Result<Vec<SocketAddr>, Bad> {
    let mut addresses = Vec::new();
    for (i, m) in file.members.iter().enumerate() {
        if m.name.is_empty() {
            return Err(bad(format!("member[{i}].name"), "must not be empty"));
        }
        if file.members[..i].iter().any(|o| o.name == m.name) {
            return Err(bad(
                format!("member[{i}].name"),
                format!("{:?} is used twice", m.name),
            ));
        }
        let addr: SocketAddr = m.address.parse().map_err(|e| {
            bad(
                format!("member[{i}].address"),
                format!("{:?} is not IP:PORT: {e}", m.address),
            )
        })?;
        if addresses.contains(&addr) {
            return Err(bad(
                format!("member[{i}].address"),
                format!("{addr} is used twice"),
            ));
        }
        addresses.push(addr);
        if m.credits == 0 {
            return Err(bad(format!("member[{i}].credits"), "must be at least 1"));
        }
    }
    Ok(addresses)
}

/// The injected impairments, if any.
fn impair(file: &GroupFile) -> Result<Option<ImpairSpec>, Bad> {
    Ok(match &file.group.impair {
        None => None,
        Some(text) => Some(
            text.parse::<ImpairSpec>()
                .map_err(|e| bad("group.impair", e.to_string()))?,
        ),
    })
}
