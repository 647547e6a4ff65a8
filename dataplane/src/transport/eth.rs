//! Ethernet, IPv4 and UDP framing for the transports that write whole Ethernet frames
//! themselves (`afxdp`, `dpdk`), and the ARP messages that the `dpdk` transport, which has no
//! kernel beside it to resolve addresses, answers and sends. On the wire the group's frames are
//! ordinary UDP datagrams, so these members interoperate with `udp` members.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A member address as IPv4, or the error `transport` gives for an IPv6 one.
pub(super) fn ipv4(a: &SocketAddr, transport: &str) -> io::Result<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Ok(*a),
        SocketAddr::V6(a) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the {transport} transport speaks IPv4 only; member address {a} is IPv6"),
        )),
    }
}

/// A member's addresses on a device several groups share (a sharded member's shards, see
/// `transport::shared`): its address toward each of `peers` peers (`local`'s address with the
/// port `local_ports[i]` of that peer's group; `local` for every peer when `local_ports` is
/// empty), and each distinct one, `local` first.
#[allow(clippy::type_complexity)]
pub(super) fn local_addresses(
    local: SocketAddrV4,
    local_ports: &[u16],
    peers: usize,
) -> io::Result<(Vec<SocketAddrV4>, Vec<SocketAddrV4>)> {
    let sources: Vec<SocketAddrV4> = if local_ports.is_empty() {
        vec![local; peers]
    } else if local_ports.len() == peers {
        local_ports
            .iter()
            .map(|&p| SocketAddrV4::new(*local.ip(), p))
            .collect()
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} local ports for {peers} peers", local_ports.len()),
        ));
    };
    let mut locals = vec![local];
    for s in &sources {
        if !locals.contains(s) {
            locals.push(*s);
        }
    }
    Ok((sources, locals))
}

pub(super) const ETH: usize = 14;
pub(super) const IPV4: usize = 20;
pub(super) const UDP: usize = 8;
/// Ethernet, IPv4 (no options) and UDP headers in front of every frame sent.
pub const HEADERS: usize = ETH + IPV4 + UDP;
/// An ARP message for IPv4 over Ethernet, padded to Ethernet's 60-byte minimum.
pub(super) const ARP_FRAME: usize = 60;
pub(super) const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
pub(super) const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
pub(super) const BROADCAST: [u8; 6] = [0xff; 6];

