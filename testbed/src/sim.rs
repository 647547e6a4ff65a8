//! A deterministic simulator of a whole Conveyor group.
//!
//! Every member is a real [`Member`] (the production protocol core) with a replica of the
//! [`QueueState`]; the simulator owns virtual time and the network. One seed decides
//! everything: the group size, the protocol's windows and frame size, loss, duplication,
//! corruption, delay and reordering, partitions and their heal, foreign frames (wrong key,
//! wrong group), and the workload. The same seed always replays the same run.
//!
//! Workload: member 0 creates a two-step pipeline's queues; every member subscribes and offers
//! credits, as an invoker; members push requests; a member assigned a request completes it
//! after a simulated execution time, pushing the continuation (step `s0` to `s1`) atomically.
//!
//! Checkers run after every step (one packet arrival, timer or workload action at one member):
//! - integrity: every delivery was submitted by its sender with that payload, at most once;
//! - per-sender FIFO: a member delivers a sender's messages in submission order, none skipped;
//! - total order and agreement: every member's delivery sequence is a prefix of one sequence;
//! - stability before delivery: when a member delivers a message, every member holds it;
//! - bounded memory: buffered slots stay within the flow-control bound;
//! - replicas identical: after the same number of deliveries, queue state digests are equal;
//! - exactly one consumer: a request step is never assigned twice;
//! - no member wrongly concludes that it restarted inside the view.
//!
//! After the last heal the run continues until everything submitted is delivered everywhere
//! (liveness) and every admitted request finished exactly once; a deadline turns a stall into
//! a failure.

use conveyor_dataplane::proto::{Dest, Member, ProtoConfig, Sabotage, SubmitError};
use conveyor_dataplane::queue::{Effect, Meta, OnFull, Op, Order, QueueSpec, QueueState, Request};
use conveyor_dataplane::types::{GroupId, Instant, MemberId, RequestId, Seq, View, ViewId};
use conveyor_dataplane::wire::{FrameWriter, Header, Key, Kind, Row};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::time::Duration;

/// The network and workload of one run, all drawn from the seed.
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
    /// Frames from outside the group (wrong key, or right key and wrong group) per member.
    pub foreign_frames: usize,
    pub proto: ProtoConfig,
    /// Virtual time allowed after the last heal and the last push for everything to finish.
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
        let window = *[2u64, 4, 8, 32, 256].get(rng.gen_range(0..5)).unwrap_or(&8);
        let max_frame = *[300usize, 600, 1500, 8192]
            .get(rng.gen_range(0..4))
            .unwrap_or(&1500);
        let proto = ProtoConfig {
            window,
            max_frame,
            max_payload: conveyor_dataplane::wire::max_payload_for(max_frame, members).min(200),
            status_interval: Duration::from_micros(rng.gen_range(500..3000)),
            heartbeat: Duration::from_millis(rng.gen_range(20..200)),
            rto: Duration::from_micros(rng.gen_range(500..4000)),
            rto_max: Duration::from_millis(rng.gen_range(20..200)),
            sabotage: Sabotage::None,
        };
        SimConfig {
            members,
            loss,
            duplicate,
            corrupt,
            delay_us,
            requests,
            push_gap_us,
            exec_us,
            partitions,
            foreign_frames: rng.gen_range(0..4),
            proto,
            settle_us: 60_000_000,
        }
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
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A frame reaches `to`.
    Arrive { to: usize, frame: Vec<u8> },
    /// Member `at` wants to submit its next workload op.
    Push { at: usize },
    /// Member `at` finishes executing a request.
    Finish { at: usize, req_idx: usize },
}

struct Node {
    member: Member,
    replica: QueueState,
    /// Ops waiting for window room, in order.
    outbox: VecDeque<Op>,
    delivered: Vec<(MemberId, Seq)>,
    /// Per sender: index into that sender's submissions of the next expected delivery.
    next_expected: BTreeMap<MemberId, usize>,
    pushes_left: usize,
    executing: Vec<Option<Request>>,
    effects: Vec<Effect>,
}

