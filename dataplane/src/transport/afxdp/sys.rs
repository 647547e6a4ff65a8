//! The AF_XDP socket at the system-call level: the UMEM, the four rings (fill, completion, rx,
//! tx) mapped from the kernel, bind with zero-copy or copy mode, and the wake-ups. The only
//! module of the `afxdp` transport with `unsafe`; everything it hands out is safe: frames are
//! bounds-checked slices of the UMEM, ring entries are copied in and out.
//!
//! The ring protocol is the kernel's (Documentation/networking/af_xdp.rst): single producer,
//! single consumer, free-running 32-bit indices; the producer writes descriptors and then
//! publishes its index with release ordering, the consumer reads the index with acquire
//! ordering before it reads descriptors, and publishes its own index with release ordering
//! after it is done with them.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

fn last_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through `&self`/`&mut
// self` methods of the owners, which the borrow checker serializes.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing refers to the mapping
        // any more (its owners are being dropped).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One of the four rings, mapped from the socket. `T` is `u64` (fill, completion: UMEM
/// addresses) or `libc::xdp_desc` (rx, tx).
struct Ring<T> {
    /// Keeps the ring mapped; unmapped on drop.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring's memory is shared only with the kernel, through the atomic indices; one
// value of `Ring` is the only user-space side.
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps ring `off` of `fd` at page offset `pgoff`.
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Ring<T>> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: mapping a ring of an AF_XDP socket whose size was set before; the kernel
        // checks the offset and length. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_error("mapping an AF_XDP ring"));
        }
        let base = ptr.cast::<u8>();
        // SAFETY: the kernel's offsets lie inside the mapping of `len` bytes (it computed both),
        // and the index fields are 4-byte aligned u32s that the kernel accesses atomically.
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        let map = Mapping {
            // SAFETY: mmap succeeded, so the pointer is not null.
            ptr: unsafe { NonNull::new_unchecked(base) },
            len,
        };
        let producer: NonNull<AtomicU32> = at(off.producer).cast();
        let consumer: NonNull<AtomicU32> = at(off.consumer).cast();
        // SAFETY: both point into the live mapping (see above).
        let (p, c) = unsafe {
            (
                producer.as_ref().load(Ordering::Acquire),
                consumer.as_ref().load(Ordering::Acquire),
            )
        };
        Ok(Ring {
            producer,
            consumer,
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            size,
            cached_prod: p,
            cached_cons: c,
            _map: map,
        })
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into `self.map`, alive as long as `self`.
        unsafe { self.producer.as_ref() }
    }
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as `prod`.
        unsafe { self.consumer.as_ref() }
    }
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as `prod`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: writes as many of `items` as fit and publishes them; returns how many.
    fn push(&mut self, items: &[T]) -> usize {
        let mut free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if (free as usize) < items.len() {
            self.cached_cons = self.cons().load(Ordering::Acquire);
            free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = items.len().min(free as usize);
        for item in &items[..n] {
            let i = (self.cached_prod & (self.size - 1)) as usize;
            // SAFETY: `i < size`, and the descriptor array holds `size` entries inside the
            // mapping; the entry is free (the consumer is past it), so the kernel does not read
            // it until the producer index below is published.
            unsafe { self.descs.as_ptr().add(i).write_volatile(*item) };
            self.cached_prod = self.cached_prod.wrapping_add(1);
        }
        if n > 0 {
            self.prod().store(self.cached_prod, Ordering::Release);
        }
        n
    }

    /// Consumer side: reads up to `max` entries into `out` and releases them; returns how many.
    fn pop(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            self.cached_prod = self.prod().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = (avail as usize).min(max);
        for _ in 0..n {
            let i = (self.cached_cons & (self.size - 1)) as usize;
            // SAFETY: `i < size`; the entry was published by the kernel (it is below the
            // producer index read with acquire ordering) and is not reused until the consumer
            // index below is published.
            out.push(unsafe { self.descs.as_ptr().add(i).read_volatile() });
            self.cached_cons = self.cached_cons.wrapping_add(1);
        }
        if n > 0 {
            self.cons().store(self.cached_cons, Ordering::Release);
        }
        n
    }
}

/// Sizes of the socket.
#[derive(Clone, Copy, Debug)]
pub(super) struct XskSizes {
    /// UMEM chunks (frames); a power of two.
    pub frames: u32,
    /// Bytes per chunk: 2048 or 4096.
    pub frame_size: u32,
    /// Entries of the rx, tx and completion rings; a power of two.
    pub ring: u32,
    /// Entries of the fill ring; a power of two, at least the chunks given to receiving, so
    /// that a chunk always fits when it comes back.
    pub fill_ring: u32,
}

