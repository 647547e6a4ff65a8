//! A deterministic simulator of a sharded deployment: several total-order groups (shards), each
//! of real [`Replica`]s over its own simulated network, the hosts that run a member of every
//! shard, and the forwarders ([`Forwarder`]) that carry continuations and ends between them.
//!
//! One seed decides everything: the number of shards (2 or 3), loss, duplication, delay and
//! reordering on every link, the protocol's windows and timeouts, a host crashing (its member
//! of every shard at once) or one member of one shard crashing, and whether they come back (as
//! new joiners, their shard's state transferred, outbox and inbox included), a host cut off
//! from the others for longer than the failure timeout (its members excluded; they rejoin as
//! the same processes), forwarders restarted (a new one starts at the destination's
//! watermark), completions reported twice, and the shard map moving a queue to another shard
//! mid-run (each shard switching at its own point of its order). Half the seeds keep durable
//! queues: every member logs its shard's order to its host's disk, synced at random moments (a
//! crash loses what was not synced), and tells its replica how far; in most of those the whole
//! deployment is killed once and every host restarts its members from their disks, each shard's
//! members agreeing again on a state (`conveyor_core::replica::recovery`). Half the seeds give
//! each host's trigger a journal (as `conveyor bench`'s: what it pushed, the ends it was told,
//! how far its member told it), which outlives its process: a new trigger process resumes from
//! it (`Replica::resume`), is told the ends it missed and has its pushes that never reached
//! the order pushed again. The forwarders read
//! what the engine publishes for them (`Replica::shards_to_forward`: with durable queues, only
//! what a majority's disks hold).
//!
//! Workload: a three-step pipeline `q0 -> q1 -> q2` whose steps live in different shards
//! (`q0` in shard 0, `q1` in shard 1, `q2` in shard 2, or back in shard 0 with two shards),
//! so that every run crosses shards twice and its end comes back to shard 0; each host's
//! trigger pushes requests into shard 0 through its member there, and every member of every
//! shard is an invoker of that shard's queues. The forwarder from shard `a` to shard `b` runs
//! on the host `forwarder_for` picks among the members of both shards' views (as its own
//! members see them; the pairs spread over the hosts),
//! its members of both serving; any number may run at once during a change.
//!
//! Checks, as it happens: replicas of a shard hold identical states at the same position of
//! their order; a step of a run completes once in the whole deployment (counted from each
//! shard's order, not from any one replica); a run's end is told in its origin shard only; a
//! member is told only of the runs it started (request ids are unique per shard, not across
//! shards); a trigger is told a run's end once (a resumed one may be told again an end its
//! journal holds: the same instance). At the end, once the faults stop: every run
//! that shard 0 admitted has completed each of its three steps exactly once and ended once,
//! every outbox is empty, every queue drained, and every trigger whose process survived (or,
//! with a journal, was restarted) was told the end of every run it pushed that was admitted;
//! with a journal, every push it ever made was answered. With durable queues, when a
//! restarted shard decides where its history goes on from, what was counted after that
//! position never was (it is taken back), and nothing anyone was told may be among it: a
//! trigger told a run accepted, or told its end.
//!
//! Replay a seed with `shard-sim --seed SEED` (its configuration, then its report or the
//! property that failed); with `SHARD_TRACE=1` it also prints every effect of each shard's
//! order (as first applied) and every forwarder's poll.

