//! The `shm` transport: members on one host exchange frames through shared-memory rings.
//!
//! Each member creates an inbox, a file in `/dev/shm` (mode 0600) holding one single-producer
//! single-consumer ring per member of the group: ring `i` is written only by member `i` and
//! read only by the inbox's owner, so the sender of every frame is known by where it is, and
//! no lock is needed. A ring is a producer index and a consumer index (each on its own cache
//! line) and fixed slots of `max_frame` bytes: the producer writes a slot and then publishes
//! its index with release ordering; the consumer reads the index with acquire ordering, copies
//! the slot out, and publishes its own index.
//!
//! No system call while busy: sending is copying into the peer's ring and one atomic store;
//! receiving is reading the rings. A member that has nothing to do parks on a doorbell, a FIFO
//! next to its inbox: it raises a `sleeping` flag in its inbox, checks its rings once more, and
//! polls the FIFO; a sender that finds the flag raised writes one byte to the FIFO. Senders
//! check every 100 ms that a peer's inbox is still the file they mapped (a restarted member
//! makes a new one) and map the new one.
//!
//! A full ring drops the frame (counted as a send error); the protocol retransmits. Frames are
//! copied once into the ring and once out of it: the transport trait hands over borrowed
//! frames and fills the engine's buffers, so nothing is passed by reference across processes.

mod sys;

use super::{Received, RecvBatch, Transport, TransportStats};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};
use sys::{Doorbell, Region};

const MAGIC: u64 = u64::from_le_bytes(*b"CVSHM001");
const HEADER: usize = 64;
const OFF_MEMBERS: usize = 8;
const OFF_SLOTS: usize = 12;
const OFF_SLOT_SIZE: usize = 16;
const OFF_SLEEPING: usize = 20;
/// Ring header: producer index, then consumer index, each on its own cache line.
const RING_HEADER: usize = 128;
/// Slot header: the frame's length (u32) and padding.
const SLOT_HEADER: usize = 8;
/// Slots per ring (a power of two): twice the default window of own messages in flight.
pub const SLOTS: usize = 512;
/// How often a sender checks that a peer's inbox is still the one it mapped.
const RECHECK: Duration = Duration::from_millis(100);
/// How long a sender waits before trying again to open a peer's inbox that is not there yet.
const RETRY_OPEN: Duration = Duration::from_millis(10);

/// Where the group's inboxes are and who this member is.
#[derive(Clone, Debug)]
pub struct ShmConfig {
    /// The directory of the inboxes (`/dev/shm`: memory, not disk).
    pub dir: PathBuf,
    /// Distinguishes this group's files from other groups' on the host (derived from the
    /// group's name and key).
    pub tag: String,
    /// This member's index and the group's size.
    pub me: usize,
    pub members: usize,
    /// The largest frame (`max_frame`).
    pub max_frame: usize,
}

impl ShmConfig {
    pub fn inbox_path(&self, member: usize) -> PathBuf {
        self.dir
            .join(format!("conveyor-{}-{member}.ring", self.tag))
    }
    pub fn bell_path(&self, member: usize) -> PathBuf {
        self.dir
            .join(format!("conveyor-{}-{member}.bell", self.tag))
    }
    fn slot_size(&self) -> usize {
        (SLOT_HEADER + self.max_frame).div_ceil(64) * 64
    }
    fn ring_len(&self) -> usize {
        RING_HEADER + SLOTS * self.slot_size()
    }
    fn file_len(&self) -> usize {
        HEADER + self.members * self.ring_len()
    }
}

/// A peer's inbox, mapped for sending into its ring `me`.
struct Outbox {
    region: Region,
    bell: Doorbell,
    ring: usize,
    checked: Instant,
}

pub struct ShmTransport {
    cfg: ShmConfig,
    inbox: Region,
    bell: Doorbell,
    /// Where receiving starts next (round robin over the rings, for fairness).
    next_ring: usize,
    outs: Vec<Option<Outbox>>,
    retry_at: Vec<Option<Instant>>,
    touched: Vec<bool>,
    parked: bool,
    stats: TransportStats,
}

impl std::fmt::Debug for ShmTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmTransport")
            .field("inbox", &self.cfg.inbox_path(self.cfg.me))
            .finish()
    }
}

fn ring_offset(cfg: &ShmConfig, ring: usize) -> usize {
    HEADER + ring * cfg.ring_len()
}

/// Reads a u32 field of an inbox header.
fn field(r: &Region, off: usize) -> u32 {
    r.u32_at(off).map_or(0, |a| a.load(Ordering::Relaxed))
}