/// An AF_XDP socket bound to one queue of one interface, with its own UMEM.
pub(super) struct Xsk {
    fd: OwnedFd,
    umem: Mapping,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    pub sizes: XskSizes,
    pub zero_copy: bool,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T, what: &str) -> io::Result<()> {
    setsockopt_raw(fd, opt, v).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// `setsockopt(SOL_XDP)`; the error keeps its errno.
fn setsockopt_raw<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the type the option expects, read for its size only.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Xsk {
    /// Creates the socket and its UMEM and binds it to `queue` of interface `ifindex`: in
    /// zero-copy mode if the driver supports it, else in copy mode (`zero_copy` says which).
    /// `force_copy` skips the zero-copy attempt.
    pub fn open(ifindex: u32, queue: u32, sizes: XskSizes, force_copy: bool) -> io::Result<Xsk> {
        if !force_copy {
            match Xsk::open_mode(ifindex, queue, sizes, libc::XDP_ZEROCOPY) {
                Ok(x) => return Ok(x),
                // The driver has no zero-copy (veth, most NICs without an XSK pool): copy mode.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EPROTONOSUPPORT)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Xsk::open_mode(ifindex, queue, sizes, libc::XDP_COPY)
    }

    fn open_mode(ifindex: u32, queue: u32, sizes: XskSizes, mode: u16) -> io::Result<Xsk> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("creating an AF_XDP socket (needs a kernel with CONFIG_XDP_SOCKETS and CAP_NET_RAW): {e}"),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = sizes.frames as usize * sizes.frame_size as usize;
        // SAFETY: an anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_error("allocating the UMEM"));
        }
        let umem = Mapping {
            // SAFETY: mmap succeeded.
            ptr: unsafe { NonNull::new_unchecked(ptr.cast()) },
            len,
        };
        let reg = libc::xdp_umem_reg {
            addr: ptr as u64,
            len: len as u64,
            chunk_size: sizes.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt_raw(fd.as_raw_fd(), libc::XDP_UMEM_REG, &reg).map_err(|e| {
            // The kernel refuses a UMEM over the memlock limit with ENOBUFS (ENOMEM and EPERM
            // on older kernels).
            let hint = if matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::ENOBUFS)
            ) {
                " (the UMEM is locked memory: run as root or raise the memlock limit, ulimit -l or LimitMEMLOCK=)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("registering the UMEM ({len} bytes): {e}{hint}"))
        })?;
        let r = sizes.ring;
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_UMEM_FILL_RING,
            &sizes.fill_ring,
            "sizing the fill ring",
        )?;
        setsockopt(
            fd.as_raw_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &r,
            "sizing the completion ring",
        )?;
        setsockopt(fd.as_raw_fd(), libc::XDP_RX_RING, &r, "sizing the rx ring")?;
        setsockopt(fd.as_raw_fd(), libc::XDP_TX_RING, &r, "sizing the tx ring")?;
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` is writable for `optlen` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        };
        if rc != 0 {
            return Err(last_error("reading the ring offsets"));
        }
        if optlen as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(io::Error::other(
                "this kernel's AF_XDP rings have no flags field (kernel older than 5.4): not supported",
            ));
        }
        let fill = Ring::map(
            fd.as_raw_fd(),
            &off.fr,
            sizes.fill_ring,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )?;
        let comp = Ring::map(
            fd.as_raw_fd(),
            &off.cr,
            r,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let rx = Ring::map(fd.as_raw_fd(), &off.rx, r, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::map(fd.as_raw_fd(), &off.tx, r, libc::XDP_PGOFF_TX_RING as u64)?;
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: mode | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // A queue whose previous socket just closed stays busy for about a second: retry.
        let mut tries = 0;
        loop {
            // SAFETY: `sa` is a valid sockaddr_xdp for its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) && tries < 30 {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            if mode == libc::XDP_ZEROCOPY {
                // Unwrapped, so that `open` can see the errno and fall back to copy mode.
                return Err(e);
            }
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "binding the AF_XDP socket to queue {queue} ({} mode): {e}",
                    if mode == libc::XDP_ZEROCOPY {
                        "zero-copy"
                    } else {
                        "copy"
                    }
                ),
            ));
        }
        let mut opts = libc::xdp_options { flags: 0 };
        let mut optlen = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
        // SAFETY: `opts` is writable for `optlen` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&mut opts as *mut libc::xdp_options).cast(),
                &mut optlen,
            )
        };
        let zero_copy = rc == 0 && opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        Ok(Xsk {
            fd,
            umem,
            fill,
            comp,
            rx,
            tx,
            sizes,
            zero_copy,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        // A frame never crosses its chunk.
        let chunk = self.sizes.frame_size as usize;
        (end <= self.umem.len && start / chunk == (end.max(1) - 1) / chunk).then_some(start..end)
    }

    /// The bytes of a received frame, or `None` if the descriptor points outside the UMEM.
    pub fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let r = self.range(addr, len)?;
        // SAFETY: the range lies inside the UMEM mapping; the kernel wrote this chunk before it
        // published the rx descriptor and does not touch it until it is given back on the fill
        // ring.
        Some(unsafe {
            std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(r.start), r.end - r.start)
        })
    }

    /// A chunk to write a frame into before it is put on the tx ring.
    pub fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let r = self.range(addr, len)?;
        // SAFETY: the range lies inside the UMEM; the chunk is owned by user space (taken from
        // the free list, not on any ring), and `&mut self` makes this the only reference.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(r.start), r.end - r.start)
        })
    }

    /// Gives chunks to the kernel for receiving; returns how many fitted.
    pub fn fill(&mut self, addrs: &[u64]) -> usize {
        self.fill.push(addrs)
    }
    /// Chunks whose transmission completed.
    pub fn completed(&mut self, out: &mut Vec<u64>, max: usize) -> usize {
        self.comp.pop(out, max)
    }
    /// Received frames.
    pub fn received(&mut self, out: &mut Vec<libc::xdp_desc>, max: usize) -> usize {
        self.rx.pop(out, max)
    }
    /// Queues frames for transmission; returns how many fitted.
    pub fn transmit(&mut self, descs: &[libc::xdp_desc]) -> usize {
        self.tx.push(descs)
    }

    /// Whether the kernel has not taken every frame put on the tx ring yet (in copy mode it
    /// takes a bounded number per wake-up).
    pub fn tx_backlog(&self) -> bool {
        self.tx.cons().load(Ordering::Acquire) != self.tx.cached_prod
    }

    /// Tells the kernel to process the tx ring if it asked to be told (always in copy mode).
    /// Transient refusals (the ring is being drained, the device queue is full) are left to
    /// the next call.
    pub fn kick_tx(&mut self) -> io::Result<bool> {
        if !self.tx.needs_wakeup() {
            return Ok(false);
        }
        // SAFETY: a zero-length send with no buffer is the AF_XDP tx wake-up.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => Ok(true),
                _ => Err(e),
            };
        }
        Ok(true)
    }

    /// Tells the kernel that the fill ring has chunks again, if it asked to be told.
    pub fn kick_rx(&mut self) -> bool {
        if !self.fill.needs_wakeup() {
            return false;
        }
        // SAFETY: a zero-length non-blocking receive is the AF_XDP rx wake-up.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
        true
    }

    /// The kernel's counters of this socket (drops for a full rx ring or an empty fill ring).
    pub fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(last_error("reading the AF_XDP statistics"));
        }
        Ok(s)
    }
}

/// What the kernel knows of an interface in the calling thread's network namespace.
#[derive(Clone, Debug)]
pub(super) struct Interface {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl Interface {
    pub fn lookup(name: &str) -> io::Result<Interface> {
        let no_such = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface named {name:?} in this network namespace"),
            )
        };
        let cname = CString::new(name).map_err(|_| no_such())?;
        if name.len() >= libc::IFNAMSIZ {
            return Err(no_such());
        }
        // SAFETY: `cname` is NUL-terminated and outlives the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(no_such());
        }
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error("socket for interface queries"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let req = || {
            // SAFETY: all-zero is a valid ifreq.
            let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            r
        };
        let mut hw = req();
        // SAFETY: SIOCGIFHWADDR reads the name and writes the hardware address into `hw`.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut hw) } != 0 {
            return Err(last_error(&format!("reading {name}'s MAC address")));
        }
        // SAFETY: after SIOCGIFHWADDR the union holds a sockaddr.
        let sa = unsafe { hw.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
            *d = *s as u8;
        }
        let mut m = req();
        // SAFETY: SIOCGIFMTU reads the name and writes the MTU into `m`.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut m) } != 0 {
            return Err(last_error(&format!("reading {name}'s MTU")));
        }
        // SAFETY: after SIOCGIFMTU the union holds an int.
        let mtu = unsafe { m.ifr_ifru.ifru_mtu } as u32;
        Ok(Interface { index, mac, mtu })
    }
}
