//! Helpers shared by the integration tests of this package.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs member `a` of the group file `cfg` (behind `pre`, a command prefix such as `ip netns
/// exec NS` or `setpriv ...`), which must fail to start, and returns its error output.
pub fn node_fails(cfg: &str, pre: &[&str]) -> String {
    let mut c = match pre.split_first() {
        None => Command::new(env!("CARGO_BIN_EXE_conveyor")),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_conveyor"));
            c
        }
    };
    let out = c
        .args(["node", "--config", cfg, "--member", "a"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Whether the tests run as root (namespaces, XDP); without it, root tests say they did not run.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Polls `f` every 100 ms until it holds; fails the test after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
