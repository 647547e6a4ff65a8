//! The protocol core and the replicated queue under the deterministic simulator.
//!
//! `SIM_SEEDS` (default 1000) seeds starting at `SIM_SEED_BASE` (default 0) run in CI. A failing
//! seed prints itself; replay it with `cargo run -p conveyor-testbed --bin sim-replay -- SEED`.

use conveyor_core::proto::Sabotage;
use conveyor_testbed::sim::{run_seed, Totals, Violation};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn many_seeds_hold_every_property() {
    let count = env_u64("SIM_SEEDS", 1000);
    let base = env_u64("SIM_SEED_BASE", 0);
    // Seeds on every core: each run is independent and replays alone.
    let next = AtomicU64::new(base);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(Totals::default());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= base + count {
                    break;
                }
                match run_seed(seed, |_| {}) {
                    Ok(r) => totals.lock().unwrap().add(&r),
                    Err(v) => {
                        eprintln!("seed {seed} FAILED: {v}\n  replay: cargo run -p conveyor-testbed --bin sim-replay -- {seed}");
                        failures.lock().unwrap().push((seed, v));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed, first: seed {} {}",
        failures.len(),
        failures[0].0,
        failures[0].1
    );
    let t = totals.into_inner().unwrap();
    // The seeds really exercise loss recovery, the MAC, view changes, joins and re-queueing;
    // runs that end without a majority (no liveness owed) stay rare.
    eprintln!("seeds {base}..{}: {t}", base + count);
    // For the CI log (a passing test's output is captured): testbed/test.sh prints it.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim-totals.txt"),
        format!("seeds {base}..{}: {t}\n", base + count),
    );
    assert!(
        t.retransmitted_slots > 0 && t.dropped_frames > 0,
        "retransmitted {}, dropped {}",
        t.retransmitted_slots,
        t.dropped_frames
    );
    assert!(
        count < 50 || (t.view_changes > count / 4 && t.joins > count / 20 && t.requeued > 0),
        "too few membership events: {t}"
    );
    // The simulator drives the production Replica: a joiner's application is told the
    // pipelines its state carries (the Replica re-emits them; a hand-made copy of the replica
    // once did not), and every view's effects start with the view (checked at every install).
    assert!(
        count < 50 || t.pipelines_after_state > 0,
        "no joiner ever received a state carrying pipelines: {t}"
    );
    // Coverage: every corner the faults are there to reach was reached, at least once per
    // hundred seeds (a fault class that silently stopped being generated fails here).
    if count >= 1000 {
        for (corner, n) in t.corners.named() {
            assert!(
                n * 100 >= count,
                "the corner \"{corner}\" was reached {n} times in {count} seeds: {t}"
            );
        }
    }
    assert!(
        t.majority_lost * 20 <= count,
        "{} of {count} runs lost their majority",
        t.majority_lost
    );
}

