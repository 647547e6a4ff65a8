//! The simulated network: what a member sends reaches its destinations after a drawn delay,
//! or not (loss, partitions, one-way links, frames larger than the transports accept), once or
//! twice, sometimes corrupted, sometimes again long after (replays); and frames from outside:
//! other keys and groups, and an earlier run of the group.

use super::*;

impl Sim {
    /// Schedules `earlier_run` frames of `tape` (an earlier run's, valid for this group) to
    /// arrive at random members: half in the first 30 ms (the first view's start-up, when no
    /// member has taken a process for the others yet), half at any time of the workload.
    pub(super) fn replay_earlier_run(&mut self, tape: &[Vec<u8>]) {
        let count = self.cfg.earlier_run;
        if tape.is_empty() || count == 0 {
            return;
        }
        let horizon = self.cfg.requests as u64 * self.cfg.push_gap_us.1 + 10_000;
        for k in 0..count {
            let frame = tape[self.rng.gen_range(0..tape.len())].clone();
            let to = self.rng.gen_range(0..self.cfg.members);
            let at = if k % 2 == 0 {
                self.rng.gen_range(0..30_000)
            } else {
                self.rng.gen_range(0..horizon)
            };
            self.report.corners.earlier_run += 1;
            self.schedule(at, Event::Arrive { to, frame });
        }
    }

    /// Frames from outside the group: a wrong key, and the right key with another group id.
    pub(super) fn inject_foreign(&mut self) {
        let n = self.cfg.members;
        for to in 0..n {
            for j in 0..self.cfg.foreign_frames {
                let wrong_key = j % 2 == 0;
                let key = if wrong_key {
                    Key::from_bytes([0x13; 32])
                } else {
                    Key::from_bytes([0x42; 32])
                };
                let header = Header {
                    kind: Kind::Data,
                    group: if wrong_key { GROUP } else { GroupId(0xBAD) },
                    view: ViewId(1),
                    sender: MemberId(((to + 1) % n) as u16),
                    count: 0,
                    seq: Seq(0),
                    flags: 0,
                    incarnation: 1,
                };
                let row = Row {
                    heartbeat: 1,
                    delivered: 0,
                    persisted: 0,
                    received: vec![0; n],
                    incarnations: Vec::new(),
                };
                let mut buf = Vec::new();
                let mut w = FrameWriter::new(&mut buf, 1500, &header, &row);
                let evil = Op::Push {
                    pusher: MemberId(0),
                    req: Request {
                        id: RequestId(u64::MAX),
                        instance: 0,
                        step: "s0".into(),
                        queue: "s0".into(),
                        payload: b"forged".to_vec(),
                        meta: Meta::default(),
                        http: None,
                    },
                };
                w.push_data(&evil.encode());
                w.finish(&key);
                let t = self.rng.gen_range(0..20_000);
                self.schedule(t, Event::Arrive { to, frame: buf });
            }
        }
    }

    /// Whether frames from `a` to `b` are lost now (a partition, or a one-way link).
    pub(super) fn cut(&self, a: usize, b: usize) -> bool {
        self.cfg.partitions.iter().any(|(s, e, side)| {
            self.now >= *s && self.now < *e && (side.contains(&a) != side.contains(&b))
        }) || self
            .cfg
            .one_way
            .iter()
            .any(|&(s, e, from, to)| self.now >= s && self.now < e && from == a && to == b)
    }

    /// Sends what member `i` has to send through the simulated network (with `partial`, each
    /// copy reaches its destination only at random: the process dies, or is cut off, while
    /// sending). Returns the members that some frame will reach.
    pub(super) fn flush(&mut self, i: usize, partial: bool) -> BTreeSet<usize> {
        let mut reached = BTreeSet::new();
        let now = Instant::from_micros(self.now);
        while let Some(t) = self.nodes[i].replica.poll_transmit(now) {
            if let Some(tape) = self.tape.as_mut().filter(|t| t.len() < TAPE_MAX) {
                tape.push(t.frame.clone());
            }
            let dests: Vec<usize> = match t.dest {
                Dest::All => self.nodes[i]
                    .replica
                    .view()
                    .members
                    .iter()
                    .map(|m| m.0 as usize)
                    .filter(|&j| j != i)
                    .collect(),
                Dest::One(m) => vec![m.0 as usize],
            };
            for to in dests {
                if to >= self.nodes.len() || self.cut(i, to) || self.rng.gen_bool(self.cfg.loss) {
                    continue;
                }
                if partial && self.rng.gen_bool(0.5) {
                    continue;
                }
                let copies = if self.rng.gen_bool(self.cfg.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let mut frame = t.frame.clone();
                    if self.rng.gen_bool(self.cfg.corrupt) {
                        let k = self.rng.gen_range(0..frame.len());
                        frame[k] ^= 1 << self.rng.gen_range(0..8);
                    }
                    let (slow, (lo, hi)) = self.cfg.slow_frames;
                    let delay = if slow > 0.0 && self.rng.gen_bool(slow) {
                        self.rng.gen_range(lo..=hi)
                    } else {
                        self.rng
                            .gen_range(self.cfg.delay_us.0..=self.cfg.delay_us.1)
                    };
                    // The transports receive into buffers of max_frame + 64 bytes and drop what
                    // does not fit (udp truncates, shm, afxdp and dpdk refuse): so does the
                    // network here.
                    if frame.len() > self.cfg.proto.max_frame + 64 {
                        self.report.oversized_frames += 1;
                        continue;
                    }
                    if self.cfg.replay > 0.0 {
                        let control = conveyor_core::wire::Frame::parse(&self.key, &frame)
                            .is_ok_and(|f| f.header.kind == Kind::Control);
                        let share = if control {
                            (self.cfg.replay * 10.0).min(1.0)
                        } else {
                            self.cfg.replay
                        };
                        if self.rng.gen_bool(share) {
                            let later = self.now + self.rng.gen_range(10_000..2_000_000);
                            self.report.corners.replay += 1;
                            self.schedule(
                                later,
                                Event::Arrive {
                                    to,
                                    frame: frame.clone(),
                                },
                            );
                        }
                    }
                    reached.insert(to);
                    self.schedule(self.now + delay, Event::Arrive { to, frame });
                }
            }
            self.nodes[i].replica.recycle(t.frame);
        }
        reached
    }
}
