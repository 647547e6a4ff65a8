//! The only unsafe code of the UDP transport: `sendmmsg(2)` and `recvmmsg(2)` through `libc`,
//! and the sockets' buffer sizes.

#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Reusable scratch space for one batch of system calls.
pub(crate) struct MmsgScratch {
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside are only ever pointers into this struct's own vectors or into
// buffers borrowed for the duration of one call; nothing is shared between threads.
unsafe impl Send for MmsgScratch {}

impl std::fmt::Debug for MmsgScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MmsgScratch({} slots)", self.hdrs.len())
    }
}

impl MmsgScratch {
    pub(crate) fn new(n: usize) -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value.
        let (a, i, h) = unsafe { (zeroed(), zeroed(), zeroed()) };
        MmsgScratch {
            addrs: vec![a; n],
            iovs: vec![i; n],
            hdrs: vec![h; n],
        }
    }
}

fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, as ss_family says.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                a.sin_addr.s_addr.to_ne_bytes().into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, as ss_family says.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Sends each `(peer, frame)` of `batch` to `peers[peer]` with as few `sendmmsg` calls as
/// needed. Returns (sent, failed, calls); a frame for an unknown peer counts as failed.
pub(crate) fn send_batch(
    fd: RawFd,
    scratch: &mut MmsgScratch,
    peers: &[SocketAddr],
    batch: &[(usize, &[u8])],
) -> (usize, usize, usize) {
    let (mut sent, mut failed, mut calls) = (0, 0, 0);
    for chunk in batch.chunks(scratch.hdrs.len()) {
        let mut k = 0;
        for &(peer, data) in chunk {
            let Some(addr) = peers.get(peer) else {
                failed += 1;
                continue;
            };
            let i = k;
            k += 1;
            let len = to_storage(addr, &mut scratch.addrs[i]);
            scratch.iovs[i] = libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            };
            let h = &mut scratch.hdrs[i].msg_hdr;
            h.msg_name = &mut scratch.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_namelen = len;
            h.msg_iov = &mut scratch.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut off = 0;
        while off < k {
            calls += 1;
            // SAFETY: hdrs[off..k] are initialised above and point at addrs, iovs
            // and the caller's frames, all alive for the duration of the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    scratch.hdrs[off..].as_mut_ptr(),
                    (k - off) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
                off += r as usize;
            } else {
                // The message at `off` failed (full buffer, unreachable, ...): skip it.
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                failed += 1;
                off += 1;
            }
        }
    }
    (sent, failed, calls)
}

/// One `recvmmsg` into `bufs`; returns (source, length, truncated) per frame.
pub(crate) fn recv_batch(
    fd: RawFd,
    scratch: &mut MmsgScratch,
    bufs: &mut [Vec<u8>],
    out: &mut Vec<(Option<SocketAddr>, usize, bool)>,
) -> io::Result<usize> {
    out.clear();
    let n = bufs.len().min(scratch.hdrs.len());
    for (i, buf) in bufs.iter_mut().enumerate().take(n) {
        scratch.iovs[i] = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let h = &mut scratch.hdrs[i].msg_hdr;
        h.msg_name = &mut scratch.addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut scratch.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        scratch.hdrs[i].msg_len = 0;
    }
    // SAFETY: hdrs[..n] point at addrs, iovs and the caller's buffers, all alive and
    // exclusively borrowed for the call; a null timeout with MSG_DONTWAIT never blocks.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            scratch.hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(err),
        };
    }
    for i in 0..r as usize {
        let h = &scratch.hdrs[i];
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        out.push((
            from_storage(&scratch.addrs[i]),
            h.msg_len as usize,
            truncated,
        ));
    }
    Ok(r as usize)
}

/// Asks for `bytes` of receive and send buffer on the socket `fd` (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`; a refusal leaves the default, which only costs bursts).
pub(super) fn set_buffer_sizes(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int; `fd` is a
        // socket the caller owns (an invalid one only makes the call fail).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &bytes as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}
