//! A deterministic simulator of a whole Conveyor group.
//!
//! Every member is a real [`Replica`] (the production protocol core and queue replica, exactly
//! what the engine drives); the simulator owns virtual time and the network. One seed decides
//! everything: the group size, the protocol's windows and frame size, loss, duplication,
//! corruption, delay and reordering, partitions and their heal, foreign frames (wrong key,
//! wrong group), and the workload. The same seed always replays the same run.
//!
//! Membership faults drawn from the seed too: crashes of a minority (sometimes of the member
//! that leads the view change, sometimes while a change is under way), restarts of crashed
//! members as new joiners, and members excluded by a partition rejoining after it heals
//! (several may join at once). Joiners get the queue state by state transfer.
//!
//! Workload: member 0 creates a two-step pipeline's queues; every member subscribes and offers
//! credits, as an invoker; members push requests; a member assigned a request completes it
//! after a simulated execution time, pushing the continuation (step `s0` to `s1`) atomically.
//!
//! Checkers run after every step (one packet arrival, timer or workload action at one member):
//! - integrity: every delivery was submitted with that payload, and no member delivers a
//!   message twice (a message resubmitted after a view change included);
//! - per-sender FIFO: a member delivers each sender's messages in submission order;
//! - total order, agreement and virtual synchrony: one reference sequence of messages and view
//!   installations; every member (incarnation) delivers a contiguous part of it from its first
//!   view on, so members that install a view delivered exactly the same messages before it;
//!   no two views with one id;
//! - stability before delivery: outside the ragged-edge cleanup, when a member delivers a
//!   message every member of that view holds it;
//! - bounded memory: buffered slots stay within the flow-control bound;
//! - replicas identical: after the same position of the reference, queue state digests are
//!   equal, and a joiner's transferred state equals the others' at its first view;
//! - exactly one consumer: a request instance is never assigned twice;
//! - no member wrongly concludes that it restarted inside the view.
//!
//! After the last fault the run continues until every live member serves in one view, has
//! delivered everything, and every run the group admitted (its first push delivered) finished
//! exactly once: no loss and no duplicate effect, whoever crashed (liveness once a majority is
//! connected); a deadline turns a stall into a failure.

use conveyor_core::proto::membership::Status;
use conveyor_core::proto::{Delivery, Dest, ProtoConfig, SubmitError};
use conveyor_core::queue::{Effect, Http, Meta, OnFull, Op, Order, QueueSpec, Request};
use conveyor_core::types::{GroupId, Instant, MemberId, RequestId, Seq, View, ViewId};
use conveyor_core::wire::{FrameWriter, Header, Key, Kind, Row};
use conveyor_core::{Applied, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::time::Duration;

/// The network, faults and workload of one run, all drawn from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub members: usize,
    pub loss: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    pub delay_us: (u64, u64),
    /// Requests pushed per member.
    pub requests: usize,
    /// Gap between a member's pushes, microseconds (min, max).
    pub push_gap_us: (u64, u64),
    /// Simulated execution time of a step, microseconds (min, max).
    pub exec_us: (u64, u64),
    /// (start, end, side): links between `side` and the others are cut in [start, end).
    pub partitions: Vec<(u64, u64, Vec<usize>)>,
    /// (time, member): the member's process stops for good (a minority in total).
    pub crashes: Vec<(u64, usize)>,
    /// (time, member): a crashed member starts again, as a new joiner with no state.
    pub restarts: Vec<(u64, usize)>,
    /// Members excluded by a view change (partitioned, suspected) rejoin this long after.
    pub rejoin_after_us: Option<u64>,
    /// Frames from outside the group (wrong key, or right key and wrong group) per member.
    pub foreign_frames: usize,
    pub proto: ProtoConfig,
    /// Virtual time allowed after the last fault and the last push for everything to finish.
    pub settle_us: u64,
}