/// Seeds that found bugs (the first three beyond the ones CI runs), kept as regression tests:
/// - 213149, 604280: a member that died before another ever heard from it was never suspected
///   there (the first view's start-up exemption had no end), and the group stayed wedged;
/// - 106118: a joiner restarted right after its admission, and the new process was sent the
///   commit meant for the old one by a member that had not heard from it, and took its place
///   (joins now carry a nonce per process).
/// - 477, 1053, 738 (restarts from the group file): a process restarted with the first view
///   installed, as a survivor and with none of its state, a decision its previous self had
///   promised for (477; decisions now name each survivor's process); such a process never
///   learnt that its view had ended, because the commit's cut looked implausible to a member
///   with nothing delivered (1053; the cut bounds only members the decision keeps); and peers
///   delivered the new process's messages under the old one's sequence numbers (now refused:
///   rows and frames name the process, see `proto::member`).
/// - 100120, 110199, 118662, 141687 (6 and 7 members): after one-way links and partitions the
///   lowest ranks suspected each other, each took itself for the leader and outbid the others'
///   ballots forever; a member outbid by (or promising) another leader's ballot now gives it a
///   failure timeout before starting its own.
/// - 103355, 109056, 109445 (and 2215, among CI's seeds), found as the stall rule below went
///   in: a state sender suspects a joiner that acknowledges nothing more for a failure
///   timeout, and a joiner that had taken its whole state did not acknowledge resent chunks
///   (its last acknowledgement lost), so a live member was suspected over and over and the
///   group never settled; a joiner now acknowledges a state it took in full.
/// - 102711 (a member crash-looping at start-up): m0 delivered a message counting the row of
///   m2's first process; m2's next process, started from the group file and heard only by m1,
///   promised for rank 2 with m1, and their decision's cut left the message out (m0's
///   delivery was lost to the survivors). Stability now counts a member's row only while it
///   names the same process as ours for every rank, so a disagreement shows up in the view
///   change as a conflict instead.
/// - 160273 (the 100,000-seed soak on 0444862; 5 members): two joiners still waiting for
///   their state and a leaving member were a majority while the two others were cut off, and
///   decided a view of the two joiners alone, which stopped at install for want of state: the
///   cut-off pair was left a minority of the committed view for good. A decision now needs a
///   member with the state (unit test `joiners_without_state_do_not_decide_a_view_of_their_own`,
///   which fails without the fix; the seed itself runs differently since the loss-recovery
///   changes of the same stop, and passes either way there).
/// - 5285 (among CI's seeds once the two fixes above and the loss-recovery changes were in):
///   a member left alone in its view of two (its peer, the leader, committed the next view,
///   whose commit this member missed, and crashed) sent only to that peer, while the next
///   view's members, joiners waiting for the state it held, sent to it and waited for a frame
///   of its old view to answer with the commit: each waited for the other for good. A member
///   that hears a newer view now sends its sender its row, which is answered with the commit.
/// - 101708, 106799 (the soak of 100000..199999 on d68681c): the only member with the state
///   was asked to leave while its only peer was the joiner taking that state from it; the leave
///   wedged the view mid-transfer, and no view could keep both the state and the group. A leave
///   now waits for the transfer the member serves (unit test
///   `a_leave_waits_for_the_state_transfer_it_serves`).
/// - 113199, 139721, 156071, 174543 (the same soak on 6f8cb5f; and 42, 4278, 5609 among CI's
///   seeds on fbab3a6): a member asked to leave was the last the group could reach with the
///   state (the other member with it had crashed, the rest were joiners still waiting for
///   theirs); no view could be decided without it, and the group stayed wedged for good. Such
///   a member is now kept in the next view and leaves once it has handed the state over (unit
///   test `a_leaving_member_with_the_only_state_stays_until_it_hands_it_over`).
/// - 166541 (the soak of 100000..199999 on 8791a92; a fault in the simulator, not in the
///   protocol): a member asked to leave was left alone in its view (one peer excluded for good,
///   the other refused by the admission list) before it could ask; it held back its
///   completions forever, as leaving members do, and the liveness check waited on it. Such a
///   member now stops, as `conveyor node` does when it is alone (the run then has no majority
///   left: no liveness owed).
#[test]
fn the_seeds_that_found_bugs_pass() {
    for seed in [
        213149, 604280, 106118, 477, 1053, 738, 100120, 110199, 118662, 141687, 103355, 109056,
        109445, 102711, 160273, 5285, 101708, 106799, 113199, 139721, 156071, 174543, 166541,
    ] {
        if let Err(v) = run_seed(seed, |_| {}) {
            panic!("seed {seed}: {v}");
        }
    }
}

fn first_failure(
    seeds: std::ops::Range<u64>,
    sabotage: Sabotage,
    lossy: bool,
) -> Option<(u64, Violation)> {
    seeds.into_iter().find_map(|seed| {
        run_seed(seed, |c| {
            c.proto.sabotage = sabotage;
            c.settle_us = 5_000_000;
            if lossy {
                c.loss = c.loss.max(0.1);
            }
        })
        .err()
        .map(|v| (seed, v))
    })
}

