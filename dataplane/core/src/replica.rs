//! [`Replica`]: one member of the group as production runs it, the one node every host drives.
//!
//! A replica is the protocol [`Member`] plus the replicated queue ([`QueueState`]) it applies
//! the agreed order to: operations are applied in delivery order; at a view change the removed
//! members' requests go back to their queues (after the view is reported); a member named to
//! send a joiner its state sends the queue's snapshot as of the install; a joiner replaces its
//! queue with the state it receives and reports the pipelines that state carries. The engine
//! and the simulator both drive this type, so the simulator checks exactly what runs.
//!
//! Sans-IO, like the member: the host calls, repeatedly,
//! 1. [`Replica::handle_frame`] for every frame received, [`Replica::submit`] (or
//!    [`Replica::submit_encoded`]) for every operation to order;
//! 2. [`Replica::handle_timeout`] once the instant given by [`Replica::poll_timeout`] passed;
//! 3. [`Replica::poll_effect`] until `None`: the effects of the applied operations, in order
//!    (each replica computes every member's effects; [`Effect::concerns`] says which are for
//!    this member's application). A host that also wants to see what was delivered (the
//!    simulator's checkers) calls [`Replica::poll_applied`] instead: one delivery at a time,
//!    with its effects. Use one or the other.
//! 4. [`Replica::poll_transmit`] until `None`: frames to send; then [`Replica::recycle`].

use crate::proto::{
    Admission, ConfigError, Delivered, Delivery, Member, ProtoConfig, Status, SubmitError,
    Transmit, ViewChange,
};
use crate::queue::{Effect, Op, QueueState};
use crate::types::{GroupId, Instant, MemberId, Seq, View};
use crate::wire::Key;
use std::collections::VecDeque;

/// Counters of the replica's own work (the member keeps the protocol's).
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    /// Deliveries applied (messages, views and states).
    pub applied: u64,
    /// Delivered messages that are not an operation (counted, skipped).
    pub malformed_ops: u64,
    /// Requests put back in their queue because their consumer was removed.
    pub requeued: u64,
    /// States received on joining that did not decode (the process then stops as excluded:
    /// see [`Member::refuse_state`]).
    pub bad_states: u64,
    /// Snapshots sent to joiners.
    pub states_sent: u64,
}

/// One delivery applied, with its effects (see [`Replica::poll_applied`]).
#[derive(Clone, Debug)]
pub enum Applied {
    /// An ordered message; `malformed`: it did not decode as an operation (no effect).
    Message {
        delivery: Delivery,
        malformed: bool,
        effects: Vec<Effect>,
    },
    /// A view installed: [`Effect::ViewInstalled`], then the requests put back.
    View {
        change: ViewChange,
        effects: Vec<Effect>,
    },
    /// A joiner's state arrived (`ok`: it decoded and replaced the queue).
    State { ok: bool, effects: Vec<Effect> },
}

/// What one delivery was, once applied.
enum Step {
    Message(Delivery, bool),
    View(ViewChange),
    State(bool),
}

/// The protocol member and the queue replica it feeds. See the module docs.
#[derive(Debug)]
pub struct Replica {
    member: Member,
    queue: QueueState,
    effects: VecDeque<Effect>,
    scratch: Vec<Effect>,
    stats: ReplicaStats,
}

impl Replica {
    /// A member of `view` (the configured first view), with an empty queue. `incarnation`
    /// stands for this process (see [`Member::new`]).
    pub fn new(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        view: View,
        me: MemberId,
        incarnation: u64,
        now: Instant,
    ) -> Result<Replica, ConfigError> {
        Ok(Replica::from_member(Member::new(
            cfg,
            key,
            group,
            view,
            me,
            incarnation,
            now,
        )?))
    }

    /// A process asking to join through `contacts`; its queue comes by state transfer. `nonce`
    /// stands for this process (see [`Member::joining`]).
    pub fn joining(
        cfg: ProtoConfig,
        key: Key,
        group: GroupId,
        me: MemberId,
        contacts: Vec<MemberId>,
        nonce: u64,
        now: Instant,
    ) -> Result<Replica, ConfigError> {
        Ok(Replica::from_member(Member::joining(
            cfg, key, group, me, contacts, nonce, now,
        )?))
    }

    fn from_member(member: Member) -> Replica {
        Replica {
            member,
            queue: QueueState::new(),
            effects: VecDeque::new(),
            scratch: Vec::new(),
            stats: ReplicaStats::default(),
        }
    }