use crate::disk::LogDisk;
use conveyor_core::proto::{Dest, Status, SubmitError};
use conveyor_core::queue::{Durability, Effect, Meta, OnFull, Op, Order, QueueSpec, Request};
use conveyor_core::shard::{forwarder_for, Forwarder, Forwarding, ShardId, ShardMap};
use conveyor_core::types::{GroupId, Instant, MemberId, RequestId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_core::{Applied, RecoveryStage, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

mod checks;
mod config;
mod disks;
mod report;
mod trigger;
use trigger::Journal;

pub use config::ShardSimConfig;
pub use report::{ShardReport, ShardViolation};

/// The pipeline's steps and their queues.
const STEPS: [(&str, &str); 3] = [("s0", "q0"), ("s1", "q1"), ("s2", "q2")];

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive {
        s: usize,
        to: usize,
        frame: Vec<u8>,
    },
    Timer {
        s: usize,
        m: usize,
        inc: u32,
    },
    Push {
        h: usize,
        inc: u32,
    },
    /// An execution ends (`job`: the request, kept in `ShardSim::jobs`).
    Finish {
        s: usize,
        m: usize,
        inc: u32,
        job: u64,
    },
    HostCrash {
        h: usize,
    },
    HostBack {
        h: usize,
    },
    MemberCrash {
        s: usize,
        m: usize,
    },
    MemberBack {
        s: usize,
        m: usize,
    },
    Forward {
        h: usize,
    },
    /// The same process of member `m` of shard `s` joins again after it was excluded.
    Rejoin {
        s: usize,
        m: usize,
        inc: u32,
    },
    ResetForwarders {
        h: usize,
    },
    /// Every process of the deployment killed (durable runs).
    DeploymentDown,
    /// Host `h` starts its members of every shard again from their disks.
    HostRestart {
        h: usize,
    },
    Move {
        s: usize,
    },
    Look,
}

struct Member {
    replica: Replica,
    alive: bool,
    inc: u32,
    /// Operations waiting for the window (or for the member to serve), in order.
    outbox: VecDeque<Op>,
    /// The timer deadline scheduled.
    timer: u64,
    /// A rejoin is scheduled.
    rejoining: bool,
    /// It holds its shard's state (a joiner: once its state arrived).
    holds_state: bool,
    /// Restarted from its disk: it holds its shard's state once its group has decided.
    recovering: bool,
    /// Its log on its host's disk (durable runs), and how far its replica was told it synced.
    disk: LogDisk,
    disk_told: u64,
}

/// What the checks counted at one position of a shard's order (undone when a restarted
/// shard goes on from an earlier position: that history never was).
#[derive(Clone, Debug)]
enum Counted {
    Admitted(RequestId),
    Completed(RequestId, String),
    Ended(RequestId),
}

struct Host {
    /// The trigger's process (its member of shard 0): incarnation, and whether it ever
    /// crashed without a journal (what it was told then is gone).
    crashed: bool,
    journal: Option<Journal>,
    /// Ends it was told, by (run, instance): a process resumed from the journal may be told
    /// again an end its journal holds (the same instance: not a second run).
    told_instances: BTreeSet<(RequestId, u64)>,
    resumed: bool,
    counter: u64,
    pushes_left: u64,
    /// Runs it pushed that shard 0 admitted, and how often it was told each one's end.
    accepted: BTreeSet<RequestId>,
    told: BTreeMap<RequestId, u32>,
    /// Runs it was told accepted (`Effect::Accepted`: with durable queues, a promise that a
    /// restart of the whole deployment keeps them).
    told_accepted: BTreeSet<RequestId>,
    /// Forwarders by (source, destination) shard.
    forwarders: BTreeMap<(usize, usize), Forwarder>,
    forward_at: u64,
}

/// One seeded run of a sharded deployment. See the module docs.
#[allow(missing_debug_implementations)]
pub struct ShardSim {
    cfg: ShardSimConfig,
    rng: ChaCha8Rng,
    now: u64,
    keys: Vec<Key>,
    /// `members[s][m]`: member `m` of shard `s`.
    members: Vec<Vec<Member>>,
    hosts: Vec<Host>,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    event_seq: u64,
    /// Per shard: the position of the order whose effects were counted, and the digest of the
    /// state after each position.
    counted: Vec<u64>,
    digests: Vec<BTreeMap<u64, [u8; 32]>>,
    admitted: BTreeSet<RequestId>,
    completions: BTreeMap<(RequestId, String), u32>,
    ended: BTreeMap<RequestId, u32>,
    report: ShardReport,
    map1: ShardMap,
    map2: ShardMap,
    /// Requests being executed, by job number: (instance, request).
    jobs: BTreeMap<u64, (u64, Request)>,
    /// `SHARD_TRACE` is set: print each shard's counted effects and every forwarder's poll.
    trace: bool,
    /// Durable runs: per shard, what was counted at each (epoch, position) of its order, and
    /// whether it went down and has not decided on a state again.
    history: Vec<BTreeMap<(u64, u64), Vec<Counted>>>,
    awaiting: Vec<bool>,
}

/// The group file's members.
fn configured(n: usize) -> Vec<MemberId> {
    (0..n as u16).map(MemberId).collect()
}

fn group(s: usize) -> GroupId {
    GroupId(0x5100 + s as u32)
}

fn spec(name: &str, capacity: u32, durable: bool) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        capacity,
        order: Order::Fifo,
        on_full: OnFull::Block,
        durability: if durable {
            Durability::Log
        } else {
            Durability::Memory
        },
    }
}

