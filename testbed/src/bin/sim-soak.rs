//! Runs a range of simulator seeds on every core and says which failed and what the runs did:
//! `cargo run --release -p conveyor-testbed --bin sim-soak -- FIRST COUNT [THREADS] [--stop]`.
//! Exits non-zero if any seed failed; replay one with `sim-replay SEED`. `--stop`: stop at the
//! first failure (the mutation campaign, `testbed/mutants.sh`, wants only that one). A seed
//! still running after 300 s of wall time (a step that never returns: the simulator's own
//! step budget cannot see it) is reported as a liveness failure and ends the run.

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
    // Per worker: the seed it runs and since when.
    let running: Vec<Mutex<Option<(u64, Instant)>>> =
        (0..threads).map(|_| Mutex::new(None)).collect();
    let workers_done = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if workers_done.load(Ordering::Relaxed) >= threads {
                break;
            }
            for slot in &running {
                if let Some((seed, since)) = slot.lock().ok().and_then(|g| *g) {
                    if since.elapsed().as_secs() >= 300 {
                        println!("seed {seed} FAILED: liveness after heal violated: no end after 300 s of wall time (a step that never returns)");
                        println!("stopped at seed {seed} after {:.0} s", started.elapsed().as_secs_f64());
                        std::process::exit(1);
                    }
                }
            }
        });
        for w in 0..threads as usize {
            let running = &running[w];
            let (next, stopped, failures, total) = (&next, &stopped, &failures, &total);
            let workers_done = &workers_done;
            s.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count || stopped.load(Ordering::Relaxed) {
                    if let Ok(mut g) = running.lock() {
                        *g = None;
                    }
                    workers_done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if let Ok(mut g) = running.lock() {
                    *g = Some((seed, Instant::now()));
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