impl ShmTransport {
    /// Creates this member's inbox and doorbell (replacing any left by an earlier run). Peers'
    /// inboxes are opened when first sent to.
    pub fn open(cfg: &ShmConfig) -> io::Result<ShmTransport> {
        if cfg.me >= cfg.members {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "member index out of range",
            ));
        }
        let path = cfg.inbox_path(cfg.me);
        let say = |e: io::Error, what: &Path| {
            io::Error::new(
                e.kind(),
                format!(
                    "shm: creating {}: {e} (the shm transport needs a writable {} on a memory file system, /dev/shm)",
                    what.display(),
                    cfg.dir.display()
                ),
            )
        };
        let inbox = Region::create(&path, cfg.file_len()).map_err(|e| say(e, &path))?;
        let bell_path = cfg.bell_path(cfg.me);
        let bell = Doorbell::create(&bell_path).map_err(|e| say(e, &bell_path))?;
        let header = [
            (OFF_MEMBERS, cfg.members as u32),
            (OFF_SLOTS, SLOTS as u32),
            (OFF_SLOT_SIZE, cfg.slot_size() as u32),
        ];
        for (off, v) in header {
            if let Some(a) = inbox.u32_at(off) {
                a.store(v, Ordering::Relaxed);
            }
        }
        // The magic last, released: a sender that sees it sees the sizes.
        if let Some(m) = inbox.u64_at(0) {
            m.store(MAGIC, Ordering::Release);
        }
        Ok(ShmTransport {
            cfg: cfg.clone(),
            inbox,
            bell,
            next_ring: 0,
            outs: (0..cfg.members).map(|_| None).collect(),
            retry_at: vec![None; cfg.members],
            touched: vec![false; cfg.members],
            parked: false,
            stats: TransportStats::default(),
        })
    }

    /// Maps peer `p`'s inbox if it is there and matches this group's sizes.
    fn connect(&self, p: usize) -> io::Result<Outbox> {
        let region = Region::open(&self.cfg.inbox_path(p))?;
        let ok = region.u64_at(0).map(|m| m.load(Ordering::Acquire)) == Some(MAGIC)
            && field(&region, OFF_MEMBERS) as usize == self.cfg.members
            && field(&region, OFF_SLOTS) as usize == SLOTS
            && field(&region, OFF_SLOT_SIZE) as usize == self.cfg.slot_size()
            && region.len() == self.cfg.file_len();
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the inbox is not initialized yet or has other sizes",
            ));
        }
        let bell = Doorbell::open(&self.cfg.bell_path(p))?;
        Ok(Outbox {
            region,
            bell,
            ring: ring_offset(&self.cfg, self.cfg.me),
            checked: Instant::now(),
        })
    }

    /// The outbox of peer `p`: opened if needed (at most every `RETRY_OPEN`), re-opened when
    /// the peer re-created its inbox.
    fn outbox(&mut self, p: usize) -> Option<&mut Outbox> {
        let stale = match &self.outs[p] {
            Some(o) if o.checked.elapsed() >= RECHECK => {
                let now = std::fs::metadata(self.cfg.inbox_path(p));
                !matches!(now, Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) == o.region.inode)
            }
            _ => false,
        };
        if stale {
            self.outs[p] = None;
        } else if let Some(o) = self.outs[p].as_mut() {
            if o.checked.elapsed() >= RECHECK {
                o.checked = Instant::now();
            }
        }
        if self.outs[p].is_none() {
            if self.retry_at[p].is_some_and(|t| Instant::now() < t) {
                return None;
            }
            match self.connect(p) {
                Ok(o) => {
                    self.outs[p] = Some(o);
                    self.retry_at[p] = None;
                }
                Err(_) => {
                    self.retry_at[p] = Some(Instant::now() + RETRY_OPEN);
                    return None;
                }
            }
        }
        self.outs[p].as_mut()
    }

    /// Whether any ring of the inbox holds a frame.
    fn pending(&self) -> bool {
        (0..self.cfg.members).any(|r| {
            let off = ring_offset(&self.cfg, r);
            match (self.inbox.u64_at(off), self.inbox.u64_at(off + 64)) {
                (Some(p), Some(c)) => p.load(Ordering::Acquire) != c.load(Ordering::Relaxed),
                _ => false,
            }
        })
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.cfg.inbox_path(self.cfg.me));
        let _ = std::fs::remove_file(self.cfg.bell_path(self.cfg.me));
    }
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn send(&mut self, batch: &[(usize, &[u8])]) -> io::Result<()> {
        let slot_size = self.cfg.slot_size();
        let members = self.cfg.members;
        for &(peer, frame) in batch {
            if peer >= members || frame.len() > self.cfg.max_frame {
                self.stats.send_errors += 1;
                continue;
            }
            let Some(o) = self.outbox(peer) else {
                // Not there yet (starting) or gone: the protocol retransmits.
                self.stats.send_errors += 1;
                continue;
            };
            let (Some(prod), Some(cons)) = (o.region.u64_at(o.ring), o.region.u64_at(o.ring + 64))
            else {
                self.stats.send_errors += 1;
                continue;
            };
            let p = prod.load(Ordering::Relaxed);
            if p.wrapping_sub(cons.load(Ordering::Acquire)) >= SLOTS as u64 {
                self.stats.send_errors += 1;
                continue;
            }
            let slot = o.ring + RING_HEADER + (p as usize % SLOTS) * slot_size;
            let len = (frame.len() as u32).to_le_bytes();
            if !(o.region.write(slot, &len) && o.region.write(slot + SLOT_HEADER, frame)) {
                self.stats.send_errors += 1;
                continue;
            }
            prod.store(p.wrapping_add(1), Ordering::Release);
            self.touched[peer] = true;
            self.stats.frames_sent += 1;
        }
        // A parked receiver gets one doorbell per batch. The fence orders the producer stores
        // before the flag's load, against the receiver's flag store before its last check.
        fence(Ordering::SeqCst);
        for p in 0..members {
            if std::mem::take(&mut self.touched[p]) {
                if let Some(o) = &self.outs[p] {
                    if field(&o.region, OFF_SLEEPING) != 0 {
                        o.bell.ring();
                        self.stats.syscalls += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.frames.clear();
        if self.parked {
            self.parked = false;
            if let Some(s) = self.inbox.u32_at(OFF_SLEEPING) {
                s.store(0, Ordering::SeqCst);
            }
            self.bell.drain();
            self.stats.syscalls += 1;
        }
        let members = self.cfg.members;
        let slot_size = self.cfg.slot_size();
        let room = batch.bufs.len();
        for k in 0..members {
            if batch.frames.len() >= room {
                break;
            }
            let r = (self.next_ring + k) % members;
            let off = ring_offset(&self.cfg, r);
            let (Some(prod), Some(cons)) = (self.inbox.u64_at(off), self.inbox.u64_at(off + 64))
            else {
                continue;
            };
            let p = prod.load(Ordering::Acquire);
            let mut c = cons.load(Ordering::Relaxed);
            while c != p && batch.frames.len() < room {
                let slot = off + RING_HEADER + (c as usize % SLOTS) * slot_size;
                let mut len = [0u8; 4];
                self.inbox.read(slot, &mut len);
                let n = u32::from_le_bytes(len) as usize;
                let buf = batch.frames.len();
                if n > slot_size - SLOT_HEADER || n > batch.bufs[buf].len() {
                    // A corrupt length (a misbehaving peer): counted, skipped.
                    self.stats.malformed += 1;
                } else if self
                    .inbox
                    .read(slot + SLOT_HEADER, &mut batch.bufs[buf][..n])
                {
                    batch.frames.push(Received {
                        peer: Some(r),
                        len: n,
                        buf,
                    });
                }
                c = c.wrapping_add(1);
            }
            cons.store(c, Ordering::Release);
        }
        self.next_ring = (self.next_ring + 1) % members;
        self.stats.frames_received += batch.frames.len() as u64;
        Ok(batch.frames.len())
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.bell.fd())
    }

    fn prepare_park(&mut self) -> bool {
        // Raise the flag, then look once more: a sender that wrote before seeing the flag has
        // its frame found here; one that writes after sees the flag and rings.
        if let Some(s) = self.inbox.u32_at(OFF_SLEEPING) {
            s.store(1, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        self.parked = true;
        !self.pending()
    }

    fn stats(&self) -> TransportStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, me: usize, members: usize) -> ShmConfig {
        ShmConfig {
            dir: dir.to_path_buf(),
            tag: "test".into(),
            me,
            members,
            max_frame: 256,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("conveyor-shm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn frames_cross_in_order_with_their_sender_and_a_full_ring_drops() {
        let d = tmp("order");
        let mut a = ShmTransport::open(&cfg(&d, 0, 3)).unwrap();
        let mut b = ShmTransport::open(&cfg(&d, 1, 3)).unwrap();
        let mut c = ShmTransport::open(&cfg(&d, 2, 3)).unwrap();
        let frames: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(3)).collect();
        let batch: Vec<(usize, &[u8])> = frames.iter().map(|f| (1, f.as_slice())).collect();
        a.send(&batch).unwrap();
        c.send(&[(1, b"from c".as_slice())]).unwrap();
        let mut rb = RecvBatch::new(64, 256);
        let mut from_a = Vec::new();
        let mut from_c = Vec::new();
        while from_a.len() + from_c.len() < 301 {
            assert!(b.recv(&mut rb).unwrap() > 0, "frames missing");
            for (p, f) in rb.iter() {
                match p {
                    Some(0) => from_a.push(f.to_vec()),
                    Some(2) => from_c.push(f.to_vec()),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(from_a, frames);
        assert_eq!(from_c, vec![b"from c".to_vec()]);
        // Nothing more; a ring holds SLOTS frames and drops the rest, counted.
        assert_eq!(b.recv(&mut rb).unwrap(), 0);
        let many: Vec<(usize, &[u8])> = (0..SLOTS + 10).map(|_| (1, b"x".as_slice())).collect();
        a.send(&many).unwrap();
        assert_eq!(a.stats().send_errors, 10);
        // Too large for a slot: refused, counted.
        let big = vec![0u8; 300];
        c.send(&[(1, big.as_slice())]).unwrap();
        assert_eq!(c.stats().send_errors, 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_parked_receiver_is_rung_and_a_busy_one_is_not() {
        let d = tmp("bell");
        let mut a = ShmTransport::open(&cfg(&d, 0, 2)).unwrap();
        let mut b = ShmTransport::open(&cfg(&d, 1, 2)).unwrap();
        let fd = b.poll_fd().unwrap();
        let readable = super::sys::readable_now;
        // Busy (not parked): sending makes no system call and rings nothing.
        a.send(&[(1, b"1".as_slice())]).unwrap();
        assert_eq!(a.stats().syscalls, 0);
        assert!(!readable(fd));
        // Parking with a frame waiting is refused: the frame is found first.
        assert!(!b.prepare_park());
        let mut rb = RecvBatch::new(8, 256);
        assert_eq!(b.recv(&mut rb).unwrap(), 1);
        // Parked with nothing waiting: the next send rings the doorbell.
        assert!(b.prepare_park());
        a.send(&[(1, b"2".as_slice())]).unwrap();
        assert!(readable(fd));
        assert_eq!(a.stats().syscalls, 1);
        assert_eq!(b.recv(&mut rb).unwrap(), 1);
        assert!(!readable(fd), "the doorbell is drained on waking");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_restarted_member_is_found_again() {
        let d = tmp("restart");
        let mut a = ShmTransport::open(&cfg(&d, 0, 2)).unwrap();
        // The peer is not there yet: counted, then found once it is.
        a.send(&[(1, b"early".as_slice())]).unwrap();
        assert_eq!(a.stats().send_errors, 1);
        let mut b = ShmTransport::open(&cfg(&d, 1, 2)).unwrap();
        std::thread::sleep(RETRY_OPEN);
        a.send(&[(1, b"one".as_slice())]).unwrap();
        let mut rb = RecvBatch::new(8, 256);
        assert_eq!(b.recv(&mut rb).unwrap(), 1);
        drop(b);
        let mut b = ShmTransport::open(&cfg(&d, 1, 2)).unwrap();
        std::thread::sleep(RECHECK);
        a.send(&[(1, b"two".as_slice())]).unwrap();
        assert_eq!(b.recv(&mut rb).unwrap(), 1);
        assert_eq!(rb.iter().next().unwrap().1, b"two");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn threads_exchange_many_frames_without_loss() {
        let d = tmp("threads");
        let mut a = ShmTransport::open(&cfg(&d, 0, 2)).unwrap();
        let mut b = ShmTransport::open(&cfg(&d, 1, 2)).unwrap();
        const N: u32 = 200_000;
        let sender = std::thread::spawn(move || {
            let mut i = 0u32;
            while i < N {
                let f = i.to_le_bytes();
                let before = a.stats().send_errors;
                a.send(&[(1, f.as_slice())]).unwrap();
                if a.stats().send_errors == before {
                    i += 1;
                }
            }
        });
        let mut rb = RecvBatch::new(64, 256);
        let mut next = 0u32;
        while next < N {
            b.recv(&mut rb).unwrap();
            for (_, f) in rb.iter() {
                assert_eq!(u32::from_le_bytes(f.try_into().unwrap()), next);
                next += 1;
            }
        }
        sender.join().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