impl SimConfig {
    /// Draws a configuration from a seed.
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_c0de);
        let members = rng.gen_range(2..=5);
        let lossy = rng.gen_bool(0.7);
        let loss = if lossy { rng.gen_range(0.0..0.25) } else { 0.0 };
        let duplicate = if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.1)
        } else {
            0.0
        };
        let corrupt = if rng.gen_bool(0.3) {
            rng.gen_range(0.0..0.05)
        } else {
            0.0
        };
        let dmin = rng.gen_range(5..200);
        let delay_us = (dmin, dmin + rng.gen_range(0..2000));
        let requests = rng.gen_range(5..40);
        let gmin = rng.gen_range(0..300);
        let push_gap_us = (gmin, gmin + rng.gen_range(1..3000));
        let exec_us = (0, rng.gen_range(1..1000));
        let horizon = requests as u64 * push_gap_us.1;
        let mut partitions = Vec::new();
        for _ in 0..rng.gen_range(0..3) {
            let start = rng.gen_range(0..horizon.max(1));
            let end = start + rng.gen_range(1_000..200_000);
            let mut side: Vec<usize> = (0..members).filter(|_| rng.gen_bool(0.4)).collect();
            if side.is_empty() {
                side.push(rng.gen_range(0..members));
            }
            partitions.push((start, end, side));
        }
        let heartbeat = Duration::from_micros(rng.gen_range(2_000..20_000));
        // Timeouts from aggressive (false suspicions under loss: exclusions and rejoins) to
        // comfortable.
        let failure_timeout = heartbeat * rng.gen_range(3..10) + Duration::from_micros(delay_us.1);
        // A minority crashes; sometimes the first-ranked member (the leader of the change),
        // sometimes two members close together (a crash during the change).
        let mut crashes = Vec::new();
        let mut restarts = Vec::new();
        if members >= 3 && rng.gen_bool(0.4) {
            let max = (members - 1) / 2;
            let mut who: Vec<usize> = (0..members).collect();
            if rng.gen_bool(0.5) {
                who.swap(0, rng.gen_range(0..members));
            }
            let first = rng.gen_range(0..horizon.max(1) + 10_000);
            for (k, &m) in who.iter().take(rng.gen_range(1..=max)).enumerate() {
                let at =
                    first + k as u64 * rng.gen_range(0..failure_timeout.as_micros() as u64 * 2);
                crashes.push((at, m));
                if rng.gen_bool(0.6) {
                    restarts.push((at + rng.gen_range(1_000..300_000), m));
                }
            }
        }
        let rejoin_after_us = if rng.gen_bool(0.8) {
            Some(rng.gen_range(0..50_000))
        } else {
            None
        };
        let window = *[2u64, 4, 8, 32, 256].get(rng.gen_range(0..5)).unwrap_or(&8);
        let max_frame = *[300usize, 600, 1500, 8192]
            .get(rng.gen_range(0..4))
            .unwrap_or(&1500);
        let proto = ProtoConfig {
            window,
            max_frame,
            max_payload: conveyor_core::wire::max_payload_for(max_frame, members).min(200),
            status_interval: Duration::from_micros(rng.gen_range(500..3000)),
            heartbeat,
            failure_timeout,
            rto: Duration::from_micros(rng.gen_range(500..4000)),
            rto_max: Duration::from_millis(rng.gen_range(20..200)),
            ..ProtoConfig::default()
        };
        let mut cfg = SimConfig {
            members,
            loss,
            duplicate,
            corrupt,
            delay_us,
            requests,
            push_gap_us,
            exec_us,
            partitions,
            crashes,
            restarts,
            rejoin_after_us,
            foreign_frames: rng.gen_range(0..4),
            proto,
            settle_us: 60_000_000,
        };
        // Drawn after everything else, so that older seeds keep their draws.
        cfg.proto.startup_grace = cfg.proto.failure_timeout * rng.gen_range(2..20);
        cfg
    }
}

/// A property that did not hold, with where and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub at_us: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated at t={}us: {}",
            self.property, self.at_us, self.detail
        )
    }
}

/// What a run did, for tests that look at more than pass or fail.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub dropped_frames: u64,
    pub max_batch: u64,
    pub window_full: u64,
    pub requests_finished: usize,
    pub end_us: u64,
    pub view_changes: u64,
    pub joins: u64,
    pub requeued: u64,
    pub resubmitted: u64,
    pub crashes: usize,
    /// Joiners whose transferred state carried pipelines, and whose application was told.
    pub pipelines_after_state: u64,
    /// Frames larger than the transports accept (max_frame + 64), dropped by the network.
    pub oversized_frames: u64,
    /// The run ended stalled because the latest view lost its majority (no liveness owed).
    pub majority_lost: bool,
}

/// What many runs did in all (a soak, the CI's seeds).
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub runs: u64,
    pub delivered: u64,
    pub retransmitted_slots: u64,
    pub dropped_frames: u64,
    pub oversized_frames: u64,
    pub view_changes: u64,
    pub joins: u64,
    pub pipelines_after_state: u64,
    pub requeued: u64,
    pub resubmitted: u64,
    pub crashes: u64,
    pub requests_finished: u64,
    /// Runs that ended without a majority (no liveness owed).
    pub majority_lost: u64,
}

