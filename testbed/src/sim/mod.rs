//! A deterministic simulator of a whole Conveyor group.
//!
//! Every member is a real [`Replica`] (the production protocol core and queue replica, exactly
//! what the engine drives); the simulator owns virtual time and the network. One seed decides
//! everything: the group size, the protocol's windows and frame size, loss, duplication,
//! corruption, delay and reordering, partitions and their heal, foreign frames (wrong key,
//! wrong group), and the workload. The same seed always replays the same run.
//!
//! Membership faults drawn from the seed too: crashes of a minority (sometimes while a change
//! is under way), the leader of a view change crashing mid-change (right after its decision
//! goes out, or as it commits, its commits reaching only some members; a member right after
//! it delivered while another is wedged; the member sending a joiner its state as it starts),
//! restarts of crashed members as new joiners or from the group file (the first view, as
//! `conveyor node` starts), graceful leaves, members excluded by a partition rejoining after it
//! heals (several may join at once), leaders cut off mid-change (one as its decision goes out,
//! then the next as it commits, each with the members its last frames reached, the second cut
//! outlasting the first: the leader after them meets both accepted decisions, and one of them
//! is installed), and paused processes (a polling thread descheduled for 1
//! to 50 ms: frames wait, timers fire late). Joiners get the queue state by state transfer.
//! The network also has one-way links, frames delayed by several failure timeouts, valid frames
//! of the run replayed long after, frames of an earlier run of the group (same key and group
//! file: [`run_seed`] runs it first, recorded, with other processes, and replays its frames,
//! half during the first view's start-up), and timer jitter (see [`SimConfig`]). Some seeds
//! leave a member off the admission list: its later processes must never be admitted, and the
//! group goes on without it. A member crash-looping at start-up (dead before everyone heard
//! it, restarted from the group file) leaves members disagreeing on which process the id is.
//!
//! Workload: member 0 creates a two-step pipeline's queues; every member subscribes and offers
//! credits, as an invoker; members push requests; a member assigned a request completes it
//! after a simulated execution time, pushing the continuation (step `s0` to `s1`) atomically.
//! Some completions are reported twice; with zombies, an excluded process's executions go on
//! and its next incarnation reports them late, after the group put the requests back. At every
//! other push a member's Redis client adds an entry to a stream (kept to 20) and reads for its
//! consumer of one group (every third read blocks until an entry comes, or its next turn gives
//! up on it), and acknowledges what it reads (Redis commands in the order, `Op::Redis`).
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
//! - the null rule, from the global state (`check_nulls`);
//! - bounded memory, against the simulator's own bounds from the configuration
//!   (`check_memory`);
//! - replicas identical: after the same position of the reference, queue state digests are
//!   equal, and a joiner's transferred state equals the others' at its first view;
//! - exactly one consumer: a request instance is assigned once in the whole run (a request put
//!   back gets a new instance);
//! - credits: a consumer is never assigned more requests than the credits it offered since it
//!   joined;
//! - exactly once, as it happens: an instance completes once, a run ends once, and a
//!   completion counts only from the execution its instance was assigned to (never from a
//!   zombie's late report);
//! - no member wrongly concludes that it restarted inside the view;
//! - streams: no stream entry is told acknowledged twice in a run (an entry given back after
//!   the member it went through was removed, or after a whole-group restart, and read again,
//!   is acknowledged once); the streams are part of the replicas' digests, so every replica
//!   runs every command alike, and Redis replies of a durable group are told only once a
//!   majority's disks hold their step;
//! - origin told: a member removed while requests it pushed were unanswered comes back in the
//!   same process (as the engine does); with its state it is told only ends of its own runs
//!   that happened, never one twice (across its incarnations), and its pushes that never
//!   reached the order go again (an extra push would be a run finished twice);
//! - durable (half the seeds: every queue `durability: log`, each member's log on a modelled
//!   disk that syncs at random moments, what was not synced lost in a crash): every log is a
//!   snapshot then records at consecutive positions; a push's acceptance or a run's end is told
//!   only once a majority of the group file's members has synced the step that made it (the
//!   model's disks, and the position the simulator saw the step end at: not the replica's
//!   word); at the end, every serving member's log replays to its queue's state. Members start
//!   as restarted from their data directories (`Replica::recover_from`: they order their claims
//!   and decide on a state before serving); a crashed member restarted from the group file
//!   recovers from what its last process synced, and a joiner carries its log's state (sent
//!   the claims if admitted before the decision, it claims too); the replica-digest checks
//!   skip a replica until it holds the group's state. A durable group serves only with a
//!   majority of the group file's members: a run that ends with fewer owes no liveness. In
//!   two fifths of durable seeds the whole group goes down once or twice (every process
//!   killed, what was not synced lost) and restarts from its disks within 3 ms: the checks of
//!   one history start again, and when the restarted group decides where it goes on from
//!   (an epoch and a position), every run anyone was told accepted or ended must lie before
//!   it (property `durable`); runs admitted or ended after it never were, and every run
//!   admitted before it must finish exactly once.
//!
//! After the last fault the run continues until every live member serves in one view, has
//! delivered everything, and every run the group admitted (its first push delivered) finished
//! exactly once, and every live process heard the end of every run it pushed: no loss and no
//! duplicate effect, whoever crashed (liveness once a majority is
//! connected); a deadline, and a budget of steps against livelocks, turn a stall into a
//! failure. At the end, validity: what a live, serving process submitted was delivered.
//!
//! Each run counts the corners it reached ([`Corners`]); the CI's seeds must reach each often.

