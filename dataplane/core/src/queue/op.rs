//! The replicated queue's vocabulary: queue settings, requests, the operations ordered
//! through the group ([`Op`]) and what applying them does ([`Effect`]).

use crate::shard::{Forward, ShardId, ShardMap};
use crate::types::{MemberId, RequestId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Fifo,
    Lifo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnFull {
    /// The push waits (in order) until there is room.
    #[default]
    Block,
    /// The push fails; the pusher is told.
    Reject,
    /// The oldest queued request is dropped to make room (data freshness).
    OverwriteOldest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    pub capacity: u32,
    pub order: Order,
    pub on_full: OnFull,
    pub durability: Durability,
}

/// Whether a queue's requests survive a crash of the whole group (see [`crate::durable`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// In the members' memory: survives any minority of failures.
    #[default]
    Memory,
    /// Also in every member's log on disk: a push is told accepted, and a run's end reported,
    /// once a majority of the members has it on disk.
    Log,
}

/// Timing carried by a request along its pipeline, for measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    /// Intended send time at the trigger, in the trigger's clock (microseconds).
    pub sent_us: u64,
    /// Sum of the functions' measured execution times so far (microseconds).
    pub exec_us: u64,
    /// Functions run so far.
    pub hops: u16,
    /// When this request was submitted for ordering (host clock, microseconds).
    pub submitted_us: u64,
    /// Sum over the stages so far of submission to delivery of the assignment at the invoker:
    /// the total-order multicast's share of the latency (same-host clocks only).
    pub order_us: u64,
    /// Sum over the stages so far of delivery of the assignment to the start of the function:
    /// the engine-to-application hand-off.
    pub handoff_us: u64,
    /// The shard whose member pushed the run (set when the run first leaves it for another
    /// shard; `None`: this group's own): where the run's end is told (see [`crate::shard`]).
    pub origin_shard: Option<ShardId>,
}

/// HTTP details of a call that came through the gateway: carried with each step's request (the
/// call's method, path, query and headers, for functions that read them) and with the result
/// (the function's status and headers, for the gateway's answer). Header names are kept as
/// received; lookups ignore case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    pub method: String,
    /// The path below `/function/{name}` (`/` when none).
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// A result's status (0 in a request).
    pub status: u16,
}

impl Http {
    /// The first header named `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` (ignoring case) to `value`, replacing earlier values.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }
}

/// A function request: one step of one pipeline run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    /// Set by the replicas when they apply the push (pushers leave it 0): unique in the group,
    /// the same at every replica. Tells apart two instances of one step of one run (fan-out
    /// that merges again), and is what completions name.
    pub instance: u64,
    /// The pipeline step this request runs.
    pub step: String,
    /// The queue it waits in.
    pub queue: String,
    pub payload: Vec<u8>,
    pub meta: Meta,
    /// The HTTP call this run came from, if it came through the gateway.
    pub http: Option<Box<Http>>,
}

