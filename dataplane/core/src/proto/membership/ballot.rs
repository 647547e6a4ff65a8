//! The leader's side of a view change: a ballot (single-decree Paxos on the next view and
//! its cut), the decision from the promises, and the commit once a majority accepted it.
//!
//! The cut: `max(C_min, C_del)`, extended over the slots every promiser holds and over nulls a
//! promiser reports (see [`super`]'s docs): a member that passed a null, held by a majority and
//! so by some promiser, may have delivered messages after it.

use super::change::{Change, Ctx, Installing};
use super::{Ballot, Ctl, Decision, Status};
use crate::proto::config::Sabotage;
use crate::proto::event::Dest;
use crate::types::{MemberId, View, ViewId};
use crate::wire;
use std::collections::{BTreeMap, BTreeSet};

/// What a member promised a leader: its frozen counts and the decision it accepted, if any.
#[derive(Debug)]
pub(super) struct Promised {
    pub(super) received: Vec<u64>,
    pub(super) delivered: u64,
    pub(super) accepted: Option<(Ballot, Decision)>,
    /// Per sender: runs `[start, end)` of nulls held and not delivered, within `received`.
    pub(super) nulls: Vec<Vec<(u64, u64)>>,
    /// Per rank: the process the promiser takes for it (0: none heard).
    pub(super) pinned: Vec<u64>,
    /// A joiner still waiting for its state (see [`Ctl::Promise`]).
    pub(super) awaiting_state: bool,
}

/// The leader's side of a ballot.
#[derive(Debug)]
pub(super) struct Leading {
    pub(super) ballot: Ballot,
    pub(super) members: Vec<MemberId>,
    pub(super) leaving: Vec<MemberId>,
    /// With their join nonces.
    pub(super) joiners: Vec<(MemberId, u64)>,
    pub(super) promises: BTreeMap<MemberId, Promised>,
    pub(super) decision: Option<Decision>,
    pub(super) accepted_by: BTreeSet<MemberId>,
}