mod checks;
mod config;
mod disks;
mod faults;
mod network;
mod node;
mod report;

use node::{Disk, Gate, Node, RedisAsk};

pub use config::{CutAt, MidChange, SimConfig};
pub use report::{Corners, Report, Totals, Violation};

use conveyor_core::proto::membership::{Status, StopReason};
use conveyor_core::proto::{Delivery, Dest, SubmitError};
use conveyor_core::queue::{
    Durability, Effect, Http, Meta, OnFull, Op, Order, QueueSpec, RejectReason, Request,
};
use conveyor_core::streams::Value;
use conveyor_core::types::{GroupId, Instant, MemberId, RequestId, Seq, View, ViewId};
use conveyor_core::wire::{FrameWriter, Header, Key, Kind, Row};
use conveyor_core::{Applied, Persist, RecoveryStage, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

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
    /// A new incarnation of member `at` starts with the configured (first) view.
    Restart {
        at: usize,
    },
    /// Member `at`'s process is descheduled for `us` microseconds.
    Pause {
        at: usize,
        us: u64,
    },
    /// A partition heals (links are restored by `cut` on its own; this only looks).
    Heal,
    /// Member `at` starts to leave the group gracefully.
    Leave {
        at: usize,
    },
    /// Every process of the group is killed at once (durable runs; see
    /// `SimConfig::group_restarts`); each member restarts from its data directory soon after.
    GroupDown,
}

/// One item of the agreed order: a message (by its simulator-wide id) or a view installed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Msg(u64),
    View(ViewId, Vec<MemberId>),
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
    /// The step being checked held its acceptances and ends for the disks (durable runs).
    gated_step: bool,
    /// Stream entries told acknowledged (an entry is acknowledged once in a run).
    stream_acked: BTreeSet<Vec<u8>>,
    /// Every submission: id -> (node, incarnation, counter, payload).
    submitted: BTreeMap<u64, (usize, u32, u64, Vec<u8>)>,
    /// Per (node, incarnation): submission counter.
    sub_counter: BTreeMap<(usize, u32), u64>,
    next_msg: u64,
    /// The agreed order, and the queue digest after each of its items.
    reference: Vec<Item>,
    digests: Vec<Option<[u8; 32]>>,
    /// Request instances assigned and not yet finished or put back.
    assigned: BTreeSet<u64>,
    /// Every request instance ever assigned (an instance is handed out once in a run).
    ever_assigned: BTreeSet<u64>,
    /// Who executes each instance: the node and incarnation whose replica assigned it to
    /// itself.
    exec_of: BTreeMap<u64, Exec>,
    /// The execution each completion message reports (by message id).
    completion_exec: BTreeMap<u64, Exec>,
    /// Per consumer: credits offered and requests assigned since it last joined.
    credits: BTreeMap<MemberId, (u64, u64)>,
    /// Mid-change crashes so far (one a run; two in groups of five or more, so that a leader
    /// may find decisions of two earlier ballots among its promises).
    mid_change_crashes: u32,
    /// Leaders cut off mid-change so far (at most `cfg.cut_leaders`).
    leaders_cut: usize,
    /// When the last of those cuts heals.
    leader_cut_end: u64,
    /// Requests whose run ended (terminal completion), with count.
    finished: BTreeMap<RequestId, u32>,
    /// Runs admitted: their first push was delivered.
    admitted: BTreeSet<RequestId>,
    rejected: BTreeSet<RequestId>,
    /// Request instances completed (first replica to apply each completion).
    completed: BTreeSet<u64>,
    /// The cut decided for each view that ended.
    cuts: BTreeMap<ViewId, u64>,
    /// Where runs stand in the order's positions, across whole-group restarts.
    epoch: Epoch,
    /// The largest state a replica sent a joiner, bytes.
    max_state: usize,
    last_fault: u64,
    report: Report,
    /// Which run of the group this is (0: the one checked; 1: an earlier run whose frames are
    /// replayed into it). Processes and message ids differ between runs.
    run: u64,
    /// Every frame sent, while recording (an earlier run).
    tape: Option<Vec<Vec<u8>>>,
}

