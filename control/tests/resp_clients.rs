//! Conveyor's Redis protocol with clients no one here wrote: the Rust `redis` crate, Debian's
//! `redis-cli`, and `redis-py` (Debian's python3-redis). A group of three members (processes,
//! UDP on loopback), each serving RESP; a producer and three consumers share 10,000 entries,
//! each delivered and acknowledged once; a member killed mid-run loses nothing and its
//! consumers go on through another member.

mod common;

use redis::{Commands, Value as R};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "resp-token-0123456789";

struct Group {
    dir: PathBuf,
    members: Vec<Option<Child>>,
    /// Each member's RESP port.
    ports: Vec<u16>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for c in self.members.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Group {
    /// Three triggers serving RESP on loopback; the last one also wants `AUTH`.
    fn start(name: &str) -> Group {
        Group::start_as(name, ["role = \"trigger\""; 3])
    }

    /// Three members serving RESP, each with these lines for its role.
    fn start_as(name: &str, roles: [&str; 3]) -> Group {
        Group::start_with(name, roles, "")
    }

    /// Three members serving RESP, with `sections` after `[group]` (`[shards]`, say).
    fn start_with(name: &str, roles: [&str; 3], sections: &str) -> Group {
        let dir = std::env::temp_dir().join(format!("conveyor-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Consecutive ports: shard s of member i on base + 3s + i.
        let base = common::free_udp_block(9);
        let ports: Vec<u16> = (0..3).map(|_| common::free_tcp()).collect();
        let mut toml = String::from("[group]\nname = \"resp\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000023\"\nstartup_timeout_s = 30\nfailure_timeout_ms = 300\n");
        toml.push_str(sections);
        for i in 0..3 {
            toml.push_str(&format!(
                "\n[[member]]\nname = \"m{i}\"\naddress = \"127.0.0.1:{}\"\n{}\n[member.resp]\naddress = \"127.0.0.1:{}\"\n",
                base + i as u16,
                roles[i],
                ports[i]
            ));
            if i == 2 {
                toml.push_str(&format!("token = \"{TOKEN}\"\n"));
            }
        }
        std::fs::write(dir.join("group.toml"), toml).unwrap();
        let mut g = Group {
            dir,
            members: Vec::new(),
            ports,
        };
        for i in 0..3 {
            let log = std::fs::File::create(g.dir.join(format!("m{i}.log"))).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_conveyor"))
                .args(["node", "--config"])
                .arg(g.dir.join("group.toml"))
                .args(["--member", &format!("m{i}")])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            g.members.push(Some(child));
        }
        for i in 0..3 {
            let url = g.url(i);
            common::wait_for(&format!("m{i} answering PING"), 30, || {
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            });
        }
        g
    }

    fn url(&self, i: usize) -> String {
        if i == 2 {
            format!("redis://:{TOKEN}@127.0.0.1:{}/", self.ports[i])
        } else {
            format!("redis://127.0.0.1:{}/", self.ports[i])
        }
    }

    fn conn(&self, i: usize) -> redis::Connection {
        let c = redis::Client::open(self.url(i).as_str()).unwrap();
        c.get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default()
    }
}

/// The ids of an XREADGROUP reply (RESP2: [[key, [[id, fields]...]]...]; nil: none).
fn read_ids(v: &R) -> Vec<String> {
    let mut out = Vec::new();
    let R::Array(keys) = v else {
        return out;
    };
    for k in keys {
        let R::Array(kv) = k else { continue };
        let Some(R::Array(entries)) = kv.get(1) else {
            continue;
        };
        for e in entries {
            if let R::Array(p) = e {
                if let Some(R::BulkString(id)) = p.first() {
                    out.push(String::from_utf8_lossy(id).into_owned());
                }
            }
        }
    }
    out
}

/// Consumers `names` read group `g` of stream `s` through the members `via` (a consumer
/// whose member fails goes on through the next), acknowledging each batch, until every one of
/// `want` entries was delivered and the group has nothing pending (an entry leaves the pending
/// list only by an acknowledgement); returns (how many times each id was delivered, how many
/// acknowledgements counted for it). An acknowledgement whose reply was lost with a member
/// counts 0 when sent again: an entry may show none, never two.
fn consume(
    g: &Group,
    names: &[&str],
    via: &[usize],
    want: usize,
    slow: Duration,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let delivered = Mutex::new(BTreeMap::<String, usize>::new());
    let acked = Mutex::new(BTreeMap::<String, usize>::new());
    let done = AtomicBool::new(false);
    let urls: Vec<String> = (0..3).map(|i| g.url(i)).collect();
    let connect = |at: usize| {
        redis::Client::open(urls[at].as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
    };
    std::thread::scope(|sc| {
        for (k, name) in names.iter().enumerate() {
            let (delivered, acked, done, connect) = (&delivered, &acked, &done, &connect);
            let mut at = via[k];
            sc.spawn(move || {
                let mut conn = connect(at).unwrap();
                // What was read and not yet acknowledged (acknowledged after a reconnect).
                let mut unacked: Vec<String> = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let step = (|| -> redis::RedisResult<()> {
                        if unacked.is_empty() {
                            let v: R = redis::cmd("XREADGROUP")
                                .arg(&[
                                    "GROUP", "g", name, "COUNT", "25", "BLOCK", "300", "STREAMS",
                                    "s", ">",
                                ])
                                .query(&mut conn)?;
                            let ids = read_ids(&v);
                            let mut d = delivered.lock().unwrap();
                            for id in &ids {
                                *d.entry(id.clone()).or_default() += 1;
                            }
                            drop(d);
                            unacked = ids;
                            std::thread::sleep(slow);
                        }
                        if unacked.is_empty() {
                            return Ok(());
                        }
                        // One XACK per id, to tell which counted.
                        let mut p = redis::pipe();
                        for id in &unacked {
                            p.cmd("XACK").arg("s").arg("g").arg(id);
                        }
                        let counted: Vec<i64> = p.query(&mut conn)?;
                        let mut a = acked.lock().unwrap();
                        for (id, n) in unacked.iter().zip(counted) {
                            if n == 1 {
                                *a.entry(id.clone()).or_default() += 1;
                            }
                        }
                        unacked.clear();
                        Ok(())
                    })();
                    if step.is_err() {
                        // The member is gone: go on through the next one.
                        at = (at + 1) % 3;
                        std::thread::sleep(Duration::from_millis(100));
                        if let Ok(c) = connect(at) {
                            conn = c;
                        }
                    }
                }
            });
        }
        // Done once every entry was delivered and nothing is pending (asked of whichever
        // member answers).
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut at = 0;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let seen = delivered.lock().unwrap().len();
            if Instant::now() > deadline {
                done.store(true, Ordering::SeqCst);
                panic!("{seen} of {want} delivered, or some still pending, after 90 s");
            }
            if seen < want {
                continue;
            }
            let pending = connect(at)
                .and_then(|mut c| redis::cmd("XPENDING").arg(&["s", "g"]).query::<R>(&mut c));
            match pending {
                Ok(R::Array(summary)) if summary.first() == Some(&R::Int(0)) => break,
                Ok(_) => {}
                Err(_) => at = (at + 1) % 3,
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    let d = delivered.into_inner().unwrap();
    let a = acked.into_inner().unwrap();
    (d, a)
}

/// The Rust `redis` crate: a producer (pipelined XADD through one member) and three consumers
/// (one per member, one of them authenticating) share 10,000 entries: each delivered once and
/// acknowledged once, nothing pending at the end; replies the crate reads as it reads Redis's.
#[test]
fn three_consumers_share_ten_thousand_entries_through_the_redis_crate() {
    let g = Group::start("resp-share");
    let mut p = g.conn(0);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "$", "MKSTREAM"])
        .query(&mut p)
        .unwrap();
    // The member that wants AUTH refuses a client without it.
    let mut bare = redis::Client::open(format!("redis://127.0.0.1:{}/", g.ports[2]).as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let e = redis::cmd("XLEN")
        .arg("s")
        .query::<i64>(&mut bare)
        .unwrap_err();
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let n = 10_000usize;
    let producer = std::thread::spawn(move || {
        for chunk in 0..n / 100 {
            let mut pipe = redis::pipe();
            for i in 0..100 {
                pipe.cmd("XADD")
                    .arg("s")
                    .arg("*")
                    .arg("n")
                    .arg(chunk * 100 + i);
            }
            let ids: Vec<String> = pipe.query(&mut p).unwrap();
            assert_eq!(ids.len(), 100);
        }
        p
    });
    let (delivered, acked) = consume(&g, &["c0", "c1", "c2"], &[0, 1, 2], n, Duration::ZERO);
    let mut p = producer.join().unwrap();
    assert_eq!(delivered.len(), n, "every entry delivered");
    assert!(
        delivered.values().all(|&k| k == 1),
        "an entry delivered twice"
    );
    assert_eq!(acked.len(), n);
    assert!(acked.values().all(|&k| k == 1));
    let len: i64 = p.xlen("s").unwrap();
    assert_eq!(len, n as i64);
    let pending: R = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query(&mut p)
        .unwrap();
    let R::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(summary[0], R::Int(0), "nothing pending: {summary:?}");
    // The entries are in order, the same through every member.
    let first: Vec<(String, BTreeMap<String, i64>)> = {
        let r: redis::streams::StreamRangeReply = p.xrange_count("s", "-", "+", 5).unwrap();
        r.ids
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.map
                        .iter()
                        .map(|(k, v)| (k.clone(), redis::from_redis_value(v).unwrap()))
                        .collect(),
                )
            })
            .collect()
    };
    assert_eq!(first[0].1["n"], 0);
    assert_eq!(first[4].1["n"], 4);
    let mut other = g.conn(1);
    let r: redis::streams::StreamRangeReply = other.xrange_count("s", "-", "+", 5).unwrap();
    assert_eq!(
        r.ids.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        first.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
    );
    // redis-cli, the same group: RESP2 and RESP3, AUTH, pipelining of its own.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(args)
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let p0 = g.ports[0].to_string();
    assert_eq!(cli(&["-p", &p0, "XLEN", "s"]), "10000");
    assert_eq!(cli(&["-p", &p0, "TYPE", "s"]), "stream");
    assert_eq!(cli(&["-p", &p0, "XADD", "cli", "5-1", "k", "v"]), "5-1");
    assert_eq!(cli(&["-p", &p0, "XGROUP", "CREATE", "cli", "w", "0"]), "OK");
    let read = cli(&[
        "-3",
        "-p",
        &p0,
        "XREADGROUP",
        "GROUP",
        "w",
        "a",
        "STREAMS",
        "cli",
        ">",
    ]);
    assert!(read.contains("5-1") && read.contains("cli"), "{read}");
    let p2 = g.ports[2].to_string();
    let denied = cli(&["-p", &p2, "XLEN", "cli"]);
    assert!(denied.contains("NOAUTH"), "{denied}");
    let with = cli(&[
        "-p",
        &p2,
        "--no-auth-warning",
        "-a",
        TOKEN,
        "XPENDING",
        "cli",
        "w",
    ]);
    assert!(with.starts_with("1\n5-1\n5-1\na\n1"), "{with}");
    let err = cli(&["-p", &p0, "XADD", "cli", "1-1", "k", "v"]);
    assert!(err.contains("equal or smaller"), "{err}");
}

/// A member killed (SIGKILL) while consumers read through it: its consumers reconnect to
/// another member, the entries its consumers held go back to the group once the view drops
/// it, and every entry is acknowledged exactly once.
#[test]
fn a_killed_members_consumers_go_on_elsewhere_and_nothing_is_lost() {
    let mut g = Group::start("resp-kill");
    let n = 3000usize;
    let mut p = g.conn(0);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "0", "MKSTREAM"])
        .query(&mut p)
        .unwrap();
    for chunk in 0..n / 100 {
        let mut pipe = redis::pipe();
        for i in 0..100 {
            pipe.cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("n")
                .arg(chunk * 100 + i);
        }
        let _: Vec<String> = pipe.query(&mut p).unwrap();
    }
    let killed = Arc::new(AtomicBool::new(false));
    let victim = g.members[1].take().unwrap();
    let k = killed.clone();
    let killer = std::thread::spawn(move || {
        let mut victim = victim;
        std::thread::sleep(Duration::from_millis(500));
        victim.kill().unwrap();
        victim.wait().unwrap();
        k.store(true, Ordering::SeqCst);
    });
    // Two consumers read through member 1 (the one killed), one through member 0; slowly,
    // so that member 1's consumers hold entries when it dies.
    let (delivered, acked) = consume(
        &g,
        &["a", "b", "c"],
        &[1, 1, 0],
        n,
        Duration::from_millis(50),
    );
    killer.join().unwrap();
    assert!(killed.load(Ordering::SeqCst));
    // Nothing pending (consume waited for it) and every entry delivered: each was
    // acknowledged; none twice.
    assert_eq!(delivered.len(), n, "every entry delivered");
    assert!(
        acked.values().all(|&k| k == 1),
        "an entry acknowledged twice"
    );
    let lost_replies = n - acked.len();
    let again = delivered.values().filter(|&&k| k > 1).count();
    let mut c = g.conn(0);
    let pending: R = redis::cmd("XPENDING")
        .arg(&["s", "g"])
        .query(&mut c)
        .unwrap();
    let R::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(summary[0], R::Int(0), "nothing pending: {summary:?}");
    assert!(
        g.log(0).contains("view installed"),
        "the survivors installed a view without member 1"
    );
    eprintln!("{n} entries, each acknowledged once ({lost_replies} acknowledgements' replies died with member 1); {again} delivered again after member 1 died");
}

