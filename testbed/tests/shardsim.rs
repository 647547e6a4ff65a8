//! Sharded deployments under the deterministic simulator (`conveyor_testbed::shardsim`): two or
//! three shards of real replicas, forwarders between them, loss, duplication, crashes, rejoins,
//! hosts cut off, forwarders restarted, the map moving a queue mid-run, and durable queues with
//! the whole deployment killed and restarted from its disks.
//!
//! `SHARD_SEEDS` (default 3000) seeds run in CI. A failing seed prints itself; replay it with
//! `cargo run --release -p conveyor-testbed --bin shard-sim -- --seed SEED`.

use conveyor_testbed::shardsim::{run_seed, ShardReport, ShardViolation};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[test]
fn many_seeds_of_sharded_deployments_hold_every_property() {
    let count = std::env::var("SHARD_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000u64);
    let next = AtomicU64::new(0);
    let failures: Mutex<Vec<(u64, ShardViolation)>> = Mutex::new(Vec::new());
    let reports: Mutex<Vec<ShardReport>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= count {
                    break;
                }
                match run_seed(seed) {
                    Ok(r) => reports.lock().unwrap().push(r),
                    Err(v) => {
                        eprintln!("seed {seed} FAILED: {v}\n  replay: cargo run --release -p conveyor-testbed --bin shard-sim -- --seed {seed}");
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
    // The seeds reach every fault and every case of the cross-shard logic.
    let r = reports.into_inner().unwrap();
    let sum = |f: fn(&ShardReport) -> u64| r.iter().map(f).sum::<u64>();
    let line = format!(
        "runs {}, forwarded {}, acks {}, forwarders went back {}, restarted {}, view changes {}, joins {}, requeued {}, duplicate completions {}, moved {}, remapped {}, blocked {}, three-shard seeds {}",
        sum(|x| x.admitted as u64),
        sum(|x| x.forwarded),
        sum(|x| x.acks),
        sum(|x| x.forwarder_went_back),
        sum(|x| x.forwarder_resets),
        sum(|x| x.view_changes),
        sum(|x| x.joins),
        sum(|x| x.requeued),
        sum(|x| x.duplicate_completions),
        sum(|x| x.moved),
        sum(|x| x.remapped),
        sum(|x| x.blocked),
        r.iter().filter(|x| x.shards == 3).count(),
    );
    let line = format!(
        "{line}; durable: deployments killed whole {}, restarts from disk {}, shards deciding again {}, steps taken back {}; triggers resumed from their journal {} (unanswered pushes handed back {})",
        sum(|x| x.deployment_restarts),
        sum(|x| x.restarts_from_disk),
        sum(|x| x.decided),
        sum(|x| x.undone),
        sum(|x| x.trigger_resumes),
        sum(|x| x.journal_unanswered),
    );
    eprintln!("{line}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("shard-sim-totals.txt"),
        format!("{count} seeds: {line}\n"),
    );
    let floor = count / 100;
    for (what, n) in [
        ("forwarded entries", sum(|x| x.forwarded)),
        ("acknowledgements", sum(|x| x.acks)),
        ("forwarders going back", sum(|x| x.forwarder_went_back)),
        ("forwarders restarted", sum(|x| x.forwarder_resets)),
        ("view changes", sum(|x| x.view_changes)),
        ("joins", sum(|x| x.joins)),
        ("requests requeued", sum(|x| x.requeued)),
        ("duplicate completions", sum(|x| x.duplicate_completions)),
        ("requests moved with their queue", sum(|x| x.moved)),
        ("shards remapped", sum(|x| x.remapped)),
        ("pushes blocked", sum(|x| x.blocked)),
        ("deployments killed whole", sum(|x| x.deployment_restarts)),
        (
            "members restarted from their disks",
            sum(|x| x.restarts_from_disk),
        ),
        ("shards deciding again after a restart", sum(|x| x.decided)),
        ("counted steps a restart took back", sum(|x| x.undone)),
        (
            "triggers resumed from their journal",
            sum(|x| x.trigger_resumes),
        ),
        (
            "unanswered pushes a journal handed back",
            sum(|x| x.journal_unanswered),
        ),
        (
            "three-shard seeds",
            r.iter().filter(|x| x.shards == 3).count() as u64,
        ),
    ] {
        assert!(n > floor, "only {n} {what} in {count} seeds");
    }
}
