//! Speculation: a copy of the queue that runs ahead of the delivered order.
//!
//! A message is delivered once stable (every member holds it), but what applying it will do is
//! fixed as soon as this member holds every slot before it: every replica applies the same
//! operations in the same order. With speculation on ([`Replica::set_speculation`]), the
//! replica keeps a second copy of the queue that runs ahead of the delivered order over the
//! slots it holds, and reports the requests that copy assigns to this member as
//! [`Effect::Speculated`]: the host may start them a network round trip or more earlier.
//!
//! In the round-robin order a message of rank `r` comes after the same round's slots of the
//! lower ranks, which an idle member fills with a null only on seeing that message: waiting
//! for them would leave nothing to gain for any sender but the first. So the copy assumes a
//! slot it does not hold yet is a null (at most one round of such slots at a time); when one
//! turns out to carry a message, the copy is rebuilt from the delivered queue and runs ahead
//! again.
//!
//! When a delivery assigns this member a request it speculated (the same request: the same
//! run, step, payload and details; its instance may differ if the order before it did), the
//! replica gives [`Effect::Confirmed`] instead of [`Effect::Assigned`], naming the speculation:
//! the host submits the completion it held back, for the delivered instance. A speculated
//! request that the delivered order gives to another member, or drops, and everything
//! speculated when a view is installed or a joiner's state replaces the queue, is
//! [`Effect::Discarded`]: its completion is never submitted, and the request runs wherever the
//! delivered order puts it. Only this member's own assignments are speculated; everything
//! else (results, views, refusals) is reported only once delivered.

use super::Replica;
use crate::proto::Status;
use crate::queue::{Effect, Op, QueueState, Request};
use crate::types::{MemberId, ViewId};
use std::collections::VecDeque;

/// The copy of the queue that runs ahead of the delivered order (see the module docs).
#[derive(Debug)]
pub(super) struct Ahead {
    queue: QueueState,
    /// The view whose slots it applies, and the next slot it looks at: every slot before it
    /// (and after the delivered ones) is applied (`applied`), held as a null, or assumed a
    /// null (`assumed`).
    view: ViewId,
    next: u64,
    /// Slots not delivered yet whose message the copy applied, in order.
    applied: VecDeque<u64>,
    /// Slots not delivered yet that the copy took for nulls without holding them, in order.
    assumed: VecDeque<u64>,
    /// Own assignments speculated and not yet confirmed or discarded, in order.
    pending: VecDeque<Pending>,
    /// Times the copy was rebuilt.
    generation: u64,
    /// No copy runs ahead (`queue` is empty): the delivered queue holds more than
    /// [`MAX_BACKLOG`] requests. Invokers have work waiting then, so starting more early gains
    /// nothing, and rebuilding a copy of a large queue would cost more than it saves.
    dormant: bool,
    /// The last speculation's number.
    speculations: u64,
    scratch: Vec<Effect>,
}

/// An own assignment speculated (see [`Ahead::pending`]).
#[derive(Debug)]
struct Pending {
    /// Its number ([`Effect::Speculated::speculation`]).
    told: u64,
    /// The request as last speculated, at `slot`, by the copy of `generation`.
    req: Request,
    slot: u64,
    generation: u64,
}

impl Pending {
    fn discarded(self, consumer: MemberId) -> Effect {
        Effect::Discarded {
            consumer,
            id: self.req.id,
            step: self.req.step,
            speculation: self.told,
        }
    }
}

/// Requests the delivered queue may hold for a copy to run ahead (see [`Ahead::dormant`]).
const MAX_BACKLOG: usize = 64;

/// Pending speculations kept at most (the oldest are discarded beyond: a speculated request
/// that the delivered order drops without assigning it is otherwise only discarded at the
/// next view).
const MAX_PENDING: usize = 4096;

/// The same request, whatever its instance (which depends on the order of every push before
/// it).
fn same_request(a: &Request, b: &Request) -> bool {
    a.id == b.id
        && a.step == b.step
        && a.queue == b.queue
        && a.payload == b.payload
        && a.meta == b.meta
        && a.http == b.http
}

impl Replica {
    /// Switches speculation on or off (off by default; how it works: the docs of
    /// `replica/ahead.rs`). Switching it off discards what was speculated and not yet
    /// delivered. Only for a host that handles
    /// [`Effect::Speculated`], [`Effect::Confirmed`] and [`Effect::Discarded`].
    pub fn set_speculation(&mut self, on: bool) {
        match (on, self.ahead.is_some()) {
            (true, false) => {
                self.ahead = Some(Box::new(Ahead {
                    queue: QueueState::new(),
                    dormant: true,
                    view: self.member.view().id,
                    next: self.member.delivered_slots(),
                    applied: VecDeque::new(),
                    assumed: VecDeque::new(),
                    pending: VecDeque::new(),
                    generation: 0,
                    speculations: 0,
                    scratch: Vec::new(),
                }));
            }
            (false, true) => {
                let (view, next) = (self.member.view().id, self.member.delivered_slots());
                self.rebuild_ahead(view, next, true);
                self.effects.extend(self.scratch.drain(..));
                self.ahead = None;
            }
            _ => {}
        }
    }