/// The ops every member's host submits when it starts: the queues, the first map (a host
/// that restarts submits them again; a shard that has them ignores them) and its invoker's
/// subscriptions.
fn start_ops(s: usize, me: MemberId, capacity: u32, durable: bool, map: &ShardMap) -> Vec<Op> {
    let mut ops: Vec<Op> = STEPS
        .iter()
        .map(|(_, q)| Op::Create(spec(q, capacity, durable)))
        .collect();
    ops.push(Op::ShardMap {
        by: me,
        me: ShardId(s as u16),
        map: map.clone(),
    });
    ops.extend(invoker_ops(me));
    ops
}

fn invoker_ops(me: MemberId) -> Vec<Op> {
    let mut ops: Vec<Op> = STEPS
        .iter()
        .map(|(_, q)| Op::Subscribe {
            consumer: me,
            queue: (*q).into(),
        })
        .collect();
    ops.push(Op::Ready {
        consumer: me,
        credits: 2,
    });
    ops
}

impl ShardSim {
    pub fn new(seed: u64, cfg: ShardSimConfig) -> ShardSim {
        let n = cfg.members;
        let map1 = {
            let mut m = ShardMap::hashed(1, cfg.shards as u16)
                .with_override("q0", ShardId(0))
                .with_override("q1", ShardId(1));
            m = m.with_override("q2", ShardId((2 % cfg.shards) as u16));
            m
        };
        // The second version moves q1 to the last shard other than 1.
        let map2 = {
            let mut m = map1.clone();
            m.version = 2;
            let to = if cfg.shards == 3 { 2 } else { 0 };
            m.overrides.insert("q1".into(), ShardId(to));
            m
        };
        let keys: Vec<Key> = (0..cfg.shards)
            .map(|s| Key::from_bytes([0x30 + s as u8; 32]))
            .collect();
        let view = View::new(ViewId(1), (0..n as u16).map(MemberId).collect());
        let mut members = Vec::new();
        for (s, key) in keys.iter().enumerate() {
            let mut row = Vec::new();
            for m in 0..n {
                let me = MemberId(m as u16);
                let replica = Replica::new(
                    cfg.proto.clone(),
                    key.clone(),
                    group(s),
                    view.clone(),
                    me,
                    ((s as u64) << 40) | ((m as u64) << 20) | 1,
                    Instant::ZERO,
                )
                .expect("valid shard sim config");
                let mut replica = replica;
                replica.set_durable(cfg.durable, &configured(n));
                let outbox: VecDeque<Op> =
                    start_ops(s, me, cfg.capacity, cfg.durable, &map1).into();
                row.push(Member {
                    replica,
                    alive: true,
                    inc: 0,
                    outbox,
                    // Armed at 0 (scheduled below).
                    timer: 0,
                    rejoining: false,
                    holds_state: true,
                    recovering: false,
                    disk: LogDisk::default(),
                    disk_told: 0,
                });
            }
            members.push(row);
        }
        let hosts = (0..n)
            .map(|_| Host {
                crashed: false,
                journal: cfg.journal.then(Journal::default),
                told_instances: BTreeSet::new(),
                resumed: false,
                counter: 0,
                pushes_left: cfg.requests,
                accepted: BTreeSet::new(),
                told: BTreeMap::new(),
                told_accepted: BTreeSet::new(),
                forwarders: BTreeMap::new(),
                forward_at: u64::MAX,
            })
            .collect();
        let mut sim = ShardSim {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            keys,
            members,
            hosts,
            events: BinaryHeap::new(),
            event_seq: 0,
            counted: vec![0; cfg.shards],
            digests: vec![BTreeMap::new(); cfg.shards],
            admitted: BTreeSet::new(),
            completions: BTreeMap::new(),
            ended: BTreeMap::new(),
            report: ShardReport {
                shards: cfg.shards,
                ..ShardReport::default()
            },
            map2,
            map1,
            jobs: BTreeMap::new(),
            trace: std::env::var_os("SHARD_TRACE").is_some(),
            history: vec![BTreeMap::new(); cfg.shards],
            awaiting: vec![false; cfg.shards],
            cfg,
        };
        for s in 0..sim.cfg.shards {
            for m in 0..n {
                sim.schedule(0, Event::Timer { s, m, inc: 0 });
            }
        }
        for h in 0..n {
            let t = sim.rng.gen_range(1_000..3_000);
            sim.schedule(t, Event::Push { h, inc: 0 });
        }
        if let Some((at, h, back)) = sim.cfg.host_crash {
            sim.schedule(at, Event::HostCrash { h });
            if let Some(b) = back {
                sim.schedule(b, Event::HostBack { h });
            }
        }
        if let Some((at, s, m, back)) = sim.cfg.member_crash {
            sim.schedule(at, Event::MemberCrash { s, m });
            if let Some(b) = back {
                sim.schedule(b, Event::MemberBack { s, m });
            }
        }
        for t in sim.cfg.forwarder_resets.clone() {
            let h = sim.rng.gen_range(0..n);
            sim.schedule(t, Event::ResetForwarders { h });
        }
        if let Some(t) = sim.cfg.deployment_down {
            sim.schedule(t, Event::DeploymentDown);
        }
        if let Some(t) = sim.cfg.move_at {
            for s in 0..sim.cfg.shards {
                let at = t + sim.rng.gen_range(0..5_000);
                sim.schedule(at, Event::Move { s });
            }
        }
        sim.schedule(1_000, Event::Look);
        sim
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.event_seq += 1;
        self.events.push(Reverse((at, self.event_seq, e)));
    }