#[test]
fn checkers_catch_delivery_before_stability() {
    let (seed, v) = first_failure(0..200, Sabotage::DeliverBeforeStable, true)
        .expect("delivering before stability must be caught");
    assert_eq!(v.property, "stability before delivery", "seed {seed}: {v}");
}

#[test]
fn checkers_catch_a_missing_retransmission() {
    let (seed, v) = first_failure(0..200, Sabotage::NoRetransmit, true)
        .expect("never retransmitting must be caught");
    assert_eq!(v.property, "liveness after heal", "seed {seed}: {v}");
}

#[test]
fn heavy_load_batches_and_backpressures() {
    let r = run_seed(7, |c| {
        c.members = 3;
        c.requests = 300;
        c.push_gap_us = (0, 5);
        c.proto.window = 16;
        c.proto.max_frame = 8192;
        c.loss = 0.05;
        c.partitions.clear();
        c.crashes.clear();
        c.restarts.clear();
    })
    .unwrap();
    assert!(r.max_batch > 1, "no batching under load: {r:?}");
    assert!(r.window_full > 0, "the window never filled: {r:?}");
    assert_eq!(r.requests_finished, 900);
}

#[test]
fn a_short_partition_stalls_then_heals_without_a_view_change() {
    let r = run_seed(11, |c| {
        c.members = 5;
        c.loss = 0.0;
        c.requests = 20;
        c.push_gap_us = (100, 1000);
        c.crashes.clear();
        c.restarts.clear();
        c.proto.failure_timeout = Duration::from_secs(1);
        c.partitions = vec![(2_000, 500_000, vec![0, 1])];
    })
    .unwrap();
    assert_eq!(r.requests_finished, 100);
    assert_eq!(r.view_changes, 0);
    assert!(r.end_us > 500_000, "finished before the heal: {r:?}");
    assert!(r.retransmitted_slots > 0);
}

#[test]
fn a_long_partition_excludes_the_minority_which_rejoins() {
    let r = run_seed(11, |c| {
        c.members = 5;
        c.loss = 0.0;
        c.requests = 20;
        c.push_gap_us = (100, 1000);
        c.crashes.clear();
        c.restarts.clear();
        c.rejoin_after_us = Some(1_000);
        c.proto.failure_timeout = Duration::from_millis(40);
        c.partitions = vec![(2_000, 500_000, vec![0, 1])];
    })
    .unwrap();
    // The majority {2, 3, 4} went on without {0, 1}; after the heal both came back as new
    // members with the state; every run the group admitted finished once (checked by the run).
    assert!(!r.majority_lost);
    assert!(r.view_changes >= 3 * 2, "{r:?}");
    assert!(r.joins >= 2, "{r:?}");
    assert!(r.requests_finished >= 60, "{r:?}");
}

#[test]
fn foreign_and_corrupted_frames_are_dropped() {
    let r = run_seed(3, |c| {
        c.foreign_frames = 6;
        c.corrupt = 0.05;
    })
    .unwrap();
    assert!(r.dropped_frames >= 6 * c_members(3) as u64, "{r:?}");
}

fn c_members(seed: u64) -> usize {
    conveyor_testbed::sim::SimConfig::from_seed(seed).members
}

/// Leaves out what later draws of a seed add (one-way links, a start-up crash loop's
/// restart from the group file, an earlier run's frames, an admission list), for the tests
/// that set up one scenario by hand: its restarts are as joiners.
fn plain(c: &mut conveyor_testbed::sim::SimConfig) {
    c.one_way.clear();
    c.restarts_configured = vec![false; c.restarts.len()];
    c.earlier_run = 0;
    c.not_admitted = None;
    c.proto.admission = conveyor_core::proto::Admission::Any;
    // (A scenario of its own, not a whole-group restart drawn by the seed.)
    c.group_restarts.clear();
}

