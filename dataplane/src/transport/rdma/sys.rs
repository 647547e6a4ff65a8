//! [`Verbs`] on libibverbs (through `rdma-sys`): the real device. All of the `rdma` transport's
//! unsafe code is here, each block with its SAFETY comment.
//!
//! Not run on hardware by the people who wrote it: the machines it was written on have no RDMA
//! device and no RDMA support in the kernel (`ibv_get_device_list` fails with ENOSYS). It is
//! compiled and linked in CI, and [`IbvDevice::open`] is run there to check what it says without
//! a device; the transport's logic above it runs against the emulation (`emu`).

#![allow(unsafe_code)]

use super::{Completion, Endpoint, IbvConfig, MrId, QpId, RemoteMr, Verbs, WcOpcode, WcStatus};
use rdma_sys::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Send and receive queue depths of each queue pair (frames, credits and a margin).
const MAX_SEND_WR: u32 = 2 * super::SLOTS as u32 + 64;
const MAX_RECV_WR: u32 = super::SLOTS as u32 + 64;
const CQ_DEPTH: i32 = 16 * 1024;
const ALIGN: usize = 4096;

struct Region {
    base: NonNull<u8>,
    len: usize,
    mr: *mut ibv_mr,
    lkey: u32,
}

struct Qp {
    qp: *mut ibv_qp,
    psn: u32,
}

/// An open device: context, protection domain, one completion queue.
pub struct IbvDevice {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
    cq: *mut ibv_cq,
    port: u8,
    gid_index: u8,
    lid: u16,
    gid: [u8; 16],
    mtu: ibv_mtu::Type,
    name: String,
    link_layer: u8,
    mrs: Mutex<HashMap<MrId, Region>>,
    qps: Mutex<HashMap<QpId, Qp>>,
    next_mr: AtomicU32,
    /// ibv_poll_cq on one CQ from several threads is allowed, but the transport polls from
    /// one; the lock keeps the scratch array single-user.
    wcs: Mutex<Vec<ibv_wc>>,
}

impl std::fmt::Debug for IbvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvDevice")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

// SAFETY: libibverbs objects may be used from any thread (the library is thread-safe); the
// maps that name them are behind locks, and the memory regions are only touched through the
// bounds-checked accessors below.
unsafe impl Send for IbvDevice {}
// SAFETY: as above.
unsafe impl Sync for IbvDevice {}

/// What to check when no device can be used.
pub const NO_DEVICE_HELP: &str = "check that `ibv_devices` lists the NIC, that rdma-core's provider for it is installed (ConnectX: libmlx5, Debian's ibverbs-providers), that the kernel has its RDMA driver (mlx5_ib; `rdma link show`), and that /dev/infiniband/uverbs* exists and is accessible to this user";

fn no_device(detail: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no usable RDMA device: {detail}; {NO_DEVICE_HELP}"),
    )
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

