//! `conveyor node` stopped by a signal (`systemctl stop`, Ctrl-C): the member leaves the group
//! gracefully, the others install a view that says it left (not failed), it prints its
//! statistics and exits 0; the last member, alone, stops at once.

mod common;
use common::{curl, free_tcp, wait_for};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Procs(Vec<(String, Child)>);
impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    fn pid(&self, name: &str) -> u32 {
        self.0.iter().find(|(n, _)| n == name).unwrap().1.id()
    }
    /// Sends `signal` to member `name` and waits for it to end; returns its exit code.
    fn stop(&mut self, name: &str, signal: &str) -> Option<i32> {
        let pid = self.pid(name).to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        self.wait(name)
    }
    /// Waits for member `name` to end; returns its exit code.
    fn wait(&mut self, name: &str) -> Option<i32> {
        let c = &mut self.0.iter_mut().find(|(n, _)| n == name).unwrap().1;
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} still runs 20 s later"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The log without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn free_udp_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect()
}

#[test]
fn a_signalled_member_leaves_the_group_and_exits_cleanly() {
    let dir = std::env::temp_dir().join(format!("conveyor-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("p.json"),
        r#"{"name":"p","entry":"a","steps":{"a":{"function":"echo"}}}"#,
    )
    .unwrap();
    // A function that takes 1.5 s (a process per call), to be in flight at the stop.
    std::fs::write(
        dir.join("slow.json"),
        r#"{"name":"slow","entry":"a","steps":{"a":{"function":"slow","executor":
            {"kind":"exec","command":["sh","-c","sleep 1.5; cat"],"timeout_ms":5000}}}}"#,
    )
    .unwrap();
    let ports = free_udp_ports(3);
    let gw = free_tcp();
    let mut toml = "[group]\nname = \"g\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000007\"\npipelines = [\"p.json\", \"slow.json\"]\nstartup_timeout_s = 20\n".to_string();
    for (i, (name, role)) in [
        ("trigger", "trigger"),
        ("invoker-0", "invoker"),
        ("invoker-1", "invoker"),
    ]
    .iter()
    .enumerate()
    {
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\nrole = \"{role}\"\n",
            ports[i]
        ));
        if *role == "trigger" {
            toml.push_str(&format!("[member.gateway]\naddress = \"127.0.0.1:{gw}\"\n"));
        }
    }
    let cfg = dir.join("group.toml");
    std::fs::write(&cfg, toml).unwrap();
    let log = |name: &str| dir.join(format!("{name}.log"));
    // invoker-1 tells its "service manager" (this test, as systemd would with Type=notify)
    // when it serves and when it stops.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut procs = Procs(Vec::new());
    for name in ["invoker-0", "invoker-1", "trigger"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conveyor"));
        if name == "invoker-1" {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        }
        let child = cmd
            .args(["node", "--config", cfg.to_str().unwrap(), "--member", name])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log(name)).unwrap())
            .spawn()
            .unwrap();
        procs.0.push((name.to_string(), child));
    }
    let url = format!("http://127.0.0.1:{gw}/function/p");
    wait_for("the gateway to answer", 20, || {
        curl(&["-s", "-f", "-d", "x", &url]).0
    });
    let read = |name: &str| strip_ansi(&std::fs::read_to_string(log(name)).unwrap_or_default());

    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from invoker-1");
    assert_eq!(&buf[..n], b"READY=1");

    // SIGTERM to an invoker: it leaves (the others' view says so), prints its statistics, 0.
    assert_eq!(
        procs.stop("invoker-1", "-TERM"),
        Some(0),
        "{}",
        read("invoker-1")
    );
    let n = notify.recv(&mut buf).expect("STOPPING=1 from invoker-1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let gone = read("invoker-1");
    assert!(gone.contains("leaving the group"), "{gone}");
    assert!(gone.contains("left the group at its request"), "{gone}");
    assert!(gone.contains("executed"), "no statistics: {gone}");
    wait_for("the survivors' view without invoker-1", 10, || {
        read("trigger").lines().any(|l| {
            l.contains("view installed") && l.contains("left=invoker-1") && l.contains("failed= ")
        })
    });
    // The group goes on with the other invoker.
    for i in 0..20 {
        let (ok, body) = curl(&["-s", "-f", "-d", &format!("call {i}"), &url]);
        assert!(ok, "call {i} after the leave: {body}");
        assert_eq!(body, format!("call {i}"));
    }

    // SIGINT to the trigger (Ctrl-C) while a call is in flight: the gateway refuses new calls
    // (503), lets that one finish, then the member leaves; its gateway stops with it.
    let slow_url = format!("http://127.0.0.1:{gw}/function/slow");
    let in_flight = {
        let u = slow_url.clone();
        std::thread::spawn(move || curl(&["-s", "-w", " %{http_code}", "-d", "late", &u]))
    };
    std::thread::sleep(Duration::from_millis(400));
    let pid = procs.pid("trigger").to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    let (_, refused) = curl(&["-s", "-w", " %{http_code}", "-d", "new", &url]);
    assert!(refused.ends_with(" 503"), "{refused}");
    assert!(refused.contains("is stopping"), "{refused}");
    let (_, done) = in_flight.join().unwrap();
    assert_eq!(done, "late 200", "the call in flight at the stop");
    assert_eq!(procs.wait("trigger"), Some(0), "{}", read("trigger"));
    assert!(read("trigger").contains("left the group at its request"));
    assert!(!curl(&["-s", "-f", "-m", "2", "-d", "x", &url]).0);
    wait_for("invoker-0's view without the trigger", 10, || {
        read("invoker-0")
            .lines()
            .any(|l| l.contains("view installed") && l.contains("left=trigger"))
    });

    // The last member, alone, has no group to leave: it stops at once, cleanly.
    let start = Instant::now();
    assert_eq!(
        procs.stop("invoker-0", "-TERM"),
        Some(0),
        "{}",
        read("invoker-0")
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let last = read("invoker-0");
    assert!(last.contains("alone in its view"), "{last}");
    assert!(last.contains("executed"), "no statistics: {last}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A group file that cannot be used is a configuration error (`EX_CONFIG`, 78: the systemd
/// unit does not restart on it); a member that fails later exits 1.
#[test]
fn a_bad_group_file_exits_78_and_names_the_problem() {
    let dir = std::env::temp_dir().join(format!("conveyor-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = |cfg: &std::path::Path, member: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
            .args([
                "node",
                "--config",
                cfg.to_str().unwrap(),
                "--member",
                member,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = node(&dir.join("missing.toml"), "a");
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
    let cfg = dir.join("g.toml");
    std::fs::write(
        &cfg,
        "[group]\nname = \"g\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000008\"\n\n[[member]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nrole = \"invoker\"\n",
    )
    .unwrap();
    let (code, err) = node(&cfg, "nobody");
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("nobody"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