/// An operation of the replicated queue, carried as one ordered message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creates a queue; creating an existing queue with the same spec is a no-op, with another
    /// spec it is refused.
    Create(QueueSpec),
    /// The consumer will take from this queue.
    Subscribe {
        consumer: MemberId,
        queue: String,
    },
    Push {
        pusher: MemberId,
        req: Request,
    },
    /// A push that is refused ([`RejectReason::Full`]) rather than blocked or overwriting when
    /// the queue is full, whatever its `on_full` (a non-blocking send).
    TryPush {
        pusher: MemberId,
        req: Request,
    },
    /// Blocking takes: the consumer is ready for `credits` more requests.
    Ready {
        consumer: MemberId,
        credits: u32,
    },
    /// Blocking takes from one queue only, subscribed or not: the consumer is ready for
    /// `credits` more requests of `queue` (a receiver of that queue).
    ReadyFor {
        consumer: MemberId,
        queue: String,
        credits: u32,
    },
    /// Non-blocking take: one request now, or [`Effect::Empty`].
    TryTake {
        consumer: MemberId,
    },
    /// The consumer finished `(id, step)`; `outputs` are pushed atomically; `credits` more
    /// requests may be assigned to it (saves a separate `Ready`).
    Complete {
        consumer: MemberId,
        id: RequestId,
        /// The instance of the request being completed (from its assignment).
        instance: u64,
        step: String,
        outputs: Vec<Request>,
        /// The function's output, reported to the trigger when the step is terminal.
        result: Option<Vec<u8>>,
        /// The function's HTTP status and headers, with a terminal result.
        reply: Option<Box<Http>>,
        meta: Meta,
        credits: u32,
    },
    /// The function failed: the run ends with an error reported to its origin.
    Fail {
        consumer: MemberId,
        id: RequestId,
        instance: u64,
        step: String,
        error: String,
        /// The HTTP status the failure answers with (500 crash, 502 bad output, 504 timeout).
        status: u16,
        credits: u32,
    },
    /// Every member stops serving.
    Shutdown {
        by: MemberId,
    },
    /// Replaces the group's pipelines (from the control plane), at this place in the order.
    /// Applied only if `version` is above the replicas' current one, so that several members
    /// passing on the same change apply it once and an old change never undoes a newer one.
    /// The queues are created, or their spec changed in place (a queue no pipeline names any
    /// more is kept: requests may still wait in it).
    Pipelines {
        by: MemberId,
        version: u64,
        queues: Vec<QueueSpec>,
        /// The pipelines' JSON documents; the replicas keep them for joiners and members
        /// parse them.
        docs: Vec<String>,
    },
    /// A member restarted from its data directory after the whole group went down, with its
    /// log reaching `position` in `epoch` (restarts its state went through): its claim in the
    /// group's recovery (see `replica/recovery.rs`). The replica handles it; it is no step of
    /// the queue's order and no log records it.
    Recovered {
        member: MemberId,
        epoch: u64,
        position: u64,
    },
    /// A Redis command (`args[0]` its name; one of [`crate::streams::COMMANDS`]) a client of
    /// `origin`'s RESP server sent, run by every replica on the group's streams at this place
    /// in the order; `now_ms` is `origin`'s clock (for `*` ids and idle times), `token` names
    /// the request for `origin`'s server ([`Effect::Redis`]).
    Redis {
        origin: MemberId,
        token: u64,
        now_ms: u64,
        args: Vec<Vec<u8>>,
    },
    /// This group is shard `me` of a sharded deployment and queues are placed by `map` (see
    /// [`crate::shard`]), from this place in the order; applied only if the map is newer than
    /// the group's and `me` is the group's shard (a group stays one shard). The waiting
    /// requests of queues the map gives to another shard move to the outbox for it.
    ShardMap {
        by: MemberId,
        me: ShardId,
        map: ShardMap,
    },
    /// Entry `seq` of shard `from`'s outbox for this shard, submitted by a forwarder: if it is
    /// the next one from `from`, a request is pushed (or forwarded on, if this shard no longer
    /// owns its queue) and a run's end is told here; else it is ignored. [`Effect::Inbox`]
    /// either way.
    Forwarded {
        from: ShardId,
        seq: u64,
        entry: Forward,
    },
    /// Shard `to` took every entry of this shard's outbox for it up to `upto` (its
    /// [`Effect::Inbox`], submitted by a forwarder): they are dropped.
    ForwardAck {
        to: ShardId,
        upto: u64,
    },
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Result<Op, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The request an encoded [`Op::Push`] or [`Op::TryPush`] pushes, read from its first
    /// fields only (its sender's engine keeps each push until its outcome, and a whole decode
    /// would copy the payload); `None` for any other operation.
    pub fn pushed_id(bytes: &[u8]) -> Option<RequestId> {
        /// The variant's index, then `pusher`, then `req.id` (postcard writes fields in order).
        #[derive(Deserialize)]
        struct Head(u32, #[allow(dead_code)] MemberId, RequestId);
        let (Head(variant, _, id), _) = postcard::take_from_bytes::<Head>(bytes).ok()?;
        // Push and TryPush are the third and fourth variants.
        matches!(variant, 2 | 3).then_some(id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    Full,
    NoSuchQueue,
    SpecConflict,
    /// Not ordered: the pusher's member refused a push into a durable queue whose policy is
    /// `reject` while the disks did not take the log (see `Replica::submit_encoded`).
    DisksFull,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::Full => "the queue is full",
            RejectReason::NoSuchQueue => "no such queue",
            RejectReason::SpecConflict => "the queue exists with other options",
            RejectReason::DisksFull => "the members' disks do not take the queue's log",
        })
    }
}

