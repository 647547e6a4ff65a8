//! An in-process emulation of RDMA verbs with the semantics the `rdma` transport relies on, for
//! tests on machines without an RDMA device.
//!
//! What it keeps of a reliable-connected queue pair:
//! - WRITEs on one queue pair are placed in the peer's memory in the order they were posted,
//!   and complete in that order; a WRITE WITH IMMEDIATE consumes one posted receive at the peer
//!   and completes there too, after its bytes are placed;
//! - a WRITE to a queue pair that is not connected yet waits (the hardware retransmits);
//! - a WRITE to a dead device or a destroyed queue pair completes with `RetryExceeded`, one
//!   with a bad rkey or out of bounds with `RemoteAccess`; the queue pair then goes to the
//!   error state, and what was posted after it completes with `Flushed`; an immediate that
//!   finds no receive posted waits (receiver-not-ready retries, `rnr_retry = 7`: for ever);
//! - [`Fabric::hold`] keeps posted WRITEs in flight until released, so a test can kill a peer
//!   in the middle of them.
//!
//! Memory is ordinary memory behind the fabric's lock; everything is safe Rust.

use super::{Completion, Endpoint, MrId, QpId, RemoteMr, Verbs, WcOpcode, WcStatus};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
struct Write {
    wr_id: u64,
    data: Vec<u8>,
    addr: u64,
    rkey: u32,
    imm: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
enum QpState {
    /// Created; not connected.
    Init,
    /// Connected to (device, qp).
    Rts(usize, QpId),
    Error,
}

#[derive(Debug)]
struct Qp {
    state: QpState,
    recvs: VecDeque<u64>,
    in_flight: VecDeque<Write>,
}

#[derive(Debug, Default)]
struct Device {
    alive: bool,
    mrs: HashMap<MrId, Vec<u8>>,
    qps: HashMap<QpId, Qp>,
    cq: VecDeque<Completion>,
}

#[derive(Debug, Default)]
struct State {
    devices: Vec<Device>,
    next_qpn: u32,
    next_mr: u32,
    held: bool,
}

/// The emulated network: devices, their memory, queue pairs and completion queues.
#[derive(Clone, Debug, Default)]
pub struct Fabric(Arc<Mutex<State>>);

/// Region addresses: the region's number in the high half, the offset in the low half.
fn mr_addr(mr: MrId) -> u64 {
    u64::from(mr) << 32
}
fn rkey_of(mr: MrId) -> u32 {
    mr ^ 0x5eed_0000
}

impl Fabric {
    pub fn new() -> Fabric {
        Fabric::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new device on the fabric.
    pub fn device(&self) -> Arc<EmuDevice> {
        let mut s = self.lock();
        s.devices.push(Device {
            alive: true,
            ..Device::default()
        });
        Arc::new(EmuDevice {
            fabric: self.clone(),
            id: s.devices.len() - 1,
        })
    }

    /// Keeps posted WRITEs in flight (`true`) until released (`false`).
    pub fn hold(&self, held: bool) {
        let mut s = self.lock();
        s.held = held;
        if !held {
            progress(&mut s);
        }
    }

    /// The device dies: its queue pairs stop answering, its completion queue is gone.
    pub fn kill(&self, dev: &EmuDevice) {
        let mut s = self.lock();
        let d = &mut s.devices[dev.id];
        d.alive = false;
        d.cq.clear();
        for qp in d.qps.values_mut() {
            qp.state = QpState::Error;
            qp.in_flight.clear();
        }
    }

    /// WRITEs posted and not yet placed, on every device.
    pub fn in_flight(&self) -> usize {
        self.lock()
            .devices
            .iter()
            .flat_map(|d| d.qps.values())
            .map(|q| q.in_flight.len())
            .sum()
    }
}

/// Places every WRITE in flight that can be, in order per queue pair.
fn progress(s: &mut State) {
    if s.held {
        return;
    }
    let n = s.devices.len();
    for dev in 0..n {
        let qpns: Vec<QpId> = s.devices[dev].qps.keys().copied().collect();
        for qpn in qpns {
            loop {
                let (target, front) = {
                    let Some(qp) = s.devices[dev].qps.get_mut(&qpn) else {
                        break;
                    };
                    let QpState::Rts(td, tq) = qp.state else {
                        break;
                    };
                    let Some(w) = qp.in_flight.pop_front() else {
                        break;
                    };
                    ((td, tq), w)
                };
                match place(s, target, &front) {
                    Placed::Done => {
                        s.devices[dev].cq.push_back(Completion {
                            wr_id: front.wr_id,
                            qp: qpn,
                            status: WcStatus::Success,
                            opcode: WcOpcode::RdmaWrite,
                            imm: None,
                        });
                    }
                    Placed::NotYet => {
                        // The peer's queue pair is not connected yet: the hardware retries.
                        if let Some(qp) = s.devices[dev].qps.get_mut(&qpn) {
                            qp.in_flight.push_front(front);
                        }
                        break;
                    }
                    Placed::Failed(status) => {
                        let d = &mut s.devices[dev];
                        d.cq.push_back(Completion {
                            wr_id: front.wr_id,
                            qp: qpn,
                            status,
                            opcode: WcOpcode::RdmaWrite,
                            imm: None,
                        });
                        if let Some(qp) = d.qps.get_mut(&qpn) {
                            qp.state = QpState::Error;
                            for w in qp.in_flight.drain(..) {
                                d.cq.push_back(Completion {
                                    wr_id: w.wr_id,
                                    qp: qpn,
                                    status: WcStatus::Flushed,
                                    opcode: WcOpcode::RdmaWrite,
                                    imm: None,
                                });
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
}

enum Placed {
    Done,
    NotYet,
    Failed(WcStatus),
}

fn place(s: &mut State, (td, tq): (usize, QpId), w: &Write) -> Placed {
    let Some(t) = s.devices.get_mut(td) else {
        return Placed::Failed(WcStatus::RetryExceeded);
    };
    if !t.alive {
        return Placed::Failed(WcStatus::RetryExceeded);
    }
    let Some(tqp) = t.qps.get_mut(&tq) else {
        return Placed::Failed(WcStatus::RetryExceeded);
    };
    match tqp.state {
        QpState::Init => return Placed::NotYet,
        QpState::Error => return Placed::Failed(WcStatus::RetryExceeded),
        QpState::Rts(..) => {}
    }
    if w.imm.is_some() && tqp.recvs.is_empty() {
        // Receiver not ready: the transport sets rnr_retry = 7 (retry for ever).
        return Placed::NotYet;
    }
    let mr = (w.addr >> 32) as u32;
    let off = (w.addr & 0xffff_ffff) as usize;
    let Some(mem) = t.mrs.get_mut(&mr).filter(|_| rkey_of(mr) == w.rkey) else {
        return Placed::Failed(WcStatus::RemoteAccess);
    };
    let Some(dst) = mem.get_mut(off..off + w.data.len()) else {
        return Placed::Failed(WcStatus::RemoteAccess);
    };
    dst.copy_from_slice(&w.data);
    if let Some(imm) = w.imm {
        let recv = tqp.recvs.pop_front().unwrap_or_default();
        t.cq.push_back(Completion {
            wr_id: recv,
            qp: tq,
            status: WcStatus::Success,
            opcode: WcOpcode::RecvRdmaWithImm,
            imm: Some(imm),
        });
    }
    Placed::Done
}

/// One emulated device (context, protection domain and completion queue).
#[derive(Debug)]
pub struct EmuDevice {
    fabric: Fabric,
    id: usize,
}

impl EmuDevice {
    pub fn fabric(&self) -> &Fabric {
        &self.fabric
    }
}

fn dead() -> io::Error {
    io::Error::other("the emulated device is dead")
}

impl Verbs for EmuDevice {
    fn describe(&self) -> String {
        format!("emulated RDMA device {} (in-process fabric)", self.id)
    }

    fn register(&self, len: usize) -> io::Result<(MrId, RemoteMr)> {
        let mut s = self.fabric.lock();
        s.next_mr += 1;
        let mr = s.next_mr;
        let d = &mut s.devices[self.id];
        if !d.alive {
            return Err(dead());
        }
        d.mrs.insert(mr, vec![0; len]);
        Ok((
            mr,
            RemoteMr {
                addr: mr_addr(mr),
                rkey: rkey_of(mr),
                len: len as u64,
            },
        ))
    }

    fn read(&self, mr: MrId, off: usize, out: &mut [u8]) {
        let s = self.fabric.lock();
        if let Some(src) = s.devices[self.id]
            .mrs
            .get(&mr)
            .and_then(|m| m.get(off..off + out.len()))
        {
            out.copy_from_slice(src);
        }
    }

    fn write(&self, mr: MrId, off: usize, data: &[u8]) {
        let mut s = self.fabric.lock();
        if let Some(dst) = s.devices[self.id]
            .mrs
            .get_mut(&mr)
            .and_then(|m| m.get_mut(off..off + data.len()))
        {
            dst.copy_from_slice(data);
        }
    }

    fn read_u64(&self, mr: MrId, off: usize) -> u64 {
        let mut b = [0u8; 8];
        self.read(mr, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn create_qp(&self) -> io::Result<(QpId, Endpoint)> {
        let mut s = self.fabric.lock();
        s.next_qpn += 1;
        let qpn = s.next_qpn;
        let d = &mut s.devices[self.id];
        if !d.alive {
            return Err(dead());
        }
        d.qps.insert(
            qpn,
            Qp {
                state: QpState::Init,
                recvs: VecDeque::new(),
                in_flight: VecDeque::new(),
            },
        );
        Ok((
            qpn,
            Endpoint {
                qpn,
                lid: self.id as u16,
                gid: [0; 16],
                psn: 0,
            },
        ))
    }

    fn connect(&self, qp: QpId, remote: &Endpoint) -> io::Result<()> {
        let mut s = self.fabric.lock();
        let d = &mut s.devices[self.id];
        if !d.alive {
            return Err(dead());
        }
        let q = d
            .qps
            .get_mut(&qp)
            .ok_or_else(|| io::Error::other("no such queue pair"))?;
        if q.state != QpState::Init {
            return Err(io::Error::other("the queue pair is not in the INIT state"));
        }
        q.state = QpState::Rts(usize::from(remote.lid), remote.qpn);
        progress(&mut s);
        Ok(())
    }

    fn destroy_qp(&self, qp: QpId) {
        let mut s = self.fabric.lock();
        s.devices[self.id].qps.remove(&qp);
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
        let mut s = self.fabric.lock();
        let d = &mut s.devices[self.id];
        if !d.alive {
            return Err(dead());
        }
        // The NIC reads the local bytes after the post; nothing rewrites a staged slot before
        // its completion, so reading them now is the same.
        let data = d
            .mrs
            .get(&mr)
            .and_then(|m| m.get(off..off + len))
            .ok_or_else(|| io::Error::other("local buffer out of the region (lkey check)"))?
            .to_vec();
        let q = d
            .qps
            .get_mut(&qp)
            .ok_or_else(|| io::Error::other("no such queue pair"))?;
        match q.state {
            QpState::Init => return Err(io::Error::other("post on a queue pair not connected")),
            QpState::Error => {
                d.cq.push_back(Completion {
                    wr_id,
                    qp,
                    status: WcStatus::Flushed,
                    opcode: WcOpcode::RdmaWrite,
                    imm: None,
                });
                return Ok(());
            }
            QpState::Rts(..) => {}
        }
        q.in_flight.push_back(Write {
            wr_id,
            data,
            addr: to.addr + to_off,
            rkey: to.rkey,
            imm,
        });
        progress(&mut s);
        Ok(())
    }

    fn post_recv(&self, qp: QpId, wr_id: u64) -> io::Result<()> {
        let mut s = self.fabric.lock();
        let d = &mut s.devices[self.id];
        if !d.alive {
            return Err(dead());
        }
        d.qps
            .get_mut(&qp)
            .ok_or_else(|| io::Error::other("no such queue pair"))?
            .recvs
            .push_back(wr_id);
        // A write that waited for this receive can land now.
        progress(&mut s);
        Ok(())
    }

    fn poll(&self, out: &mut Vec<Completion>, max: usize) {
        let mut s = self.fabric.lock();
        progress(&mut s);
        let d = &mut s.devices[self.id];
        let n = max.min(d.cq.len());
        out.extend(d.cq.drain(..n));
    }
}