impl Totals {
    pub fn add(&mut self, r: &Report) {
        self.runs += 1;
        self.delivered += r.delivered;
        self.retransmitted_slots += r.retransmitted_slots;
        self.dropped_frames += r.dropped_frames;
        self.oversized_frames += r.oversized_frames;
        self.view_changes += r.view_changes;
        self.joins += r.joins;
        self.pipelines_after_state += r.pipelines_after_state;
        self.requeued += r.requeued;
        self.resubmitted += r.resubmitted;
        self.crashes += r.crashes as u64;
        self.requests_finished += r.requests_finished as u64;
        self.majority_lost += u64::from(r.majority_lost);
    }
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs: {} messages delivered, {} runs finished, {} slots retransmitted, {} frames dropped ({} oversized), {} crashes, {} view installations, {} joins with state transfer ({} carrying pipelines), {} requests re-queued, {} messages resubmitted, {} runs ended without a majority",
            self.runs,
            self.delivered,
            self.requests_finished,
            self.retransmitted_slots,
            self.dropped_frames,
            self.oversized_frames,
            self.crashes,
            self.view_changes,
            self.joins,
            self.pipelines_after_state,
            self.requeued,
            self.resubmitted,
            self.majority_lost
        )
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A frame reaches `to`.
    Arrive {
        to: usize,
        frame: Vec<u8>,
    },
    /// Member `at` wants to submit its next workload op.
    Push {
        at: usize,
    },
    /// Member `at` (incarnation `inc`) finishes executing a request.
    Finish {
        at: usize,
        inc: u32,
        req_idx: usize,
    },
    Crash {
        at: usize,
    },
    /// A new incarnation of member `at` asks to join.
    Rejoin {
        at: usize,
    },
}

/// One item of the agreed order: a message (by its simulator-wide id) or a view installed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Msg(u64),
    View(ViewId, Vec<MemberId>),
}

struct Node {
    /// The member's process: the protocol core and its queue replica.
    replica: Replica,
    /// Process incarnation (0 for the original; each rejoin is a new process).
    inc: u32,
    alive: bool,
    /// Ops waiting for window room (or for the member to serve), in order.
    outbox: VecDeque<Op>,
    /// Position in the reference order of the next item this incarnation delivers; `None`
    /// for a joiner before its first view.
    pos: Option<usize>,
    /// A joiner's first view, until its place in the reference is known.
    first_view: Option<Item>,
    /// Message ids this incarnation delivered.
    seen: BTreeSet<u64>,
    /// Per origin (node, incarnation): last message counter delivered.
    last_from: BTreeMap<(usize, u32), u64>,
    pushes_left: usize,
    counter: u64,
    executing: Vec<Option<Request>>,
    rejoin_scheduled: bool,
    trace: String,
}

/// One seeded run.
#[allow(missing_debug_implementations)]
pub struct Sim {
    cfg: SimConfig,
    key: Key,
    rng: ChaCha8Rng,
    now: u64,
    nodes: Vec<Node>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    event_seq: u64,
    /// Every submission: id -> (node, incarnation, counter, payload).
    submitted: BTreeMap<u64, (usize, u32, u64, Vec<u8>)>,
    /// Per (node, incarnation): submission counter.
    sub_counter: BTreeMap<(usize, u32), u64>,
    next_msg: u64,
    /// The agreed order, and the queue digest after each of its items.
    reference: Vec<Item>,
    digests: Vec<[u8; 32]>,
    /// Request instances assigned and not yet finished or put back.
    assigned: BTreeSet<u64>,
    /// Requests whose run ended (terminal completion), with count.
    finished: BTreeMap<RequestId, u32>,
    /// Runs admitted: their first push was delivered.
    admitted: BTreeSet<RequestId>,
    rejected: BTreeSet<RequestId>,
    last_fault: u64,
    report: Report,
}

const GROUP: GroupId = GroupId(0xC0);

fn spec(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        capacity: 1 << 16,
        order: Order::Fifo,
        on_full: OnFull::Block,
    }
}