    /// The protocol member, for its state and counters.
    pub fn member(&self) -> &Member {
        &self.member
    }
    /// The queue replica.
    pub fn queue(&self) -> &QueueState {
        &self.queue
    }
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }
    pub fn id(&self) -> MemberId {
        self.member.id()
    }
    pub fn view(&self) -> &View {
        self.member.view()
    }
    pub fn status(&self) -> Status {
        self.member.status()
    }

    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        self.member.handle_frame(now, bytes);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.member.handle_timeout(now);
    }

    pub fn poll_timeout(&self) -> Instant {
        self.member.poll_timeout()
    }

    /// Offers an operation for ordering (`WindowFull` is backpressure: retry later).
    pub fn submit(&mut self, op: &Op) -> Result<Seq, SubmitError> {
        self.member.submit(op.encode())
    }

    /// Offers an operation encoded by [`Op::encode`] (hosts encode off the polling thread).
    pub fn submit_encoded(&mut self, op: Vec<u8>) -> Result<Seq, SubmitError> {
        self.member.submit(op)
    }

    /// Own operations that can still be submitted before the window is full.
    pub fn window_room(&self) -> u64 {
        self.member.window_room()
    }

    /// Who may join from now on.
    pub fn set_admission(&mut self, admission: Admission) {
        self.member.set_admission(admission);
    }

    /// Leaves the group gracefully (see [`Member::leave`]).
    pub fn leave(&mut self) {
        self.member.leave();
    }

    /// The next frame to send (see [`Member::poll_transmit`]).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.member.poll_transmit(now)
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.member.recycle(buf);
    }

    /// The next effect, in the agreed order, applying deliveries as needed.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        loop {
            if let Some(e) = self.effects.pop_front() {
                return Some(e);
            }
            self.advance()?;
        }
    }

    /// Applies the next delivery, if any, and says what it was with its effects.
    pub fn poll_applied(&mut self) -> Option<Applied> {
        let step = self.advance()?;
        let effects: Vec<Effect> = self.effects.drain(..).collect();
        Some(match step {
            Step::Message(delivery, malformed) => Applied::Message {
                delivery,
                malformed,
                effects,
            },
            Step::View(change) => Applied::View { change, effects },
            Step::State(ok) => Applied::State { ok, effects },
        })
    }

    /// Takes one delivery from the member and applies it; its effects are queued.
    fn advance(&mut self) -> Option<Step> {
        let step = match self.member.poll_delivery()? {
            Delivered::Message(d) => {
                let malformed = match Op::decode(&d.payload) {
                    Ok(op) => {
                        self.queue.apply(op, &mut self.scratch);
                        false
                    }
                    Err(_) => {
                        self.stats.malformed_ops += 1;
                        true
                    }
                };
                Step::Message(d, malformed)
            }
            Delivered::View(vc) => {
                self.on_view(&vc);
                Step::View(vc)
            }
            Delivered::State(bytes) => Step::State(self.on_state(&bytes)),
        };
        self.effects.extend(self.scratch.drain(..));
        self.stats.applied += 1;
        Some(step)
    }

    /// A view installed: it is reported, the requests of removed members go back to their
    /// queues, and joiners are sent the state as of now if this member is the one to send it.
    fn on_view(&mut self, vc: &ViewChange) {
        self.scratch.push(Effect::ViewInstalled {
            view: vc.view.id.0,
            members: vc.view.members.clone(),
            removed: vc.removed.clone(),
            left: vc.left.clone(),
            joined: vc.joined.clone(),
            wedged_us: vc.wedged_for.as_micros() as u64,
            suspected_at_us: vc.suspected_at.map(|t| t.as_micros()),
            cut: vc.cut,
            resubmitted: vc.resubmitted,
        });
        let before = self.scratch.len();
        self.queue.remove_members(&vc.removed, &mut self.scratch);
        self.stats.requeued += self.scratch[before..]
            .iter()
            .filter(|e| matches!(e, Effect::Requeued { .. }))
            .count() as u64;
        if vc.state_from == Some(self.member.id()) {
            let snap = self.queue.snapshot();
            for j in &vc.joined {
                self.member.send_state(*j, snap.clone());
                self.stats.states_sent += 1;
            }
        }
    }

    /// A joiner's state: the queue replica as of its first view, and the pipelines it holds.
    fn on_state(&mut self, bytes: &[u8]) -> bool {
        match QueueState::from_snapshot(bytes) {
            Ok(q) => {
                self.queue = q;
                if let Some((version, docs)) = self.queue.pipeline_docs() {
                    self.scratch.push(Effect::Pipelines {
                        version,
                        docs: docs.to_vec(),
                    });
                }
                true
            }
            Err(_) => {
                // An empty queue would diverge from every other replica with the next
                // delivery: this process stops, and its host joins again with a new one.
                self.stats.bad_states += 1;
                self.member.refuse_state();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Dest;
    use crate::queue::{Meta, OnFull, Order, QueueSpec, Request};
    use crate::types::{RequestId, ViewId};

    /// Replicas by member id, some down, every frame between live ones delivered each step;
    /// every effect each one applies is recorded.
    struct Net {
        rs: Vec<Replica>,
        down: Vec<bool>,
        now: u64,
        fx: Vec<Vec<Effect>>,
    }

    fn key() -> Key {
        Key::from_bytes([5; 32])
    }

    impl Net {
        fn new(n: u16) -> Net {
            let view = View::new(ViewId(1), (0..n).map(MemberId).collect());
            Net {
                rs: (0..n)
                    .map(|i| {
                        Replica::new(
                            ProtoConfig::default(),
                            key(),
                            GroupId(7),
                            view.clone(),
                            MemberId(i),
                            0x100 + u64::from(i),
                            Instant(0),
                        )
                        .unwrap()
                    })
                    .collect(),
                down: vec![false; n as usize],
                now: 0,
                fx: vec![Vec::new(); n as usize],
            }
        }
        fn run(&mut self, us: u64) {
            for _ in 0..us / 500 {
                self.now += 500;
                let now = Instant(self.now);
                let mut frames = Vec::new();
                for (i, r) in self.rs.iter_mut().enumerate() {
                    if self.down[i] {
                        continue;
                    }
                    if now >= r.poll_timeout() {
                        r.handle_timeout(now);
                    }
                    while let Some(t) = r.poll_transmit(now) {
                        frames.push((i, t));
                    }
                }
                for (from, t) in frames {
                    for j in 0..self.rs.len() {
                        let to = match t.dest {
                            Dest::All => j != from,
                            Dest::One(m) => usize::from(m.0) == j,
                        };
                        if to && !self.down[j] {
                            self.rs[j].handle_frame(now, &t.frame);
                        }
                    }
                }
                for (i, r) in self.rs.iter_mut().enumerate() {
                    while let Some(e) = r.poll_effect() {
                        self.fx[i].push(e);
                    }
                }
            }
        }
    }

    fn spec() -> QueueSpec {
        QueueSpec {
            name: "q".into(),
            capacity: 16,
            order: Order::Fifo,
            on_full: OnFull::Block,
        }
    }

    #[test]
    fn a_view_is_reported_before_the_removed_members_requests_go_back() {
        let mut net = Net::new(3);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        for c in [1, 2] {
            let consumer = MemberId(c);
            net.rs[c as usize]
                .submit(&Op::Subscribe {
                    consumer,
                    queue: "q".into(),
                })
                .unwrap();
        }
        net.run(5_000);
        // Only member 2 is ready: the push is assigned to it; then it crashes.
        net.rs[2]
            .submit(&Op::Ready {
                consumer: MemberId(2),
                credits: 1,
            })
            .unwrap();
        net.run(5_000);
        let req = Request {
            id: RequestId::new(MemberId(0), 1),
            instance: 0,
            step: "s".into(),
            queue: "q".into(),
            payload: b"x".to_vec(),
            meta: Meta::default(),
            http: None,
        };
        net.rs[0]
            .submit(&Op::Push {
                pusher: MemberId(0),
                req,
            })
            .unwrap();
        net.run(5_000);
        assert!(net.fx[0]
            .iter()
            .any(|e| matches!(e, Effect::Assigned { consumer, .. } if *consumer == MemberId(2))));
        net.down[2] = true;
        net.run(200_000);
        for i in 0..2 {
            let at = net.fx[i]
                .iter()
                .position(|e| matches!(e, Effect::ViewInstalled { .. }))
                .expect("a view installed");
            assert!(
                matches!(&net.fx[i][at], Effect::ViewInstalled { removed, .. } if removed == &[MemberId(2)])
            );
            assert!(
                matches!(&net.fx[i][at + 1], Effect::Requeued { from, .. } if *from == MemberId(2)),
                "{:?}",
                &net.fx[i][at..]
            );
            assert_eq!(net.rs[i].stats().requeued, 1);
            assert_eq!(net.rs[i].queue().queue_depth("q"), Some(1));
        }
    }

    fn joiner(nonce: u64, now: u64) -> Replica {
        Replica::joining(
            ProtoConfig::default(),
            key(),
            GroupId(7),
            MemberId(2),
            vec![MemberId(0), MemberId(1)],
            nonce,
            Instant(now),
        )
        .unwrap()
    }

    fn first_view(fx: &[Effect]) -> Option<u32> {
        fx.iter().find_map(|e| match e {
            Effect::ViewInstalled { view, .. } => Some(*view),
            _ => None,
        })
    }

    /// A joiner that restarts (a new process, a new nonce) the moment it installed the view it
    /// joined with, before it said anything in it: the new process is a new joiner; it never
    /// installs the view meant for the old one, which a member that never heard from the old
    /// one in that view would otherwise send it as a missed commit (seed 106118: the new
    /// process then served in the old one's place, and found out from a row).
    #[test]
    fn a_restarted_joiner_does_not_take_the_view_of_the_process_before_it() {
        let mut net = Net::new(2);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.run(5_000);
        net.rs.push(joiner(1, net.now));
        net.down.push(false);
        net.fx.push(Vec::new());
        let mut steps = 0;
        while first_view(&net.fx[2]).is_none() {
            net.run(500);
            steps += 1;
            assert!(steps < 200, "the first joiner was never admitted");
        }
        let old = first_view(&net.fx[2]).unwrap_or(0);
        net.rs[2] = joiner(2, net.now);
        net.fx[2].clear();
        net.run(300_000);
        let new = first_view(&net.fx[2]).expect("the new process was admitted");
        assert!(
            new > old,
            "the new process installed view {new}, the old one's was {old}"
        );
        assert_eq!(net.rs[2].status(), Status::Serving);
        assert_eq!(net.rs[2].member().restarted_in_view(), None);
        assert_eq!(net.rs[2].view(), net.rs[0].view());
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
    }

    #[test]
    fn a_joiner_whose_state_does_not_decode_stops_and_is_removed() {
        let mut net = Net::new(3);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.run(5_000);
        let mut j = joiner(0x5eed, net.now);
        // As if its state had arrived and did not decode: an empty queue would diverge.
        assert!(!j.on_state(b"not a snapshot"));
        assert_eq!(j.stats().bad_states, 1);
        assert_eq!(j.status(), Status::Excluded);
        assert_eq!(
            j.member().stop_reason(),
            Some(crate::proto::StopReason::StateRefused)
        );
        assert!(j.member().stop_reason().is_some_and(|r| r.kept_by_group()));
        net.rs.push(j);
        net.down.push(false);
        net.fx.push(Vec::new());
        net.run(300_000);
        // It sent nothing and joined nothing; the group went on without it.
        assert!(net.rs[3].member().poll_timeout() == Instant(u64::MAX));
        assert_eq!(net.rs[0].view().members.len(), 3);
        assert_eq!(net.rs[0].status(), Status::Serving);
    }

    #[test]
    fn a_joiner_gets_the_queue_and_is_told_its_pipelines() {
        let mut net = Net::new(2);
        net.rs[0].submit(&Op::Create(spec())).unwrap();
        net.rs[1]
            .submit(&Op::Pipelines {
                by: MemberId(1),
                version: 3,
                queues: vec![spec()],
                docs: vec!["{\"name\": \"p\"}".into()],
            })
            .unwrap();
        net.run(5_000);
        net.rs.push(joiner(0x5eed, net.now));
        net.down.push(false);
        net.fx.push(Vec::new());
        net.run(50_000);
        assert_eq!(net.rs[2].status(), Status::Serving);
        assert_eq!(net.rs[2].queue().digest(), net.rs[0].queue().digest());
        assert!(net.rs[0].stats().states_sent + net.rs[1].stats().states_sent >= 1);
        let told: Vec<&Effect> = net.fx[2]
            .iter()
            .filter(|e| matches!(e, Effect::Pipelines { .. }))
            .collect();
        assert!(
            matches!(told.as_slice(), [Effect::Pipelines { version: 3, docs }] if docs.len() == 1),
            "{:?}",
            net.fx[2]
        );
    }
}