impl IbvDevice {
    /// Opens the device and port, and allocates the protection domain and completion queue.
    pub fn open(cfg: &IbvConfig) -> io::Result<IbvDevice> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a live int; the returned list is freed below on every path.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = errno();
            let why = if e.raw_os_error() == Some(libc::ENOSYS) {
                format!("ibv_get_device_list: {e} (this kernel has no RDMA support)")
            } else {
                format!("ibv_get_device_list: {e}")
            };
            return Err(no_device(why));
        }
        let mut names = Vec::new();
        let mut chosen = None;
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: a device of the list has a NUL-terminated name.
            let name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) }
                .to_string_lossy()
                .into_owned();
            if chosen.is_none() && cfg.device.as_ref().is_none_or(|d| *d == name) {
                chosen = Some((dev, name.clone()));
            }
            names.push(name);
        }
        let Some((dev, name)) = chosen else {
            // SAFETY: frees the list obtained above.
            unsafe { ibv_free_device_list(list) };
            return Err(no_device(match &cfg.device {
                Some(d) => format!("no device named {d:?} (found {names:?})"),
                None => "ibv_get_device_list found none".into(),
            }));
        };
        // SAFETY: `dev` comes from the live list.
        let ctx = unsafe { ibv_open_device(dev) };
        // SAFETY: the context keeps what it needs of the device; the list can go.
        unsafe { ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(no_device(format!("ibv_open_device({name}): {}", errno())));
        }
        let close = |e: io::Error| {
            // SAFETY: `ctx` is open and nothing else uses it yet.
            unsafe { ibv_close_device(ctx) };
            e
        };
        // SAFETY: a zeroed ibv_port_attr is a valid out-parameter.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open; `attr` is a live struct.
        if unsafe { ___ibv_query_port(ctx, cfg.port, &mut attr) } != 0 {
            return Err(close(no_device(format!(
                "{name} has no port {} ({})",
                cfg.port,
                errno()
            ))));
        }
        if attr.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(close(no_device(format!(
                "port {} of {name} is not active (state {}): check its link with ibv_devinfo",
                cfg.port, attr.state
            ))));
        }
        // SAFETY: a zeroed ibv_gid is valid; the call fills it.
        let mut gid: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open; `gid` is a live union.
        if unsafe { ibv_query_gid(ctx, cfg.port, i32::from(cfg.gid_index), &mut gid) } != 0 {
            return Err(close(no_device(format!(
                "{name} port {} has no GID at index {}",
                cfg.port, cfg.gid_index
            ))));
        }
        // SAFETY: `ctx` is open.
        let pd = unsafe { ibv_alloc_pd(ctx) };
        if pd.is_null() {
            return Err(close(io::Error::other(format!(
                "ibv_alloc_pd: {}",
                errno()
            ))));
        }
        // SAFETY: `ctx` is open; no completion channel, vector 0.
        let cq =
            unsafe { ibv_create_cq(ctx, CQ_DEPTH, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if cq.is_null() {
            let e = errno();
            // SAFETY: `pd` was allocated above and holds nothing.
            unsafe { ibv_dealloc_pd(pd) };
            return Err(close(io::Error::other(format!("ibv_create_cq: {e}"))));
        }
        Ok(IbvDevice {
            ctx,
            pd,
            cq,
            port: cfg.port,
            gid_index: cfg.gid_index,
            lid: attr.lid,
            // SAFETY: every bit pattern of the union is a valid [u8; 16].
            gid: unsafe { gid.raw },
            mtu: attr.active_mtu,
            name,
            link_layer: attr.link_layer,
            mrs: Mutex::new(HashMap::new()),
            qps: Mutex::new(HashMap::new()),
            next_mr: AtomicU32::new(1),
            // SAFETY: a zeroed ibv_wc is a valid value (plain integers and a union of them).
            wcs: Mutex::new((0..64).map(|_| unsafe { std::mem::zeroed() }).collect()),
        })
    }

    fn qp(&self, qp: QpId) -> io::Result<(*mut ibv_qp, u32)> {
        let qps = self.qps.lock().unwrap_or_else(|p| p.into_inner());
        qps.get(&qp)
            .map(|q| (q.qp, q.psn))
            .ok_or_else(|| io::Error::other(format!("no queue pair {qp}")))
    }

    fn modify(
        &self,
        qp: *mut ibv_qp,
        attr: &mut ibv_qp_attr,
        mask: u32,
        step: &str,
    ) -> io::Result<()> {
        // SAFETY: `qp` is a live queue pair of this device; `attr` is a live, initialized
        // struct; the mask names the fields set.
        let r = unsafe { ibv_modify_qp(qp, attr, mask as i32) };
        if r != 0 {
            return Err(io::Error::other(format!(
                "moving the queue pair to {step}: {}",
                io::Error::from_raw_os_error(r)
            )));
        }
        Ok(())
    }
}

impl Drop for IbvDevice {
    fn drop(&mut self) {
        let qps = std::mem::take(&mut *self.qps.lock().unwrap_or_else(|p| p.into_inner()));
        let mrs = std::mem::take(&mut *self.mrs.lock().unwrap_or_else(|p| p.into_inner()));
        // SAFETY: everything below was created by this device and is destroyed once, queue
        // pairs before the completion queue, regions before their memory, all before the
        // protection domain and the context.
        unsafe {
            for q in qps.into_values() {
                ibv_destroy_qp(q.qp);
            }
            ibv_destroy_cq(self.cq);
            for r in mrs.into_values() {
                ibv_dereg_mr(r.mr);
                std::alloc::dealloc(
                    r.base.as_ptr(),
                    std::alloc::Layout::from_size_align_unchecked(r.len, ALIGN),
                );
            }
            ibv_dealloc_pd(self.pd);
            ibv_close_device(self.ctx);
        }
    }
}

