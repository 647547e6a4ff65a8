//! The replicated function-request queue: a deterministic state machine applied by every
//! replica to the totally ordered operations, in delivery order (state machine replication, as
//! DIFFUSE's DSMQueue). Nothing here reads a clock, a random number or a hash map's iteration
//! order, so replicas that apply the same operations stay byte-for-byte identical
//! ([`QueueState::digest`]).
//!
//! Assignment without a round of ordering per take: consumers announce readiness (credits) as
//! ordered operations; whenever a request and a ready consumer meet, every replica assigns the
//! request to the ready consumer subscribed to its queue that holds the fewest requests, the
//! earliest ready among equals, and the assigned consumer starts at once. Each request goes to
//! exactly one consumer; among equally loaded consumers those that asked first are served first
//! (DIFFUSE's implicit load balancing), and a consumer holding several credits is given a
//! second request only when no other ready consumer is idler, so credits can cover the ordering
//! delay without piling work on one consumer while another waits. Between the heads of the
//! queues a consumer serves, the oldest run goes first (continuations inherit their run's
//! admission stamp), so a pipeline's requests finish in the order they came. A completion
//! removes the in-flight request and pushes its continuations in one step. Every pushed request
//! gets an instance number from the replicas (deterministic, unique in the group); completions
//! name it and count only for an instance in flight at the completing consumer, which
//! deduplicates them (by request and step instance: a step reached twice in one run has two
//! instances).

mod op;
mod outcomes;

pub use op::{Durability, Effect, Http, Meta, OnFull, Op, Order, QueueSpec, RejectReason, Request};
pub use outcomes::ended;
pub use outcomes::KEPT_OUTCOMES;

use crate::shard::{Forward, ShardId, Shards, Take};
use crate::types::{MemberId, RequestId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Queue {
    spec: QueueSpec,
    /// Queued requests with their admission stamp (global, increasing).
    items: VecDeque<(u64, Request)>,
    /// Pushes waiting for room (block policy), in order.
    blocked: VecDeque<(MemberId, Request)>,
}

impl Queue {
    fn head_stamp(&self) -> Option<u64> {
        match self.spec.order {
            Order::Fifo => self.items.front().map(|x| x.0),
            Order::Lifo => self.items.back().map(|x| x.0),
        }
    }
    fn pop(&mut self) -> Option<(u64, Request)> {
        match self.spec.order {
            Order::Fifo => self.items.pop_front(),
            Order::Lifo => self.items.pop_back(),
        }
    }
}

/// The pusher named in the effects of a push forwarded from another shard (no member of this
/// group pushed it).
pub const FORWARDER: MemberId = MemberId(u16::MAX - 1);

/// Most credits a consumer may hold; bounds the in-flight requests of one consumer.
pub const MAX_CREDITS: u32 = 1024;

/// Admission stamps start here; requests put back at the head get stamps below it, counting
/// down, so that they are taken before anything admitted normally.
const STAMP_BASE: u64 = 1 << 62;

/// The replicated state. See the module docs. (`Default` is [`QueueState::new`].)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueState {
    queues: BTreeMap<String, Queue>,
    subscriptions: BTreeMap<MemberId, BTreeSet<String>>,
    /// One entry per credit, in the order consumers became ready; a credit given with
    /// [`Op::ReadyFor`] names the only queue it takes from.
    ready: VecDeque<(MemberId, Option<String>)>,
    credits: BTreeMap<MemberId, u32>,
    /// Assigned requests by instance, with their consumer. A completion is applied only if its
    /// instance is in flight at that consumer; this is the deduplication of completions.
    /// instance -> (consumer, request, the stamp it was queued with, which its continuations
    /// inherit).
    in_flight: BTreeMap<u64, (MemberId, Request, u64)>,
    next_instance: u64,
    stamp: u64,
    /// Next stamp for a request put back at the head (counts down from `STAMP_BASE`).
    head_stamp: u64,
    shut_down: bool,
    /// The pipelines set by [`Op::Pipelines`] (version 0: the group file's, not kept here).
    pipelines_version: u64,
    pipeline_docs: Vec<String>,
    /// Operations applied: the position of each in the order, the same on every replica.
    applied: u64,
    /// Each origin's last outcomes, for an origin that comes back ([`outcomes`]).
    outcomes: outcomes::Outcomes,
    /// Whole-group restarts decided so far (see [`QueueState::restart`]).
    epoch: u64,
    /// The Redis streams ([`Op::Redis`]).
    streams: crate::streams::Streams,
    /// This group's shard, the map, the outbox and the inbox ([`crate::shard`]).
    shards: Shards,
    /// While an operation applies: the ends of runs among its effects that began in another
    /// shard (the effect's index, that shard); they go to the outbox instead.
    #[serde(skip)]
    routed: Vec<(usize, ShardId)>,
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState {
            queues: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            ready: VecDeque::new(),
            credits: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_instance: 0,
            stamp: STAMP_BASE,
            head_stamp: STAMP_BASE,
            shut_down: false,
            pipelines_version: 0,
            pipeline_docs: Vec::new(),
            applied: 0,
            outcomes: outcomes::Outcomes::default(),
            epoch: 0,
            streams: crate::streams::Streams::default(),
            shards: Shards::default(),
            routed: Vec::new(),
        }
    }
}

