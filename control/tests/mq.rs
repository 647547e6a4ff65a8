//! The C client library (`libconveyor.so`, `conveyor_mq.h`) from a C program
//! (`tests/c/mq_test.c`), with real processes: groups of a `conveyor node` member and C
//! processes, each a member through the library. One runs every call and errno on its own
//! queues (ETIMEDOUT of a timed receive included); one produces 200 messages into an 8-message
//! queue (it blocks while full); two compete to receive them: each message exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Compiles the C test program against the header and the library of this build.
fn compile(dir: &Path) -> PathBuf {
    let lib = Path::new(env!("CARGO_BIN_EXE_conveyor")).parent().unwrap();
    // The library and its header are the conveyor-mq crate's (`cargo build -p conveyor-mq`,
    // which testbed/test.sh runs before the tests): built beside the binary.
    assert!(
        lib.join("libconveyor.so").exists() && lib.join("include/conveyor_mq.h").exists(),
        "no libconveyor.so or include/conveyor_mq.h in {}: run `cargo build -p conveyor-mq` before the tests (testbed/test.sh does)",
        lib.display()
    );
    let exe = dir.join("mq_test");
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/mq_test.c"))
        .arg(format!("-I{}", lib.join("include").display()))
        .arg(format!("-L{}", lib.display()))
        .arg("-lconveyor")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("cc is installed (testbed/setup.sh)");
    assert!(
        out.status.success(),
        "compiling mq_test.c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn wait(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts a group of a `conveyor node` member and one C process per `(member, args)`; waits
/// for each C process to exit successfully, and returns the directory of their outputs.
fn run_group(tag: &str, exe: &Path, dir: &Path, c: &[(&str, &[&str])]) {
    run_sharded_group(tag, exe, dir, c, 1)
}

/// [`run_group`] with `shards` shards (every process a member of each).
fn run_sharded_group(tag: &str, exe: &Path, dir: &Path, c: &[(&str, &[&str])], shards: u16) {
    let members = c.len() as u16 + 1;
    let base = common::free_udp_block(members * shards);
    let mut toml = format!(
        "[group]\nname = \"{tag}\"\nkey = \"00000000000000000000000000000000000000000000000000000000000000dd\"\nstartup_timeout_s = 30\n"
    );
    if shards > 1 {
        toml.push_str(&format!(
            "\n[shards]\ncount = {shards}\nport_stride = {members}\nplace = {{ \"work\" = {} }}\n",
            shards - 1
        ));
    }
    let names: Vec<&str> = std::iter::once("peer")
        .chain(c.iter().map(|x| x.0))
        .collect();
    for (i, n) in names.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[member]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n",
            base + i as u16
        ));
    }
    let cfg = dir.join(format!("{tag}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let log = |n: &str| std::fs::File::create(dir.join(format!("{n}.err"))).unwrap();
    let mut procs = Kill(vec![Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["node", "--config"])
        .arg(&cfg)
        .args(["--member", "peer"])
        .stdout(Stdio::null())
        .stderr(log(&format!("{tag}-peer")))
        .spawn()
        .unwrap()]);
    for (member, args) in c {
        procs.0.push(
            Command::new(exe)
                .args(*args)
                .env("CONVEYOR_CONFIG", &cfg)
                .env("CONVEYOR_MEMBER", member)
                .stdout(std::fs::File::create(dir.join(format!("{member}.out"))).unwrap())
                .stderr(log(member))
                .spawn()
                .unwrap(),
        );
    }
    for (i, (member, _)) in c.iter().enumerate() {
        let status = wait(&mut procs.0[i + 1], Duration::from_secs(90));
        assert!(
            status.is_some_and(|s| s.success()),
            "{member}: {status:?}\n{}",
            std::fs::read_to_string(dir.join(format!("{member}.err"))).unwrap_or_default()
        );
    }
}

#[test]
fn a_c_program_sends_and_receives_through_the_library() {
    let dir = std::env::temp_dir().join(format!("conveyor-mq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = compile(&dir);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    // Every call and errno, one process and the peer.
    run_group("calls", &exe, &dir, &[("basic", &["basic"])]);
    assert_eq!(read("basic.out").trim(), "basic ok");
    // A producer and two competing receivers. (Separate groups: members that exit leave a
    // group without its majority when too many go.)
    run_group(
        "work",
        &exe,
        &dir,
        &[
            ("producer", &["produce", "200"]),
            ("consumer-a", &["consume"]),
            ("consumer-b", &["consume"]),
        ],
    );
    assert_eq!(read("producer.out").trim(), "produced 200");
    // Every message exactly once, between the two receivers.
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for c in ["consumer-a", "consumer-b"] {
        for line in read(&format!("{c}.out")).lines() {
            total += 1;
            assert!(seen.insert(line.to_string()), "{line} received twice");
        }
    }
    let want: BTreeSet<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    assert_eq!(total, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same producer and receivers in a sharded group of three shards: each C process is a
/// member of every shard, and the library pushes to and asks of the shard owning the queue
/// (shard 2: placed there by the group file). Each message exactly once.
#[test]
fn the_library_routes_to_the_shard_owning_the_queue() {
    let dir = std::env::temp_dir().join(format!("conveyor-mq-sh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = compile(&dir);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    run_sharded_group(
        "swork",
        &exe,
        &dir,
        &[
            ("producer", &["produce", "200"]),
            ("consumer-a", &["consume"]),
            ("consumer-b", &["consume"]),
        ],
        3,
    );
    assert_eq!(read("producer.out").trim(), "produced 200");
    let mut seen = BTreeSet::new();
    for c in ["consumer-a", "consumer-b"] {
        for line in read(&format!("{c}.out")).lines() {
            assert!(seen.insert(line.to_string()), "{line} received twice");
        }
    }
    let want: BTreeSet<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    let _ = std::fs::remove_dir_all(&dir);
}