/// One seeded run.
#[allow(missing_debug_implementations)]
pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    nodes: Vec<Node>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    event_seq: u64,
    /// Per member: (seq, payload) of everything it submitted, in order.
    submitted: Vec<Vec<(Seq, Vec<u8>)>>,
    /// The agreed sequence: the longest delivery sequence seen so far.
    reference: Vec<(MemberId, Seq)>,
    /// Queue digest after each delivery index of the reference.
    digests: Vec<[u8; 32]>,
    /// Request instances assigned and not yet finished (exactly-one-consumer check).
    assigned: BTreeSet<u64>,
    /// Requests whose run ended (terminal completion), with count.
    finished: BTreeMap<RequestId, u32>,
    /// Requests pushed at the entry step.
    pushed: BTreeSet<RequestId>,
    rejected: BTreeSet<RequestId>,
    last_heal: u64,
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

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let key = Key::from_bytes([0x42; 32]);
        let view = View::new(ViewId(1), (0..cfg.members as u16).map(MemberId).collect());
        let mut nodes = Vec::new();
        for i in 0..cfg.members {
            let member = Member::new(
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
            if i == 0 {
                outbox.push_back(Op::Create(spec("s0")));
                outbox.push_back(Op::Create(spec("s1")));
            }
            for q in ["s0", "s1"] {
                outbox.push_back(Op::Subscribe {
                    consumer: me,
                    queue: q.into(),
                });
            }
            outbox.push_back(Op::Ready {
                consumer: me,
                credits: 2,
            });
            nodes.push(Node {
                member,
                replica: QueueState::new(),
                outbox,
                delivered: Vec::new(),
                next_expected: BTreeMap::new(),
                pushes_left: cfg.requests,
                executing: Vec::new(),
                effects: Vec::new(),
            });
        }
        let last_heal = cfg.partitions.iter().map(|p| p.1).max().unwrap_or(0);
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            submitted: vec![Vec::new(); cfg.members],
            nodes,
            events: BinaryHeap::new(),
            event_seq: 0,
            reference: Vec::new(),
            digests: Vec::new(),
            assigned: BTreeSet::new(),
            finished: BTreeMap::new(),
            pushed: BTreeSet::new(),
            rejected: BTreeSet::new(),
            last_heal,
            cfg,
        };
        for i in 0..sim.cfg.members {
            let t = sim.rng.gen_range(1_000..5_000);
            sim.schedule(t, Event::Push { at: i });
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
        let n = self.cfg.members;
        while let Some(t) = self.nodes[i].member.poll_transmit() {
            let dests: Vec<usize> = match t.dest {
                Dest::All => (0..n).filter(|&j| j != i).collect(),
                Dest::One(m) => vec![m.0 as usize],
            };
            for to in dests {
                if self.cut(i, to) || self.rng.gen_bool(self.cfg.loss) {
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
                    self.schedule(self.now + delay, Event::Arrive { to, frame });
                }
            }
            self.nodes[i].member.recycle(t.frame);
        }
    }

    fn submit_outbox(&mut self, i: usize) {
        while let Some(op) = self.nodes[i].outbox.pop_front() {
            let payload = op.encode();
            match self.nodes[i].member.submit(payload.clone()) {
                Ok(seq) => {
                    if let Op::Push { req, .. } = &op {
                        if req.step == "s0" {
                            self.pushed.insert(req.id);
                        }
                    }
                    self.submitted[i].push((seq, payload));
                }
                Err(SubmitError::WindowFull) => {
                    self.nodes[i].outbox.push_front(op);
                    break;
                }
                Err(e) => panic!("workload op refused: {e}"),
            }
        }
    }

    /// Drains member `i`'s deliveries, applies them to its replica and checks every property.
    fn deliver(&mut self, i: usize) -> Result<(), Violation> {
        let me = MemberId(i as u16);
        while let Some(d) = self.nodes[i].member.poll_delivery() {
            let sender = d.sender.0 as usize;
            // Integrity and per-sender FIFO.
            let idx = *self.nodes[i].next_expected.get(&d.sender).unwrap_or(&0);
            match self.submitted.get(sender).and_then(|s| s.get(idx)) {
                Some((seq, payload)) if *seq == d.seq && *payload == d.payload => {}
                Some((seq, _)) if *seq == d.seq => {
                    return Err(self.violation(
                        "integrity",
                        format!(
                            "{me} delivered {}:{} with a payload {} never sent",
                            d.sender, d.seq.0, d.sender
                        ),
                    ));
                }
                Some((seq, _)) => {
                    return Err(self.violation(
                        "per-sender FIFO",
                        format!(
                            "{me} delivered {}:{} but {}:{} was next",
                            d.sender, d.seq.0, d.sender, seq.0
                        ),
                    ));
                }
                None => {
                    return Err(self.violation(
                        "integrity",
                        format!(
                            "{me} delivered {}:{} which was never submitted (or twice)",
                            d.sender, d.seq.0
                        ),
                    ));
                }
            }
            self.nodes[i].next_expected.insert(d.sender, idx + 1);
            // Stability: every member holds it now.
            for (j, other) in self.nodes.iter().enumerate() {
                if !other.member.has_received(d.sender, d.seq) {
                    return Err(self.violation(
                        "stability before delivery",
                        format!(
                            "{me} delivered {}:{} which m{j} does not hold",
                            d.sender, d.seq.0
                        ),
                    ));
                }
            }
            // Total order and agreement.
            let pos = self.nodes[i].delivered.len();
            self.nodes[i].delivered.push((d.sender, d.seq));
            match self.reference.get(pos) {
                Some(r) if *r != (d.sender, d.seq) => {
                    return Err(self.violation("total order", format!("{me} delivered {}:{} at position {pos} where another member delivered {}:{}", d.sender, d.seq.0, r.0, r.1 .0)));
                }
                Some(_) => {}
                None => self.reference.push((d.sender, d.seq)),
            }
            // The replicated queue.
            let Ok(op) = Op::decode(&d.payload) else {
                return Err(
                    self.violation("integrity", format!("{me} delivered an undecodable op"))
                );
            };
            let mut effects = std::mem::take(&mut self.nodes[i].effects);
            effects.clear();
            self.nodes[i].replica.apply(op, &mut effects);
            let digest = self.nodes[i].replica.digest();
            // The first replica to reach a position accounts for its effects.
            let first = self.digests.len() == pos;
            match self.digests.get(pos) {
                Some(dg) if *dg != digest => {
                    return Err(self.violation(
                        "replicas identical",
                        format!("{me}'s queue state differs after {} deliveries", pos + 1),
                    ));
                }
                Some(_) => {}
                None => self.digests.push(digest),
            }
            for e in &effects {
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
                            self.schedule(self.now + exec, Event::Finish { at: i, req_idx });
                        }
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
            self.nodes[i].effects = effects;
        }
        // No member ever believes it restarted (that detection must have no false positive).
        if let Some(p) = self.nodes[i].member.restarted_in_view() {
            return Err(self.violation(
                "no false restart detection",
                format!("{me} believes it restarted, from {p}'s row"),
            ));
        }
        // Bounded memory.
        let m = &self.nodes[i].member;
        if m.buffered_slots() > m.buffer_bound() {
            return Err(self.violation(
                "bounded memory",
                format!(
                    "{me} buffers {} slots, bound {}",
                    m.buffered_slots(),
                    m.buffer_bound()
                ),
            ));
        }
        Ok(())
    }

    fn step_member(&mut self, i: usize) -> Result<(), Violation> {
        self.submit_outbox(i);
        self.deliver(i)?;
        self.submit_outbox(i);
        self.flush(i);
        Ok(())
    }

    fn done(&self) -> bool {
        let total: usize = self.submitted.iter().map(|s| s.len()).sum();
        self.nodes.iter().all(|n| {
            n.pushes_left == 0
                && n.outbox.is_empty()
                && n.executing.iter().all(Option::is_none)
                && n.delivered.len() == total
        }) && self
            .pushed
            .iter()
            .all(|id| self.rejected.contains(id) || self.finished.contains_key(id))
    }

    /// Runs to the end; `Ok` when every property held and everything finished.
    pub fn run(&mut self) -> Result<Report, Violation> {
        let n = self.cfg.members;
        for i in 0..n {
            self.step_member(i)?;
        }
        loop {
            if self.done() {
                break;
            }
            let next_timer = (0..n)
                .map(|i| (self.nodes[i].member.poll_timeout().as_micros(), i))
                .min()
                .unwrap_or((u64::MAX, 0));
            let next_event = self.events.peek().map(|Reverse((t, _, _))| *t);
            let take_event = matches!(next_event, Some(t) if t <= next_timer.0);
            let t = if take_event {
                next_event.unwrap_or(0)
            } else {
                next_timer.0
            };
            self.now = self.now.max(t);
            let deadline = self
                .last_heal
                .max(self.cfg.requests as u64 * self.cfg.push_gap_us.1 + 10_000)
                + self.cfg.settle_us;
            if self.now > deadline {
                let stuck: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| format!("m{i} delivered {}", n.delivered.len()))
                    .collect();
                let total: usize = self.submitted.iter().map(|s| s.len()).sum();
                return Err(self.violation("liveness after heal", format!("not finished {}s after the last heal: {total} submitted; {}; {} of {} runs finished", self.cfg.settle_us / 1_000_000, stuck.join(", "), self.finished.len(), self.pushed.len())));
            }
            let now = Instant::from_micros(self.now);
            if !take_event {
                let i = next_timer.1;
                self.nodes[i].member.handle_timeout(now);
                self.step_member(i)?;
                continue;
            }
            let Some(Reverse((_, _, ev))) = self.events.pop() else {
                break;
            };
            match ev {
                Event::Arrive { to, frame } => {
                    self.nodes[to].member.handle_frame(now, &frame);
                    self.step_member(to)?;
                }
                Event::Push { at } => {
                    let me = MemberId(at as u16);
                    let node = &mut self.nodes[at];
                    if node.pushes_left > 0 {
                        node.pushes_left -= 1;
                        let counter = (self.cfg.requests - node.pushes_left) as u64;
                        let req = Request {
                            id: RequestId::new(me, counter),
                            instance: 0,
                            step: "s0".into(),
                            queue: "s0".into(),
                            payload: vec![at as u8; (counter % 50) as usize],
                            meta: Meta::default(),
                        };
                        node.outbox.push_back(Op::Push { pusher: me, req });
                        let gap = self
                            .rng
                            .gen_range(self.cfg.push_gap_us.0..=self.cfg.push_gap_us.1);
                        self.schedule(self.now + gap, Event::Push { at });
                    }
                    self.step_member(at)?;
                }
                Event::Finish { at, req_idx } => {
                    let me = MemberId(at as u16);
                    let Some(req) = self.nodes[at].executing[req_idx].take() else {
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
        let mut report = Report {
            end_us: self.now,
            requests_finished: self.finished.len(),
            ..Report::default()
        };
        for node in &self.nodes {
            let s = node.member.stats();
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
    Sim::new(seed, cfg).run()
}