/// A Python interpreter with redis-py: PyPI's, in the venv `CONVEYOR_SETUP_PY=1 bash
/// testbed/setup.sh` makes (testbed/functions/requirements.txt), else a system one's.
fn python_with_redis() -> &'static str {
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/py-functions/bin/python"
    );
    for py in [venv, "python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import redis"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
    }
    panic!("redis-py is not installed (CONVEYOR_SETUP_PY=1 bash testbed/setup.sh installs PyPI's)");
}

/// redis-py: the same consumer-group script through its own methods (XPENDING in both forms,
/// XCLAIM with its options, XAUTOCLAIM, XINFO...) answers on Conveyor as on a real
/// redis-server, field by field; and its producer and three consumers share 10,000 entries,
/// each delivered and acknowledged once.
#[test]
fn redis_py_answers_as_on_redis_server_and_shares_ten_thousand_entries() {
    let g = Group::start("resp-py");
    let server = common::redis_server();
    let py = python_with_redis();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/redis_py_streams.py");
    let run = |args: &[String]| {
        let out = Command::new(py).arg(script).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "redis_py_streams.py {args:?}:\n{text}"
        );
        text
    };
    let version = Command::new(py)
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .unwrap();
    eprintln!(
        "redis-py {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let compared = run(&[
        "compare".into(),
        g.ports[0].to_string(),
        server.1.to_string(),
    ]);
    assert!(compared.contains(", 0 differ"), "{compared}");
    let shared = run(&["share".into(), g.ports[1].to_string(), "10000".into()]);
    eprint!("{compared}{shared}");
}

