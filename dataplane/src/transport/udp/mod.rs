//! The `udp` transport: kernel UDP sockets, batched with sendmmsg/recvmmsg. The commodity
//! fallback: loopback, veth, any NIC. Frames may be lost, duplicated or reordered; the protocol
//! core copes.

mod sys;

use super::{Received, RecvBatch, Transport, TransportStats};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use sys::{recv_batch, send_batch, MmsgScratch};

const BATCH: usize = 64;

#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    send_scratch: MmsgScratch,
    recv_scratch: MmsgScratch,
    recv_meta: Vec<(Option<SocketAddr>, usize, bool)>,
    stats: TransportStats,
}

impl UdpTransport {
    /// Binds `local` and knows `peers` by index. Socket buffers are enlarged so that bursts are
    /// not dropped by the kernel.
    pub fn bind(local: SocketAddr, peers: Vec<SocketAddr>) -> io::Result<UdpTransport> {
        let socket = UdpSocket::bind(local)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {local}: {e}")))?;
        socket.set_nonblocking(true)?;
        // Room for bursts: the kernel caps it at net.core.[rw]mem_max.
        sys::set_buffer_sizes(socket.as_raw_fd(), 8 << 20);
        let by_addr = peers.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Ok(UdpTransport {
            socket,
            peers,
            by_addr,
            send_scratch: MmsgScratch::new(BATCH),
            recv_scratch: MmsgScratch::new(BATCH),
            recv_meta: Vec::with_capacity(BATCH),
            stats: TransportStats::default(),
        })
    }

    /// The socket, for polling.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Transport for UdpTransport {
    fn name(&self) -> &'static str {
        "udp"
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        let (sent, failed, calls) = send_batch(
            self.socket.as_raw_fd(),
            &mut self.send_scratch,
            &self.peers,
            batch,
        );
        self.stats.frames_sent += sent as u64;
        self.stats.send_errors += failed as u64;
        self.stats.syscalls += calls as u64;
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        let n = recv_batch(
            self.socket.as_raw_fd(),
            &mut self.recv_scratch,
            &mut batch.bufs,
            &mut self.recv_meta,
        )?;
        self.stats.syscalls += 1;
        for (buf, &(addr, len, truncated)) in self.recv_meta.iter().enumerate() {
            if truncated {
                self.stats.oversized += 1;
                continue;
            }
            let peer = addr.and_then(|a| self.by_addr.get(&a).copied());
            if peer.is_none() {
                self.stats.unknown_source += 1;
            }
            batch.frames.push(Received { peer, len, buf });
        }
        self.stats.frames_received += n as u64;
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }

    fn stats(&self) -> TransportStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two transports on loopback that know each other as peer 0, and b's address.
    fn pair() -> (UdpTransport, UdpTransport, SocketAddr) {
        // Reserve b's address, then bind a knowing it, then b knowing a.
        let ba = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let a = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), vec![ba]).unwrap();
        let b = UdpTransport::bind(ba, vec![a.local_addr().unwrap()]).unwrap();
        (a, b, ba)
    }

    #[test]
    fn batches_cross_loopback_and_sources_are_identified() {
        let (mut a, mut b, ba) = pair();
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10 + i as usize]).collect();
        let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (0, f.as_slice())).collect();
        a.send(&batch).unwrap();
        let mut rb = RecvBatch::new(64, 2048);
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < 100 && start.elapsed() < std::time::Duration::from_secs(5) {
            b.recv(&mut rb).unwrap();
            for (peer, bytes) in rb.iter() {
                assert_eq!(peer, Some(0));
                got.push(bytes.to_vec());
            }
        }
        assert_eq!(got, frames);
        assert!(a.stats().syscalls <= 2, "{:?}", a.stats());
        // A stranger is reported as such.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"hi", ba).unwrap();
        let start = std::time::Instant::now();
        loop {
            if b.recv(&mut rb).unwrap() > 0 {
                assert_eq!(rb.frames[0].peer, None);
                break;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
        }
        assert_eq!(b.stats().unknown_source, 1);
    }

    #[test]
    fn an_oversized_datagram_is_counted_and_the_next_frames_keep_their_bytes() {
        let (mut a, mut b, _) = pair();
        // Buffers of 32 bytes: the 100-byte frame is truncated and dropped; the ones after it
        // must still be paired with their own buffers.
        let frames = [vec![1u8; 10], vec![2u8; 100], vec![3u8; 20], vec![4u8; 30]];
        let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (0, f.as_slice())).collect();
        a.send(&batch).unwrap();
        let mut rb = RecvBatch::new(8, 32);
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < 3 && start.elapsed() < std::time::Duration::from_secs(5) {
            b.recv(&mut rb).unwrap();
            got.extend(rb.iter().map(|(_, f)| f.to_vec()));
        }
        assert_eq!(
            got,
            vec![frames[0].clone(), frames[2].clone(), frames[3].clone()]
        );
        assert_eq!(b.stats().oversized, 1);
    }
}