impl Change {
    /// Starts or restarts a ballot when this member leads and a change is needed.
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_>) -> Option<Installing> {
        if !matches!(self.status, Status::Serving | Status::Changing) {
            return None;
        }
        // Once wedged, only a new view lets this member serve again (possibly with the same
        // members, after a healed partition).
        let n = cx.n();
        let would_lead =
            (0..n).find(|&r| !self.suspected[r] && !self.leaving_ranks[r]) == Some(cx.rank);
        // Join requests start a change only at the member that would lead it (every member
        // gets them; the others would only wedge the group for nothing).
        // A join by the id of a member that still speaks waits (see `on_join`).
        let admissible = self.joins.keys().any(|j| {
            cx.view
                .rank_of(*j)
                .is_none_or(|r| self.suspected[r] || self.leaving_ranks[r])
        });
        // Nor while this member still sends the state to a member that joined with this view:
        // a change before that state is in leaves the joiner out (it would have nothing to
        // apply the next view's messages to), and joiners that keep coming back then keep
        // leaving each other out, for good (seed 1943: three joiners, thousands of views). The
        // join waits until the transfer ends, or until the joiner that stalls it is suspected.
        let needed = self.frozen.is_some()
            || self.suspected.iter().any(|&s| s)
            || self.leaving_ranks.iter().any(|&s| s)
            || (would_lead && admissible && !cx.st.sending());
        if !needed {
            return None;
        }
        self.wedge(cx);
        let acceptors: Vec<usize> = (0..n).filter(|&r| !self.suspected[r]).collect();
        if acceptors.len() * 2 <= n {
            self.status = Status::Minority;
            self.leading = None;
            return None;
        }
        let leader = acceptors.iter().copied().find(|&r| !self.leaving_ranks[r]);
        if leader != Some(cx.rank) {
            self.leading = None;
            return None;
        }
        let members: Vec<MemberId> = acceptors.iter().map(|&r| cx.view.members[r]).collect();
        let leaving: Vec<MemberId> = acceptors
            .iter()
            .filter(|&&r| self.leaving_ranks[r])
            .map(|&r| cx.view.members[r])
            .collect();
        // Joiners: new ids, and new incarnations of members being removed (same id).
        let joiners: Vec<(MemberId, u64)> = self
            .joins
            .iter()
            .map(|(j, (_, nonce))| (*j, *nonce))
            .filter(|(j, _)| !members.contains(j) || leaving.contains(j))
            .take(wire::MAX_MEMBERS.saturating_sub(members.len()))
            .collect();
        if let Some(l) = &self.leading {
            if l.members == members && l.leaving == leaving && l.joiners == joiners {
                return None;
            }
        } else if self.yield_until.is_some_and(|t| cx.now < t) {
            return None;
        }
        // A round beyond u32 (a key holder's forged ballot) cannot be outbid: no ballot then.
        let round = self
            .round_seen
            .max(self.promised.map_or(0, |b| b.round))
            .checked_add(1)?;
        let ballot = Ballot {
            round,
            leader: cx.me,
        };
        self.round_seen = round;
        self.promised = Some(ballot);
        cx.stats.ballots += 1;
        let (received, delivered) = self.frozen.clone().unwrap_or_default();
        let nulls = cx.order.null_runs(&received);
        let mut promises = BTreeMap::new();
        promises.insert(
            cx.me,
            Promised {
                received,
                delivered,
                accepted: self.accepted.clone(),
                nulls,
                pinned: cx.order.pinned().to_vec(),
                awaiting_state: cx.st.awaiting(),
            },
        );
        let propose = Ctl::Propose {
            ballot,
            members: members.clone(),
            leaving: leaving.clone(),
            joiners: joiners.iter().map(|(j, _)| *j).collect(),
        };
        self.leading = Some(Leading {
            ballot,
            members: members.clone(),
            leaving,
            joiners,
            promises,
            decision: None,
            accepted_by: BTreeSet::new(),
        });
        for m in members {
            if m != cx.me {
                cx.emit(Dest::One(m), &propose);
            }
        }
        self.maybe_decide(cx)
    }

    pub(super) fn maybe_decide(&mut self, cx: &mut Ctx<'_>) -> Option<Installing> {
        let n = cx.n() as u64;
        let l = self.leading.as_ref()?;
        if l.decision.is_some() || !l.members.iter().all(|m| l.promises.contains_key(m)) {
            return None;
        }
        if self.promised != Some(l.ballot) {
            // We promised a higher ballot since: ours cannot win.
            self.leading = None;
            return None;
        }
        let mut accepts = l.promises.values().filter_map(|p| p.accepted.as_ref());
        if let Some((_, first)) = accepts.next() {
            if accepts.any(|(_, d)| d != first) {
                cx.stats.conflicting_accepts += 1;
            }
        }
        let adopted = l
            .promises
            .values()
            .filter_map(|p| p.accepted.clone())
            .max_by_key(|(b, _)| *b)
            .map(|(_, d)| d);
        let decision = if let Some(d) = adopted {
            d
        } else {
            // Per rank, the process the promisers take for it; two processes for one rank
            // (one restarted from the group file into this view) is a conflict: what each
            // promiser holds of that rank may be another process's messages.
            let taken: Vec<Option<u64>> = (0..n as usize)
                .map(|r| {
                    l.promises
                        .values()
                        .filter_map(|p| p.pinned.get(r).copied())
                        .filter(|&x| x != 0)
                        .min()
                })
                .collect();
            let conflicted: Vec<bool> = (0..n as usize)
                .map(|r| {
                    l.promises.values().any(|p| {
                        p.pinned
                            .get(r)
                            .is_some_and(|&x| x != 0 && Some(x) != taken[r])
                    })
                })
                .collect();
            let c_del = l.promises.values().map(|p| p.delivered).max().unwrap_or(0);
            let c_min = (0..n)
                .map(|r| {
                    let held = if conflicted[r as usize] {
                        // Only what some member delivered (held alike by all: delivery needs
                        // every row to count the same process's messages).
                        (c_del + n - 1 - r) / n
                    } else {
                        l.promises
                            .values()
                            .map(|p| p.received.get(r as usize).copied().unwrap_or(0))
                            .min()
                            .unwrap_or(0)
                    };
                    held * n + r
                })
                .min()
                .unwrap_or(0);
            // Extend the cut over slots that every promiser holds, or that one holds and
            // reports as a null: a member that passed a null (held by a majority, so by a
            // promiser) may have delivered messages after it.
            let mut cut = c_del.max(c_min);
            loop {
                let (r, k) = ((cut % n) as usize, cut / n);
                if conflicted[r] {
                    break;
                }
                let all = l
                    .promises
                    .values()
                    .all(|p| p.received.get(r).is_some_and(|&c| c > k));
                let null = l.promises.values().any(|p| {
                    p.received.get(r).is_some_and(|&c| c > k)
                        && p.nulls
                            .get(r)
                            .is_some_and(|runs| runs.iter().any(|&(a, b)| a <= k && k < b))
                });
                if !(all || null) {
                    break;
                }
                cut += 1;
            }
            // A joiner still waiting for its state cannot serve in the next view (it would
            // have nothing to apply the next messages to): it is left out and joins again,
            // to get the state from a member that has it.
            let awaiting = |m: &MemberId| l.promises.get(m).is_some_and(|p| p.awaiting_state);
            let staying = |with_leaving: bool| -> Vec<MemberId> {
                cx.view
                    .members
                    .iter()
                    .copied()
                    .filter(|m| l.members.contains(m))
                    .filter(|m| with_leaving || !l.leaving.contains(m))
                    .filter(|m| cx.view.rank_of(*m).is_none_or(|r| !conflicted[r]))
                    .filter(|m| !awaiting(m))
                    .collect()
            };
            let mut next = staying(false);
            if next.is_empty() {
                // Only leaving members have the state (seeds 42 and 4278: the member asked to
                // leave was the last with the state, its peer a joiner still waiting for it
                // from a member that crashed): they stay, and leave again once they have
                // handed the state over (see `Change::install`). Leaving now would lose the
                // state for good.
                next = staying(true);
                if !next.is_empty() {
                    cx.stats.leaves_postponed += 1;
                }
            }
            if next.is_empty() {
                // No member of the next view has the state: the members that have it are cut
                // off, and a view of joiners without state would stop at install, leaving the
                // others a minority for good (seed 160273: joiners 0 and 1 with the leaving
                // member 2 were a majority while 3 and 4 were cut off). The ballot waits; when
                // the others are heard again a ballot with them follows. If they crashed, the
                // group lost its state whatever is decided.
                cx.stats.undecided_without_state += 1;
                return None;
            }
            // Who each member of the next view is: the process the promisers agree on for a
            // member that stays, a joiner's own (its join nonce is its incarnation).
            let mut incarnations: Vec<(MemberId, u64)> = next
                .iter()
                .filter(|m| !l.joiners.iter().any(|(j, _)| j == *m))
                .filter_map(|m| {
                    let r = cx.view.rank_of(*m)?;
                    taken[r].map(|x| (*m, x))
                })
                .collect();
            incarnations.extend(l.joiners.iter().copied());
            next.extend(l.joiners.iter().map(|(j, _)| *j));
            // Which process each member that came in by a join stands for: the joiners' own,
            // and those the leader knows of members that stay.
            let mut nonces: Vec<(MemberId, u64)> = l.joiners.clone();
            nonces.extend(
                next.iter()
                    .filter(|m| !l.joiners.iter().any(|(j, _)| j == *m))
                    .filter_map(|m| self.nonces.get(m).map(|n| (*m, *n))),
            );
            nonces.sort_unstable();
            Decision {
                from: cx.view.id,
                next: View::new(ViewId(cx.view.id.0 + 1), next),
                joiners: l.joiners.iter().map(|(j, _)| *j).collect(),
                cut,
                nonces,
                incarnations,
            }
        };
        // The leader holds its own decision (adopted, or from promises) to the bounds its
        // acceptors apply.
        if !self.plausible(cx, &decision) {
            cx.stats.bad_control += 1;
            self.leading = None;
            return None;
        }
        let ballot = l.ballot;
        let members = l.members.clone();
        if let Some(l) = &mut self.leading {
            l.decision = Some(decision.clone());
            l.accepted_by.insert(cx.me);
        }
        self.accepted = Some((ballot, decision.clone()));
        let accept = Ctl::Accept { ballot, decision };
        for m in members {
            if m != cx.me {
                cx.emit(Dest::One(m), &accept);
            }
        }
        self.maybe_commit(cx)
    }

    pub(super) fn maybe_commit(&mut self, cx: &mut Ctx<'_>) -> Option<Installing> {
        let n = cx.n();
        let l = self.leading.as_ref()?;
        let d = l.decision.as_ref()?;
        let majority = l.accepted_by.len() * 2 > n;
        if !majority && !cx.cfg.sabotaged(Sabotage::CommitWithoutMajority) {
            return None;
        }
        let d = d.clone();
        let mut to: BTreeSet<MemberId> = cx.view.members.iter().copied().collect();
        to.extend(d.next.members.iter().copied());
        to.remove(&cx.me);
        for m in to {
            // Each copy names its receiver's process: the one the decision names, or, for a
            // member it removes, the one we heard (unknown: it learns by a catch-up).
            let process = d
                .incarnation_of(m)
                .or_else(|| {
                    let r = cx.view.rank_of(m)?;
                    cx.order.pinned().get(r).copied()
                })
                .unwrap_or(0);
            let commit = Ctl::Commit {
                decision: d.clone(),
                to: process,
            };
            cx.emit(Dest::One(m), &commit);
        }
        Some(Installing::Survivor(d))
    }
}
