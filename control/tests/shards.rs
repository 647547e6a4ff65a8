//! Sharded groups end to end (`[shards]` in the group file; `conveyor bench --shards N`): every
//! member process runs a member of each shard, the pipeline's steps alternate shards, and each
//! run's continuations cross between shards through the forwarders. Lost and duplicated runs
//! are counted by the trigger from the ends it is told.

mod common;
use common::{conveyor, report, require_root};

fn bench(extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--workload",
        "burst",
        "--requests",
        "1500",
        "--fn-us",
        "40",
        "--json",
        "-",
    ];
    args.extend_from_slice(extra);
    report(&conveyor(&args))
}

fn exactly_once(r: &serde_json::Value, sent: u64) {
    assert_eq!(r["sent"], sent, "{r}");
    assert_eq!(r["completed"], sent, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn two_shards_on_loopback_with_a_queue_moved_mid_run() {
    let r = bench(&[
        "--chain",
        "3",
        "--shards",
        "2",
        "--fault",
        "move:bench.f1@0.05",
    ]);
    exactly_once(&r, 1500);
    assert_eq!(r["shards"], 2, "{r}");
    // bench.f1 started on shard 1 (step 1 of 2 shards) and went to the next one.
    assert_eq!(
        r["shard_moves"],
        serde_json::json!([{"queue": "bench.f1", "to": 0, "at_s": 0.05}]),
        "{r}"
    );
}

#[test]
fn bad_shard_options_are_refused_before_anything_runs() {
    for (args, says) in [
        (vec!["--shards", "0"], "--shards"),
        (vec!["--shards", "65"], "--shards"),
        (
            vec!["--shards", "2", "--backend", "conveyor,redis"],
            "Conveyor only",
        ),
        (vec!["--shards", "2", "--fault", "move:nope@1"], "bench.f0"),
        (
            vec!["--shards", "2", "--fault", "move:bench.f1=5@1"],
            "not a shard",
        ),
        (vec!["--fault", "move:bench.f1@1"], "--shards 2"),
    ] {
        let mut all = vec!["bench", "--duration", "1"];
        all.extend(args.iter().copied());
        let out = conveyor(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn check_shows_each_shard_and_where_each_queue_is_ordered() {
    let dir = std::env::temp_dir().join(format!("conveyor-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.json"),
        r#"{"name": "p", "entry": "a", "steps": {
            "a": {"function": "echo", "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#,
    )
    .unwrap();
    let cfg = dir.join("conveyor.toml");
    std::fs::write(
        &cfg,
        r#"[group]
name = "g"
key = "0000000000000000000000000000000000000000000000000000000000000001"
pipelines = ["p.json"]

[shards]
count = 3
port_stride = 10
place = { "p.b" = 2 }

[[member]]
name = "t"
address = "127.0.0.1:7000"
role = "trigger"

[[member]]
name = "i"
address = "127.0.0.1:7001"
role = "invoker"
"#,
    )
    .unwrap();
    let out = conveyor(&["check", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("shard 2: group \"g#2\", ports 7020 7021"),
        "{text}"
    );
    assert!(text.contains("queue p.b on shard 2 (placed)"), "{text}");
    assert!(text.contains("queue p.a on shard "), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root"]
fn two_shards_on_namespace_hosts_with_an_invoker_killed_and_a_queue_moved() {
    require_root();
    let r = bench(&[
        "--hosts",
        "netns",
        "--shards",
        "2",
        "--chain",
        "3",
        "--invokers",
        "3",
        "--fault",
        "kill:invoker-1@0.1",
        "--fault",
        "move:bench.f1@0.2",
    ]);
    exactly_once(&r, 1500);
    // The killed invoker's member of each shard was removed: a view change in each.
    assert!(r["view_changes"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["shard_moves"].as_array().map(Vec::len), Some(1), "{r}");
}

#[test]
#[ignore = "needs root"]
fn four_shards_on_namespace_hosts_with_an_invoker_killed_and_a_queue_moved() {
    require_root();
    let r = bench(&[
        "--hosts",
        "netns",
        "--shards",
        "4",
        "--chain",
        "4",
        "--invokers",
        "3",
        "--fault",
        "kill:invoker-2@0.1",
        "--fault",
        "move:bench.f3=1@0.15",
    ]);
    exactly_once(&r, 1500);
    assert_eq!(r["shards"], 4, "{r}");
    assert!(r["view_changes"].as_u64().unwrap() >= 4, "{r}");
}
