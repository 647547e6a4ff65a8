//! The `dpdk` transport's set-ups that cannot start: each says why and what to do, before the
//! member joins anything, and none falls back to another transport. (The bench and the demo
//! over DPDK are in netns.rs; the transport's framing and ARP are unit tests over ring ports.)

mod common;

use common::require_root;
use std::process::Command;

const KEY: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

/// A two-member dpdk group file whose first member's `[member.dpdk]` table is `dpdk`.
fn write(dir: &std::path::Path, name: &str, dpdk: &str, max_frame: usize) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[group]\nname = \"bad\"\nkey = \"{KEY}\"\ntransport = \"dpdk\"\nmax_frame = {max_frame}\nmax_payload = 512\nstartup_timeout_s = 2\n\n[[member]]\nname = \"a\"\naddress = \"10.78.0.1:7400\"\nrole = \"invoker\"\n{dpdk}\n\n[[member]]\nname = \"b\"\naddress = \"10.78.0.2:7400\"\nrole = \"invoker\"\n[member.dpdk]\nvdevs = [\"net_af_packet0,iface=eth0\"]\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

use common::node_fails as node;

#[test]
fn dpdk_setups_that_cannot_start_say_what_to_do() {
    let dir = std::env::temp_dir().join(format!("conveyor-dpdk-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The configuration: a member without its port, a device list that names nothing, a frame
    // that does not fit an mbuf. Named by field, before anything starts.
    let err = node(&write(&dir, "none.toml", "", 1400), &[]);
    assert!(
        err.contains("member[0].dpdk") && err.contains("allow"),
        "{err}"
    );
    let err = node(
        &write(&dir, "empty.toml", "[member.dpdk]\nhugepages = false", 1400),
        &[],
    );
    assert!(err.contains("member[0].dpdk: names no device"), "{err}");
    let err = node(
        &write(
            &dir,
            "big.toml",
            "[member.dpdk]\nvdevs = [\"net_af_packet0,iface=eth0\"]",
            4000,
        ),
        &[],
    );
    assert!(
        err.contains("group.max_frame") && err.contains("at most 2006"),
        "{err}"
    );
    // No hugepages: more than the host has free. Said before the EAL starts.
    let err = node(
        &write(
            &dir,
            "huge.toml",
            "[member.dpdk]\nvdevs = [\"net_af_packet0,iface=lo\"]\nhugepages = true\nmemory_mb = 4000000",
            1400,
        ),
        &[],
    );
    assert!(
        err.contains("hugepages")
            && err.contains("nr_hugepages")
            && err.contains("hugepages = false"),
        "{err}"
    );
    // A virtual device on an interface that does not exist.
    let err = node(
        &write(
            &dir,
            "noif.toml",
            "[member.dpdk]\nvdevs = [\"net_af_packet0,iface=nope0\"]\nhugepages = false\nmemory_mb = 128",
            1400,
        ),
        &[],
    );
    assert!(
        err.contains("DPDK could not open any configured device")
            && err.contains("there is no interface \"nope0\""),
        "{err}"
    );
    // A ConnectX port that is not there: the PCI address names nothing on this machine.
    let err = node(
        &write(
            &dir,
            "pci.toml",
            "[member.dpdk]\nallow = [\"0000:3b:00.0\"]\nhugepages = false\nmemory_mb = 128",
            1400,
        ),
        &[],
    );
    assert!(err.contains("mlx5_core"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without CAP_NET_RAW, af_packet's port cannot open: said with what to do (as root, the
/// capability is dropped for the child).
#[test]
#[ignore = "needs root"]
fn dpdk_without_cap_net_raw_says_so() {
    require_root();
    let dir = std::env::temp_dir().join(format!("conveyor-dpdk-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cfg = write(
        &dir,
        "perm.toml",
        "[member.dpdk]\nvdevs = [\"net_af_packet0,iface=lo\"]\nhugepages = false\nmemory_mb = 128",
        1400,
    );
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let err = node(
        &cfg,
        &[
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
    );
    assert!(err.contains("af_packet needs CAP_NET_RAW"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--transport dpdk` runs on namespace hosts (or a testbed's ports), never on loopback.
#[test]
fn bench_over_dpdk_needs_namespace_hosts() {
    let out = Command::new(env!("CARGO_BIN_EXE_conveyor"))
        .args([
            "bench",
            "--transport",
            "dpdk",
            "--hosts",
            "local",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--transport dpdk needs --hosts netns"),
        "{err}"
    );
}
