//! `--transport rdma` on a machine without an RDMA device says so and what to check; the
//! `[member.rdma]` table is checked like the rest of the group file. (The transport's logic runs
//! over the verbs emulation in the dataplane's tests.)

mod common;

use std::process::Command;

const KEY: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

fn write(dir: &std::path::Path, name: &str, transport: &str, rdma: &str) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[group]\nname = \"r\"\nkey = \"{KEY}\"\ntransport = \"{transport}\"\nstartup_timeout_s = 2\n\n[[member]]\nname = \"a\"\naddress = \"127.0.0.1:17400\"\nrole = \"invoker\"\n{rdma}\n\n[[member]]\nname = \"b\"\naddress = \"127.0.0.1:17401\"\nrole = \"invoker\"\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn node(cfg: &str) -> String {
    common::node_fails(cfg, &[])
}

#[test]
fn rdma_without_a_device_says_so_and_what_to_check() {
    if std::path::Path::new("/dev/infiniband").exists() {
        eprintln!(
            "NOT RUN: this machine has RDMA devices (/dev/infiniband); the test is for one without"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("conveyor-rdma-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = node(&write(&dir, "plain.toml", "rdma", ""));
    assert!(
        err.contains("member[0].rdma")
            && err.contains("no usable RDMA device")
            && err.contains("ibv_devices")
            && err.contains("mlx5_ib"),
        "{err}"
    );
    // A named device is looked for by name (the list itself fails first here).
    let err = node(&write(
        &dir,
        "named.toml",
        "rdma",
        "[member.rdma]\ndevice = \"mlx5_0\"\ngid_index = 3",
    ));
    assert!(err.contains("no usable RDMA device"), "{err}");
    // The table is checked: port numbers start at 1, and it belongs to the rdma transport.
    let err = node(&write(&dir, "port.toml", "rdma", "[member.rdma]\nport = 0"));
    assert!(err.contains("member[0].rdma.port"), "{err}");
    let err = node(&write(&dir, "udp.toml", "udp", "[member.rdma]\nport = 1"));
    assert!(
        err.contains("member[0].rdma: is for the rdma transport"),
        "{err}"
    );
    // The bench refuses the same way, through the member that could not start.
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args(["bench", "--transport", "rdma", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no usable RDMA device"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