#[test]
fn the_retransmission_timeout_adapts_to_a_slow_network() {
    let r = run_seed(5, |c| {
        c.members = 3;
        c.loss = 0.0;
        c.duplicate = 0.0;
        c.corrupt = 0.0;
        c.partitions.clear();
        c.delay_us = (5_000, 6_000);
        c.crashes.clear();
        c.restarts.clear();
        plain(c);
        c.proto.failure_timeout = Duration::from_millis(500);
        c.requests = 150;
        c.push_gap_us = (2_000, 4_000);
        c.proto.rto = std::time::Duration::from_millis(1);
    })
    .unwrap();
    // Round trips of 10-12 ms against a 1 ms floor: without adaptation nearly every message
    // would be resent; with it, only the first round trips before a measurement exists (and
    // the start-up exchanges in which the processes prove themselves to each other, whose
    // frames are dropped and sent again: 150 requests make them a small part of the run; with
    // 60, 403 slots were resent for 1,719 delivered). The links here also reorder (5 to 6 ms):
    // a frame overtaken by a later one is not reported missing within a quarter of a round
    // trip (with reports at once, 1,181 slots were resent for 4,230 delivered), and reports
    // answered before a round trip is measured back off (the start-up exchanges had every slot
    // sent ten times); 564 now.
    assert!(
        r.retransmitted_slots * 5 < r.delivered,
        "{} slots retransmitted for {} delivered",
        r.retransmitted_slots,
        r.delivered
    );
}

#[test]
fn checkers_catch_a_cleanup_that_ignores_the_agreed_cut() {
    let (seed, v) = (0..400)
        .find_map(|seed| {
            run_seed(seed, |c| {
                c.proto.sabotage = Sabotage::IgnoreCut;
                c.settle_us = 5_000_000;
            })
            .err()
            .map(|v| (seed, v))
        })
        .expect("a ragged-edge cleanup that ignores the cut must be caught");
    assert!(
        [
            "total order",
            "per-sender FIFO",
            "integrity",
            "replicas identical"
        ]
        .contains(&v.property),
        "seed {seed}: {v}"
    );
}

#[test]
fn checkers_catch_a_commit_without_a_majority() {
    let scenario = |seed: u64, sabotage: Sabotage| {
        run_seed(seed, |c| {
            // The leader (m0) starts a change to remove a crashed m4, then is cut off
            // around the time it decides: a commit on its own lets the others decide
            // differently.
            c.proto.sabotage = sabotage;
            c.settle_us = 5_000_000;
            c.members = 5;
            c.loss = 0.0;
            c.crashes = vec![(5_000, 4)];
            c.restarts.clear();
            let t = 5_000 + c.proto.failure_timeout.as_micros() as u64;
            let jitter = (seed % 40) * (c.delay_us.1 / 10 + 100);
            c.partitions = vec![(t + jitter, t + jitter + 300_000, vec![0])];
        })
    };
    let (seed, v) = (0..400)
        .find_map(|seed| {
            scenario(seed, Sabotage::CommitWithoutMajority)
                .err()
                .map(|v| (seed, v))
        })
        .expect("committing without a majority must be caught");
    assert!(
        ["total order", "one view per id"].contains(&v.property),
        "seed {seed}: {v}"
    );
    // The same scenario, with the real protocol, holds for every timing tried.
    for seed in 0..40 {
        if let Err(v) = scenario(seed, Sabotage::None) {
            panic!("seed {seed} without sabotage: {v}");
        }
    }
}

#[test]
fn a_crashed_invoker_loses_nothing() {
    // Five members, one crashes while requests flow: its in-flight requests are re-queued and
    // every admitted run finishes exactly once.
    let r = run_seed(21, |c| {
        c.members = 5;
        c.loss = 0.02;
        c.requests = 40;
        c.push_gap_us = (200, 600);
        c.exec_us = (200, 800);
        c.partitions.clear();
        c.crashes = vec![(6_000, 3)];
        c.restarts = vec![(150_000, 3)];
        plain(c);
    })
    .unwrap();
    assert!(!r.majority_lost);
    assert!(r.requeued > 0, "{r:?}");
    assert!(r.joins >= 1, "{r:?}");
    assert!(r.requests_finished >= 4 * 40, "{r:?}");
}