impl Verbs for IbvDevice {
    fn describe(&self) -> String {
        // IBV_LINK_LAYER_INFINIBAND and _ETHERNET (verbs.h defines, not in the bindings).
        let ll = match self.link_layer {
            1 => "InfiniBand",
            2 => "RoCE",
            _ => "unknown link layer",
        };
        format!(
            "{} port {} ({ll}, LID {}, GID index {})",
            self.name, self.port, self.lid, self.gid_index
        )
    }

    fn register(&self, len: usize) -> io::Result<(MrId, RemoteMr)> {
        let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| io::Error::other("out of memory for the RDMA region"))?;
        let access =
            ibv_access_flags::IBV_ACCESS_LOCAL_WRITE | ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        // SAFETY: `base` points to `layout.size()` bytes that live until deregistration (Drop).
        let mr = unsafe {
            ibv_reg_mr(
                self.pd,
                base.as_ptr().cast(),
                layout.size(),
                access.0 as i32,
            )
        };
        if mr.is_null() {
            let e = errno();
            // SAFETY: allocated above with this layout; not registered.
            unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (the memlock limit is too low: raise it with ulimit -l or LimitMEMLOCK=, or run as root)"
            } else {
                ""
            };
            return Err(io::Error::other(format!(
                "registering {} bytes with {}: {e}{hint}",
                layout.size(),
                self.name
            )));
        }
        // SAFETY: `mr` is a live registration.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        let id = self.next_mr.fetch_add(1, Ordering::Relaxed);
        self.mrs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Region {
                base,
                len: layout.size(),
                mr,
                lkey,
            },
        );
        Ok((
            id,
            RemoteMr {
                addr: base.as_ptr() as u64,
                rkey,
                len: layout.size() as u64,
            },
        ))
    }

    fn read(&self, mr: MrId, off: usize, out: &mut [u8]) {
        let mrs = self.mrs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = mrs.get(&mr) else { return };
        if off.checked_add(out.len()).is_none_or(|end| end > r.len) {
            return;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: in bounds (checked); the device writes these bytes before the completion
        // that made the caller read them, and nothing else writes them meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(r.base.as_ptr().add(off), out.as_mut_ptr(), out.len())
        };
    }

    fn write(&self, mr: MrId, off: usize, data: &[u8]) {
        let mrs = self.mrs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = mrs.get(&mr) else { return };
        if off.checked_add(data.len()).is_none_or(|end| end > r.len) {
            return;
        }
        // SAFETY: in bounds (checked); staging bytes no posted work request is reading (the
        // transport reuses a staging slot only after its completion).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), r.base.as_ptr().add(off), data.len())
        };
        std::sync::atomic::fence(Ordering::Release);
    }

    fn read_u64(&self, mr: MrId, off: usize) -> u64 {
        let mrs = self.mrs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = mrs.get(&mr) else { return 0 };
        if !off.is_multiple_of(8) || off + 8 > r.len {
            return 0;
        }
        // SAFETY: in bounds and 8-aligned (the region is page-aligned); a peer's NIC may be
        // writing it, so it is read once, volatile (an aligned 8-byte write is placed whole).
        unsafe { std::ptr::read_volatile(r.base.as_ptr().add(off).cast::<u64>()) }
    }

    fn create_qp(&self) -> io::Result<(QpId, Endpoint)> {
        // SAFETY: a zeroed init attr is valid; the fields the call needs are set below.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = self.cq;
        init.recv_cq = self.cq;
        init.cap.max_send_wr = MAX_SEND_WR;
        init.cap.max_recv_wr = MAX_RECV_WR;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: the protection domain and completion queue are live; `init` is initialized.
        let qp = unsafe { ibv_create_qp(self.pd, &mut init) };
        if qp.is_null() {
            return Err(io::Error::other(format!("ibv_create_qp: {}", errno())));
        }
        // SAFETY: `qp` is live.
        let qpn = unsafe { (*qp).qp_num };
        let psn = (crate::sys::monotonic_us() as u32 ^ qpn.rotate_left(8)) & 0x00ff_ffff;
        self.qps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(qpn, Qp { qp, psn });
        Ok((
            qpn,
            Endpoint {
                qpn,
                lid: self.lid,
                gid: self.gid,
                psn,
            },
        ))
    }

    fn connect(&self, qp: QpId, remote: &Endpoint) -> io::Result<()> {
        let (q, psn) = self.qp(qp)?;
        // SAFETY: zeroed attrs are valid; each step sets what its mask names.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.port;
        a.qp_access_flags = ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv_qp_attr_mask::IBV_QP_PORT
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        self.modify(q, &mut a, m.0, "INIT")?;

        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = self.mtu;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = self.port;
        if remote.gid != [0; 16] {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid = ibv_gid { raw: remote.gid };
            a.ah_attr.grh.sgid_index = self.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_AV
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(q, &mut a, m.0, "RTR")?;

        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        // 7: retry for ever when the peer has no receive posted (its credit prevents it).
        a.rnr_retry = 7;
        a.sq_psn = psn;
        a.max_rd_atomic = 1;
        let m = ibv_qp_attr_mask::IBV_QP_STATE
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(q, &mut a, m.0, "RTS")
    }

    fn destroy_qp(&self, qp: QpId) {
        let q = self
            .qps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&qp);
        if let Some(q) = q {
            // SAFETY: removed from the map, so destroyed once; its completions left in the
            // CQ name a queue pair number the transport no longer knows and are skipped.
            unsafe { ibv_destroy_qp(q.qp) };
        }
    }

    fn post_write(
        &self,
        qp: QpId,
        wr_id: u64,
        mr: MrId,
        off: usize,
        len: usize,
        to: RemoteMr,
        to_off: u64,
        imm: Option<u32>,
    ) -> io::Result<()> {
        let (q, _) = self.qp(qp)?;
        let (addr, lkey) = {
            let mrs = self.mrs.lock().unwrap_or_else(|p| p.into_inner());
            let r = mrs
                .get(&mr)
                .ok_or_else(|| io::Error::other("no such region"))?;
            if off.checked_add(len).is_none_or(|end| end > r.len) {
                return Err(io::Error::other("local range out of the region"));
            }
            (r.base.as_ptr() as u64 + off as u64, r.lkey)
        };
        let mut sge = ibv_sge {
            addr,
            length: len as u32,
            lkey,
        };
        // SAFETY: a zeroed send work request is valid; the fields used are set below.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        match imm {
            Some(v) => {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                wr.imm_data_invalidated_rkey_union.imm_data = v.to_be();
            }
            None => wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE,
        }
        wr.wr.rdma = rdma_t {
            remote_addr: to.addr + to_off,
            rkey: to.rkey,
        };
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: `q` is a live queue pair; `wr` and `sge` live until the call returns (the
        // provider copies them into the send queue).
        let r = unsafe { ibv_post_send(q, &mut wr, &mut bad) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    fn post_recv(&self, qp: QpId, wr_id: u64) -> io::Result<()> {
        let (q, _) = self.qp(qp)?;
        // SAFETY: a zeroed receive work request with no scatter list is valid (it takes only
        // the immediate of a WRITE WITH IMMEDIATE).
        let mut wr: ibv_recv_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: `q` is live; `wr` lives until the call returns.
        let r = unsafe { ibv_post_recv(q, &mut wr, &mut bad) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    fn poll(&self, out: &mut Vec<Completion>, max: usize) {
        let mut wcs = self.wcs.lock().unwrap_or_else(|p| p.into_inner());
        let n = max.min(wcs.len()) as i32;
        // SAFETY: `wcs` has room for `n` entries; the CQ is live.
        let got = unsafe { ibv_poll_cq(self.cq, n, wcs.as_mut_ptr()) };
        for wc in wcs.iter().take(got.max(0) as usize) {
            let status = match wc.status {
                ibv_wc_status::IBV_WC_SUCCESS => WcStatus::Success,
                ibv_wc_status::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
                ibv_wc_status::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
                ibv_wc_status::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
                ibv_wc_status::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
                s => WcStatus::Other(s),
            };
            let opcode = match wc.opcode {
                ibv_wc_opcode::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
                ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
                _ => WcOpcode::Other,
            };
            let imm = (opcode == WcOpcode::RecvRdmaWithImm)
                // SAFETY: with this opcode the union holds the immediate (network order).
                .then(|| u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data }));
            out.push(Completion {
                wr_id: wc.wr_id,
                qp: wc.qp_num,
                status,
                opcode,
                imm,
            });
        }
    }
}

/// Whether libibverbs loads and what it says about devices here (for `conveyor` start-up
/// messages and the tests): Ok(names) or the error `open` would give.
pub fn devices() -> io::Result<Vec<String>> {
    let mut n: i32 = 0;
    // SAFETY: as in `open`.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(errno());
    }
    let names = (0..n.max(0) as usize)
        .map(|i| {
            // SAFETY: the list holds `n` devices, each with a NUL-terminated name.
            unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: frees the list obtained above.
    unsafe { ibv_free_device_list(list) };
    Ok(names)
}