/// What applying an operation did; every replica computes the same effects. (Serializable:
/// the ends of runs are kept in the replicated state, see `outcomes`.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Created {
        queue: String,
    },
    Assigned {
        consumer: MemberId,
        req: Request,
    },
    /// A push waits for room (block policy).
    Blocked {
        pusher: MemberId,
        id: RequestId,
        step: String,
        /// The shard its run began in, if another shard's (see [`Meta::origin_shard`]).
        origin_shard: Option<ShardId>,
    },
    /// A blocked push got room.
    Admitted {
        pusher: MemberId,
        id: RequestId,
        step: String,
        origin_shard: Option<ShardId>,
    },
    Rejected {
        pusher: MemberId,
        id: RequestId,
        step: String,
        queue: String,
        reason: RejectReason,
        origin_shard: Option<ShardId>,
    },
    Overwritten {
        id: RequestId,
        step: String,
        queue: String,
    },
    Empty {
        consumer: MemberId,
    },
    /// A request pushed by [`Op::Push`] or [`Op::TryPush`] went into its queue (told to the
    /// pusher, so that a send can return once it holds).
    Accepted {
        pusher: MemberId,
        id: RequestId,
    },
    Completed {
        consumer: MemberId,
        id: RequestId,
        instance: u64,
        step: String,
        /// No continuation: this branch of the run ends here.
        terminal: bool,
        result: Option<Vec<u8>>,
        reply: Option<Box<Http>>,
        meta: Meta,
    },
    /// A completion of a request instance not in flight at that consumer (already completed,
    /// or never assigned to it): ignored. This is how completions are deduplicated.
    DuplicateCompletion {
        consumer: MemberId,
        id: RequestId,
        instance: u64,
        step: String,
    },
    Failed {
        consumer: MemberId,
        id: RequestId,
        instance: u64,
        step: String,
        error: String,
        status: u16,
    },
    Shutdown {
        by: MemberId,
    },
    /// A request in flight at a member removed by a view change went back to the head of its
    /// queue (with a new instance: a late completion of the old one is a duplicate).
    Requeued {
        from: MemberId,
        /// The instance it had at the removed member.
        old_instance: u64,
        id: RequestId,
        step: String,
        queue: String,
        /// The shard its run began in, if another shard's (see [`Meta::origin_shard`]).
        origin_shard: Option<ShardId>,
    },
    /// The group's pipelines changed (applied [`Op::Pipelines`], or the state a joiner
    /// received carries them).
    Pipelines {
        version: u64,
        docs: Vec<String>,
    },
    /// [`Op::ShardMap`] applied: this group is shard `me` under map `version`; `moved`
    /// waiting requests went to the outbox with their queues.
    ShardMap {
        me: ShardId,
        version: u64,
        moved: usize,
    },
    /// Entry `seq` of this shard's outbox for shard `to`: a request for a queue `to` owns
    /// (a pusher's push that went to the outbox is [`Effect::Accepted`] too: it will reach
    /// its queue), or the end of a run that began there (told there, not here). A forwarder
    /// submits it there ([`Op::Forwarded`]).
    Outbox {
        to: ShardId,
        seq: u64,
        entry: Forward,
    },
    /// This shard took every entry of shard `from`'s outbox up to `upto` (the answer to an
    /// [`Op::Forwarded`]): a forwarder submits it to `from` ([`Op::ForwardAck`]).
    Inbox {
        from: ShardId,
        upto: u64,
    },
    /// Not from the queue: speculation (see [`crate::replica`]). `req` is assigned to
    /// `consumer` by the order this member holds but has not delivered yet: the consumer may
    /// start it, and must hold back its completion until the assignment is [`Effect::Confirmed`]
    /// (and drop it if [`Effect::Discarded`]). Only a replica with speculation switched on
    /// gives these, and only for its own member.
    Speculated {
        consumer: MemberId,
        req: Request,
        /// Names this speculation in [`Effect::Confirmed`] and [`Effect::Discarded`] (unique
        /// for the replica's process).
        speculation: u64,
    },
    /// Not from the queue: the delivered order assigned `req` to `consumer`, which speculated
    /// it as `speculation` (the same request; its instance differs from the speculated one
    /// when the order before it did). It stands in for [`Effect::Assigned`] (every other replica gives that
    /// one here): the request is not to be started again, its completion may now be submitted
    /// (naming `req.instance`).
    Confirmed {
        consumer: MemberId,
        req: Request,
        speculation: u64,
    },
    /// Not from the queue: a speculated assignment (`speculation`, of request `id`'s `step`)
    /// that the delivered order did not make (it gave the request to another member, or a view change
    /// or a joiner's state came first). Its execution's completion must never be submitted;
    /// the request runs wherever the delivered order puts it.
    Discarded {
        consumer: MemberId,
        id: RequestId,
        step: String,
        speculation: u64,
    },
    /// Not from the queue: this member came back as a joiner and has its state. Told after the
    /// outcomes of its requests it missed (the effects it would have delivered), as its host
    /// asked ([`crate::replica::Replica::set_rejoining`]). `pending`, in order: its requests
    /// the group holds (queued, waiting for room, or running) and those its previous
    /// incarnation pushed that never reached the order, which the replica pushes again
    /// (`pushed_again` of them). Unless `outcomes_dropped`: more of its requests ended while
    /// it was out than the group keeps ([`crate::queue::KEPT_OUTCOMES`]), so a push not held
    /// cannot be told apart from a finished one; none is pushed again, and whatever waits for a
    /// request neither in `pending` nor told its outcome will not hear of it.
    Rejoined {
        origin: MemberId,
        pending: Vec<RequestId>,
        pushed_again: usize,
        outcomes_dropped: bool,
    },
    /// Not from the queue: the replica reports a view installed, at its place in the order
    /// (before the requests the removed members held are put back).
    ViewInstalled {
        view: u32,
        members: Vec<MemberId>,
        removed: Vec<MemberId>,
        /// Of `removed`, those that left at their request (the others failed).
        left: Vec<MemberId>,
        joined: Vec<MemberId>,
        /// From wedging to installing, at this member.
        wedged_us: u64,
        /// When this member suspected a removed member (the host's clock), if it did.
        suspected_at_us: Option<u64>,
        /// Slots of the old view delivered in all (the view change's cut).
        cut: u64,
        /// Own messages submitted again in the new view.
        resubmitted: u64,
    },
    /// The reply to [`Op::Redis`] `token` of `origin`'s server (a blocked read's comes when
    /// an entry for it is applied, or its server gives up on it).
    Redis {
        origin: MemberId,
        token: u64,
        reply: crate::streams::Value,
    },
}