/// The IPv4 header checksum (RFC 1071) of `h`.
pub(super) fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes Ethernet, IPv4 and UDP headers for a payload of `len` bytes into `out[..HEADERS]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_headers(
    out: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    id: u16,
    len: usize,
) {
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut out[ETH..ETH + IPV4];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&((IPV4 + UDP + len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut out[ETH + IPV4..HEADERS];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP + len) as u16).to_be_bytes());
    // UDP checksum 0: none (allowed for IPv4); the protocol authenticates every frame.
    udp[6..8].copy_from_slice(&[0, 0]);
}

/// A parsed frame: source MAC, source and destination, payload range.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parsed {
    pub src_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: std::ops::Range<usize>,
}

/// Parses Ethernet + IPv4 + UDP; `None` for anything else or anything inconsistent.
pub(super) fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < HEADERS || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4 || ip[9] != 17 {
        return None;
    }
    // Fragments are not the protocol's (frames fit the MTU).
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl + UDP || ETH + total > f.len() {
        return None;
    }
    let udp = &f[ETH + ihl..];
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen < UDP || ulen > total - ihl {
        return None;
    }
    let at = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    let start = ETH + ihl + UDP;
    Some(Parsed {
        src_mac: f[6..12].try_into().ok()?,
        src: SocketAddrV4::new(at(12), port(0)),
        dst: SocketAddrV4::new(at(16), port(2)),
        payload: start..start + ulen - UDP,
    })
}

/// An ARP request or reply (IPv4 over Ethernet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Arp {
    /// 1: request, 2: reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl Arp {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    /// Writes the message as a whole Ethernet frame into `out[..ARP_FRAME]`: broadcast for a
    /// request, to the asker for a reply.
    pub fn write(&self, out: &mut [u8]) {
        let dst = if self.op == Self::REQUEST {
            BROADCAST
        } else {
            self.target_mac
        };
        out[..ARP_FRAME].fill(0);
        out[0..6].copy_from_slice(&dst);
        out[6..12].copy_from_slice(&self.sender_mac);
        out[12..14].copy_from_slice(&ETHERTYPE_ARP);
        let a = &mut out[ETH..];
        a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        a[2..4].copy_from_slice(&ETHERTYPE_IPV4);
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&self.op.to_be_bytes());
        a[8..14].copy_from_slice(&self.sender_mac);
        a[14..18].copy_from_slice(&self.sender_ip.octets());
        a[18..24].copy_from_slice(&self.target_mac);
        a[24..28].copy_from_slice(&self.target_ip.octets());
    }

    /// Parses an Ethernet frame carrying ARP for IPv4 over Ethernet; `None` for anything else.
    pub fn parse(f: &[u8]) -> Option<Arp> {
        if f.len() < ETH + 28 || f[12..14] != ETHERTYPE_ARP {
            return None;
        }
        let a = &f[ETH..];
        if a[0..2] != [0, 1] || a[2..4] != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
            return None;
        }
        let op = u16::from_be_bytes([a[6], a[7]]);
        if op != Self::REQUEST && op != Self::REPLY {
            return None;
        }
        let ip = |o: usize| Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]);
        Some(Arp {
            op,
            sender_mac: a[8..14].try_into().ok()?,
            sender_ip: ip(14),
            target_mac: a[18..24].try_into().ok()?,
            target_ip: ip(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn headers_round_trip_and_checksum_verifies() {
        let mut f = vec![0u8; HEADERS + 5];
        write_headers(
            &mut f,
            [1, 2, 3, 4, 5, 6],
            [7, 8, 9, 10, 11, 12],
            a("10.77.0.1:7400"),
            a("10.77.0.2:7401"),
            9,
            5,
        );
        f[HEADERS..].copy_from_slice(b"hello");
        let p = parse(&f).unwrap();
        assert_eq!(p.src_mac, [7, 8, 9, 10, 11, 12]);
        assert_eq!(p.src, a("10.77.0.1:7400"));
        assert_eq!(p.dst, a("10.77.0.2:7401"));
        assert_eq!(&f[p.payload], b"hello");
        // A header with its checksum in place sums to zero.
        assert_eq!(ip_checksum(&f[ETH..ETH + IPV4]), 0);
        // Padding after the datagram (short frames are padded to 60 bytes) is not payload.
        f.extend_from_slice(&[0; 20]);
        assert_eq!(parse(&f).unwrap().payload.len(), 5);
    }

    #[test]
    fn malformed_frames_are_refused_not_panicked_on() {
        let mut good = vec![0u8; HEADERS + 4];
        write_headers(
            &mut good,
            [0; 6],
            [0; 6],
            a("10.0.0.1:1"),
            a("10.0.0.2:2"),
            0,
            4,
        );
        assert!(parse(&good).is_some());
        // Every truncation, and every single-byte corruption of the headers, either parses to
        // something in bounds or is refused.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_none() || n >= HEADERS);
        }
        for i in 0..HEADERS {
            for v in [0u8, 0x45, 0xff, 17, 4] {
                let mut f = good.clone();
                f[i] = v;
                if let Some(p) = parse(&f) {
                    assert!(p.payload.end <= f.len());
                }
            }
        }
        let mut frag = good.clone();
        frag[ETH + 6] = 0x20; // more fragments
        assert!(parse(&frag).is_none());
        let mut tcp = good.clone();
        tcp[ETH + 9] = 6;
        assert!(parse(&tcp).is_none());
        let mut vlan = good;
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert!(parse(&vlan).is_none());
    }

    #[test]
    fn arp_round_trips_and_refuses_what_is_not_ipv4_over_ethernet() {
        let req = Arp {
            op: Arp::REQUEST,
            sender_mac: [2, 0, 0, 0, 0, 1],
            sender_ip: "10.77.0.1".parse().unwrap(),
            target_mac: [0; 6],
            target_ip: "10.77.0.2".parse().unwrap(),
        };
        let mut f = [0u8; ARP_FRAME];
        req.write(&mut f);
        assert_eq!(f[0..6], BROADCAST);
        assert_eq!(Arp::parse(&f), Some(req));
        let rep = Arp {
            op: Arp::REPLY,
            target_mac: req.sender_mac,
            target_ip: req.sender_ip,
            sender_mac: [2, 0, 0, 0, 0, 2],
            sender_ip: req.target_ip,
        };
        rep.write(&mut f);
        assert_eq!(f[0..6], req.sender_mac);
        assert_eq!(Arp::parse(&f), Some(rep));
        for n in 0..ETH + 28 {
            assert_eq!(Arp::parse(&f[..n]), None);
        }
        let mut bad = f;
        bad[ETH + 7] = 3; // RARP request
        assert_eq!(Arp::parse(&bad), None);
        let mut bad = f;
        bad[ETH + 5] = 16; // IPv6 protocol size
        assert_eq!(Arp::parse(&bad), None);
        let mut ip = f;
        ip[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        assert_eq!(Arp::parse(&ip), None);
    }
}