/// The bench's own Redis baseline, unchanged, through Conveyor's Redis protocol: pointed at a
/// member with `--redis-url`, and with `--backend resp` (a group the bench starts); DIFFUSE's
/// burst workload completes, nothing lost or doubled, each figure next to Conveyor's native
/// path in the same invocation.
#[test]
fn the_benchs_redis_baseline_runs_through_conveyors_redis_protocol() {
    let g = Group::start("resp-bench");
    let url = format!("redis://127.0.0.1:{}", g.ports[0]);
    let out = common::conveyor(&[
        "bench",
        "--backend",
        "redis",
        "--redis-url",
        &url,
        "--workload",
        "burst",
        "--requests",
        "500",
        "--chain",
        "2",
        "--json",
        "-",
    ]);
    let r = common::report(&out);
    assert_eq!(r["backend"], "redis");
    assert_eq!(
        (
            r["completed"].as_u64(),
            r["lost"].as_u64(),
            r["duplicates"].as_u64()
        ),
        (Some(500), Some(0), Some(0)),
        "{r}"
    );
    let out = common::conveyor(&[
        "bench",
        "--backend",
        "conveyor,resp",
        "--workload",
        "burst",
        "--requests",
        "500",
        "--chain",
        "2",
        "--json",
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = all.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(
            (
                r["completed"].as_u64(),
                r["lost"].as_u64(),
                r["duplicates"].as_u64()
            ),
            (Some(500), Some(0), Some(0)),
            "{r}"
        );
    }
    assert_eq!(runs[1]["backend"], "resp");
    // Refused by name: a URL that is not loopback, and --redis-url without redis.
    let bad = common::conveyor(&[
        "bench",
        "--backend",
        "redis",
        "--redis-url",
        "redis://10.1.2.3:6379",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a loopback address"));
    let bad = common::conveyor(&["bench", "--backend", "conveyor", "--redis-url", &url]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--redis-url: only with --backend redis"));
}

/// What redis-server's parser would refuse, sent to a member: each gets Redis's protocol error
/// and its connection closes; a request larger than the group's operations is refused before
/// its bytes are read; a frame cut short waits (and its connection closes with nothing
/// served); the member serves everyone else throughout, and nothing it holds grows.
#[test]
fn malformed_requests_get_an_error_and_the_member_keeps_serving() {
    use std::io::{Read, Write};
    let g = Group::start("resp-bad");
    let port = g.ports[0];
    let ask = |bytes: &[u8]| -> String {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(bytes);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n*1\r\n",
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // Larger than the group's max_payload (4096 by default): refused at its header.
        (
            b"*3\r\n$4\r\nXADD\r\n$1\r\ns\r\n$99999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"PING \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // Pipelined: the good request is answered, then the bad one closes the connection.
        (
            b"PING\r\n*1\r\n*1\r\n",
            "+PONG\r\n-ERR Protocol error: expected '$', got '*'\r\n",
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            ask(bytes),
            *want,
            "for {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Cut short: nothing is answered; the client gives up and the member goes on.
    {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"*2\r\n$4\r\nXLEN\r\n$10\r\nabc").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 64];
        assert!(c.read(&mut b).is_err(), "a cut request was answered");
    }
    // Many small arguments adding up to more than any operation of the group: refused once
    // the bytes pass the bound, not buffered for ever.
    let mut many = b"*200000\r\n".to_vec();
    many.extend(b"$4\r\nXADD\r\n".repeat(30_000));
    let got = ask(&many);
    assert!(
        got.starts_with("-ERR Protocol error: request of more than"),
        "{got}"
    );
    // Nested arrays thousands deep, and many connections at once sending garbage.
    let deep = "*1\r\n".repeat(10_000);
    assert!(ask(deep.as_bytes()).starts_with("-ERR Protocol error"));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                let junk: Vec<u8> = (0..4096u32).map(|k| ((k * 31 + i) % 251) as u8).collect();
                let _ = c.write_all(&junk);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = g.conn(0);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let id: String = redis::cmd("XADD")
        .arg(&["s", "1-1", "f", "v"])
        .query(&mut c)
        .unwrap();
    assert_eq!(id, "1-1");
    // The member's memory stayed put (RSS under 100 MiB after all that).
    let pid = g.members[0].as_ref().unwrap().id();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kib < 100 * 1024, "member RSS {rss_kib} KiB");
}

/// Invokers serve the Redis protocol too, whether their functions run inline in the polling
/// thread or in an application thread: a read blocked on one invoker is served by an XADD
/// through the other, and the group's pipelines still run beside it.
#[test]
fn invokers_serve_the_redis_protocol_too() {
    let g = Group::start_as(
        "resp-inv",
        [
            "role = \"trigger\"",
            "role = \"invoker\"",
            "role = \"invoker\"\nexecutor = \"thread\"",
        ],
    );
    let mut a = g.conn(1);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "$", "MKSTREAM"])
        .query(&mut a)
        .unwrap();
    let url = g.url(1);
    let reader = std::thread::spawn(move || {
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let t = Instant::now();
        let v: R = redis::cmd("XREADGROUP")
            .arg(&["GROUP", "g", "c", "BLOCK", "5000", "STREAMS", "s", ">"])
            .query(&mut c)
            .unwrap();
        (read_ids(&v), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut b = g.conn(2);
    let id: String = redis::cmd("XADD")
        .arg(&["s", "7-1", "f", "v"])
        .query(&mut b)
        .unwrap();
    assert_eq!(id, "7-1");
    let (ids, waited) = reader.join().unwrap();
    assert_eq!(ids, ["7-1"]);
    assert!(
        waited < Duration::from_secs(4),
        "served by the XADD, not by its timeout"
    );
    // A blocked read whose time is up gets nil, through the thread-executor invoker.
    let v: R = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "g", "d", "BLOCK", "200", "STREAMS", "s", ">"])
        .query(&mut b)
        .unwrap();
    assert_eq!(v, R::Nil);
}

/// redis-cli (Debian's), a producer and three consumers in one group: 10,000 entries added
/// through its standard input, then read in batches by three consumers (one redis-cli call
/// per batch, through three members) and acknowledged; each entry read once and acknowledged
/// once.
#[test]
fn redis_cli_producer_and_three_consumers_share_ten_thousand_entries() {
    use std::io::Write;
    let g = Group::start("resp-cli");
    let port = |i: usize| g.ports[i].to_string();
    let cli = |i: usize, args: &[&str]| -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-p", &port(i)]);
        if i == 2 {
            c.args(["--no-auth-warning", "-a", TOKEN]);
        }
        let out = c
            .args(args)
            .output()
            .expect("redis-cli (Debian: apt-get install redis-tools)");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        cli(0, &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).trim(),
        "OK"
    );
    let n = 10_000;
    let mut producer = Command::new("redis-cli")
        .args(["-p", &port(0)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: redis-cli answers as it reads, and its replies must be read
    // meanwhile (a full pipe would stop both).
    let mut stdin = producer.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut lines = String::new();
        for i in 0..n {
            lines.push_str(&format!("XADD s * n {i}\n"));
        }
        stdin.write_all(lines.as_bytes()).unwrap();
    });
    let out = producer.wait_with_output().unwrap();
    writer.join().unwrap();
    let added = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| is_id(l))
        .count();
    assert_eq!(added, n, "entries added");
    let read = Mutex::new(BTreeMap::<String, usize>::new());
    let acked = Mutex::new(0usize);
    std::thread::scope(|sc| {
        for k in 0..3usize {
            let (read, acked, cli) = (&read, &acked, &cli);
            sc.spawn(move || {
                let name = format!("c{k}");
                loop {
                    let got = cli(
                        k,
                        &[
                            "XREADGROUP",
                            "GROUP",
                            "g",
                            &name,
                            "COUNT",
                            "200",
                            "STREAMS",
                            "s",
                            ">",
                        ],
                    );
                    let ids: Vec<String> = got
                        .lines()
                        .filter(|l| is_id(l))
                        .map(str::to_string)
                        .collect();
                    if ids.is_empty() {
                        return;
                    }
                    let mut r = read.lock().unwrap();
                    for id in &ids {
                        *r.entry(id.clone()).or_default() += 1;
                    }
                    drop(r);
                    let mut args = vec!["XACK", "s", "g"];
                    args.extend(ids.iter().map(String::as_str));
                    let counted: usize = cli(k, &args).trim().parse().unwrap();
                    *acked.lock().unwrap() += counted;
                }
            });
        }
    });
    let read = read.into_inner().unwrap();
    assert_eq!(read.len(), n, "every entry read");
    assert!(read.values().all(|&k| k == 1), "an entry read twice");
    assert_eq!(
        acked.into_inner().unwrap(),
        n,
        "every entry acknowledged once"
    );
    assert!(cli(1, &["XPENDING", "s", "g"]).starts_with("0\n"));
}

/// A stream entry id as redis-cli prints it: `<ms>-<seq>`.
fn is_id(l: &str) -> bool {
    l.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    })
}