const GROUP: GroupId = GroupId(0xC0);

/// After a whole-group crash, members restart from their data directories within this long.
const GROUP_RESTART_SPREAD_US: u64 = 3_000;

/// What the simulator keeps across whole-group restarts: where in the group's history (the
/// state's epoch, and the replicas' `QueueState::applied` after the step) each run was
/// admitted, ended or refused, and what members were told. When a restarted group decides to
/// go on from a log of epoch `E` at position `P`, what happened in a later epoch, or in `E` at
/// or after `P`, never happened; what anyone was told must lie before it.
#[derive(Debug, Default)]
struct Epoch {
    admitted_at: BTreeMap<RequestId, (u64, u64)>,
    ended_at: BTreeMap<RequestId, (u64, u64)>,
    rejected_at: BTreeMap<RequestId, (u64, u64)>,
    told_accepted: BTreeSet<RequestId>,
    told_ended: BTreeSet<RequestId>,
    /// The group went down and has not decided on a state again yet.
    awaiting_decision: bool,
}

/// The number that stands for incarnation `inc` of node `i` (the engine draws one at random
/// per process; here, one no draw of the seed depends on).
fn incarnation(run: u64, i: usize, inc: u32) -> u64 {
    (run << 48) | ((i as u64) << 32) | u64::from(inc + 1)
}

/// Frames of an earlier run kept for replay at most (the earliest: they include the first
/// view's start-up).
const TAPE_MAX: usize = 20_000;

/// An execution: the node and the incarnation running it.
type Exec = (usize, u32);

/// Steps a run may take (frames, timers, workload); a run that needs more is stuck in a loop
/// (a livelock with timers that do advance), reported as a liveness failure.
const STEP_BUDGET: u64 = 40_000_000;

fn spec(name: &str, durable: bool) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        capacity: 1 << 16,
        order: Order::Fifo,
        on_full: OnFull::Block,
        durability: if durable {
            Durability::Log
        } else {
            Durability::Memory
        },
    }
}

