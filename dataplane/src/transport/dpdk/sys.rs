//! The only unsafe code of the `dpdk` transport: the EAL, ports, the mbuf pool and mbufs, over
//! the workspace's `dpdk-sys` bindings. Everything here hands out safe handles: an [`Mbuf`] owns
//! one mbuf until it is freed or given to a port, a [`Port`] is stopped and closed when
//! dropped, a [`Pool`] outlives the ports that use it (the transport drops them in that order).

#![allow(unsafe_code)]

use dpdk_sys as sys;
use std::ffi::{CStr, CString};
use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;

/// The EAL's options and result: DPDK starts once per process.
static EAL: Mutex<Option<Result<Vec<String>, String>>> = Mutex::new(None);

fn strerror(e: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or per-thread NUL-terminated string.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(e)) };
    s.to_string_lossy().into_owned()
}

/// Starts DPDK's EAL with `args` (argv[0] included), once per process. A second call with the
/// same arguments is a no-op; with others it is refused (the EAL cannot restart). The calling
/// thread's CPU affinity is restored afterwards: the EAL pins its main lcore, and the caller's
/// threads are not the EAL's to pin.
pub(super) fn eal_init(args: &[String]) -> Result<(), String> {
    let mut g = EAL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(prev) = &*g {
        return match prev {
            Ok(a) if a == args => Ok(()),
            Ok(a) => Err(format!(
                "DPDK's EAL is already running in this process with other options ({}); it starts once per process",
                a.join(" ")
            )),
            Err(e) => Err(format!("DPDK's EAL failed to start earlier in this process: {e}")),
        };
    }
    let cargs: Vec<CString> = match args.iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(c) => c,
        Err(_) => return Err("an EAL argument contains a NUL byte".into()),
    };
    let mut argv: Vec<*mut libc::c_char> = cargs.iter().map(|c| c.as_ptr().cast_mut()).collect();
    let mut saved: libc::cpu_set_t = empty_cpuset();
    // SAFETY: `saved` is a live cpu_set_t of the size passed; pid 0 is the calling thread.
    let have_mask = unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) == 0
    };
    // SAFETY: argv points to NUL-terminated strings that live (in `cargs`) until after the EAL
    // keeps copies of what it needs; the EAL may permute `argv` itself, which is ours.
    let r = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    let result = if r < 0 {
        // SAFETY: reads the calling thread's rte_errno.
        let e = unsafe { sys::cv_errno() };
        Err(format!("{} (rte_errno {e})", strerror(e)))
    } else {
        Ok(args.to_vec())
    };
    if have_mask {
        // SAFETY: restores the mask read above on the calling thread.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &saved);
        }
    }
    *g = Some(result.clone());
    result.map(|_| ())
}

fn empty_cpuset() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

/// Whether the EAL runs in this process.
pub(super) fn eal_running() -> bool {
    matches!(&*EAL.lock().unwrap_or_else(|p| p.into_inner()), Some(Ok(_)))
}

/// How many ports the EAL found.
pub(super) fn port_count() -> u16 {
    // SAFETY: a plain query.
    unsafe { sys::rte_eth_dev_count_avail() }
}

/// The lowest valid port id, if the EAL has any port.
pub(super) fn first_port() -> Option<u16> {
    // SAFETY: plain queries over the range of port ids.
    (0..sys::RTE_MAX_ETHPORTS as u16).find(|&p| unsafe { sys::rte_eth_dev_is_valid_port(p) } == 1)
}

/// The port of that name (a vdev's name, `net_af_packet0`; a PCI address), if any.
pub(super) fn port_by_name(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: `c` is NUL-terminated and `id` a live u16.
    let r = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (r == 0).then_some(id)
}

/// A packet-buffer pool.
pub(super) struct Pool(NonNull<sys::rte_mempool>);

// SAFETY: DPDK's mempools are thread-safe (multi-producer, multi-consumer rings); the handle
// only frees it on drop.
unsafe impl Send for Pool {}