    fn violation(&self, property: &'static str, detail: String) -> ShardViolation {
        ShardViolation {
            property,
            at_us: self.now,
            detail,
        }
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.cfg
            .cut
            .is_some_and(|(s, e, h)| self.now >= s && self.now < e && (a == h) != (b == h))
    }

    /// Runs to the end: `Ok` with the report, or the first property that failed.
    pub fn run(mut self) -> Result<ShardReport, ShardViolation> {
        let deadline = self.cfg.last_fault() + self.cfg.settle_us;
        let mut steps: u64 = 0;
        while let Some(Reverse((t, _, e))) = self.events.pop() {
            steps += 1;
            if steps > 20_000_000 {
                let what = match &e {
                    Event::Arrive { s, to, .. } => format!("a frame to s{s}m{to}"),
                    other => format!("{other:?}"),
                };
                return Err(self.violation(
                    "liveness",
                    format!("step budget spent (a livelock), last event: {what}"),
                ));
            }
            self.now = t;
            if t > deadline {
                return Err(self.violation("liveness", self.pending()));
            }
            match e {
                Event::Arrive { s, to, frame } => {
                    if self.members[s][to].alive {
                        let now = Instant::from_micros(self.now);
                        self.members[s][to].replica.handle_frame(now, &frame);
                        self.step(s, to)?;
                    }
                }
                Event::Timer { s, m, inc } => {
                    let x = &mut self.members[s][m];
                    if x.alive && x.inc == inc && x.timer <= self.now {
                        x.timer = u64::MAX;
                        x.replica.handle_timeout(Instant::from_micros(self.now));
                        self.step(s, m)?;
                    }
                }
                Event::Push { h, inc } => self.push(h, inc),
                Event::Finish { s, m, inc, job } => {
                    if let Some((instance, req)) = self.jobs.remove(&job) {
                        self.finish(s, m, inc, instance, req);
                    }
                }
                Event::HostCrash { h } => {
                    for s in 0..self.cfg.shards {
                        self.crash(s, h);
                    }
                }
                Event::HostBack { h } => {
                    for s in 0..self.cfg.shards {
                        self.join(s, h, false);
                    }
                }
                Event::MemberCrash { s, m } => self.crash(s, m),
                Event::MemberBack { s, m } => self.join(s, m, false),
                Event::Forward { h } => {
                    // Only the earliest scheduled counts (the others were superseded).
                    if self.hosts[h].forward_at == t {
                        self.hosts[h].forward_at = u64::MAX;
                        self.forward(h)?;
                    }
                }
                Event::Rejoin { s, m, inc } => {
                    if self.members[s][m].alive && self.members[s][m].inc == inc {
                        self.join(s, m, true);
                    }
                }
                Event::ResetForwarders { h } => {
                    for f in std::mem::take(&mut self.hosts[h].forwarders).into_values() {
                        self.report.forwarder_went_back += f.stats().went_back;
                        self.report.acks += f.stats().acks;
                    }
                    self.report.forwarder_resets += 1;
                }
                Event::DeploymentDown => {
                    for h in 0..self.cfg.members {
                        for s in 0..self.cfg.shards {
                            self.crash(s, h);
                        }
                        let at = self.now + self.rng.gen_range(0..config::RESTART_SPREAD_US);
                        self.schedule(at, Event::HostRestart { h });
                    }
                    self.awaiting = vec![true; self.cfg.shards];
                    self.report.deployment_restarts += 1;
                    // The operator's move, if it was made, is made again until every shard
                    // has applied it (as the control plane does): a restart may have taken
                    // it back where it was not yet on a majority's disks.
                    if self.cfg.move_at.is_some_and(|t| t <= self.now) {
                        for s in 0..self.cfg.shards {
                            let at = self.now + config::RESTART_SPREAD_US + 20_000;
                            self.schedule(at, Event::Move { s });
                        }
                    }
                }
                Event::HostRestart { h } => {
                    for s in 0..self.cfg.shards {
                        self.restart_from_disk(s, h);
                    }
                }
                Event::Move { s } => {
                    // Through the lowest live member (an operator's call to any of them), again
                    // until the shard has applied it, as the control plane does: until every
                    // shard has, shards that disagree on an owner pass its entries back and
                    // forth.
                    let applied = self.members[s].iter().any(|x| {
                        x.alive && x.holds_state && x.replica.queue().shards().map().version >= 2
                    });
                    if applied {
                        continue;
                    }
                    self.schedule(self.now + 20_000, Event::Move { s });
                    if let Some(m) = (0..self.cfg.members).find(|&m| self.members[s][m].alive) {
                        let op = Op::ShardMap {
                            by: MemberId(m as u16),
                            me: ShardId(s as u16),
                            map: self.map2.clone(),
                        };
                        self.members[s][m].outbox.push_back(op);
                        self.step(s, m)?;
                    }
                }
                Event::Look => {
                    if self.now > self.cfg.last_fault() && self.done() {
                        return self.finish_checks();
                    }
                    self.schedule(self.now + 1_000, Event::Look);
                }
            }
        }
        Err(self.violation("liveness", "no events left".into()))
    }

