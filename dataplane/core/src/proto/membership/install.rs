//! The install of a decided view: the ragged-edge cleanup up to the decision's cut (every
//! survivor delivers exactly the same prefix of the old view), the view change reported, and
//! the own messages the cut left out handed back for the next view; a joiner's first view.

use super::change::{Change, Ctx, Installed};
use super::{Decision, Status, StopReason, ViewChange};
use crate::proto::config::Sabotage;
use crate::proto::event::Delivered;
use crate::types::MemberId;
use core::time::Duration;
use std::collections::VecDeque;

impl Change {
    /// A joiner installs its first view: it serves once its state has arrived.
    pub(crate) fn install_joiner(&mut self, cx: &mut Ctx<'_>, d: Decision) -> Installed {
        self.status = Status::Serving;
        cx.st.expect(d.next.id);
        self.joined_now = d.joiners.iter().copied().collect();
        self.nonces = d.nonces.iter().copied().collect();
        let next = d.next.clone();
        self.last_commit = Some(d);
        cx.stats.view_changes += 1;
        Installed {
            change: ViewChange {
                previous: cx.view.clone(),
                view: next,
                removed: Vec::new(),
                left: Vec::new(),
                joined: vec![cx.me],
                cut: 0,
                inferred_nulls: 0,
                resubmitted: 0,
                wedged_for: Duration::ZERO,
                suspected_at: None,
                state_from: None,
            },
            again: Vec::new(),
            leave_postponed: false,
        }
    }

    /// Ragged-edge cleanup up to the decision's cut; returns the new view and the own messages
    /// to submit again in it (the member then resets its parts), or `None` if the decision
    /// removes this member (or it cannot catch up).
    pub(crate) fn install(
        &mut self,
        cx: &mut Ctx<'_>,
        d: Decision,
        out: &mut VecDeque<Delivered>,
    ) -> Option<Installed> {
        let previous = cx.view.clone();
        // Named as a joiner, this id stands for a new process: this one was removed (it made
        // no promise the cut relies on, so it must not install the view as a survivor).
        // Named as another process, it is not this one either: this process restarted (from
        // the group file) into the old view, with none of its previous self's state.
        let me_next = Change::survives(cx, &d);
        if !me_next {
            (self.status, self.stop) = if self.leaving {
                (Status::Left, Some(StopReason::Left))
            } else {
                (Status::Excluded, Some(StopReason::Removed))
            };
            self.last_commit = Some(d);
            self.leading = None;
            return None;
        }
        if cx.st.awaiting() {
            // Still waiting for our state when the view changed again: we cannot catch up.
            self.status = Status::Excluded;
            self.stop = Some(StopReason::StateNotArrived);
            self.last_commit = Some(d);
            return None;
        }
        let cut = if cx.cfg.sabotaged(Sabotage::IgnoreCut) {
            cx.order.held_prefix()
        } else {
            d.cut
        };
        let (delivered, inferred) = cx.order.deliver_to_cut(cut, cx.view, out);
        cx.stats.delivered += delivered;
        // Own messages not delivered by the cut go again, in order, in the new view.
        let again = cx.order.take_undelivered_own();
        // A rejoining incarnation of an old member counts as removed (the old one) and joined.
        let removed: Vec<MemberId> = previous
            .members
            .iter()
            .copied()
            .filter(|m| d.next.rank_of(*m).is_none() || d.joiners.contains(m))
            .collect();
        let left: Vec<MemberId> = removed
            .iter()
            .copied()
            .filter(|m| {
                previous
                    .rank_of(*m)
                    .is_some_and(|r| self.leaving_ranks.get(r).copied().unwrap_or(false))
                    && !d.joiners.contains(m)
            })
            .collect();
        let joined: Vec<MemberId> = d
            .next
            .members
            .iter()
            .copied()
            .filter(|m| previous.rank_of(*m).is_none() || d.joiners.contains(m))
            .collect();
        let suspected_at = (0..previous.len())
            .filter(|&r| removed.contains(&previous.members[r]))
            .filter_map(|r| self.suspected_at[r])
            .min();
        let wedged_for = self
            .wedged_at
            .map_or(Duration::ZERO, |t| cx.now.saturating_since(t));
        let state_from = if joined.is_empty() {
            None
        } else {
            d.next
                .members
                .iter()
                .copied()
                .find(|m| previous.rank_of(*m).is_some() && !d.joiners.contains(m))
        };
        let next = d.next.clone();
        let resubmitted = again.len() as u64;
        // Kept while leaving (see `Change::maybe_decide`): this member serves in the next view
        // and its host's leave starts again later.
        let leave_postponed = std::mem::take(&mut self.leaving);
        self.joined_now = joined.iter().copied().collect();
        // Requests answered by this view are done; one from another process with a member's
        // id (it restarted meanwhile) still waits.
        self.joins
            .retain(|j, (_, n)| next.rank_of(*j).is_none() || d.nonce_of(*j) != Some(*n));
        self.nonces = d.nonces.iter().copied().collect();
        self.last_commit = Some(d);
        cx.stats.view_changes += 1;
        cx.stats.resubmitted += resubmitted;
        Some(Installed {
            change: ViewChange {
                previous,
                view: next,
                removed,
                left,
                joined,
                cut,
                inferred_nulls: inferred,
                resubmitted,
                wedged_for,
                suspected_at,
                state_from,
            },
            again,
            leave_postponed,
        })
    }
}
