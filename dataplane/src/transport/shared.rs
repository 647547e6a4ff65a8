//! One device shared by several groups: a sharded member's shards over one DPDK port or one
//! AF_XDP socket.
//!
//! A medium that owns a device per process (a DPDK port: one EAL, one port, one ARP speaker for
//! the host's address; an AF_XDP socket: one per interface queue, and one XDP program per
//! interface) cannot be opened once per shard. It is opened once, with
//! every shard's peers in one list (shard `s`'s member `i` is peer `s * n + i`) and, toward
//! each, this member's own address in that shard (its port plus the shard's offset): frames of
//! shard `s` leave from and arrive at shard `s`'s port, so on the wire each shard is an
//! ordinary group of its own, and `udp` members interoperate with it.
//!
//! [`split`] hands each shard's engine a [`ShardPort`]: a [`Transport`] whose peers are the
//! shard's own. The device sits behind a mutex; whichever engine receives takes what the
//! device has, keeps its own shard's frames and queues the others' for their engines (bounded:
//! past [`QUEUE_MAX`] frames, a shard whose engine does not come for them loses the oldest,
//! counted, and the protocol retransmits). A shard with frames queued asks to be polled at once
//! (`next_deadline_us`) and does not park. A parked engine is woken for its frames: over a
//! device with a descriptor (AF_XDP) each shard parks on an epoll set of the device's
//! descriptor and an eventfd of its own, which the engine that queued its frames signals; a
//! poll-mode device has nothing to sleep on, its engines park for `poll_us` at most.
//!
//! The XDP member filter (afxdp) judges the device's frames by the union of the shards' views:
//! each shard's view install updates its part and hands the union to the device.
//!
//! Counters: each shard reports the frames it sent and received; the device's own counters
//! (its stats, ARP, frames not for this host) are reported once, by shard 0.

use super::{RecvBatch, Transport, TransportStats};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// Frames queued for one shard at most (its engine has not polled for them).
pub const QUEUE_MAX: usize = 8192;
/// Frames handed to the device per call, at most.
const SEND_CHUNK: usize = 64;

struct Device {
    transport: Box<dyn Transport>,
    /// Each shard's wake-up, when the device has a descriptor to park on.
    wakes: Vec<crate::sys::EventFd>,
    /// Each shard's current view, as device peer indices.
    views: Vec<Vec<usize>>,
    /// Shards that got frames in this pull (scratch).
    to_wake: Vec<bool>,
    batch: RecvBatch,
    /// Frames received for each shard, not yet taken by its engine: (peer in the shard, bytes).
    queues: Vec<VecDeque<(Option<usize>, Vec<u8>)>>,
    /// Buffers to reuse for queued frames.
    spare: Vec<Vec<u8>>,
    /// Frames dropped because their shard's queue was full, by shard.
    overflow: Vec<u64>,
    /// Frames received and sent through each shard.
    received: Vec<u64>,
    sent: Vec<u64>,
}

impl Device {
    /// Receives once from the device for shard `me`: its frames go straight into `out` while
    /// it has room (its queue is empty: the caller took it first), the others' into their
    /// shards' queues, and the shards that got some are woken. Returns how many of `me`'s
    /// frames `out`'s buffers were too small for.
    fn pull(&mut self, me: usize, members: usize, out: &mut RecvBatch) -> io::Result<u64> {
        let mut oversized = 0;
        let k = self.transport.recv(&mut self.batch)?;
        for r in self.batch.frames.iter().take(k) {
            // A source that is not a peer names no shard: the device counted it
            // (`unknown_source`), nothing more to do with it.
            let Some(p) = r.peer else { continue };
            let (s, i) = (p / members, p % members);
            let Some(q) = self.queues.get_mut(s) else {
                continue;
            };
            let bytes = &self.batch.bufs[r.buf][..r.len];
            if s == me && q.is_empty() && out.frames.len() < out.bufs.len() {
                if !out.push(Some(i), bytes) {
                    oversized += 1;
                }
                continue;
            }
            if q.len() >= QUEUE_MAX {
                if let Some((_, old)) = q.pop_front() {
                    self.spare.push(old);
                }
                self.overflow[s] += 1;
            }
            let mut b = self.spare.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(bytes);
            q.push_back((Some(i), b));
            if s != me {
                self.to_wake[s] = true;
            }
        }
        for (s, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                if let Some(e) = self.wakes.get(s) {
                    e.wake();
                }
            }
        }
        Ok(oversized)
    }
}