    /// Member `m` of shard `s` finished executing `req`: it completes it (the continuation
    /// goes to the next step's queue, wherever the map puts it), sometimes twice.
    fn finish(&mut self, s: usize, m: usize, inc: u32, instance: u64, req: Request) {
        if !self.members[s][m].alive || self.members[s][m].inc != inc {
            return;
        }
        let k = STEPS
            .iter()
            .position(|(st, _)| *st == req.step)
            .unwrap_or(STEPS.len() - 1);
        let outputs = match STEPS.get(k + 1) {
            Some((step, queue)) => vec![Request {
                step: (*step).into(),
                queue: (*queue).into(),
                instance: 0,
                ..req.clone()
            }],
            None => Vec::new(),
        };
        let op = Op::Complete {
            consumer: MemberId(m as u16),
            id: req.id,
            instance,
            step: req.step.clone(),
            result: outputs.is_empty().then(|| req.payload.clone()),
            outputs,
            reply: None,
            meta: Meta::default(),
            credits: 1,
        };
        if self.rng.gen_bool(self.cfg.twice) {
            self.members[s][m].outbox.push_back(op.clone());
        }
        self.members[s][m].outbox.push_back(op);
        let _ = self.step(s, m);
    }

    fn crash(&mut self, s: usize, m: usize) {
        let x = &mut self.members[s][m];
        if !x.alive {
            return;
        }
        x.alive = false;
        x.outbox.clear();
        // What was written and not synced is gone with the process.
        x.disk.crash();
        x.disk_told = 0;
        if s == 0 && self.hosts[m].journal.is_none() {
            self.hosts[m].crashed = true;
        }
        self.hosts[m]
            .forwarders
            .retain(|(a, b), _| *a != s && *b != s);
    }

