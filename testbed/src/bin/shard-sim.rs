//! Runs a range of seeds of the sharded-deployment simulator (`conveyor_testbed::shardsim`) on
//! every core: `shard-sim FIRST COUNT [THREADS] [--stop]` (`--stop`: at the first failure), or
//! `shard-sim --seed SEED` to replay one with its configuration and report. Exits non-zero if
//! any seed failed.

use conveyor_testbed::shardsim::{run_seed, ShardReport, ShardSimConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--seed") {
        let seed: u64 = argv.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: shard-sim --seed SEED");
            std::process::exit(2)
        });
        println!("{:#?}", ShardSimConfig::from_seed(seed));
        match run_seed(seed) {
            Ok(r) => println!("{r:#?}"),
            Err(v) => {
                println!("seed {seed} FAILED: {v}");
                std::process::exit(1);
            }
        }
        return;
    }
    let args: Vec<u64> = argv.iter().filter_map(|a| a.parse().ok()).collect();
    let (first, count) = match args.as_slice() {
        [f, c, ..] => (*f, *c),
        _ => {
            eprintln!("usage: shard-sim FIRST COUNT [THREADS] | shard-sim --seed SEED");
            std::process::exit(2);
        }
    };
    let threads = args
        .get(2)
        .copied()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    let stop = argv.iter().any(|a| a == "--stop");
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let total = Mutex::new(Vec::<ShardReport>::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (next, stopped, failures, total) = (&next, &stopped, &failures, &total);
            s.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count || stopped.load(Ordering::Relaxed) {
                    break;
                }
                match run_seed(seed) {
                    Ok(r) => total.lock().expect("lock").push(r),
                    Err(v) => {
                        println!("seed {seed} FAILED: {v}");
                        failures.lock().expect("lock").push(seed);
                        if stop {
                            stopped.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    let reports = total.into_inner().unwrap_or_default();
    let sum = |f: fn(&ShardReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "{count} seeds from {first} in {:.1} s on {threads} threads: {} failed{}",
        started.elapsed().as_secs_f64(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" ({failures:?})")
        }
    );
    println!(
        "runs admitted {}, forwarded entries {}, acks {}, forwarders went back {}, view changes {}, joins {}, requeued {}, duplicate completions {}, moved with their queue {}, shards remapped {}, forwarders restarted {}, pushes blocked {}, three-shard runs {}",
        sum(|r| r.admitted as u64),
        sum(|r| r.forwarded),
        sum(|r| r.acks),
        sum(|r| r.forwarder_went_back),
        sum(|r| r.view_changes),
        sum(|r| r.joins),
        sum(|r| r.requeued),
        sum(|r| r.duplicate_completions),
        sum(|r| r.moved),
        sum(|r| r.remapped),
        sum(|r| r.forwarder_resets),
        sum(|r| r.blocked),
        reports.iter().filter(|r| r.shards == 3).count(),
    );
    println!(
        "durable: deployments killed whole {}, members restarted from their disks {}, shards that decided again {}, counted steps taken back by a restart {}; triggers resumed from their journal {} (unanswered pushes handed back {})",
        sum(|r| r.deployment_restarts),
        sum(|r| r.restarts_from_disk),
        sum(|r| r.decided),
        sum(|r| r.undone),
        sum(|r| r.trigger_resumes),
        sum(|r| r.journal_unanswered),
    );
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
