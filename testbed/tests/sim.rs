//! The protocol core and the replicated queue under the deterministic simulator.
//!
//! `SIM_SEEDS` (default 1000) seeds starting at `SIM_SEED_BASE` (default 0) run in CI. A failing
//! seed prints itself; replay it with `cargo run -p conveyor-testbed --bin sim-replay -- SEED`.

use conveyor_dataplane::proto::Sabotage;
use conveyor_testbed::sim::{run_seed, Violation};

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
    let mut failures = Vec::new();
    let mut retransmitted = 0;
    let mut dropped = 0;
    for seed in base..base + count {
        match run_seed(seed, |_| {}) {
            Ok(r) => {
                retransmitted += r.retransmitted_slots;
                dropped += r.dropped_frames;
            }
            Err(v) => {
                eprintln!("seed {seed} FAILED: {v}\n  replay: cargo run -p conveyor-testbed --bin sim-replay -- {seed}");
                failures.push((seed, v));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed, first: seed {} {}",
        failures.len(),
        failures[0].0,
        failures[0].1
    );
    // The seeds really exercise loss recovery and the MAC.
    assert!(
        retransmitted > 0 && dropped > 0,
        "retransmitted {retransmitted}, dropped {dropped}"
    );
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
    })
    .unwrap();
    assert!(r.max_batch > 1, "no batching under load: {r:?}");
    assert!(r.window_full > 0, "the window never filled: {r:?}");
    assert_eq!(r.requests_finished, 900);
}

#[test]
fn a_partition_stalls_then_heals() {
    let r = run_seed(11, |c| {
        c.members = 5;
        c.loss = 0.0;
        c.requests = 20;
        c.push_gap_us = (100, 1000);
        c.partitions = vec![(2_000, 500_000, vec![0, 1])];
    })
    .unwrap();
    assert_eq!(r.requests_finished, 100);
    assert!(r.end_us > 500_000, "finished before the heal: {r:?}");
    assert!(r.retransmitted_slots > 0);
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

#[test]
fn the_retransmission_timeout_adapts_to_a_slow_network() {
    let r = run_seed(5, |c| {
        c.members = 3;
        c.loss = 0.0;
        c.duplicate = 0.0;
        c.corrupt = 0.0;
        c.partitions.clear();
        c.delay_us = (5_000, 6_000);
        c.requests = 60;
        c.push_gap_us = (2_000, 4_000);
        c.proto.rto = std::time::Duration::from_millis(1);
    })
    .unwrap();
    // Round trips of 10-12 ms against a 1 ms floor: without adaptation nearly every message
    // would be resent; with it, only the first round trips before a measurement exists.
    assert!(
        r.retransmitted_slots * 10 < r.delivered,
        "{} slots retransmitted for {} delivered",
        r.retransmitted_slots,
        r.delivered
    );
}