impl Pool {
    /// `n` buffers of `data_room` bytes (plus DPDK's headroom), named `name` (unique in the
    /// process).
    pub fn new(name: &str, n: u32, data_room: u16) -> io::Result<Pool> {
        let c = CString::new(name).map_err(|_| io::Error::other("pool name has a NUL byte"))?;
        // SAFETY: the EAL is initialized (callers open ports after eal_init); `c` lives for
        // the call (DPDK copies the name).
        let p = unsafe { sys::cv_pool_create(c.as_ptr(), n, data_room) };
        NonNull::new(p).map(Pool).ok_or_else(|| {
            // SAFETY: reads rte_errno of this thread.
            let e = unsafe { sys::cv_errno() };
            io::Error::other(format!(
                "creating a pool of {n} mbufs: {} (the EAL's memory, -m / member.dpdk.memory_mb, may be too small)",
                strerror(e)
            ))
        })
    }

    /// Takes `n` fresh mbufs, all or none, appended to `out` (no allocation once `out` has
    /// the capacity).
    pub fn alloc(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        out.reserve(n);
        let len = out.len();
        // SAFETY: `out` has room for `n` more elements after `len`; `Mbuf` is a transparent
        // `NonNull<rte_mbuf>`, laid out as the `*mut rte_mbuf` DPDK writes. On success DPDK
        // writes `n` non-null mbufs there, which `out` then owns; on failure it writes none
        // that count and the length stays.
        unsafe {
            let dst = out.as_mut_ptr().add(len).cast::<*mut sys::rte_mbuf>();
            if sys::cv_pktmbuf_alloc_bulk(self.0.as_ptr(), dst, n as u32) != 0 {
                return false;
            }
            out.set_len(len + n);
        }
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the ports that used the pool are closed before (the transport's field order)
        // and no Mbuf outlives the transport.
        unsafe { sys::rte_mempool_free(self.0.as_ptr()) }
    }
}

/// One mbuf, owned: freed on drop unless given to a port.
#[repr(transparent)]
pub(super) struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is a buffer in the pool's shared memory, owned by exactly one handle.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// The frame's bytes, if it is one segment (the transport's frames always are).
    pub fn data(&self) -> Option<&[u8]> {
        let m = self.0.as_ptr();
        // SAFETY: `m` is a live mbuf we own; data_len bytes from its data pointer are the
        // segment's contents, valid until the mbuf is freed (which needs `self` by value).
        unsafe {
            let len = sys::cv_mbuf_data_len(m);
            if u32::from(len) != sys::cv_mbuf_pkt_len(m) {
                return None;
            }
            Some(std::slice::from_raw_parts(
                sys::cv_mbuf_data(m),
                usize::from(len),
            ))
        }
    }

    /// Sets the (fresh) mbuf's length to `len` and returns its bytes to fill; `None` if it does
    /// not fit.
    pub fn set_len(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: `self` owns the mbuf; the returned slice borrows `self` mutably, so it ends
        // before the mbuf can be freed or sent.
        unsafe {
            let p = sys::cv_mbuf_set_len(self.0.as_ptr(), len16);
            if p.is_null() {
                return None;
            }
            Some(std::slice::from_raw_parts_mut(p, len))
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and it was not given away (see Port::tx_burst).
        unsafe { sys::cv_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// What a port says about itself.
#[derive(Clone, Debug)]
pub(super) struct PortInfo {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub driver: String,
    pub name: String,
}

/// Port counters (rte_eth_stats).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// An Ethernet port with one rx and one tx queue, used by one thread at a time (`&mut`).
pub(super) struct Port {
    id: u16,
    started: bool,
    raw: Vec<*mut sys::rte_mbuf>,
}

// SAFETY: DPDK lets any one thread at a time use a queue; the handle's `&mut` methods ensure it.
unsafe impl Send for Port {}

impl Port {
    pub fn new(id: u16) -> Port {
        Port {
            id,
            started: false,
            raw: Vec::new(),
        }
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Configures one rx and one tx queue on `pool` and starts the port.
    pub fn start(&mut self, pool: &Pool, rx_desc: u16, tx_desc: u16) -> io::Result<()> {
        let mut err = [0 as libc::c_char; 128];
        // SAFETY: the pool is live and outlives the port (field order); `err` is a live buffer
        // of the length passed.
        let r = unsafe {
            sys::cv_port_start(
                self.id,
                pool.0.as_ptr(),
                rx_desc,
                tx_desc,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if r != 0 {
            // SAFETY: the shim wrote a NUL-terminated string into `err` (snprintf).
            let step = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(io::Error::other(format!("{step}: {}", strerror(-r))));
        }
        self.started = true;
        Ok(())
    }

    pub fn info(&self) -> io::Result<PortInfo> {
        let mut i = sys::cv_port_info::default();
        // SAFETY: `i` is a live struct the shim fills.
        let r = unsafe { sys::cv_port_info(self.id, &mut i) };
        if r != 0 {
            return Err(io::Error::other(format!(
                "port {}: {}",
                self.id,
                strerror(-r)
            )));
        }
        let s = |b: &[libc::c_char]| {
            let bytes: Vec<u8> = b
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Ok(PortInfo {
            mac: i.mac,
            mtu: i.mtu,
            driver: s(&i.driver),
            name: s(&i.name),
        })
    }

    pub fn stats(&self) -> PortStats {
        let mut o = [0u64; sys::CV_STATS as usize];
        // SAFETY: `o` has CV_STATS entries, as the shim writes.
        let r = unsafe { sys::cv_port_stats(self.id, o.as_mut_ptr()) };
        if r != 0 {
            return PortStats::default();
        }
        PortStats {
            ipackets: o[sys::CV_STAT_IPACKETS as usize],
            opackets: o[sys::CV_STAT_OPACKETS as usize],
            imissed: o[sys::CV_STAT_IMISSED as usize],
            ierrors: o[sys::CV_STAT_IERRORS as usize],
            oerrors: o[sys::CV_STAT_OERRORS as usize],
            rx_nombuf: o[sys::CV_STAT_RX_NOMBUF as usize],
        }
    }

    /// Receives up to `n` frames into `out`.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, n: usize) -> usize {
        let n = n.min(u16::MAX as usize);
        self.raw.clear();
        self.raw.resize(n, std::ptr::null_mut());
        // SAFETY: `raw` has room for `n` pointers; the driver writes the first `got`, each an
        // mbuf now owned by the caller.
        let got = unsafe { sys::cv_rx_burst(self.id, 0, self.raw.as_mut_ptr(), n as u16) };
        let got = usize::from(got);
        out.extend(
            self.raw[..got]
                .iter()
                .filter_map(|&p| NonNull::new(p))
                .map(Mbuf),
        );
        got
    }

    /// Sends from the front of `q`: what the driver took leaves `q` (it is the driver's now);
    /// the rest stays, in order. Returns how many were sent.
    pub fn tx_burst(&mut self, q: &mut std::collections::VecDeque<Mbuf>) -> usize {
        let n = q.len().min(u16::MAX as usize);
        if n == 0 {
            return 0;
        }
        self.raw.clear();
        self.raw.extend(q.iter().take(n).map(|m| m.0.as_ptr()));
        // SAFETY: the first `n` entries are live mbufs owned by `q`; the driver takes the first
        // `sent` of them.
        let sent =
            usize::from(unsafe { sys::cv_tx_burst(self.id, 0, self.raw.as_mut_ptr(), n as u16) });
        for m in q.drain(..sent) {
            // The driver owns (and frees) these now.
            std::mem::forget(m);
        }
        sent
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port id is valid; stopping and closing a port is allowed once, here.
        unsafe {
            if self.started {
                sys::rte_eth_dev_stop(self.id);
            }
            sys::rte_eth_dev_close(self.id);
        }
    }
}

/// Two ring ports in this process wired to each other: what one sends the other receives. For
/// tests; the EAL must be running.
#[cfg(test)]
pub(super) fn ring_link(a: &str, b: &str) -> io::Result<(Port, Port)> {
    let (ca, cb) = (
        CString::new(a).map_err(|_| io::Error::other("NUL in name"))?,
        CString::new(b).map_err(|_| io::Error::other("NUL in name"))?,
    );
    let (mut pa, mut pb) = (0u16, 0u16);
    // SAFETY: the names are NUL-terminated and the ids live u16s.
    let r = unsafe { sys::cv_ring_link(ca.as_ptr(), cb.as_ptr(), &mut pa, &mut pb) };
    if r != 0 {
        return Err(io::Error::other(format!(
            "ring link {a}-{b}: {}",
            strerror(-r)
        )));
    }
    Ok((Port::new(pa), Port::new(pb)))
}