    /// Member `m` of shard `s` joins again: a new process (after a crash), or the same one
    /// after it was excluded (its trigger goes on; it is told what it missed).
    fn join(&mut self, s: usize, m: usize, same_process: bool) {
        let contacts: Vec<MemberId> = (0..self.cfg.members as u16)
            .filter(|&j| j as usize != m)
            .map(MemberId)
            .collect();
        let inc = self.members[s][m].inc + 1;
        let mut replica = Replica::joining(
            self.cfg.proto.clone(),
            self.keys[s].clone(),
            group(s),
            MemberId(m as u16),
            contacts,
            ((s as u64) << 40) | ((m as u64) << 20) | (u64::from(inc) + 1),
            Instant::from_micros(self.now),
        )
        .expect("valid shard sim config");
        replica.set_durable(self.cfg.durable, &configured(self.cfg.members));
        if self.cfg.durable {
            // From its data directory, in case its group has not decided a state yet.
            replica.set_log_state(self.members[s][m].disk.synced_state());
        }
        let x = &mut self.members[s][m];
        if same_process {
            let applied = x.replica.applied();
            let unanswered = x.replica.take_unanswered();
            replica.set_rejoining(applied, unanswered);
        } else {
            x.outbox.clear();
            if s == 0 {
                self.resume_trigger(m, &mut replica);
            }
        }
        let x = &mut self.members[s][m];
        x.replica = replica;
        x.inc = inc;
        x.alive = true;
        x.rejoining = false;
        x.holds_state = false;
        x.recovering = false;
        x.disk_told = 0;
        x.timer = u64::MAX;
        x.outbox.extend(invoker_ops(MemberId(m as u16)));
        self.report.joins += 1;
        if !(same_process && self.cfg.keep_forwarders) {
            self.hosts[m]
                .forwarders
                .retain(|(a, b), _| *a != s && *b != s);
        }
        if s == 0 && !same_process && self.hosts[m].pushes_left > 0 {
            // A new trigger process goes on with the pushes left.
            let at = self.now + 1_000;
            self.schedule(at, Event::Push { h: m, inc });
        }
        self.schedule(self.now, Event::Timer { s, m, inc });
        self.members[s][m].timer = self.now;
    }

    fn submit_outbox(&mut self, s: usize, m: usize) {
        let x = &mut self.members[s][m];
        while let Some(op) = x.outbox.pop_front() {
            match x.replica.submit(&op) {
                Ok(_) => {}
                Err(SubmitError::WindowFull) | Err(SubmitError::NotServing(_)) => {
                    x.outbox.push_front(op);
                    break;
                }
                Err(e) => panic!("shard sim op refused: {e}"),
            }
        }
    }

    /// After an input at member `m` of shard `s`: submits, applies and checks what was
    /// delivered, acts on its effects, sends, re-arms its timer and polls its host's
    /// forwarders.
    fn step(&mut self, s: usize, m: usize) -> Result<(), ShardViolation> {
        self.submit_outbox(s, m);
        loop {
            self.apply(s, m)?;
            // Its host writes the log; when the disk syncs, held effects may be released.
            if !self.write_log(s, m)? {
                break;
            }
        }
        self.submit_outbox(s, m);
        self.flush(s, m);
        let x = &self.members[s][m];
        let abandoned =
            x.recovering && matches!(x.replica.recovery(), Some((RecoveryStage::Abandoned, _)));
        let status = x.replica.status();
        if (status.is_final() || abandoned) && !x.rejoining && x.alive {
            // Excluded (cut off, or suspected), or its recovery's state could not come: the
            // same process comes back as a joiner.
            self.members[s][m].rejoining = true;
            let inc = self.members[s][m].inc;
            self.schedule(self.now + 2_000, Event::Rejoin { s, m, inc });
        }
        self.rearm(s, m);
        let h = m;
        let wake = self.now + 5;
        if self.hosts[h].forward_at > wake {
            self.hosts[h].forward_at = wake;
            self.schedule(wake, Event::Forward { h });
        }
        Ok(())
    }