impl QueueState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the queues without the streams, which may be large and do not assign
    /// requests: what speculation runs ahead on (`replica/ahead.rs`, which skips
    /// [`Op::Redis`]).
    pub fn copy_without_streams(&self) -> QueueState {
        let streams = crate::streams::Streams::default();
        let QueueState {
            queues,
            subscriptions,
            ready,
            credits,
            in_flight,
            next_instance,
            stamp,
            head_stamp,
            shut_down,
            pipelines_version,
            pipeline_docs,
            applied,
            outcomes,
            epoch,
            streams: _,
            shards,
            routed: _,
        } = self;
        QueueState {
            queues: queues.clone(),
            subscriptions: subscriptions.clone(),
            ready: ready.clone(),
            credits: credits.clone(),
            in_flight: in_flight.clone(),
            next_instance: *next_instance,
            stamp: *stamp,
            head_stamp: *head_stamp,
            shut_down: *shut_down,
            pipelines_version: *pipelines_version,
            pipeline_docs: pipeline_docs.clone(),
            applied: *applied,
            outcomes: outcomes.clone(),
            epoch: *epoch,
            streams,
            shards: shards.clone(),
            routed: Vec::new(),
        }
    }

    /// The group's Redis streams.
    pub fn streams(&self) -> &crate::streams::Streams {
        &self.streams
    }

    /// Applies a view change, at its place in the total order: the members removed stop being
    /// consumers (subscriptions and credits dropped) and every request in flight at one of them
    /// goes back to the head of its queue, in the order they were assigned, with a new
    /// instance. Deterministic, like [`QueueState::apply`].
    pub fn remove_members(&mut self, removed: &[MemberId], effects: &mut Vec<Effect>) {
        if removed.is_empty() {
            return;
        }
        for (origin, token, reply) in self.streams.members_removed(removed) {
            effects.push(Effect::Redis {
                origin,
                token,
                reply,
            });
        }
        for m in removed {
            self.subscriptions.remove(m);
            self.credits.remove(m);
        }
        self.ready.retain(|(c, _)| !removed.contains(c));
        let back: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (c, _, _))| removed.contains(c))
            .map(|(i, _)| *i)
            .collect();
        // Put back newest first, each at the head, so the oldest ends up first.
        for instance in back.into_iter().rev() {
            let Some((from, mut req, _)) = self.in_flight.remove(&instance) else {
                continue;
            };
            self.next_instance += 1;
            req.instance = self.next_instance;
            effects.push(Effect::Requeued {
                from,
                old_instance: instance,
                id: req.id,
                step: req.step.clone(),
                queue: req.queue.clone(),
                origin_shard: req.meta.origin_shard,
            });
            if let Some(q) = self.queues.get_mut(&req.queue) {
                self.head_stamp -= 1;
                match q.spec.order {
                    Order::Fifo => q.items.push_front((self.head_stamp, req)),
                    Order::Lifo => q.items.push_back((self.head_stamp, req)),
                }
            }
        }
        self.dispatch(effects);
    }

    /// Every member the state holds something of as a consumer (a subscription, credits, a
    /// request in flight), in order: after a whole-group restart none of their processes
    /// lives (see [`QueueState::install_view`]).
    pub fn consumers(&self) -> Vec<MemberId> {
        let mut all: BTreeSet<MemberId> = self.subscriptions.keys().copied().collect();
        all.extend(self.credits.keys().copied());
        all.extend(self.ready.iter().map(|(c, _)| *c));
        all.extend(self.in_flight.values().map(|(c, _, _)| *c));
        all.into_iter().collect()
    }

    /// Encodes the whole state for a joiner (state transfer).
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<QueueState, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Applies one operation, appending its effects.
    pub fn apply(&mut self, op: Op, effects: &mut Vec<Effect>) {
        self.applied += 1;
        let before = effects.len();
        self.apply_op(op, effects);
        // The ends of runs that began in another shard are told there.
        for (i, to) in std::mem::take(&mut self.routed) {
            let end = std::mem::replace(
                &mut effects[i],
                Effect::Empty {
                    consumer: FORWARDER,
                },
            );
            let entry = Forward::Outcome(Box::new(end));
            let seq = self.shards.append(to, entry.clone());
            effects[i] = Effect::Outbox { to, seq, entry };
        }
        self.outcomes.record(self.applied, &effects[before..]);
    }

    /// A view installed, at its place in the order: `survivors` (members of the view before and
    /// of this one) delivered everything before it, so the outcomes kept for them go (see
    /// [`outcomes`]); the state joiners are sent stays small.
    pub fn view_installed(&mut self, survivors: &[MemberId]) {
        for m in survivors {
            self.outcomes.delivered_by(*m, self.applied);
        }
    }

    /// A view installed, as one step of the order (it counts in [`QueueState::applied`], and a
    /// durable log records it): [`QueueState::view_installed`] for `survivors`, then
    /// [`QueueState::remove_members`] for `removed`.
    pub fn install_view(
        &mut self,
        survivors: &[MemberId],
        removed: &[MemberId],
        effects: &mut Vec<Effect>,
    ) {
        self.view_installed(survivors);
        self.remove_members(removed, effects);
        self.applied += 1;
    }

    /// The restart a restarted group decided on, as one step of the order (it counts in
    /// [`QueueState::applied`]; a durable log records it): the state enters `epoch`, and
    /// `removed` (every consumer it knew, [`QueueState::consumers`]: none of their processes
    /// lives) stop being consumers, their requests back in their queues.
    pub fn restart(&mut self, epoch: u64, removed: &[MemberId], effects: &mut Vec<Effect>) {
        self.epoch = epoch;
        // No server whose reads were blocked lives, nor any through which an entry went.
        self.streams.drop_waiters();
        self.streams.requeue_all();
        self.install_view(&[], removed, effects);
    }

    /// Whole-group restarts this state went through: with [`QueueState::applied`], where a
    /// log stands in the group's history (a longer log of an earlier epoch is not ahead).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Steps of the order applied so far, operations and views (the same count on every
    /// replica at the same point): the position of the next one.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Whether `queue` is durable ([`Durability::Log`]).
    pub fn is_durable(&self, queue: &str) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|q| q.spec.durability == Durability::Log)
    }

    /// Whether `queue` is durable and its policy when full is to reject: a push into it is
    /// refused while the disks do not take the log (see `Replica::submit_encoded`).
    pub fn rejects_without_disks(&self, queue: &str) -> bool {
        self.queues.get(queue).is_some_and(|q| {
            q.spec.durability == Durability::Log && q.spec.on_full == OnFull::Reject
        })
    }

    /// Whether applying `op` now pushes into, or ends a request of, a durable queue: what it
    /// tells its pusher or its origin waits for a majority's disks.
    pub fn touches_durable(&self, op: &Op) -> bool {
        // In a sharded deployment, whatever may number an outbox entry or move an inbox's
        // watermark: a restart that lost the step could give the number to another entry,
        // which the destination would take for a duplicate (whatever the queues' durability).
        if self.shards.me().is_some()
            && matches!(
                op,
                Op::Push { .. }
                    | Op::TryPush { .. }
                    | Op::Complete { .. }
                    | Op::Fail { .. }
                    | Op::Forwarded { .. }
                    | Op::ShardMap { .. }
            )
        {
            return true;
        }
        match op {
            Op::Push { req, .. } | Op::TryPush { req, .. } => self.is_durable(&req.queue),
            Op::Complete {
                instance, outputs, ..
            } => {
                self.in_flight
                    .get(instance)
                    .is_some_and(|(_, r, _)| self.is_durable(&r.queue))
                    || outputs.iter().any(|r| self.is_durable(&r.queue))
            }
            Op::Fail { instance, .. } => self
                .in_flight
                .get(instance)
                .is_some_and(|(_, r, _)| self.is_durable(&r.queue)),
            // The streams are as durable as the members' logs: a member that logs tells a
            // Redis client its reply once a majority has the command on disk.
            Op::Redis { .. } => true,
            // Taken from another shard's outbox, which drops it once told.
            _ => false,
        }
    }

    /// What a member that comes back as a joiner is told once it has this state, when its
    /// previous incarnation applied `since` operations: the outcomes of its requests applied
    /// after those (in order), then [`Effect::Rejoined`] naming those of its requests the state
    /// holds.
    pub fn rejoined(&self, origin: MemberId, since: u64) -> Vec<Effect> {
        let (mut effects, dropped) = self.outcomes.after(origin, since);
        let mut pending = BTreeSet::new();
        // Runs of this shard's (a run from another shard names an origin of its group).
        let me = self.shards.me();
        let ours = |r: &Request| r.meta.origin_shard.is_none_or(|s| Some(s) == me);
        for q in self.queues.values() {
            pending.extend(
                q.items
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| ours(r))
                    .map(|r| r.id),
            );
            pending.extend(
                q.blocked
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| ours(r))
                    .map(|r| r.id),
            );
        }
        pending.extend(
            self.in_flight
                .values()
                .map(|(_, r, _)| r)
                .filter(|r| ours(r))
                .map(|r| r.id),
        );
        // Away in other shards: held by the deployment.
        pending.extend(self.shards.away());
        pending.retain(|id: &RequestId| id.origin() == origin);
        effects.push(Effect::Rejoined {
            origin,
            pending: pending.into_iter().collect(),
            pushed_again: 0,
            outcomes_dropped: dropped,
        });
        effects
    }

    fn apply_op(&mut self, op: Op, effects: &mut Vec<Effect>) {
        match op {
            Op::Redis {
                origin,
                token,
                now_ms,
                args,
            } => {
                for (origin, token, reply) in self.streams.run(origin, token, now_ms, &args) {
                    effects.push(Effect::Redis {
                        origin,
                        token,
                        reply,
                    });
                }
            }
            Op::Create(spec) => match self.queues.get(&spec.name) {
                Some(q) if q.spec == spec => {}
                Some(_) => effects.push(Effect::Rejected {
                    pusher: MemberId(u16::MAX),
                    id: RequestId(0),
                    step: String::new(),
                    queue: spec.name,
                    reason: RejectReason::SpecConflict,
                    origin_shard: None,
                }),
                None => {
                    effects.push(Effect::Created {
                        queue: spec.name.clone(),
                    });
                    self.queues.insert(
                        spec.name.clone(),
                        Queue {
                            spec,
                            items: VecDeque::new(),
                            blocked: VecDeque::new(),
                        },
                    );
                }
            },
            // The replica's, never applied to a queue (see `replica/recovery.rs`).
            Op::Recovered { .. } => {}
            Op::ShardMap { me, map, .. } => {
                let version = map.version;
                if !self.shards.set_map(me, map) {
                    return;
                }
                let mut moved = 0;
                let names: Vec<String> = self.queues.keys().cloned().collect();
                for name in names {
                    let Some(to) = self.shards.elsewhere(&name) else {
                        continue;
                    };
                    let Some(q) = self.queues.get_mut(&name) else {
                        continue;
                    };
                    // In the order they would have been taken, then the waiting pushes (now
                    // admitted: to the outbox).
                    let mut items: Vec<Request> = match q.spec.order {
                        Order::Fifo => q.items.drain(..).map(|(_, r)| r).collect(),
                        Order::Lifo => q.items.drain(..).rev().map(|(_, r)| r).collect(),
                    };
                    for (pusher, req) in q.blocked.drain(..) {
                        effects.push(Effect::Admitted {
                            pusher,
                            id: req.id,
                            step: req.step.clone(),
                            origin_shard: req.meta.origin_shard,
                        });
                        items.push(req);
                    }
                    moved += items.len();
                    for req in items {
                        self.send_away(to, req, effects);
                    }
                }
                effects.push(Effect::ShardMap { me, version, moved });
            }
            Op::Forwarded { from, seq, entry } => {
                if self.shards.take(from, seq) == Take::Next {
                    match entry {
                        Forward::Push(req) => {
                            if req.meta.origin_shard == self.shards.me() {
                                self.shards.returned(req.id);
                            }
                            // A continuation: admitted now, told to no pusher.
                            self.stamp += 1;
                            let stamp = self.stamp;
                            self.push(FORWARDER, req, Some(stamp), false, effects);
                        }
                        // The end of a run of this shard's: told here (and kept for an origin
                        // that comes back).
                        Forward::Outcome(end) => {
                            if let Some(id) = ended(&end) {
                                self.shards.returned(id);
                            }
                            effects.push(*end);
                        }
                    }
                }
                effects.push(Effect::Inbox {
                    from,
                    upto: self.shards.watermark(from),
                });
            }
            Op::ForwardAck { to, upto } => self.shards.acknowledged(to, upto),
            Op::Pipelines {
                version,
                queues,
                docs,
                ..
            } => {
                if version <= self.pipelines_version {
                    return;
                }
                self.pipelines_version = version;
                self.pipeline_docs = docs.clone();
                for spec in queues {
                    match self.queues.get_mut(&spec.name) {
                        Some(q) => {
                            q.spec = spec;
                            // More room may admit waiting pushes.
                            while (q.items.len() as u32) < q.spec.capacity {
                                let Some((pusher, waiting)) = q.blocked.pop_front() else {
                                    break;
                                };
                                effects.push(Effect::Admitted {
                                    pusher,
                                    id: waiting.id,
                                    step: waiting.step.clone(),
                                    origin_shard: waiting.meta.origin_shard,
                                });
                                self.stamp += 1;
                                q.items.push_back((self.stamp, waiting));
                            }
                        }
                        None => {
                            effects.push(Effect::Created {
                                queue: spec.name.clone(),
                            });
                            self.queues.insert(
                                spec.name.clone(),
                                Queue {
                                    spec,
                                    items: VecDeque::new(),
                                    blocked: VecDeque::new(),
                                },
                            );
                        }
                    }
                }
                effects.push(Effect::Pipelines { version, docs });
                self.dispatch(effects);
            }
            Op::Subscribe { consumer, queue } => {
                self.subscriptions
                    .entry(consumer)
                    .or_default()
                    .insert(queue);
            }
            Op::Push { pusher, req } => self.push(pusher, req, None, false, effects),
            Op::TryPush { pusher, req } => self.push(pusher, req, None, true, effects),
            Op::Ready { consumer, credits } => self.add_credits(consumer, credits, None),
            Op::ReadyFor {
                consumer,
                queue,
                credits,
            } => self.add_credits(consumer, credits, Some(queue)),
            Op::TryTake { consumer } => {
                if let Some(req) = self.take_for(consumer, None, effects) {
                    self.assign(consumer, req, effects);
                } else {
                    effects.push(Effect::Empty { consumer });
                }
            }
            Op::Complete {
                consumer,
                id,
                instance,
                step,
                outputs,
                result,
                reply,
                meta,
                credits,
            } => {
                if let Some((run, origin)) = self.finish(consumer, instance, id, &step) {
                    let terminal = outputs.is_empty();
                    for mut out in outputs {
                        out.meta.origin_shard = origin;
                        self.push(consumer, out, Some(run), false, effects);
                    }
                    if terminal {
                        self.route_end(origin, effects);
                    }
                    // Which shard's run this is, whatever the consumer said (see
                    // `Effect::concerns`).
                    let meta = Meta {
                        origin_shard: origin,
                        ..meta
                    };
                    effects.push(Effect::Completed {
                        consumer,
                        id,
                        instance,
                        step,
                        terminal,
                        result,
                        reply,
                        meta,
                    });
                } else {
                    effects.push(Effect::DuplicateCompletion {
                        consumer,
                        id,
                        instance,
                        step,
                    });
                }
                self.add_credits(consumer, credits, None);
            }
            Op::Fail {
                consumer,
                id,
                instance,
                step,
                error,
                status,
                credits,
            } => {
                if let Some((_, origin)) = self.finish(consumer, instance, id, &step) {
                    self.route_end(origin, effects);
                    effects.push(Effect::Failed {
                        consumer,
                        id,
                        instance,
                        step,
                        error,
                        status,
                    });
                } else {
                    effects.push(Effect::DuplicateCompletion {
                        consumer,
                        id,
                        instance,
                        step,
                    });
                }
                self.add_credits(consumer, credits, None);
            }
            Op::Shutdown { by } => {
                self.shut_down = true;
                effects.push(Effect::Shutdown { by });
            }
        }
        self.dispatch(effects);
    }

    fn add_credits(&mut self, consumer: MemberId, credits: u32, only: Option<String>) {
        let have = self.credits.entry(consumer).or_insert(0);
        let add = credits.min(MAX_CREDITS.saturating_sub(*have));
        *have += add;
        for _ in 0..add {
            self.ready.push_back((consumer, only.clone()));
        }
    }

    /// Removes `instance` from the in-flight set if it is in flight at `consumer` and is the
    /// request `id` at `step` (anything else is a duplicate or a confused completion: ignored).
    /// The finished request's stamp and origin shard ([`Meta::origin_shard`], which its
    /// continuations keep), or `None` for a duplicate or confused completion.
    fn finish(
        &mut self,
        consumer: MemberId,
        instance: u64,
        id: RequestId,
        step: &str,
    ) -> Option<(u64, Option<ShardId>)> {
        match self.in_flight.get(&instance) {
            Some((c, r, stamp)) if *c == consumer && r.id == id && r.step == step => {
                let found = (*stamp, r.meta.origin_shard);
                self.in_flight.remove(&instance);
                Some(found)
            }
            _ => None,
        }
    }

    /// The end of a run about to be pushed onto `effects` is told in its origin shard, if that
    /// is another one (see [`QueueState::apply`]).
    fn route_end(&mut self, origin: Option<ShardId>, effects: &[Effect]) {
        if let Some(to) = origin.filter(|s| self.shards.me() != Some(*s)) {
            self.routed.push((effects.len(), to));
        }
    }

    /// Pushes `req`. A continuation inherits the stamp of the request it continues (`run`), so
    /// that among the heads of several queues the oldest run goes first: a pipeline's requests
    /// finish in the order they came rather than all advancing stage by stage (each queue
    /// keeps its own FIFO or LIFO order; only the choice between queues changes). `refuse`: a
    /// full queue rejects the push whatever its policy ([`Op::TryPush`]). A push from outside
    /// (`run` none) that went into its queue is [`Effect::Accepted`].
    fn push(
        &mut self,
        pusher: MemberId,
        mut req: Request,
        run: Option<u64>,
        refuse: bool,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(to) = self.shards.elsewhere(&req.queue) {
            // Another shard's queue: it goes there through the outbox, whose entries are
            // taken there once each (see `crate::shard`); a pusher's push is accepted now.
            if run.is_none() {
                effects.push(Effect::Accepted { pusher, id: req.id });
            }
            self.send_away(to, req, effects);
            return;
        }
        self.next_instance += 1;
        req.instance = self.next_instance;
        let origin = req.meta.origin_shard;
        let Some(q) = self.queues.get_mut(&req.queue) else {
            self.route_end(origin, effects);
            effects.push(Effect::Rejected {
                pusher,
                id: req.id,
                step: req.step,
                queue: req.queue,
                reason: RejectReason::NoSuchQueue,
                origin_shard: origin,
            });
            return;
        };
        // The ends told here (refusal, overwrites) go to their runs' origin shards.
        let me = self.shards.me();
        let routed = &mut self.routed;
        let mut route = |origin: Option<ShardId>, at: usize| {
            if let Some(to) = origin.filter(|s| me != Some(*s)) {
                routed.push((at, to));
            }
        };
        let stamp = match run {
            Some(s) => s,
            None => {
                self.stamp += 1;
                self.stamp
            }
        };
        let accepted = run
            .is_none()
            .then_some(Effect::Accepted { pusher, id: req.id });
        if q.items.len() < q.spec.capacity as usize && q.blocked.is_empty() {
            q.items.push_back((stamp, req));
            effects.extend(accepted);
            return;
        }
        let on_full = if refuse {
            OnFull::Reject
        } else {
            q.spec.on_full
        };
        match on_full {
            OnFull::Reject => {
                route(origin, effects.len());
                effects.push(Effect::Rejected {
                    pusher,
                    id: req.id,
                    step: req.step,
                    queue: req.queue,
                    reason: RejectReason::Full,
                    origin_shard: origin,
                })
            }
            OnFull::Block => {
                effects.push(Effect::Blocked {
                    pusher,
                    id: req.id,
                    step: req.step.clone(),
                    origin_shard: req.meta.origin_shard,
                });
                q.blocked.push_back((pusher, req));
            }
            OnFull::OverwriteOldest => {
                // The oldest by admission, whatever the take order.
                if let Some((_, old)) = q.items.pop_front() {
                    route(old.meta.origin_shard, effects.len());
                    effects.push(Effect::Overwritten {
                        id: old.id,
                        step: old.step,
                        queue: old.queue,
                    });
                }
                if q.spec.capacity == 0 {
                    route(origin, effects.len());
                    effects.push(Effect::Overwritten {
                        id: req.id,
                        step: req.step,
                        queue: req.queue,
                    });
                } else {
                    q.items.push_back((stamp, req));
                    effects.extend(accepted);
                }
            }
        }
    }

    /// Appends `req` to the outbox for `to` (its instance there is the destination's to
    /// give; a run of this shard's carries this shard as its origin).
    fn send_away(&mut self, to: ShardId, mut req: Request, effects: &mut Vec<Effect>) {
        req.instance = 0;
        req.meta.origin_shard = req.meta.origin_shard.or(self.shards.me());
        let entry = Forward::Push(req);
        let seq = self.shards.append(to, entry.clone());
        effects.push(Effect::Outbox { to, seq, entry });
    }

    /// The request `consumer` would take now: among its subscribed queues, the head with the
    /// smallest stamp: a request put back after a failure, else the oldest run (a continuation
    /// carries its run's first admission stamp). `only`: that queue's head, if any.
    fn take_for(
        &mut self,
        consumer: MemberId,
        only: Option<&str>,
        effects: &mut Vec<Effect>,
    ) -> Option<(u64, Request)> {
        let name = match only {
            Some(n) => n.to_string(),
            None => {
                let subs = self.subscriptions.get(&consumer)?;
                subs.iter()
                    .filter_map(|n| {
                        self.queues
                            .get(n)
                            .and_then(|q| q.head_stamp().map(|s| (s, n)))
                    })
                    .min()
                    .map(|(_, n)| n.clone())?
            }
        };
        let q = self.queues.get_mut(&name)?;
        let req = q.pop()?;
        if (q.items.len() as u32) < q.spec.capacity {
            if let Some((pusher, waiting)) = q.blocked.pop_front() {
                effects.push(Effect::Admitted {
                    pusher,
                    id: waiting.id,
                    step: waiting.step.clone(),
                    origin_shard: waiting.meta.origin_shard,
                });
                self.stamp += 1;
                q.items.push_back((self.stamp, waiting));
            }
        }
        Some(req)
    }

    fn assign(
        &mut self,
        consumer: MemberId,
        (stamp, req): (u64, Request),
        effects: &mut Vec<Effect>,
    ) {
        self.in_flight
            .insert(req.instance, (consumer, req.clone(), stamp));
        effects.push(Effect::Assigned { consumer, req });
    }

    /// Serves ready consumers: each request goes to the consumer holding the fewest requests
    /// among those ready to take it, the earliest ready among equals.
    fn dispatch(&mut self, effects: &mut Vec<Effect>) {
        if self.ready.is_empty() {
            return;
        }
        let mut load: BTreeMap<MemberId, usize> = BTreeMap::new();
        for (c, _, _) in self.in_flight.values() {
            *load.entry(*c).or_default() += 1;
        }
        // A credit (a consumer, with its queue if it named one) that found nothing finds
        // nothing again in this pass: a take only removes requests, and a blocked push it
        // admits goes into the queue it took from, which that credit did not find empty. So
        // the consumer's other credits are skipped, not tried again (a consumer may hold
        // `MAX_CREDITS` of them: trying each made every push cost that many lookups).
        let mut dry: BTreeSet<(MemberId, Option<String>)> = BTreeSet::new();
        'assign: loop {
            // The first credit of each consumer (and queue) that may still find something,
            // least loaded first, then in the order they became ready.
            let order: Vec<(usize, usize)> = {
                let mut first: BTreeMap<&(MemberId, Option<String>), usize> = BTreeMap::new();
                for (i, credit) in self.ready.iter().enumerate() {
                    if !dry.contains(credit) {
                        first.entry(credit).or_insert(i);
                    }
                }
                let mut order: Vec<(usize, usize)> = first
                    .into_iter()
                    .map(|(c, i)| (load.get(&c.0).copied().unwrap_or(0), i))
                    .collect();
                order.sort_unstable();
                order
            };
            for (_, i) in order {
                let (consumer, only) = self.ready[i].clone();
                match self.take_for(consumer, only.as_deref(), effects) {
                    Some(req) => {
                        self.ready.remove(i);
                        if let Some(c) = self.credits.get_mut(&consumer) {
                            *c = c.saturating_sub(1);
                        }
                        *load.entry(consumer).or_default() += 1;
                        self.assign(consumer, req, effects);
                        // Loads and positions changed: look again.
                        continue 'assign;
                    }
                    None => {
                        dry.insert((consumer, only));
                    }
                }
            }
            break;
        }
    }

    pub fn queue_depth(&self, name: &str) -> Option<usize> {
        self.queues.get(name).map(|q| q.items.len())
    }
    pub fn blocked_depth(&self, name: &str) -> Option<usize> {
        self.queues.get(name).map(|q| q.blocked.len())
    }
    pub fn queues(&self) -> impl Iterator<Item = (&str, usize)> {
        self.queues.iter().map(|(n, q)| (n.as_str(), q.items.len()))
    }
    /// The queues' settings, by name.
    pub fn specs(&self) -> impl Iterator<Item = &QueueSpec> {
        self.queues.values().map(|q| &q.spec)
    }
    /// Requests held in all: queued, blocked and in flight (what a copy of the state holds).
    pub fn size(&self) -> usize {
        self.in_flight.len()
            + self
                .queues
                .values()
                .map(|q| q.items.len() + q.blocked.len())
                .sum::<usize>()
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }
    /// The version of the pipelines last set through the group (0: the group file's).
    pub fn pipelines_version(&self) -> u64 {
        self.pipelines_version
    }
    /// The pipelines' documents set through the group, if any.
    pub fn pipeline_docs(&self) -> Option<(u64, &[String])> {
        (self.pipelines_version > 0).then_some((self.pipelines_version, &self.pipeline_docs[..]))
    }
    /// This group's shard, the map and the cross-shard outbox and inbox ([`crate::shard`]).
    pub fn shards(&self) -> &Shards {
        &self.shards
    }
    /// A digest of the whole state; equal on replicas that applied the same operations.
    pub fn digest(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        *blake3::hash(&bytes).as_bytes()
    }
}
