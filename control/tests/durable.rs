//! Durable queues end to end: `conveyor bench --durable` with the whole group killed.

mod common;

use common::{conveyor, report};

/// Durable queues and the whole group SIGKILLed mid-run, twice (the load goes on after
/// each), one member's log torn mid-record before each restart: every member starts again
/// from its data directory, the trigger picks the run up from its journal, and every request
/// completes exactly once.
#[test]
fn killing_the_whole_group_twice_loses_and_doubles_nothing() {
    let out = conveyor(&[
        "bench",
        "--workload",
        "constant",
        "--rate",
        "1500",
        "--duration",
        "2",
        "--chain",
        "3",
        "--fn-us",
        "40",
        "--durable",
        "--fault",
        "kill:all@0.5",
        "--fault",
        "kill:all@1.2",
        "--fault",
        "tear:invoker-0",
        "--json",
        "-",
    ]);
    let r = report(&out);
    assert_eq!(r["completed"], 3000, "{r}");
    assert_eq!(r["sent"], 3000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["durable"], true);
    let each = r["recoveries_ms"].as_array().expect("recoveries_ms");
    assert_eq!(each.len(), 2, "{r}");
    assert!(r["recovery_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invoker-0's log torn"), "{stderr}");
    assert!(stderr.contains("the trigger restarted 2 times"), "{stderr}");
}
