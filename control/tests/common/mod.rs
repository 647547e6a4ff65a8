//! Helpers shared by the integration tests of this package.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
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

/// Tests that need root (namespaces, XDP, AF_XDP, DPDK on a veth) are `#[ignore = "needs
/// root"]`: a run without root lists them as ignored, and `cargo test -- --ignored` as root
/// runs them (CI does: it is root). Run without root anyway, they fail here saying so.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, XDP, AF_XDP): run it as root"
    );
}

/// Stops `child` as an operator would (SIGTERM, so that it cleans up after itself: an
/// invoker deletes its actions' nftables tables), killing it if it is still there after 10 s.
pub fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Deletes the nftables tables that the OpenWhisk executors of the processes `pids` made in
/// this network namespace (`conveyor_action_PORT_PID`), for a test that killed them: a killed
/// invoker cannot, and the next one to start an action would, but a test run may end first
/// (each table filters every packet the host receives). Needs root; does nothing without.
pub fn delete_action_tables_of(pids: &[u32]) {
    let Ok(out) = Command::new("nft").args(["list", "tables"]).output() else {
        return;
    };
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(t) = l.trim().strip_prefix("table inet conveyor_action_") else {
            continue;
        };
        if pids.iter().any(|p| t.ends_with(&format!("_{p}"))) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &format!("conveyor_action_{t}")])
                .status();
        }
    }
}

/// Whether the tests run as root.
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

/// Runs the `conveyor` binary with `args`.
pub fn conveyor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(args)
        .output()
        .expect("run conveyor")
}

/// The first entry of the JSON report a successful `conveyor bench --json -` printed.
pub fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "conveyor failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report on stdout");
    v.as_array().expect("an array")[0].clone()
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

pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs curl with `args` (`-i` added: status line and headers); returns (status, body,
/// headers).
pub fn curl_i(args: &[&str]) -> (u16, String, Vec<(String, String)>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl is installed (testbed/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, body.to_string(), headers)
}

pub fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["--max-time", "15"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

pub fn h<'a>(headers: &'a [(String, String)], k: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == &k.to_ascii_lowercase())
        .map(|(_, v)| v.as_str())
}

/// A request's headers (lower-case names) and body.
pub type Posted = (Vec<(String, String)>, Vec<u8>);

/// An HTTP server for callbacks that takes `n` requests: its URL, and the POSTs it gets.
pub fn callback_server(n: usize) -> (String, mpsc::Receiver<Posted>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/done", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let n: usize = h(&headers, "Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; n];
            r.read_exact(&mut body).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            tx.send((headers, body)).unwrap();
        }
    });
    (url, rx)
}

/// `promtool check metrics` (Prometheus' own linter, Debian's `prometheus` package, which
/// testbed/setup.sh installs) passes `text`: it parses, and every series is named and
/// described as Prometheus' conventions ask, but for the lint findings that start with one of
/// `allowed` (names another system fixed, that clients rely on).
pub fn promtool_check(text: &str, allowed: &[&str]) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package: run testbed/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = String::from_utf8_lossy(&out.stdout).to_string();
    // Exit code 3: lint findings only (the text parsed).
    let only_allowed = out.status.code() == Some(3)
        && findings
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| allowed.iter().any(|a| l.starts_with(a)));
    assert!(
        out.status.success() || only_allowed,
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `redis-server` of our own (no persistence) on a free loopback port; killed on drop.
pub struct RedisServer(std::process::Child, pub u16, std::path::PathBuf);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

pub fn redis_server() -> RedisServer {
    let port = free_tcp();
    let dir = std::env::temp_dir().join(format!("conveyor-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect(
            "redis-server (Debian: apt-get install redis-server; testbed/setup.sh installs it)",
        );
    let s = RedisServer(child, port, dir);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// `n` consecutive free UDP ports on loopback (the first one's number): a sharded group's
/// members on loopback, shard `s` of member `i` at `first + i + s * members`.
#[allow(dead_code)]
pub fn free_udp_block(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if u32::from(base) + u32::from(n) > 65_535 {
            continue;
        }
        let all: std::io::Result<Vec<_>> = (0..n)
            .map(|k| std::net::UdpSocket::bind(("127.0.0.1", base + k)))
            .collect();
        if all.is_ok() {
            return base;
        }
    }
    panic!("no {n} consecutive free UDP ports");
}
