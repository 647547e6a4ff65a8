//! A simulated member's process: its replica and what the simulator tracks of it (its
//! workload, executions, speculations held for their confirmation, and what it delivered).

use super::{Exec, Item};
use conveyor_core::queue::{Effect, Op, Request};
use conveyor_core::types::{RequestId, ViewId};
use conveyor_core::Replica;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a speculated execution stands (see [`Node::gates`]).
#[derive(Clone, Debug)]
pub(super) enum Gate {
    /// Running, not confirmed yet.
    Running(Request),
    /// Confirmed as this instance; its completion goes out when it finishes.
    Confirmed(u64),
    /// Finished, its completion held until the confirmation.
    Finished(Op),
    /// Discarded while running: its completion is dropped.
    Discarded,
}

pub(super) struct Node {
    /// The member's process: the protocol core and its queue replica.
    pub(super) replica: Replica,
    /// Process incarnation (0 for the original; each rejoin is a new process).
    pub(super) inc: u32,
    pub(super) alive: bool,
    /// Ops waiting for window room (or for the member to serve), in order, each with the
    /// execution (node, incarnation) whose completion it is, if it is one.
    pub(super) outbox: VecDeque<(Op, Option<Exec>)>,
    /// Position in the reference order of the next item this incarnation delivers; `None`
    /// for a joiner before its first view.
    pub(super) pos: Option<usize>,
    /// A joiner's first view, until its place in the reference is known.
    pub(super) first_view: Option<Item>,
    /// Message ids this incarnation delivered.
    pub(super) seen: BTreeSet<u64>,
    /// Per origin (node, incarnation): last message counter delivered.
    pub(super) last_from: BTreeMap<(usize, u32), u64>,
    pub(super) pushes_left: usize,
    /// Runs of its own this process was told the end of (by any of its incarnations).
    pub(super) told: BTreeSet<RequestId>,
    pub(super) counter: u64,
    /// Requests being executed, with the incarnation executing them (an excluded process's
    /// executions go on in its next incarnation when the run has zombies).
    pub(super) executing: Vec<Option<(u32, Request, Option<u64>)>>,
    /// Speculated executions (the third field of `executing`) by (incarnation, speculation):
    /// their completion waits for the confirmation.
    pub(super) gates: BTreeMap<(u32, u64), Gate>,
    /// Nothing of this process runs before this time (descheduled).
    pub(super) paused_until: u64,
    /// The view-change ballot this member led after its last step, and whether its decision
    /// was out.
    pub(super) was_leading: Option<bool>,
    /// Leaving gracefully: submits nothing more, asks to leave once what it sent is delivered.
    pub(super) leaving: bool,
    /// It started sending a joiner its state in this step.
    pub(super) sending_state: bool,
    /// The size of the view it last led a change in.
    pub(super) led: usize,
    /// Its view when [`Sim::moment`] last looked.
    pub(super) moment_view: ViewId,
    /// This incarnation was started with the configured view after a crash: it may rightly
    /// find out that it restarted inside a view.
    pub(super) configured_restart: bool,
    /// The timer deadline the replica last asked for, and when it really fires (jitter).
    pub(super) timer: (u64, u64),
    pub(super) rejoin_scheduled: bool,
    pub(super) trace: String,
    /// Ballots of this process that met two different accepted decisions, so far.
    pub(super) conflicting_accepts: u64,
    /// The view and the slots delivered (messages and nulls) when last looked at.
    pub(super) passed: (ViewId, u64),
    /// Slots delivered as messages since then (the others passed were nulls).
    pub(super) data_slots: Vec<u64>,
    /// This process's log (durable runs).
    pub(super) disk: Disk,
    /// The furthest position any process of this member had synced on the host's disk (it
    /// survives the processes).
    pub(super) synced_ever: u64,
    /// Acceptances and ends this process's replica held for the disks, with the position the
    /// disks must reach (the end of the step that made them), as the simulator saw them made.
    pub(super) awaiting_disks: VecDeque<(u64, Effect)>,
    /// This process's Redis commands waiting for their replies, by token (see
    /// `Sim::stream_ops`).
    pub(super) redis: BTreeMap<u64, RedisAsk>,
    pub(super) redis_token: u64,
}

/// What a Redis command of the simulated client asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RedisAsk {
    /// A read (blocking or not): its entries are acknowledged.
    Read(bool),
    /// An acknowledgement of this entry.
    Ack(Vec<u8>),
    Other,
}

/// A process's log on its host's disk, in a durable run (see `SimConfig::durable`).
pub(super) type Disk = crate::disk::LogDisk;

impl Node {
    /// A new process of this member, running `replica` (its workload goes on: pushes left,
    /// counter). `pos`: where it starts in the reference (`None` for a joiner, until its first
    /// view); `view`: the view it starts in. With `zombie`, the previous process's executions
    /// go on and their completions not yet submitted wait for this one to serve; otherwise
    /// they die with it.
    pub(super) fn start_process(
        &mut self,
        replica: Replica,
        pos: Option<usize>,
        view: ViewId,
        zombie: bool,
        keep_pushes: bool,
    ) {
        self.replica = replica;
        self.inc += 1;
        self.alive = true;
        if !keep_pushes {
            // A new process: nothing it was told survives.
            self.told.clear();
        }
        self.outbox.retain(|(op, exec)| {
            (zombie && exec.is_some()) || (keep_pushes && matches!(op, Op::Push { .. }))
        });
        self.pos = pos;
        self.first_view = None;
        self.seen.clear();
        self.last_from.clear();
        if !zombie {
            self.executing.clear();
            self.gates.clear();
        }
        self.was_leading = None;
        self.led = 0;
        self.moment_view = view;
        self.leaving = false;
        self.sending_state = false;
        self.configured_restart = false;
        self.timer = (u64::MAX, u64::MAX);
        self.rejoin_scheduled = false;
        self.passed = (view, 0);
        self.data_slots.clear();
        self.disk = Disk::default();
        self.awaiting_disks.clear();
        self.conflicting_accepts = 0;
        // Its commands' replies went with the process (a blocked read of it is dropped at its
        // removal, or at a whole-group restart).
        self.redis.clear();
    }
}