    /// Runs the copy ahead over the slots this member holds beyond the delivered order, and
    /// queues the assignments to this member it makes (see the module docs). Called only with
    /// every delivery applied.
    pub(super) fn speculate(&mut self) {
        let me = self.member.id();
        if !self.recovered() {
            return;
        }
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        if self.member.status() != Status::Serving {
            // A view change under way (or a joiner's state not in yet): its outcome decides.
            return;
        }
        let (view, delivered) = (self.member.view().id, self.member.delivered_slots());
        if ahead.dormant {
            if self.queue.size() > MAX_BACKLOG {
                // Speculated before it fell dormant, and passed since: not to be confirmed.
                let other_view = ahead.view != view;
                self.discard_pending(|p| other_view || p.slot < delivered);
                return;
            }
            ahead.queue = self.queue.copy_without_streams();
            ahead.dormant = false;
            ahead.view = view;
            ahead.next = delivered;
            ahead.applied.clear();
            ahead.assumed.clear();
            ahead.generation += 1;
        }
        if ahead.applied.is_empty() && ahead.assumed.is_empty() && ahead.view != view {
            // Level with the delivered queue: start from where the member is.
            ahead.view = view;
            ahead.next = delivered;
        }
        if ahead.view != view {
            return;
        }
        while ahead.assumed.front().is_some_and(|g| *g < delivered) {
            ahead.assumed.pop_front();
        }
        // A slot taken for a null that turns out to carry a message: start again.
        let wrong = ahead
            .assumed
            .iter()
            .any(|g| matches!(self.member.held_slot(*g), Some(Some(_))));
        if wrong {
            self.stats.speculation_resets += 1;
            self.rebuild_ahead(view, delivered, false);
            self.effects.extend(self.scratch.drain(..));
        }
        let Some(ahead) = self.ahead.as_deref_mut().filter(|a| !a.dormant) else {
            return;
        };
        let n = self.member.view().len() as u64;
        ahead.next = ahead.next.max(delivered);
        let end = self.member.held_slots_end();
        while ahead.next < end {
            let g = ahead.next;
            let op = match self.member.held_slot(g) {
                Some(Some(bytes)) => Op::decode(bytes).ok(),
                Some(None) => None,
                None if (ahead.assumed.len() as u64) < n => {
                    ahead.assumed.push_back(g);
                    None
                }
                None => break,
            };
            ahead.next += 1;
            let Some(op) = op.filter(|op| !matches!(op, Op::Redis { .. })) else {
                continue;
            };
            ahead.queue.apply(op, &mut ahead.scratch);
            ahead.applied.push_back(g);
            for e in ahead.scratch.drain(..) {
                let Effect::Assigned { consumer, req } = e else {
                    continue;
                };
                if consumer != me {
                    continue;
                }
                // Speculated again by a rebuilt copy: the host already runs it.
                let generation = ahead.generation;
                if let Some(p) = ahead
                    .pending
                    .iter_mut()
                    .find(|p| p.generation < generation && same_request(&p.req, &req))
                {
                    (p.req, p.slot, p.generation) = (req, g, generation);
                    continue;
                }
                if ahead.pending.len() >= MAX_PENDING {
                    if let Some(old) = ahead.pending.pop_front() {
                        self.stats.discarded += 1;
                        self.effects.push_back(old.discarded(me));
                    }
                }
                ahead.speculations += 1;
                ahead.pending.push_back(Pending {
                    told: ahead.speculations,
                    req: req.clone(),
                    slot: g,
                    generation,
                });
                self.stats.speculated += 1;
                self.effects.push_back(Effect::Speculated {
                    consumer,
                    req,
                    speculation: ahead.speculations,
                });
            }
        }
        // Speculated by an earlier copy at a slot the rebuilt one passed without assigning it
        // here again: the order changed what it does.
        let (generation, next) = (ahead.generation, ahead.next);
        self.discard_pending(|p| p.generation < generation && p.slot < next);
    }

    /// Discards the pending speculations `gone` picks ([`Effect::Discarded`], queued now).
    fn discard_pending(&mut self, gone: impl Fn(&Pending) -> bool) {
        let me = self.member.id();
        if !self.recovered() {
            return;
        }
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let mut i = 0;
        while i < ahead.pending.len() {
            if !gone(&ahead.pending[i]) {
                i += 1;
            } else if let Some(p) = ahead.pending.remove(i) {
                self.stats.discarded += 1;
                self.effects.push_back(p.discarded(me));
            }
        }
    }