/// Every member creates the queues (idempotent), subscribes to them and offers credits.
fn invoker_ops(me: MemberId, durable: bool) -> Vec<Op> {
    let mut ops = vec![
        Op::Create(spec("s0", durable)),
        Op::Create(spec("s1", durable)),
        // The stream every member adds to and reads with one consumer group (Redis commands
        // in the order: see `Sim::stream_ops`); all but the first are BUSYGROUP.
        redis_op(me, 0, 0, "XGROUP CREATE st g $ MKSTREAM"),
    ];
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

/// A Redis command of member `me`'s client (`token` 0: its reply is not followed).
fn redis_op(me: MemberId, token: u64, now_ms: u64, cmd: &str) -> Op {
    Op::Redis {
        origin: me,
        token,
        now_ms,
        args: cmd.split(' ').map(|w| w.as_bytes().to_vec()).collect(),
    }
}

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        Sim::of_run(seed, cfg, 0)
    }

    /// Run `run` of the group (same key, same group file): see [`Sim::run`]'s field docs.
    fn of_run(seed: u64, cfg: SimConfig, run: u64) -> Sim {
        let key = Key::from_bytes([0x42; 32]);
        let view = View::new(ViewId(1), (0..cfg.members as u16).map(MemberId).collect());
        let mut nodes = Vec::new();
        for i in 0..cfg.members {
            // A durable group's members start as from their (empty) data directories: they
            // agree on a state before serving (see `conveyor_core::replica::recovery`).
            let mut replica = Replica::new(
                cfg.proto.clone(),
                key.clone(),
                GROUP,
                view.clone(),
                MemberId(i as u16),
                incarnation(run, i, 0),
                Instant::ZERO,
            )
            .expect("valid sim config");
            if cfg.durable {
                replica.recover_from(conveyor_core::queue::QueueState::new());
            }
            replica.set_speculation(cfg.speculate);
            let me = MemberId(i as u16);
            let mut outbox = VecDeque::new();
            replica.set_durable(cfg.durable, &view.members);
            outbox.extend(replica.claim().map(|c| (c, None)));
            outbox.extend(
                invoker_ops(me, cfg.durable)
                    .into_iter()
                    .map(|op| (op, None)),
            );
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
                told: BTreeSet::new(),
                counter: 0,
                executing: Vec::new(),
                gates: BTreeMap::new(),
                paused_until: 0,
                was_leading: None,
                leaving: false,
                sending_state: false,
                led: 0,
                moment_view: ViewId(1),
                configured_restart: false,
                timer: (u64::MAX, u64::MAX),
                rejoin_scheduled: false,
                trace: String::new(),
                passed: (ViewId(1), 0),
                data_slots: Vec::new(),
                conflicting_accepts: 0,
                disk: Disk::default(),
                synced_ever: 0,
                awaiting_disks: VecDeque::new(),
                redis: BTreeMap::new(),
                redis_token: 0,
            });
        }
        let last_fault = cfg
            .partitions
            .iter()
            .map(|p| p.1)
            .chain(cfg.crashes.iter().map(|c| c.0))
            .chain(cfg.restarts.iter().map(|c| c.0))
            .chain(cfg.one_way.iter().map(|c| c.1))
            .chain(cfg.leaves.iter().map(|c| c.0))
            .chain(
                cfg.group_restarts
                    .iter()
                    .map(|t| t + GROUP_RESTART_SPREAD_US),
            )
            .max()
            .unwrap_or(0);
        let mut sim = Sim {
            key,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            nodes,
            events: BinaryHeap::new(),
            event_seq: 0,
            gated_step: false,
            stream_acked: BTreeSet::new(),
            submitted: BTreeMap::new(),
            sub_counter: BTreeMap::new(),
            next_msg: run << 40,
            reference: Vec::new(),
            digests: Vec::new(),
            assigned: BTreeSet::new(),
            ever_assigned: BTreeSet::new(),
            exec_of: BTreeMap::new(),
            completion_exec: BTreeMap::new(),
            credits: BTreeMap::new(),
            mid_change_crashes: 0,
            leaders_cut: 0,
            leader_cut_end: 0,
            finished: BTreeMap::new(),
            admitted: BTreeSet::new(),
            rejected: BTreeSet::new(),
            completed: BTreeSet::new(),
            cuts: BTreeMap::new(),
            epoch: Epoch::default(),
            max_state: 0,
            last_fault,
            report: Report::default(),
            cfg,
            run,
            tape: None,
        };
        for i in 0..sim.cfg.members {
            let t = sim.rng.gen_range(1_000..5_000);
            sim.schedule(t, Event::Push { at: i });
        }
        for (t, m) in sim.cfg.crashes.clone() {
            sim.schedule(t, Event::Crash { at: m });
        }
        for (k, (t, m)) in sim.cfg.restarts.clone().into_iter().enumerate() {
            if sim.cfg.restarts_configured.get(k) == Some(&true) {
                sim.schedule(t, Event::Restart { at: m });
            } else {
                sim.schedule(t, Event::Rejoin { at: m });
            }
        }
        for (t, m, us) in sim.cfg.pauses.clone() {
            sim.schedule(t, Event::Pause { at: m, us });
        }
        for t in sim.cfg.partitions.iter().map(|p| p.1).collect::<Vec<_>>() {
            sim.schedule(t, Event::Heal);
        }
        for (t, m) in sim.cfg.leaves.clone() {
            sim.schedule(t, Event::Leave { at: m });
        }
        for t in sim.cfg.group_restarts.clone() {
            sim.schedule(t, Event::GroupDown);
        }
        sim.inject_foreign();
        sim
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.event_seq += 1;
        self.events.push(Reverse((at, self.event_seq, e)));
    }

    fn violation(&self, property: &'static str, detail: String) -> Violation {
        Violation {
            property,
            at_us: self.now,
            detail,
        }
    }

    fn submit_outbox(&mut self, i: usize) {
        if self.nodes[i].leaving {
            return;
        }
        let key = (i, self.nodes[i].inc);
        while let Some((op, exec)) = self.nodes[i].outbox.pop_front() {
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
                    if let Some(e) = exec {
                        self.completion_exec.insert(id, e);
                    }
                }
                Err(SubmitError::WindowFull) | Err(SubmitError::NotServing(_)) => {
                    self.nodes[i].outbox.push_front((op, exec));
                    break;
                }
                Err(e) => panic!("workload op refused: {e}"),
            }
        }
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
        let seen = self.nodes[i].seen.len();
        self.deliver(i)?;
        self.write_log(i)?;
        let delivered = self.nodes[i].seen.len() > seen;
        self.check_nulls(i)?;
        self.submit_outbox(i);
        self.check_memory(i)?;
        self.maybe_leave(i);
        let moment = self.moment(i);
        let crash = self.crash_now(i, delivered, moment);
        let cut = !crash && self.cut_now(moment);
        let reached = self.flush(i, crash || cut);
        if cut {
            self.cut_off(i, reached, moment);
        }
        let conflicting = self.nodes[i].replica.member().stats().conflicting_accepts;
        if conflicting > self.nodes[i].conflicting_accepts {
            self.report.corners.conflicting_accepts +=
                conflicting - self.nodes[i].conflicting_accepts;
            self.nodes[i].conflicting_accepts = conflicting;
        }
        if crash {
            self.crash(i);
            let back = self.now + self.rng.gen_range(50_000..500_000);
            self.last_fault = self.last_fault.max(back);
            self.schedule(back, Event::Rejoin { at: i });
        } else if self.nodes[i].replica.recovery().map(|r| r.0) == Some(RecoveryStage::Abandoned) {
            // Its state could not come: its host starts it again as a joiner carrying its
            // log's state (whatever the run's rejoin setting, as the engine does).
            self.report.corners.recovery_abandoned += 1;
            self.rejoin(i);
        }
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
            .enumerate()
            .filter(|(i, n)| {
                n.alive
                    && !(n.replica.member().status().is_final()
                        && self.cfg.rejoin_after_us.is_none())
                    && !(self.cfg.not_admitted == Some(*i)
                        && n.replica.member().status() == Status::Joining)
            })
            .map(|(_, n)| n)
            .collect();
        live.iter().all(|n| {
            n.replica.member().status() == Status::Serving
                && n.pushes_left == 0
                && n.outbox.is_empty()
                && n.executing.iter().all(Option::is_none)
                && n.pos == Some(self.reference.len())
                && n.replica.member().window_room() == n.replica.member().config().window
                && n.replica.unanswered() == 0
        }) && live
            .windows(2)
            .all(|w| w[0].replica.view() == w[1].replica.view())
            && self
                .admitted
                .iter()
                .all(|id| self.rejected.contains(id) || self.finished.contains_key(id))
    }

    /// Whether fewer than a majority of the latest view installed anywhere are alive and
    /// still in it. A member that stopped itself while the group still counted on it (its
    /// state had not arrived, or it missed views) is not a fault the simulator made: it counts
    /// as in the view, so that a group it leaves wedged fails the run (liveness) rather than
    /// passing as one that lost its majority. One whose host refused its state (a fault the
    /// simulator injects) counts as lost.
    /// Every member: alive or crashed, status (and why it stopped), view, position in the
    /// reference order, and whom it suspects.
    fn who_is_where(&self) -> String {
        let who: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let m = n.replica.member();
                format!(
                    "m{i}{} {}{} view {} at {:?}/{} suspecting {:?}",
                    if n.alive { "" } else { " (crashed)" },
                    m.status().label(),
                    m.stop_reason()
                        .map_or(String::new(), |r| format!(" ({})", r.label())),
                    m.view().id.0,
                    n.pos,
                    self.reference.len(),
                    m.suspects()
                )
            })
            .collect();
        who.join(", ")
    }

    fn majority_lost(&self) -> bool {
        // The first view is everyone's, installed by none.
        let (id, members) = self
            .reference
            .iter()
            .rev()
            .find_map(|x| match x {
                Item::View(id, members) => Some((*id, members.clone())),
                Item::Msg(_) => None,
            })
            .unwrap_or_else(|| {
                (
                    ViewId(1),
                    (0..self.cfg.members as u16).map(MemberId).collect(),
                )
            });
        let ok = members
            .iter()
            .filter(|m| {
                let n = &self.nodes[m.0 as usize];
                let m = n.replica.member();
                // A member that stopped itself while the group's decision counted on it (see
                // `StopReason::kept_by_group`) is the protocol's doing: it counts as present.
                n.alive
                    && ((m.view().id == id && !m.status().is_final())
                        || m.stop_reason().is_some_and(StopReason::kept_by_group))
            })
            .count();
        // A durable group serves only with a majority of the group file's members (what it
        // tells waits for their disks; a restarted group decides with them): members left
        // out that are not joining again take it away.
        let joining = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.replica.status() == Status::Joining)
            .count();
        // A restarted group whose holders of the decided state all died before handing it
        // over waits for them (see `RecoveryStage::Abandoned`): no liveness is owed while no
        // live process holds the group's state.
        let holder = self.nodes.iter().any(|n| {
            n.alive
                && !n.replica.status().is_final()
                && n.replica.status() != Status::Joining
                && n.replica
                    .recovery()
                    .is_none_or(|(s, _)| s == RecoveryStage::Recovered)
        });
        ok * 2 <= members.len()
            || (self.cfg.durable && ((ok + joining) * 2 <= self.cfg.members || !holder))
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
            if trace && iterations.is_multiple_of(200_000) {
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
            if iterations > STEP_BUDGET {
                return Err(self.violation(
                    "liveness after heal",
                    format!("no end after {STEP_BUDGET} steps (a livelock)"),
                ));
            }
            // Timers fire late by up to the jitter, and a paused process's when it runs again.
            for i in 0..n {
                let t = self.nodes[i].replica.poll_timeout().as_micros();
                if self.nodes[i].timer.0 != t {
                    let late = if self.cfg.timer_jitter_us > 0 && t != u64::MAX {
                        self.rng.gen_range(0..=self.cfg.timer_jitter_us)
                    } else {
                        0
                    };
                    self.nodes[i].timer = (t, t.saturating_add(late));
                }
            }
            let next_timer = (0..n)
                .filter(|&i| self.nodes[i].alive)
                .map(|i| {
                    let t = self.nodes[i].timer.1;
                    let t = if t == u64::MAX {
                        t
                    } else {
                        t.max(self.nodes[i].paused_until)
                    };
                    (t, i)
                })
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
                if trace {
                    // Who is where, to tell a fault that took the majority from a wedge.
                    eprintln!("majority lost: {}", self.who_is_where());
                }
                break;
            }
            if self.now > deadline {
                let stuck = self.who_is_where();
                let unfinished = self
                    .admitted
                    .iter()
                    .filter(|id| !self.rejected.contains(id) && !self.finished.contains_key(id))
                    .count();
                if trace {
                    for id in self
                        .admitted
                        .iter()
                        .filter(|id| !self.rejected.contains(id) && !self.finished.contains_key(id))
                    {
                        let pending: Vec<bool> = self.nodes.iter().map(|n| n.replica.queue().rejoined(id.origin(), 0).iter().any(|e| matches!(e, Effect::Rejoined { pending, .. } if pending.contains(id)))).collect();
                        eprintln!("unfinished {id}: admitted at {:?}, ended at {:?}, pending at members {pending:?}", self.epoch.admitted_at.get(id), self.epoch.ended_at.get(id));
                    }
                }
                return Err(self.violation("liveness after heal", format!("not finished {}s after the last fault: {stuck}; {unfinished} admitted runs unfinished", self.cfg.settle_us / 1_000_000)));
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
            // A paused process takes nothing before it runs again: frames wait in its
            // receive ring, its workload waits.
            let target = match &ev {
                Event::Arrive { to, .. } => Some(*to),
                Event::Push { at }
                | Event::Finish { at, .. }
                | Event::Rejoin { at }
                | Event::Restart { at } => Some(*at),
                Event::Leave { at } => Some(*at),
                Event::Crash { .. } | Event::Pause { .. } | Event::Heal | Event::GroupDown => None,
            };
            if let Some(j) = target {
                if self.nodes[j].paused_until > self.now {
                    let until = self.nodes[j].paused_until;
                    self.schedule(until, ev);
                    continue;
                }
            }
            match ev {
                Event::Arrive { to, frame } => {
                    if self.nodes[to].alive {
                        self.nodes[to].replica.handle_frame(now, &frame);
                        self.step_member(to)?;
                    }
                }
                Event::Crash { at } => {
                    if self.nodes[at].alive {
                        self.crash(at);
                    }
                }
                Event::Pause { at, us } => {
                    if self.nodes[at].alive {
                        let until = self.now + us;
                        self.nodes[at].paused_until = self.nodes[at].paused_until.max(until);
                        self.report.corners.pause += 1;
                    }
                }
                Event::Leave { at } => {
                    let n = &self.nodes[at];
                    if n.alive && n.replica.status() == Status::Serving {
                        self.nodes[at].leaving = true;
                        self.step_member(at)?;
                    }
                }
                Event::Heal => {
                    if self.changing() {
                        self.report.corners.heal_during_change += 1;
                    }
                }
                Event::GroupDown => self.group_down(),
                Event::Rejoin { at } => {
                    self.rejoin(at);
                    self.step_member(at)?;
                }
                Event::Restart { at } => {
                    if !self.nodes[at].alive {
                        self.restart_configured(at);
                        self.step_member(at)?;
                    }
                }
                Event::Push { at } => {
                    let me = MemberId(at as u16);
                    let mut stream_turn = None;
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
                            http: counter.is_multiple_of(3).then(|| {
                                Box::new(Http {
                                    method: "POST".into(),
                                    path: format!("/p/{counter}"),
                                    query: "a=1".into(),
                                    headers: vec![("Content-Type".into(), "text/plain".into())],
                                    status: 0,
                                })
                            }),
                        };
                        node.outbox.push_back((Op::Push { pusher: me, req }, None));
                        stream_turn = counter.is_multiple_of(2).then_some(counter);
                        if counter.is_multiple_of(10) {
                            // A pipeline change passed on by this member (as members pass on
                            // the control plane's): members race with equal versions and
                            // different contents; the replicas must apply the same one.
                            let version = counter / 10;
                            let mut q = spec("s1", self.cfg.durable);
                            q.capacity -= (version % 7) as u32;
                            node.outbox.push_back((
                                Op::Pipelines {
                                    by: me,
                                    version,
                                    queues: vec![q],
                                    docs: vec![format!("v{version} from {at}")],
                                },
                                None,
                            ));
                        }
                    }
                    if node.pushes_left > 0 {
                        let gap = self
                            .rng
                            .gen_range(self.cfg.push_gap_us.0..=self.cfg.push_gap_us.1);
                        self.schedule(self.now + gap, Event::Push { at });
                    }
                    if let Some(counter) = stream_turn {
                        self.stream_ops(at, counter);
                    }
                    self.step_member(at)?;
                }
                Event::Finish { at, inc, req_idx } => {
                    if !self.nodes[at].alive {
                        continue;
                    }
                    let me = MemberId(at as u16);
                    // The execution of incarnation `inc` (an earlier one's, with zombies: the
                    // current incarnation reports it, late).
                    let Some((req, speculative)) = self.nodes[at]
                        .executing
                        .get_mut(req_idx)
                        .and_then(|e| e.take_if(|(x, _, _)| *x == inc))
                        .map(|(_, r, s)| (r, s))
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
                    let complete = Op::Complete {
                        consumer: me,
                        id: req.id,
                        instance: req.instance,
                        step: req.step.clone(),
                        reply: req.http.clone(),
                        outputs,
                        result: None,
                        meta: Meta::default(),
                        credits: 1,
                    };
                    if let Some(speculative) = speculative {
                        // Held until the assignment is confirmed, dropped if discarded.
                        let key = (inc, speculative);
                        match self.nodes[at].gates.remove(&key) {
                            Some(Gate::Running(_)) => {
                                self.nodes[at].gates.insert(key, Gate::Finished(complete));
                                continue;
                            }
                            Some(Gate::Confirmed(instance)) => {
                                self.submit_completion(at, inc, complete, instance);
                            }
                            Some(Gate::Discarded) | None => continue,
                            Some(g @ Gate::Finished(_)) => {
                                self.nodes[at].gates.insert(key, g);
                                continue;
                            }
                        }
                    } else {
                        let instance = req.instance;
                        self.submit_completion(at, inc, complete, instance);
                    }
                    self.step_member(at)?;
                }
            }
        }
        if !self.report.majority_lost {
            self.check_validity()?;
        }
        self.check_logs()?;
        // Every speculation of a serving process was confirmed or discarded: none waits for
        // good with its completion held.
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive || n.replica.status() != Status::Serving {
                continue;
            }
            let open = n.gates.iter().find(|((inc, _), g)| {
                *inc == n.inc && matches!(g, Gate::Running(_) | Gate::Finished(_))
            });
            if let Some(((_, speculation), g)) = open {
                return Err(self.violation(
                    "speculation resolved",
                    format!(
                        "m{i}'s speculation {speculation} was never confirmed nor discarded: {g:?}"
                    ),
                ));
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
        report.steps = iterations;
        report.requests_finished = self.finished.len();
        for node in &self.nodes {
            let s = node.replica.member().stats();
            report.delivered += s.delivered;
            report.retransmitted_slots += s.retransmitted_slots;
            report.fast_retransmits += s.fast_retransmits;
            report.retransmitted_frames += s.retransmitted_frames;
            report.dropped_frames += s.dropped_total();
            report.max_batch = report.max_batch.max(s.max_batch);
            report.window_full += s.window_full;
            report.corners.join_refused += s.joins_refused;
        }
        Ok(report)
    }
}

