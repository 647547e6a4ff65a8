//! Runs a range of simulator seeds on every core and says which failed and what the runs did:
//! `cargo run --release -p conveyor-testbed --bin sim-soak -- FIRST COUNT [THREADS] [--stop]`.
//! Exits non-zero if any seed failed; replay one with `sim-replay SEED`. `--stop`: stop at the
//! first failure (the mutation campaign, `testbed/mutants.sh`, wants only that one).

use conveyor_testbed::sim::{run_seed, Totals};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

fn main() {
    let stop = std::env::args().any(|a| a == "--stop");
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (first, count) = match args.as_slice() {
        [f, c, ..] => (*f, *c),
        _ => {
            eprintln!("usage: sim-soak FIRST COUNT [THREADS]");
            std::process::exit(2);
        }
    };
    let threads = args
        .get(2)
        .copied()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let next = AtomicU64::new(first);
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let total = Mutex::new(Totals::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count || stopped.load(Ordering::Relaxed) {
                    break;
                }
                match run_seed(seed, |_| {}) {
                    Ok(r) => {
                        if let Ok(mut t) = total.lock() {
                            t.add(&r);
                        }
                    }
                    Err(v) => {
                        println!("seed {seed} FAILED: {v}");
                        if stop {
                            stopped.store(true, Ordering::Relaxed);
                        }
                        if let Ok(mut f) = failures.lock() {
                            f.push(seed);
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    let total = total.into_inner().unwrap_or_default();
    println!(
        "{count} seeds from {first} in {:.0} s on {threads} threads: {} failed{}",
        started.elapsed().as_secs_f64(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" ({:?})", failures)
        }
    );
    println!("{total}");
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