/// One shard's side of a shared device.
pub struct ShardPort {
    device: Arc<Mutex<Device>>,
    shard: usize,
    /// Members per shard.
    members: usize,
    name: &'static str,
    /// Frames larger than the engine's buffers (never, with buffers of the device's size).
    oversized: u64,
    /// The device's descriptor and this shard's wake-up, when the device has one.
    poll: Option<crate::sys::Epoll>,
}

impl std::fmt::Debug for ShardPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardPort")
            .field("medium", &self.name)
            .field("shard", &self.shard)
            .finish()
    }
}

/// Shares `device`, opened with `shards * members` peers (shard `s`'s member `i` at
/// `s * members + i`), among `shards` engines: one [`ShardPort`] each, in shard order.
/// `frame_size`: the largest frame the device delivers; `first_view`: the shards' first views
/// as device peer indices (what the device's member filter started with).
pub fn split(
    device: Box<dyn Transport>,
    shards: usize,
    members: usize,
    frame_size: usize,
    first_view: &[usize],
) -> io::Result<Vec<ShardPort>> {
    let name = device.name();
    let fd = device.poll_fd();
    let wakes = match fd {
        Some(_) => (0..shards)
            .map(|_| crate::sys::EventFd::new())
            .collect::<io::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let polls = match fd {
        Some(fd) => wakes
            .iter()
            .map(|w| crate::sys::Epoll::new(&[fd, w.raw()]).map(Some))
            .collect::<io::Result<Vec<_>>>()?,
        None => (0..shards).map(|_| None).collect(),
    };
    let views = (0..shards)
        .map(|s| {
            first_view
                .iter()
                .copied()
                .filter(|p| p / members == s)
                .collect()
        })
        .collect();
    let d = Arc::new(Mutex::new(Device {
        transport: device,
        wakes,
        views,
        to_wake: vec![false; shards],
        batch: RecvBatch::new(64, frame_size),
        queues: (0..shards).map(|_| VecDeque::new()).collect(),
        spare: Vec::new(),
        overflow: vec![0; shards],
        received: vec![0; shards],
        sent: vec![0; shards],
    }));
    Ok(polls
        .into_iter()
        .enumerate()
        .map(|(shard, poll)| ShardPort {
            device: d.clone(),
            shard,
            members,
            name,
            oversized: 0,
            poll,
        })
        .collect())
}

impl ShardPort {
    fn lock(&self) -> MutexGuard<'_, Device> {
        // A panic of another shard's engine while it held the device leaves nothing half
        // done that matters here (queues of whole frames): go on.
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for ShardPort {
    fn name(&self) -> &'static str {
        self.name
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        let base = self.shard * self.members;
        // The device's peer indices, a chunk at a time on the stack (no allocation per call).
        let mut frames: [(usize, &[u8]); SEND_CHUNK] = [(0, &[]); SEND_CHUNK];
        let mut d = self.lock();
        d.sent[self.shard] += batch.len() as u64;
        for chunk in batch.chunks(SEND_CHUNK) {
            for (out, &(p, f)) in frames.iter_mut().zip(chunk) {
                // A peer index past the shard's members would name another shard's member:
                // the device refuses it (counted as a send error).
                *out = (
                    if p < self.members {
                        base + p
                    } else {
                        usize::MAX
                    },
                    f,
                );
            }
            d.transport.send(&frames[..chunk.len()])?;
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        let device = self.device.clone();
        let mut d = device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = d.wakes.get(self.shard) {
            w.drain();
        }
        // What was queued for this shard first, in order; then, if all of it fitted, the
        // device's frames (this shard's straight into the batch).
        let room = batch.bufs.len();
        let Device { queues, spare, .. } = &mut *d;
        let q = &mut queues[self.shard];
        while batch.frames.len() < room {
            let Some((peer, b)) = q.pop_front() else {
                break;
            };
            if !batch.push(peer, &b) {
                self.oversized += 1;
            }
            spare.push(b);
        }
        if batch.frames.len() < room && q.is_empty() {
            self.oversized += d.pull(self.shard, self.members, batch)?;
        }
        d.received[self.shard] += batch.frames.len() as u64;
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.poll.as_ref().map(crate::sys::Epoll::fd)
    }

    fn next_deadline_us(&self) -> Option<u64> {
        let d = self.lock();
        if !d.queues[self.shard].is_empty() {
            return Some(crate::sys::monotonic_us());
        }
        d.transport.next_deadline_us()
    }

    fn stats(&self) -> TransportStats {
        let d = self.lock();
        let mut s = if self.shard == 0 {
            d.transport.stats()
        } else {
            TransportStats::default()
        };
        s.frames_sent = d.sent[self.shard];
        s.frames_received = d.received[self.shard];
        s.oversized += self.oversized;
        s.shared_overflow = d.overflow[self.shard];
        s
    }

    fn prepare_park(&mut self) -> bool {
        let mut d = self.lock();
        d.queues[self.shard].is_empty() && d.transport.prepare_park()
    }

    fn view_installed(&mut self, members: &[usize]) {
        let base = self.shard * self.members;
        let mut d = self.lock();
        d.views[self.shard] = members
            .iter()
            .filter(|&&i| i < self.members)
            .map(|i| base + i)
            .collect();
        let all: Vec<usize> = d.views.concat();
        d.transport.view_installed(&all);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Frames<P> = Arc<Mutex<Vec<(P, Vec<u8>)>>>;

    /// A device whose received frames are given by the test, and which records what it sent.
    #[derive(Default)]
    #[allow(clippy::type_complexity)]
    struct Fake {
        inbox: Arc<Mutex<VecDeque<(Option<usize>, Vec<u8>)>>>,
        sent: Frames<usize>,
        /// A descriptor to park on (readable while the inbox is not empty), if any.
        ready: Option<Arc<crate::sys::EventFd>>,
        views: Arc<Mutex<Vec<Vec<usize>>>>,
    }

    impl Transport for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
            let mut s = self.sent.lock().unwrap();
            s.extend(batch.iter().map(|(p, f)| (*p, f.to_vec())));
            Ok(())
        }
        fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
            batch.frames.clear();
            let mut q = self.inbox.lock().unwrap();
            while batch.frames.len() < batch.bufs.len() {
                let Some((p, f)) = q.pop_front() else { break };
                assert!(batch.push(p, &f));
            }
            if let (Some(r), true) = (&self.ready, q.is_empty()) {
                r.drain();
            }
            Ok(batch.frames.len())
        }
        fn poll_fd(&self) -> Option<RawFd> {
            self.ready.as_ref().map(|r| r.raw())
        }
        fn view_installed(&mut self, members: &[usize]) {
            self.views.lock().unwrap().push(members.to_vec());
        }
        fn stats(&self) -> TransportStats {
            TransportStats {
                not_for_us: 7,
                ..TransportStats::default()
            }
        }
    }

    fn take(p: &mut ShardPort, rb: &mut RecvBatch) -> Vec<(Option<usize>, Vec<u8>)> {
        let mut all = Vec::new();
        loop {
            let n = p.recv(rb).unwrap();
            if n == 0 {
                return all;
            }
            all.extend(rb.iter().map(|(p, b)| (p, b.to_vec())));
        }
    }

    #[test]
    fn each_shard_gets_its_own_peers_frames_in_order_and_sends_to_its_own_peers() {
        let fake = Fake::default();
        let (inbox, sent) = (fake.inbox.clone(), fake.sent.clone());
        // Three shards of two members.
        let mut ports = split(Box::new(fake), 3, 2, 64, &[0, 1, 2, 3, 4, 5]).unwrap();
        {
            let mut q = inbox.lock().unwrap();
            for k in 0..200u32 {
                // Peers 0..6: shard k%3... spread over every shard and member; one stranger.
                let p = (k % 6) as usize;
                q.push_back((Some(p), k.to_be_bytes().to_vec()));
                if k == 100 {
                    q.push_back((None, b"stranger".to_vec()));
                }
            }
        }
        let mut rb = RecvBatch::new(16, 64);
        // Shard 2 polls first: it pulls everything, keeping the others' for them.
        let got2 = take(&mut ports[2], &mut rb);
        let got0 = take(&mut ports[0], &mut rb);
        let got1 = take(&mut ports[1], &mut rb);
        for (s, got) in [(0usize, &got0), (1, &got1), (2, &got2)] {
            let want: Vec<(Option<usize>, Vec<u8>)> = (0..200u32)
                .filter(|k| (k % 6) as usize / 2 == s)
                .map(|k| (Some((k % 6) as usize % 2), k.to_be_bytes().to_vec()))
                .collect();
            assert_eq!(got, &want, "shard {s}");
        }
        // Sends: shard 1's peer 1 is the device's peer 3; a peer past the shard is refused.
        ports[1].send(&[(1, b"x"), (0, b"y")]).unwrap();
        ports[1].send(&[(2, b"z")]).unwrap();
        let s = sent.lock().unwrap().clone();
        assert_eq!(s[0], (3, b"x".to_vec()));
        assert_eq!(s[1], (2, b"y".to_vec()));
        assert_eq!(s[2].0, usize::MAX);
        // A batch larger than a chunk: every frame, in order.
        let many: Vec<Vec<u8>> = (0..150u32).map(|k| k.to_be_bytes().to_vec()).collect();
        let batch: Vec<(usize, &[u8])> = many.iter().map(|f| (0, f.as_slice())).collect();
        ports[2].send(&batch).unwrap();
        let s = sent.lock().unwrap().clone();
        assert_eq!(s.len(), 153);
        assert!(s[3..].iter().zip(&many).all(|(a, b)| a.0 == 4 && a.1 == *b));
        // Counters: each shard its own frames; the device's once, by shard 0.
        let (s0, s1) = (ports[0].stats(), ports[1].stats());
        assert_eq!(s0.frames_received, got0.len() as u64);
        assert_eq!(s1.frames_received, got1.len() as u64);
        assert_eq!(s1.frames_sent, 3);
        assert_eq!((s0.not_for_us, s1.not_for_us), (7, 0));
    }

    /// Over a device with a descriptor: each shard parks on the device's and its own
    /// wake-up; frames one engine queued for another shard wake that shard's engine; the
    /// device's member filter is given the union of the shards' views.
    #[test]
    fn a_parked_shard_is_woken_for_its_frames_and_the_device_follows_every_shards_view() {
        let ready = Arc::new(crate::sys::EventFd::new().unwrap());
        let fake = Fake {
            ready: Some(ready.clone()),
            ..Fake::default()
        };
        let (inbox, views) = (fake.inbox.clone(), fake.views.clone());
        let mut ports = split(Box::new(fake), 2, 2, 64, &[0, 1, 2, 3]).unwrap();
        let fds: Vec<RawFd> = ports.iter().map(|p| p.poll_fd().unwrap()).collect();
        assert_ne!(fds[0], fds[1]);
        let readable = |fd| crate::sys::poll_readable(&[fd], std::time::Duration::ZERO).unwrap();
        assert!(!readable(fds[0]) && !readable(fds[1]));
        // A frame for shard 1 arrives: both shards' descriptors are readable (the device's).
        inbox
            .lock()
            .unwrap()
            .push_back((Some(3), b"for 1".to_vec()));
        ready.wake();
        assert!(readable(fds[0]) && readable(fds[1]));
        // Shard 0's engine takes it from the device, for shard 1: shard 0 goes back to sleep,
        // shard 1 stays woken (its own wake-up) until its engine takes the frame.
        let mut rb = RecvBatch::new(8, 64);
        assert_eq!(ports[0].recv(&mut rb).unwrap(), 0);
        assert!(!readable(fds[0]));
        assert!(readable(fds[1]));
        assert_eq!(
            take(&mut ports[1], &mut rb),
            vec![(Some(1), b"for 1".to_vec())]
        );
        assert!(!readable(fds[1]));
        // Views: each shard's install changes its part of the union only.
        ports[1].view_installed(&[0]);
        ports[0].view_installed(&[1]);
        assert_eq!(*views.lock().unwrap(), vec![vec![0, 1, 2], vec![1, 2]]);
    }

    #[test]
    fn a_shard_that_does_not_poll_loses_its_oldest_frames_past_the_bound_and_says_so() {
        let fake = Fake::default();
        let inbox = fake.inbox.clone();
        let mut ports = split(Box::new(fake), 2, 1, 64, &[0, 1]).unwrap();
        let mut rb = RecvBatch::new(64, 64);
        let extra = 10;
        for k in 0..(QUEUE_MAX + extra) as u32 {
            inbox
                .lock()
                .unwrap()
                .push_back((Some(1), k.to_be_bytes().to_vec()));
            if k % 64 == 63 {
                // Shard 0 polls (and finds nothing of its own); shard 1 never does.
                assert_eq!(ports[0].recv(&mut rb).unwrap(), 0);
            }
        }
        while !inbox.lock().unwrap().is_empty() {
            ports[0].recv(&mut rb).unwrap();
        }
        assert!(ports[1].next_deadline_us().is_some());
        assert!(!ports[1].prepare_park(), "frames wait: no parking");
        let got = take(&mut ports[1], &mut rb);
        assert_eq!(got.len(), QUEUE_MAX);
        assert_eq!(got[0].1, (extra as u32).to_be_bytes().to_vec());
        assert_eq!(ports[1].stats().shared_overflow, extra as u64);
        assert_eq!(ports[0].stats().shared_overflow, 0);
        assert!(ports[1].prepare_park());
    }
}