impl Effect {
    /// Whether this effect is for member `me`'s application, in a group that is shard `shard`
    /// of a sharded deployment (`None`: not sharded): a request assigned to it, what happened
    /// to the runs it started (their requests carry its id), and group-wide news (a view, new
    /// pipelines, a shutdown). Every replica computes every effect; each member's host hands
    /// on only these.
    ///
    /// Request ids are unique within a group (the origin member's id and its counter), not
    /// across shards: a run another shard started may carry the id of one of this shard's
    /// members. Its requests say which shard they began in ([`Meta::origin_shard`]; a
    /// forwarded push's pusher is [`crate::queue::FORWARDER`]), and the news of such a run is
    /// for nobody here (its end goes back to its shard through the outbox).
    pub fn concerns(&self, me: MemberId, shard: Option<ShardId>) -> bool {
        let ours = |id: &RequestId, origin: &Option<ShardId>| {
            id.origin() == me && origin.is_none_or(|s| Some(s) == shard)
        };
        match self {
            Effect::Assigned { consumer, .. }
            | Effect::Speculated { consumer, .. }
            | Effect::Confirmed { consumer, .. }
            | Effect::Discarded { consumer, .. } => *consumer == me,
            Effect::Rejoined { origin, .. } | Effect::Redis { origin, .. } => *origin == me,
            Effect::Blocked {
                pusher,
                id,
                origin_shard,
                ..
            }
            | Effect::Admitted {
                pusher,
                id,
                origin_shard,
                ..
            }
            | Effect::Rejected {
                pusher,
                id,
                origin_shard,
                ..
            } => *pusher != crate::queue::FORWARDER && ours(id, origin_shard),
            Effect::Accepted { pusher, id } => {
                *pusher != crate::queue::FORWARDER && id.origin() == me
            }
            Effect::Completed { id, meta, .. } => ours(id, &meta.origin_shard),
            Effect::Requeued {
                id, origin_shard, ..
            } => ours(id, origin_shard),
            Effect::Overwritten { id, .. } | Effect::Failed { id, .. } => id.origin() == me,
            // Which member forwards between shards is the host's choice.
            Effect::Shutdown { .. }
            | Effect::ViewInstalled { .. }
            | Effect::Pipelines { .. }
            | Effect::ShardMap { .. }
            | Effect::Outbox { .. }
            | Effect::Inbox { .. } => true,
            Effect::Created { .. } | Effect::Empty { .. } | Effect::DuplicateCompletion { .. } => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushs_request_is_read_from_its_head() {
        let req = Request {
            id: RequestId::new(MemberId(300), 1 << 40),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: vec![7; 1000],
            meta: Meta::default(),
            http: None,
        };
        let pusher = MemberId(300);
        for (op, want) in [
            (
                Op::Push {
                    pusher,
                    req: req.clone(),
                },
                Some(req.id),
            ),
            (
                Op::TryPush {
                    pusher,
                    req: req.clone(),
                },
                Some(req.id),
            ),
            (
                Op::Subscribe {
                    consumer: pusher,
                    queue: "q".into(),
                },
                None,
            ),
            (
                Op::Ready {
                    consumer: pusher,
                    credits: 3,
                },
                None,
            ),
            (Op::Shutdown { by: pusher }, None),
        ] {
            assert_eq!(Op::pushed_id(&op.encode()), want, "{op:?}");
        }
        assert_eq!(Op::pushed_id(&[2]), None);
        assert_eq!(Op::pushed_id(&[]), None);
    }
}