/// Every member creates the queues (idempotent), subscribes to them and offers credits.
fn invoker_ops(me: MemberId) -> Vec<Op> {
    let mut ops = vec![Op::Create(spec("s0")), Op::Create(spec("s1"))];
    ops.extend(["s0", "s1"].iter().map(|q| Op::Subscribe {
        consumer: me,
        queue: (*q).into(),
    }));
    ops.push(Op::Ready {
        consumer: me,
        credits: 2,
    });
    ops
}

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let key = Key::from_bytes([0x42; 32]);
        let view = View::new(ViewId(1), (0..cfg.members as u16).map(MemberId).collect());
        let mut nodes = Vec::new();
        for i in 0..cfg.members {
            let replica = Replica::new(
                cfg.proto.clone(),
                key.clone(),
                GROUP,
                view.clone(),
                MemberId(i as u16),
                Instant::ZERO,
            )
            .expect("valid sim config");
            let me = MemberId(i as u16);
            let mut outbox = VecDeque::new();
            outbox.extend(invoker_ops(me));
            nodes.push(Node {
                replica,
                inc: 0,
                alive: true,
                outbox,
                pos: Some(0),
                first_view: None,
                seen: BTreeSet::new(),
                last_from: BTreeMap::new(),
                pushes_left: cfg.requests,
                counter: 0,
                executing: Vec::new(),
                rejoin_scheduled: false,
                trace: String::new(),
            });
        }
        let last_fault = cfg
            .partitions
            .iter()
            .map(|p| p.1)
            .chain(cfg.crashes.iter().map(|c| c.0))
            .chain(cfg.restarts.iter().map(|c| c.0))
            .max()
            .unwrap_or(0);
        let mut sim = Sim {
            key,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            nodes,
            events: BinaryHeap::new(),
            event_seq: 0,
            submitted: BTreeMap::new(),
            sub_counter: BTreeMap::new(),
            next_msg: 0,
            reference: Vec::new(),
            digests: Vec::new(),
            assigned: BTreeSet::new(),
            finished: BTreeMap::new(),
            admitted: BTreeSet::new(),
            rejected: BTreeSet::new(),
            last_fault,
            report: Report::default(),
            cfg,
        };
        for i in 0..sim.cfg.members {
            let t = sim.rng.gen_range(1_000..5_000);
            sim.schedule(t, Event::Push { at: i });
        }
        for (t, m) in sim.cfg.crashes.clone() {
            sim.schedule(t, Event::Crash { at: m });
        }
        for (t, m) in sim.cfg.restarts.clone() {
            sim.schedule(t, Event::Rejoin { at: m });
        }
        sim.inject_foreign();
        sim
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.event_seq += 1;
        self.events.push(Reverse((at, self.event_seq, e)));
    }

    /// Frames from outside the group: a wrong key, and the right key with another group id.
    fn inject_foreign(&mut self) {
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
                };
                let row = Row {
                    heartbeat: 1,
                    delivered: 0,
                    received: vec![0; n],
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

    fn cut(&self, a: usize, b: usize) -> bool {
        self.cfg.partitions.iter().any(|(s, e, side)| {
            self.now >= *s && self.now < *e && (side.contains(&a) != side.contains(&b))
        })
    }

    fn violation(&self, property: &'static str, detail: String) -> Violation {
        Violation {
            property,
            at_us: self.now,
            detail,
        }
    }

    /// Sends what member `i` has to send through the simulated network.
    fn flush(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].replica.poll_transmit() {
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
                    let delay = self
                        .rng
                        .gen_range(self.cfg.delay_us.0..=self.cfg.delay_us.1);
                    // The transports receive into buffers of max_frame + 64 bytes and drop what
                    // does not fit (udp truncates, shm, afxdp and dpdk refuse): so does the
                    // network here.
                    if frame.len() > self.cfg.proto.max_frame + 64 {
                        self.report.oversized_frames += 1;
                        continue;
                    }
                    self.schedule(self.now + delay, Event::Arrive { to, frame });
                }
            }
            self.nodes[i].replica.recycle(t.frame);
        }
    }

    fn submit_outbox(&mut self, i: usize) {
        let key = (i, self.nodes[i].inc);
        while let Some(op) = self.nodes[i].outbox.pop_front() {
            // The simulator's message id follows the operation: the replica decodes the
            // operation and ignores what follows it.
            let id = self.next_msg;
            let mut payload = op.encode();
            payload.extend_from_slice(&id.to_le_bytes());
            match self.nodes[i].replica.submit_encoded(payload.clone()) {
                Ok(_) => {
                    self.next_msg += 1;
                    let c = self.sub_counter.entry(key).or_insert(0);
                    *c += 1;
                    self.submitted.insert(id, (i, key.1, *c, payload));
                }
                Err(SubmitError::WindowFull) | Err(SubmitError::NotServing(_)) => {
                    self.nodes[i].outbox.push_front(op);
                    break;
                }
                Err(e) => panic!("workload op refused: {e}"),
            }
        }
    }

    /// Lets member `i`'s replica apply its deliveries, one at a time, and checks every
    /// property after each.
    fn deliver(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(applied) = self.nodes[i].replica.poll_applied() {
            match applied {
                Applied::Message {
                    delivery,
                    malformed,
                    effects,
                } => self.on_message(i, delivery, malformed, &effects)?,
                Applied::View {
                    change: vc,
                    effects,
                } => {
                    if std::env::var_os("SIM_TRACE").is_some() {
                        eprintln!("t={} m{i} installs view {} {:?}: removed {:?} joined {:?} state from {:?} cut {}", self.now, vc.view.id.0, vc.view.members, vc.removed, vc.joined, vc.state_from, vc.cut);
                    }
                    // The replica reports the view before it puts anything back, as the
                    // engine hands it on.
                    if !matches!(effects.first(), Some(Effect::ViewInstalled { view, .. }) if *view == vc.view.id.0)
                    {
                        return Err(self.violation(
                            "effects in order",
                            format!(
                                "m{i}'s view {} did not start with its ViewInstalled: {effects:?}",
                                vc.view.id.0
                            ),
                        ));
                    }
                    let item = Item::View(vc.view.id, vc.view.members.clone());
                    if self.nodes[i].pos.is_none() {
                        // A joiner: it starts right after the installation of its first view
                        // (which an old member may install after it, when the member that
                        // committed was itself left out: resolved at the joiner's state).
                        self.nodes[i].first_view = Some(item);
                        continue;
                    }
                    self.check_order(i, item)?;
                    self.after_apply(i, &effects)?;
                    self.report.view_changes += 1;
                    self.report.resubmitted += vc.resubmitted;
                }
                Applied::State { ok, effects } => {
                    if !ok {
                        return Err(self.violation(
                            "state transfer",
                            format!("m{i} received a state that does not decode"),
                        ));
                    }
                    self.resolve_first_view(i)?;
                    let pos = self.nodes[i].pos.unwrap_or(0);
                    let q = self.nodes[i].replica.queue();
                    if self.digests.get(pos.wrapping_sub(1)) != Some(&q.digest()) {
                        return Err(self.violation(
                            "replicas identical",
                            format!("joiner m{i}'s transferred state differs from the group's at its first view"),
                        ));
                    }
                    // The pipelines the state carries reach the joiner's application, as the
                    // engine hands them on.
                    let carried = q.pipeline_docs().map(|(v, d)| (v, d.to_vec()));
                    let told = effects.iter().find_map(|e| match e {
                        Effect::Pipelines { version, docs } => Some((*version, docs.clone())),
                        _ => None,
                    });
                    if told != carried {
                        return Err(self.violation(
                            "pipelines after state transfer",
                            format!(
                                "joiner m{i} holds pipelines {carried:?} and was told {told:?}"
                            ),
                        ));
                    }
                    if told.is_some() {
                        self.report.pipelines_after_state += 1;
                    }
                    self.report.joins += 1;
                    let me = MemberId(i as u16);
                    self.nodes[i].outbox.extend(invoker_ops(me));
                }
            }
        }
        if let Some(p) = self.nodes[i].replica.member().restarted_in_view() {
            return Err(self.violation(
                "no false restart detection",
                format!("m{i} believes it restarted, from {p}'s row"),
            ));
        }
        let m = self.nodes[i].replica.member();
        if m.buffered_slots() > m.buffer_bound() {
            return Err(self.violation(
                "bounded memory",
                format!(
                    "m{i} buffers {} slots, bound {}",
                    m.buffered_slots(),
                    m.buffer_bound()
                ),
            ));
        }
        // Excluded or left: the process is replaced by a new incarnation that joins.
        if m.status().is_final() && !self.nodes[i].rejoin_scheduled {
            if let Some(after) = self.cfg.rejoin_after_us {
                self.nodes[i].rejoin_scheduled = true;
                self.schedule(self.now + after, Event::Rejoin { at: i });
            }
        }
        Ok(())
    }

    /// A joiner's place in the reference: right after its first view.
    fn resolve_first_view(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].pos.is_some() {
            return Ok(());
        }
        let Some(item) = self.nodes[i].first_view.clone() else {
            return Ok(());
        };
        let Some(p) = self.reference.iter().position(|x| *x == item) else {
            return Err(self.violation(
                "virtual synchrony",
                format!("joiner m{i} got its state or a message before any old member installed its first view {item:?}"),
            ));
        };
        self.nodes[i].pos = Some(p + 1);
        Ok(())
    }

    /// Total order, agreement and virtual synchrony: `item` must be the next of the reference
    /// for member `i`.
    fn check_order(&mut self, i: usize, item: Item) -> Result<(), Violation> {
        self.resolve_first_view(i)?;
        let Some(pos) = self.nodes[i].pos else {
            return Err(self.violation(
                "virtual synchrony",
                format!("joiner m{i} delivered {item:?} before its first view"),
            ));
        };
        match self.reference.get(pos) {
            Some(r) if *r != item => {
                return Err(self.violation(
                    "total order",
                    format!("m{i} delivered {item:?} at position {pos} where another member delivered {r:?}"),
                ));
            }
            Some(_) => {}
            None => {
                if let Item::View(id, members) = &item {
                    if let Some(other) = self
                        .reference
                        .iter()
                        .find(|x| matches!(x, Item::View(v, m) if v == id && m != members))
                    {
                        return Err(self.violation(
                            "one view per id",
                            format!("view {} installed as {members:?} and as {other:?}", id.0),
                        ));
                    }
                }
                self.reference.push(item);
            }
        }
        self.nodes[i].pos = Some(pos + 1);
        Ok(())
    }

    fn on_message(
        &mut self,
        i: usize,
        d: Delivery,
        malformed: bool,
        effects: &[Effect],
    ) -> Result<(), Violation> {
        let inc = self.nodes[i].inc;
        let id = d
            .payload
            .len()
            .checked_sub(8)
            .and_then(|at| d.payload.get(at..))
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(u64::MAX);
        // Integrity.
        let Some((origin, oinc, counter, payload)) = self.submitted.get(&id).cloned() else {
            return Err(self.violation(
                "integrity",
                format!(
                    "m{i} delivered {}:{} which was never submitted",
                    d.sender, d.seq.0
                ),
            ));
        };
        if payload != d.payload || MemberId(origin as u16) != d.sender {
            return Err(self.violation(
                "integrity",
                format!("m{i} delivered message {id} with another payload or sender"),
            ));
        }
        if !self.nodes[i].seen.insert(id) {
            return Err(self.violation(
                "integrity",
                format!("m{i} (incarnation {inc}) delivered message {id} twice"),
            ));
        }
        // Per-sender FIFO.
        let last = self.nodes[i].last_from.insert((origin, oinc), counter);
        if last.is_some_and(|l| l >= counter) {
            return Err(self.violation(
                "per-sender FIFO",
                format!(
                    "m{i} delivered m{origin}'s #{counter} after #{}",
                    last.unwrap_or(0)
                ),
            ));
        }
        // Stability: outside the cleanup, every member of that view holds it.
        if !d.in_cut {
            for (j, other) in self.nodes.iter().enumerate() {
                let m = other.replica.member();
                if m.view().id == d.view && !m.has_received(d.sender, d.seq) {
                    return Err(self.violation(
                        "stability before delivery",
                        format!(
                            "m{i} delivered {}:{} which m{j} does not hold",
                            d.sender, d.seq.0
                        ),
                    ));
                }
            }
        }
        self.check_order(i, Item::Msg(id))?;
        let op = Op::decode(&d.payload);
        let Some(op) = op.ok().filter(|_| !malformed) else {
            return Err(self.violation("integrity", format!("m{i} delivered an undecodable op")));
        };
        if let Op::Push { req, .. } = &op {
            if req.step == "s0" {
                self.admitted.insert(req.id);
            }
        }
        self.after_apply(i, effects)
    }

    /// Replica digests, exactly one consumer, and the effects for this member.
    fn after_apply(&mut self, i: usize, effects: &[Effect]) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        let pos = self.nodes[i].pos.unwrap_or(1) - 1;
        let digest = self.nodes[i].replica.queue().digest();
        let first = self.digests.len() == pos;
        match self.digests.get(pos) {
            Some(dg) if *dg != digest => {
                return Err(self.violation(
                    "replicas identical",
                    format!("m{i}'s queue state differs at position {pos}"),
                ));
            }
            Some(_) => {}
            None => self.digests.push(digest),
        }
        for e in effects {
            match e {
                Effect::Assigned { consumer, req } => {
                    if first && !self.assigned.insert(req.instance) {
                        return Err(self.violation(
                            "exactly one consumer",
                            format!(
                                "{}/{} (instance {}) assigned twice",
                                req.id, req.step, req.instance
                            ),
                        ));
                    }
                    if *consumer == me {
                        let exec = self.rng.gen_range(self.cfg.exec_us.0..=self.cfg.exec_us.1);
                        self.nodes[i].executing.push(Some(req.clone()));
                        let req_idx = self.nodes[i].executing.len() - 1;
                        let inc = self.nodes[i].inc;
                        self.schedule(
                            self.now + exec,
                            Event::Finish {
                                at: i,
                                inc,
                                req_idx,
                            },
                        );
                    }
                }
                Effect::Requeued { old_instance, .. } if first => {
                    self.assigned.remove(old_instance);
                    self.report.requeued += 1;
                }
                Effect::Completed {
                    id,
                    instance,
                    terminal,
                    ..
                } if first => {
                    self.assigned.remove(instance);
                    if *terminal {
                        *self.finished.entry(*id).or_insert(0) += 1;
                    }
                }
                Effect::Rejected { id, .. } if first => {
                    self.rejected.insert(*id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn step_member(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].alive {
            return Ok(());
        }
        if std::env::var_os("SIM_TRACE").is_some() {
            let m = self.nodes[i].replica.member();
            let now = format!(
                "{} v{} {:?}",
                m.status().label(),
                m.view().id.0,
                m.suspects()
            );
            if self.nodes[i].trace != now {
                eprintln!("t={} m{i}: {now}", self.now);
                self.nodes[i].trace = now;
            }
        }
        self.submit_outbox(i);
        self.deliver(i)?;
        self.submit_outbox(i);
        self.flush(i);
        Ok(())
    }

    fn done(&self) -> bool {
        if self.now < self.last_fault {
            return false;
        }
        // Live: running, and not excluded for good (when excluded members do not rejoin).
        let live: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| {
                n.alive
                    && !(n.replica.member().status().is_final()
                        && self.cfg.rejoin_after_us.is_none())
            })
            .collect();
        live.iter().all(|n| {
            n.replica.member().status() == Status::Serving
                && n.pushes_left == 0
                && n.outbox.is_empty()
                && n.executing.iter().all(Option::is_none)
                && n.pos == Some(self.reference.len())
                && n.replica.member().window_room() == n.replica.member().config().window
        }) && live
            .windows(2)
            .all(|w| w[0].replica.view() == w[1].replica.view())
            && self
                .admitted
                .iter()
                .all(|id| self.rejected.contains(id) || self.finished.contains_key(id))
    }

    /// Whether fewer than a majority of the latest view installed anywhere are alive and
    /// still in it.
    fn majority_lost(&self) -> bool {
        let Some(latest) = self.reference.iter().rev().find_map(|x| match x {
            Item::View(id, members) => Some((*id, members.clone())),
            Item::Msg(_) => None,
        }) else {
            return false;
        };
        let (id, members) = latest;
        let ok = members
            .iter()
            .filter(|m| {
                let n = &self.nodes[m.0 as usize];
                n.alive
                    && n.replica.member().view().id == id
                    && !n.replica.member().status().is_final()
            })
            .count();
        ok * 2 <= members.len()
    }

    fn rejoin(&mut self, i: usize) {
        let n = &self.nodes[i];
        if n.alive && !n.replica.member().status().is_final() {
            return;
        }
        let contacts: Vec<MemberId> = (0..self.cfg.members as u16)
            .filter(|&j| j as usize != i)
            .map(MemberId)
            .collect();
        let replica = Replica::joining(
            self.cfg.proto.clone(),
            self.key.clone(),
            GROUP,
            MemberId(i as u16),
            contacts,
            // Each process that joins has a nonce of its own (the engine draws one at random;
            // here, the incarnation it will be, which no draw of the seed depends on).
            ((i as u64) << 32) | u64::from(self.nodes[i].inc + 1),
            Instant::from_micros(self.now),
        )
        .expect("valid sim config");
        let node = &mut self.nodes[i];
        node.replica = replica;
        node.inc += 1;
        node.alive = true;
        node.outbox.clear();
        node.pos = None;
        node.first_view = None;
        node.seen.clear();
        node.last_from.clear();
        node.executing.clear();
        node.rejoin_scheduled = false;
    }

    /// Runs to the end; `Ok` when every property held and everything finished.
    pub fn run(&mut self) -> Result<Report, Violation> {
        let n = self.cfg.members;
        for i in 0..n {
            self.step_member(i)?;
        }
        let mut last_timer = (u64::MAX, 0usize, 0u32);
        let trace = std::env::var_os("SIM_TRACE").is_some();
        let mut iterations = 0u64;
        loop {
            iterations += 1;
            if trace && iterations % 200_000 == 0 {
                eprintln!(
                    "t={}us events={} {}",
                    self.now,
                    self.events.len(),
                    self.nodes
                        .iter()
                        .enumerate()
                        .map(|(i, n)| format!(
                            "m{i}:{}/v{}/f{}",
                            n.replica.member().status().label(),
                            n.replica.member().view().id.0,
                            n.replica.member().stats().frames_out
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            if self.done() {
                break;
            }
            let next_timer = (0..n)
                .filter(|&i| self.nodes[i].alive)
                .map(|i| (self.nodes[i].replica.poll_timeout().as_micros(), i))
                .min()
                .unwrap_or((u64::MAX, 0));
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let take_event = matches!(next_event, Some(t) if t <= next_timer.0);
            let t = if take_event {
                next_event.unwrap_or(0)
            } else {
                next_timer.0
            };
            if t == u64::MAX {
                return Err(self.violation("liveness after heal", "nothing left to run".into()));
            }
            self.now = self.now.max(t);
            let deadline = self
                .last_fault
                .max(self.cfg.requests as u64 * self.cfg.push_gap_us.1 + 10_000)
                + self.cfg.settle_us;
            if self.now > deadline && self.majority_lost() {
                // Faults took more than a minority of the latest view (crashes plus exclusions
                // the excluded never came back from in time): no liveness is owed. Safety was
                // checked all along.
                self.report.majority_lost = true;
                break;
            }
            if self.now > deadline {
                let stuck: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        format!(
                            "m{i}{} {} view {} at {:?}/{} suspecting {:?}",
                            if n.alive { "" } else { " (crashed)" },
                            n.replica.member().status().label(),
                            n.replica.member().view().id.0,
                            n.pos,
                            self.reference.len(),
                            n.replica.member().suspects()
                        )
                    })
                    .collect();
                let unfinished = self
                    .admitted
                    .iter()
                    .filter(|id| !self.rejected.contains(id) && !self.finished.contains_key(id))
                    .count();
                return Err(self.violation("liveness after heal", format!("not finished {}s after the last fault: {}; {unfinished} admitted runs unfinished", self.cfg.settle_us / 1_000_000, stuck.join(", "))));
            }
            let now = Instant::from_micros(self.now);
            if !take_event {
                let i = next_timer.1;
                if next_timer.0 == last_timer.0 && i == last_timer.1 {
                    last_timer.2 += 1;
                    if last_timer.2 > 10_000 {
                        let m = self.nodes[i].replica.member();
                        return Err(self.violation(
                            "timers advance",
                            format!(
                                "m{i} ({}, view {}) asks for its timer at the same instant forever",
                                m.status().label(),
                                m.view().id.0
                            ),
                        ));
                    }
                } else {
                    last_timer = (next_timer.0, i, 0);
                }
                self.nodes[i].replica.handle_timeout(now);
                self.step_member(i)?;
                continue;
            }
            let Some(Reverse((_, _, ev))) = self.events.pop() else {
                break;
            };
            match ev {
                Event::Arrive { to, frame } => {
                    if self.nodes[to].alive {
                        self.nodes[to].replica.handle_frame(now, &frame);
                        self.step_member(to)?;
                    }
                }
                Event::Crash { at } => {
                    self.nodes[at].alive = false;
                    self.report.crashes += 1;
                }
                Event::Rejoin { at } => {
                    self.rejoin(at);
                    self.step_member(at)?;
                }
                Event::Push { at } => {
                    let me = MemberId(at as u16);
                    let node = &mut self.nodes[at];
                    if node.pushes_left > 0 && node.alive {
                        node.pushes_left -= 1;
                        node.counter += 1;
                        let counter = node.counter;
                        let req = Request {
                            id: RequestId::new(me, counter),
                            instance: 0,
                            step: "s0".into(),
                            queue: "s0".into(),
                            payload: vec![at as u8; (counter % 50) as usize],
                            meta: Meta::default(),
                            // Some runs carry an HTTP call's details, as the gateway's do.
                            http: (counter % 3 == 0).then(|| {
                                Box::new(Http {
                                    method: "POST".into(),
                                    path: format!("/p/{counter}"),
                                    query: "a=1".into(),
                                    headers: vec![("Content-Type".into(), "text/plain".into())],
                                    status: 0,
                                })
                            }),
                        };
                        node.outbox.push_back(Op::Push { pusher: me, req });
                        if counter % 10 == 0 {
                            // A pipeline change passed on by this member (as members pass on
                            // the control plane's): members race with equal versions and
                            // different contents; the replicas must apply the same one.
                            let version = counter / 10;
                            let mut q = spec("s1");
                            q.capacity -= (version % 7) as u32;
                            node.outbox.push_back(Op::Pipelines {
                                by: me,
                                version,
                                queues: vec![q],
                                docs: vec![format!("v{version} from {at}")],
                            });
                        }
                    }
                    if node.pushes_left > 0 {
                        let gap = self
                            .rng
                            .gen_range(self.cfg.push_gap_us.0..=self.cfg.push_gap_us.1);
                        self.schedule(self.now + gap, Event::Push { at });
                    }
                    self.step_member(at)?;
                }
                Event::Finish { at, inc, req_idx } => {
                    if !self.nodes[at].alive || self.nodes[at].inc != inc {
                        continue;
                    }
                    let me = MemberId(at as u16);
                    let Some(req) = self.nodes[at]
                        .executing
                        .get_mut(req_idx)
                        .and_then(Option::take)
                    else {
                        continue;
                    };
                    let outputs = if req.step == "s0" {
                        vec![Request {
                            step: "s1".into(),
                            queue: "s1".into(),
                            ..req.clone()
                        }]
                    } else {
                        Vec::new()
                    };
                    self.nodes[at].outbox.push_back(Op::Complete {
                        consumer: me,
                        id: req.id,
                        instance: req.instance,
                        step: req.step,
                        reply: req.http.clone(),
                        outputs,
                        result: None,
                        meta: Meta::default(),
                        credits: 1,
                    });
                    self.step_member(at)?;
                }
            }
        }
        // Exactly once: every run that was admitted finished once.
        for (id, count) in &self.finished {
            if *count != 1 {
                return Err(
                    self.violation("exactly once", format!("run {id} finished {count} times"))
                );
            }
        }
        let mut report = std::mem::take(&mut self.report);
        report.end_us = self.now;
        report.requests_finished = self.finished.len();
        for node in &self.nodes {
            let s = node.replica.member().stats();
            report.delivered += s.delivered;
            report.retransmitted_slots += s.retransmitted_slots;
            report.dropped_frames += s.dropped_total();
            report.max_batch = report.max_batch.max(s.max_batch);
            report.window_full += s.window_full;
        }
        Ok(report)
    }
}

/// Runs one seed with its drawn configuration, optionally altered.
pub fn run_seed(seed: u64, alter: impl FnOnce(&mut SimConfig)) -> Result<Report, Violation> {
    let mut cfg = SimConfig::from_seed(seed);
    alter(&mut cfg);
    // A test may change the group size: keep messages within a frame.
    let fits = conveyor_core::wire::max_payload_for(cfg.proto.max_frame, cfg.members);
    cfg.proto.max_payload = cfg.proto.max_payload.min(fits);
    Sim::new(seed, cfg).run()
}