impl Sim {
    /// Queues the completion of an execution of incarnation `inc` of member `at`, for
    /// `instance` (a speculated execution's is confirmed as possibly another instance).
    fn submit_completion(&mut self, at: usize, inc: u32, mut complete: Op, instance: u64) {
        if let Op::Complete { instance: i, .. } = &mut complete {
            *i = instance;
        }
        let exec = Some((at, inc));
        // Some invokers report twice (a retry after a lost answer).
        if self.cfg.duplicate_completions > 0.0 && self.rng.gen_bool(self.cfg.duplicate_completions)
        {
            self.nodes[at].outbox.push_back((complete.clone(), exec));
        }
        self.nodes[at].outbox.push_back((complete, exec));
    }
}

/// Runs one seed with its drawn configuration, optionally altered. With
/// [`SimConfig::earlier_run`], an earlier run of the group (same configuration, another draw,
/// other processes) runs first, recorded, and its frames are replayed into the checked run.
pub fn run_seed(seed: u64, alter: impl FnOnce(&mut SimConfig)) -> Result<Report, Violation> {
    let mut cfg = SimConfig::from_seed(seed);
    alter(&mut cfg);
    // A test may change the group size: keep messages within a frame.
    let fits = conveyor_core::wire::max_payload_for(cfg.proto.max_frame, cfg.members);
    cfg.proto.max_payload = cfg.proto.max_payload.min(fits);
    let tape = if cfg.earlier_run > 0 {
        let mut earlier_cfg = cfg.clone();
        earlier_cfg.earlier_run = 0;
        let mut earlier = Sim::of_run(seed ^ 0xEA21_1E25_0000_0000, earlier_cfg, 1);
        earlier.tape = Some(Vec::new());
        earlier.run().map_err(|v| Violation {
            detail: format!("in the earlier run of the group: {}", v.detail),
            ..v
        })?;
        earlier.tape.take().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut sim = Sim::new(seed, cfg);
    sim.replay_earlier_run(&tape);
    sim.run()
}