/// HELLO answers in the protocol version it chooses, as Redis does (redis-py 8 starts every
/// connection with `HELLO 3` and reads a map).
#[test]
fn hello_answers_in_the_version_it_chooses() {
    use std::io::{Read, Write};
    let g = Group::start("resp-hello");
    let ask = |bytes: &[u8]| -> String {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.ports[0])).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let three = ask(b"HELLO 3\r\nQUIT\r\n");
    assert!(three.starts_with("%7\r\n"), "{three:?}");
    assert!(three.contains("$5\r\nproto\r\n:3\r\n"), "{three:?}");
    let two = ask(b"HELLO 3\r\nHELLO 2\r\nQUIT\r\n");
    let second = &two[two.find("*14\r\n").expect("HELLO 2's flat array")..];
    assert!(second.contains("$5\r\nproto\r\n:2\r\n"), "{two:?}");
    assert!(two.ends_with("+OK\r\n"), "{two:?}");
}

/// A sharded deployment (two shards) serving the Redis protocol from every member: stream `s`
/// is placed on shard 1 and `t` on shard 0, so a command is ordered in the shard owning its
/// stream. A producer and three consumers (one per member) share 3000 entries of `s`, each
/// delivered once and acknowledged once; a blocked read on `s` is served by an `XADD` through
/// another member; a read of `s` and `t` together is refused as Redis Cluster refuses it.
#[test]
fn a_sharded_deployment_serves_each_stream_from_its_shard() {
    let metrics = format!("127.0.0.1:{}", common::free_tcp());
    let m0 = format!("role = \"trigger\"\nmetrics_address = \"{metrics}\"");
    let g = Group::start_with(
        "resp-shards",
        [m0.as_str(), "role = \"trigger\"", "role = \"trigger\""],
        "\n[shards]\ncount = 2\nport_stride = 3\n[shards.place]\n\"s\" = 1\n\"t\" = 0\n",
    );
    let mut p = g.conn(0);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "s", "g", "$", "MKSTREAM"])
        .query(&mut p)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&["t", "*", "f", "v"])
        .query(&mut p)
        .unwrap();
    // Streams in two shards: one command cannot span them.
    let cross = redis::cmd("XREAD")
        .arg(&["STREAMS", "s", "t", "0", "0"])
        .query::<R>(&mut p)
        .unwrap_err();
    // The crate reads it as Redis Cluster's own error.
    assert!(cross.to_string().contains("CrossSlot"), "{cross}");
    let del = redis::cmd("DEL")
        .arg(&["s", "t"])
        .query::<R>(&mut p)
        .unwrap_err();
    assert!(del.to_string().contains("CrossSlot"), "{del}");
    // A read blocked in shard 1 through m1, served by an XADD through m2.
    let blocked = std::thread::spawn({
        let mut c = g.conn(1);
        move || -> R {
            redis::cmd("XREAD")
                .arg(&["BLOCK", "10000", "STREAMS", "s", "$"])
                .query(&mut c)
                .unwrap()
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut m2 = g.conn(2);
    let first: String = redis::cmd("XADD")
        .arg(&["s", "*", "n", "first"])
        .query(&mut m2)
        .unwrap();
    let got = blocked.join().unwrap();
    assert_eq!(read_ids(&got), vec![first.clone()], "{got:?}");
    // 3000 entries more, pipelined through m0; three consumers share them.
    for chunk in 0..30 {
        let mut pipe = redis::pipe();
        for k in 0..100 {
            pipe.cmd("XADD")
                .arg("s")
                .arg("*")
                .arg("n")
                .arg(chunk * 100 + k);
        }
        let _: Vec<String> = pipe.query(&mut p).unwrap();
    }
    let (delivered, acked) = consume(&g, &["c0", "c1", "c2"], &[0, 1, 2], 3001, Duration::ZERO);
    assert_eq!(delivered.len(), 3001);
    assert!(
        delivered.values().all(|n| *n == 1),
        "an entry delivered twice"
    );
    assert!(
        acked.values().all(|n| *n == 1),
        "an entry acknowledged twice"
    );
    for i in 0..3 {
        let mut c = g.conn(i);
        assert_eq!(
            redis::cmd("XLEN").arg("s").query::<i64>(&mut c).unwrap(),
            3001
        );
        assert_eq!(redis::cmd("XLEN").arg("t").query::<i64>(&mut c).unwrap(), 1);
    }
    // Ordered where placed: shard 1 (stream s) delivered the 3001 XADDs, the reads and the
    // acknowledgements; shard 0 (stream t) little beyond its start.
    let (ok, text) = common::curl(&["-s", &format!("http://{metrics}/metrics")]);
    assert!(ok, "{text}");
    let delivered = |shard: &str| -> u64 {
        let label = format!("shard=\"{shard}\"");
        text.lines()
            .find(|l| l.starts_with("conveyor_delivered_total{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no delivered count for shard {shard}: {text}"))
    };
    let (d0, d1) = (delivered("0"), delivered("1"));
    assert!(
        d1 > 3001 && d0 < 500,
        "shard 0 delivered {d0}, shard 1 {d1}"
    );
}