    /// Applies and checks what member `m` of shard `s` delivered, and acts on its effects.
    fn apply(&mut self, s: usize, m: usize) -> Result<(), ShardViolation> {
        loop {
            let held = self.members[s][m].replica.held_for_disks();
            let Some(applied) = self.members[s][m].replica.poll_applied() else {
                break;
            };
            // A step whose acceptances, ends and cross-shard marks wait for the disks: they
            // are counted with the order now, and told when the disks release them.
            let gated = self.members[s][m].replica.held_for_disks() > held;
            self.note_recovery(s, m)?;
            let effects = match applied {
                Applied::Message { effects, .. } if gated => {
                    self.count_step(s, m, &effects)?;
                    let now: Vec<Effect> = effects
                        .into_iter()
                        .filter(|e| !disks::held_for_disks(e))
                        .collect();
                    self.act(s, m, now)?;
                    continue;
                }
                Applied::Message { effects, .. } => effects,
                Applied::View { effects, .. } => {
                    self.count_step(s, m, &effects)?;
                    self.act(s, m, effects)?;
                    continue;
                }
                Applied::State { ok, effects } => {
                    if !ok {
                        return Err(self.violation(
                            "state transfer",
                            format!("shard {s} member {m} received a state that does not decode"),
                        ));
                    }
                    self.members[s][m].holds_state = true;
                    let q = self.members[s][m].replica.queue();
                    let (pos, digest) = (q.applied(), q.digest());
                    if self.digests[s].get(&pos).is_some_and(|d| *d != digest) {
                        return Err(self.violation(
                            "replicas identical",
                            format!("shard {s} member {m}'s transferred state differs at {pos}"),
                        ));
                    }
                    self.act(s, m, effects)?;
                    continue;
                }
                Applied::Speculated { effects } => effects,
                Applied::Persisted { effects } => {
                    self.act(s, m, effects.into_iter().map(|(_, e)| e).collect())?;
                    continue;
                }
            };
            self.count_step(s, m, &effects)?;
            self.act(s, m, effects)?;
        }
        // The trigger's journal notes how far its member told it (`T`), once what came
        // before is written.
        if s == 0 {
            if let (Some(t), Some(j)) = (
                self.members[0][m].replica.told_through(),
                &mut self.hosts[m].journal,
            ) {
                j.told_through = t;
            }
        }
        Ok(())
    }

    fn rearm(&mut self, s: usize, m: usize) {
        let x = &mut self.members[s][m];
        if !x.alive {
            return;
        }
        let t = x.replica.poll_timeout().as_micros().max(self.now);
        if t < x.timer {
            x.timer = t;
            let inc = x.inc;
            self.schedule(t, Event::Timer { s, m, inc });
        }
    }

    /// Sends what member `m` of shard `s` has to send through its shard's network.
    fn flush(&mut self, s: usize, m: usize) {
        let now = Instant::from_micros(self.now);
        while let Some(t) = self.members[s][m].replica.poll_transmit(now) {
            let dests: Vec<usize> = match t.dest {
                Dest::All => self.members[s][m]
                    .replica
                    .view()
                    .members
                    .iter()
                    .map(|x| x.0 as usize)
                    .filter(|&j| j != m)
                    .collect(),
                Dest::One(x) => vec![x.0 as usize],
            };
            for to in dests {
                if to >= self.cfg.members || self.cut(m, to) || self.rng.gen_bool(self.cfg.loss) {
                    continue;
                }
                let copies = if self.rng.gen_bool(self.cfg.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = if self.rng.gen_bool(self.cfg.slow) {
                        self.rng.gen_range(1_000..5_000)
                    } else {
                        self.rng
                            .gen_range(self.cfg.delay_us.0..=self.cfg.delay_us.1)
                    };
                    let frame = t.frame.clone();
                    self.schedule(self.now + delay, Event::Arrive { s, to, frame });
                }
            }
            self.members[s][m].replica.recycle(t.frame);
        }
    }