    /// A message delivered at slot `g` of `view` and applied to the queue, its effects in
    /// `scratch`: the delivered assignments to this member that were speculated become
    /// [`Effect::Confirmed`], speculated requests given to another member (or dropped) are
    /// discarded, and the copy ahead follows (it applied this slot already, or applies it now
    /// if level, or is rebuilt if it took the slot for something else).
    pub(super) fn follow_delivery(&mut self, view: ViewId, g: u64, payload: &[u8]) {
        let me = self.member.id();
        if !self.recovered() {
            return;
        }
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let mut discarded = Vec::new();
        for e in self.scratch.iter_mut() {
            let (mine, req) = match e {
                Effect::Assigned { consumer, req } => (*consumer == me, &*req),
                Effect::Overwritten { id, step, .. } | Effect::Rejected { id, step, .. } => {
                    if let Some(i) = ahead
                        .pending
                        .iter()
                        .position(|p| p.req.id == *id && p.req.step == *step)
                    {
                        discarded.extend(ahead.pending.remove(i));
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(i) = ahead.pending.iter().position(|p| same_request(&p.req, req)) else {
                continue;
            };
            let Some(p) = ahead.pending.remove(i) else {
                continue;
            };
            if !mine {
                discarded.push(p);
                continue;
            }
            self.stats.confirmed += 1;
            if let Effect::Assigned { consumer, req } =
                std::mem::replace(e, Effect::Empty { consumer: me })
            {
                *e = Effect::Confirmed {
                    consumer,
                    req,
                    speculation: p.told,
                };
            }
        }
        for p in discarded {
            self.stats.discarded += 1;
            self.scratch.push(p.discarded(me));
        }
        if ahead.dormant {
            return;
        }
        // The copy: slots it applied before this one were not delivered as messages, and one
        // it took for a null is one.
        while ahead.assumed.front().is_some_and(|a| *a < g) {
            ahead.assumed.pop_front();
        }
        let stale = ahead.view != view
            || ahead.applied.front().is_some_and(|a| *a < g)
            || ahead.assumed.front() == Some(&g)
            // Passed as a null it held: the order changed under it.
            || (ahead.applied.front() != Some(&g) && g < ahead.next);
        if stale {
            self.stats.speculation_resets += 1;
            self.rebuild_ahead(view, g + 1, false);
            return;
        }
        if ahead.applied.front() == Some(&g) {
            ahead.applied.pop_front();
            // What the copy assigned here is what was delivered: a speculation of this
            // copy's at this slot that the delivery did not confirm cannot be.
            let generation = ahead.generation;
            if ahead
                .pending
                .iter()
                .any(|p| p.generation == generation && p.slot <= g)
            {
                self.stats.speculation_resets += 1;
                self.rebuild_ahead(view, g + 1, false);
            }
            return;
        }
        // Level and behind: apply it too.
        if let Ok(op) = Op::decode(payload) {
            if !matches!(op, Op::Redis { .. }) {
                ahead.queue.apply(op, &mut ahead.scratch);
            }
            ahead.scratch.clear();
        }
        ahead.next = g + 1;
    }

    /// Makes the copy ahead level with the delivered queue, at slot `next` of `view`; with
    /// `discard`, every pending speculation is discarded ([`Effect::Discarded`], queued in
    /// `scratch` before the current delivery's effects). Without, they stay: the rebuilt copy
    /// assigns most of them again as it runs ahead, and deliveries confirm or discard them.
    pub(super) fn rebuild_ahead(&mut self, view: ViewId, next: u64, discard: bool) {
        let Some(ahead) = self.ahead.as_deref_mut() else {
            return;
        };
        let me = self.member.id();
        if discard {
            let discarded = ahead.pending.drain(..).map(|p| p.discarded(me));
            let before = self.scratch.len();
            // Before the delivery's own effects (after a view's report): the host drops the
            // speculation, then takes what the delivered order assigns (possibly the same
            // request again).
            let at = usize::from(matches!(
                self.scratch.first(),
                Some(Effect::ViewInstalled { .. })
            ));
            self.scratch.splice(at..at, discarded);
            self.stats.discarded += (self.scratch.len() - before) as u64;
        }
        ahead.dormant = self.queue.size() > MAX_BACKLOG;
        ahead.queue = if ahead.dormant {
            QueueState::new()
        } else {
            self.queue.copy_without_streams()
        };
        ahead.view = view;
        ahead.next = next;
        ahead.applied.clear();
        ahead.assumed.clear();
        ahead.generation += 1;
    }
}
