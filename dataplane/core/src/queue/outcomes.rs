//! What became of each origin's requests, kept so that an origin removed by a view change (a
//! trigger whose links went dark past the failure timeout) learns, when it comes back, what
//! it missed while it was out.
//!
//! An origin hears of its requests' ends as effects of the operations it delivers: a run's
//! terminal completions, its failures, a push rejected or overwritten. A member removed from
//! the view stops delivering at some operation (its replica applied `since` operations), and
//! the group goes on without it: the outcomes of its requests from then on are applied by the
//! others only. Every replica therefore keeps, per origin, the outcomes of the last
//! [`KEPT_OUTCOMES`] of its requests with the position (operations applied) where each was
//! applied. The kept outcomes are part of the replicated state (the same on every replica,
//! carried to joiners); a member that comes back as a joiner with the count of operations its
//! previous incarnation applied is told, from its state, the outcomes after that count, then
//! which of its requests the group still holds ([`Effect::Rejoined`]): anything else it was
//! waiting for never reached the order and is to be pushed again, unless outcomes it missed
//! were dropped to keep the bound (then it cannot tell, and says so to whoever waits).
//!
//! Whatever a member delivered was delivered by every survivor (virtual synchrony), so the
//! positions of the removed incarnation and of the group agree up to `since`.

use super::Effect;
use crate::types::{MemberId, RequestId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Outcomes kept per origin: the most a trigger can miss while it is out of the group (the
/// requests it has in flight end while it is away) without losing track of any.
pub const KEPT_OUTCOMES: usize = 4096;

/// The run an effect reports the end of, if it does: a run's terminal completion, a failure, a
/// push refused (not a queue's settings refused: no run) or overwritten.
pub fn ended(e: &Effect) -> Option<RequestId> {
    match e {
        Effect::Rejected {
            pusher: MemberId(u16::MAX),
            ..
        } => None,
        Effect::Completed {
            id, terminal: true, ..
        }
        | Effect::Failed { id, .. }
        | Effect::Rejected { id, .. }
        | Effect::Overwritten { id, .. } => Some(*id),
        _ => None,
    }
}

/// One origin's kept outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// The position of the newest outcome dropped (0: none).
    dropped_at: u64,
    /// (position, the effect that reported it), oldest first.
    list: VecDeque<(u64, Effect)>,
}

/// The outcomes kept, by origin (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Outcomes {
    by_origin: BTreeMap<MemberId, Kept>,
}

impl Outcomes {
    /// Keeps the outcomes among `effects`, applied at position `at`.
    pub(super) fn record(&mut self, at: u64, effects: &[Effect]) {
        for e in effects {
            let Some(id) = ended(e) else { continue };
            let kept = self.by_origin.entry(id.origin()).or_default();
            kept.list.push_back((at, e.clone()));
            while kept.list.len() > KEPT_OUTCOMES {
                if let Some((pos, _)) = kept.list.pop_front() {
                    kept.dropped_at = pos;
                }
            }
        }
    }

    /// A view was installed at position `at` by `origin` as a member of the views before and
    /// after it: it delivered every outcome so far, and needs none of them if it comes back.
    /// They go (as dropped: a process of `origin` that did not install the view, and comes back
    /// from before it, cannot tell what it missed).
    pub(super) fn delivered_by(&mut self, origin: MemberId, at: u64) {
        if let Some(kept) = self.by_origin.get_mut(&origin) {
            kept.list.clear();
            kept.dropped_at = kept.dropped_at.max(at);
        }
    }

    /// `origin`'s outcomes applied after position `since`, as effects, and whether some were
    /// dropped (then the list is incomplete).
    pub(super) fn after(&self, origin: MemberId, since: u64) -> (Vec<Effect>, bool) {
        let Some(kept) = self.by_origin.get(&origin) else {
            return (Vec::new(), false);
        };
        let effects = kept
            .list
            .iter()
            .filter(|(at, _)| *at > since)
            .map(|(_, e)| e.clone())
            .collect();
        (effects, kept.dropped_at > since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Meta;

    fn completed(origin: u16, n: u64) -> Effect {
        Effect::Completed {
            consumer: MemberId(9),
            id: RequestId::new(MemberId(origin), n),
            instance: n,
            step: "s".into(),
            terminal: true,
            result: Some(vec![n as u8]),
            reply: None,
            meta: Meta::default(),
        }
    }

    #[test]
    fn each_origin_keeps_its_last_outcomes_and_knows_when_it_dropped_some() {
        let mut o = Outcomes::default();
        // Steps that go on, pushes accepted, assignments: not outcomes.
        let mut not_ends = completed(1, 0);
        if let Effect::Completed { terminal, .. } = &mut not_ends {
            *terminal = false;
        }
        o.record(1, &[not_ends]);
        assert_eq!(o.after(MemberId(1), 0), (Vec::new(), false));
        for n in 1..=KEPT_OUTCOMES as u64 + 1 {
            o.record(n + 1, &[completed(1, n), completed(2, n)]);
        }
        let (all, dropped) = o.after(MemberId(1), 0);
        assert_eq!((all.len(), dropped), (KEPT_OUTCOMES, true));
        assert_eq!(all[0], completed(1, 2));
        // Outcome 1 (at position 2) was dropped: from position 2 on, nothing is missing.
        let (rest, dropped) = o.after(MemberId(1), 2);
        assert_eq!((rest.len(), dropped), (KEPT_OUTCOMES, false));
        let (last, _) = o.after(MemberId(2), KEPT_OUTCOMES as u64 + 1);
        assert_eq!(last, vec![completed(2, KEPT_OUTCOMES as u64 + 1)]);
        assert_eq!(o.after(MemberId(3), 0), (Vec::new(), false));
    }
}