    /// Host `h`'s forwarders: the one from `a` to `b` runs while its members of `a` and `b`
    /// serve and `forwarder_for` picks `h` among the members of both views (as those members
    /// see them): a host with a live member in each shard, the same one at every host once the
    /// views agree, the pairs spread over the hosts.
    fn forward(&mut self, h: usize) -> Result<(), ShardViolation> {
        let n = self.cfg.shards;
        let now = Instant::from_micros(self.now);
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        let mut polled = BTreeSet::new();
        for a in 0..n {
            for b in 0..n {
                if a == b {
                    continue;
                }
                let (src, dst) = (&self.members[a][h], &self.members[b][h]);
                let active = src.alive
                    && dst.alive
                    && src.replica.status() == Status::Serving
                    && dst.replica.status() == Status::Serving
                    && forwarder_for(
                        ShardId(a as u16),
                        ShardId(b as u16),
                        n as u16,
                        &src.replica
                            .view()
                            .members
                            .iter()
                            .filter(|x| dst.replica.view().members.contains(x))
                            .copied()
                            .collect::<Vec<_>>(),
                    ) == Some(MemberId(h as u16));
                if !active && self.cfg.keep_forwarders {
                    continue;
                }
                if !active {
                    if let Some(f) = self.hosts[h].forwarders.remove(&(a, b)) {
                        self.report.forwarder_went_back += f.stats().went_back;
                        self.report.acks += f.stats().acks;
                    }
                    continue;
                }
                polled.insert((a, b));
                let cfg = self.cfg.forwarder.clone();
                let f = self.hosts[h].forwarders.entry((a, b)).or_insert_with(|| {
                    Forwarder::new(ShardId(a as u16), ShardId(b as u16), cfg, now)
                });
                let dst_room = self.members[b][h].replica.window_room() as usize;
                let src_room = self.members[a][h].replica.window_room() as usize;
                // What the engine publishes for its forwarders (the applied state, or with
                // durable queues what the disks hold).
                let (ma, mb) = pair_mut(&mut self.members, a, b);
                let src = ma[h].replica.shards_to_forward();
                let dst = mb[h].replica.shards_to_forward();
                f.poll(now, &src, &dst, dst_room, src_room, &mut out);
                if self.trace {
                    eprintln!(
                        "t={} h{h} forwarder {a}->{b}: {} ops, waiting {}, dest mark {} me {:?}, rooms {dst_room}/{src_room} {:?}",
                        self.now,
                        out.len(),
                        self.members[a][h].replica.queue().shards().waiting(),
                        self.members[b][h].replica.queue().shards().watermark(ShardId(a as u16)),
                        self.members[b][h].replica.queue().shards().me(),
                        f
                    );
                }
                // After one is refused, the ones behind it are not submitted (as the engine's
                // forwarders do: they would come after a gap).
                let mut refused = [false; 2];
                for fw in out.drain(..) {
                    let (to, side, op) = match &fw {
                        Forwarding::ToDestination(op) => (b, 0, op),
                        Forwarding::ToSource(op) => (a, 1, op),
                    };
                    if refused[side] {
                        continue;
                    }
                    if self.members[to][h].replica.submit(op).is_err() {
                        f.refused(&fw);
                        refused[side] = true;
                    } else {
                        touched.insert(to);
                    }
                }
            }
        }
        for s in touched {
            self.flush(s, h);
            self.rearm(s, h);
        }
        // A forwarder's timer is always ahead of the poll that set it (else a host that sleeps
        // until it would spin).
        if let Some(f) = self.hosts[h]
            .forwarders
            .iter()
            .filter(|(k, _)| polled.contains(*k))
            .map(|(_, f)| f)
            .find(|f| f.poll_timeout().is_some_and(|t| t.as_micros() <= self.now))
        {
            return Err(self.violation(
                "forwarder timer",
                format!("a forwarder's timer is not ahead of its poll: {f:?}"),
            ));
        }
        let next = self.hosts[h]
            .forwarders
            .iter()
            .filter(|(k, _)| polled.contains(*k))
            .map(|(_, f)| f)
            .filter_map(|f| f.poll_timeout())
            .map(|t| t.as_micros().max(self.now + 1))
            .min();
        if let Some(t) = next {
            if t < self.hosts[h].forward_at {
                self.hosts[h].forward_at = t;
                self.schedule(t, Event::Forward { h });
            }
        }
        Ok(())
    }
}

/// Runs seed `seed` with its drawn configuration.
pub fn run_seed(seed: u64) -> Result<ShardReport, ShardViolation> {
    ShardSim::new(seed, ShardSimConfig::from_seed(seed)).run()
}

/// Two distinct elements of `v`, both mutable.
fn pair_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}
