//! Binds the system's DPDK (found through pkg-config, `libdpdk-dev` on Debian) and compiles the
//! C shim that wraps its `static inline` fast path.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(l) => l,
        Err(e) => panic!(
            "DPDK 22.11 or later was not found through pkg-config ({e}). On Debian 12: apt-get install libdpdk-dev dpdk-dev (testbed/setup.sh installs it)"
        ),
    };
    // The ring PMD's rte_eth_from_rings (test links) is a driver library, not in libdpdk.pc's
    // list; the other PMDs are plugins that the EAL loads at start.
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");

    // pkg-config's Cflags carry `-include rte_config.h` and `-march`, which the headers need.
    let cflags = pkg_config::get_variable("libdpdk", "cflags").ok();
    let cflags: Vec<String> = match cflags {
        Some(c) if !c.is_empty() => c.split_whitespace().map(String::from).collect(),
        _ => {
            let out = std::process::Command::new("pkg-config")
                .args(["--cflags", "libdpdk"])
                .output()
                .expect("pkg-config --cflags libdpdk");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        }
    };

    let mut build = cc::Build::new();
    build.file("shim/shim.c").warnings(false);
    for f in &cflags {
        build.flag(f);
    }
    for p in &dpdk.include_paths {
        build.include(p);
    }
    build.compile("conveyor_dpdk_shim");

    let mut b = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(cflags.iter())
        .clang_args(
            dpdk.include_paths
                .iter()
                .map(|p| format!("-I{}", p.display())),
        )
        .allowlist_function("cv_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_is_valid_port")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_mempool_free")
        .allowlist_type("cv_port_info")
        .allowlist_var("CV_STAT_.*")
        .allowlist_var("CV_STATS")
        .allowlist_var("RTE_MAX_ETHPORTS")
        // Opaque on the Rust side (declared in lib.rs): only the shim looks inside.
        .blocklist_type("rte_mbuf.*")
        .blocklist_type("rte_mempool.*")
        .layout_tests(false)
        .derive_debug(true)
        .derive_default(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    if let Ok(target) = env::var("TARGET") {
        b = b.clang_arg(format!("--target={target}"));
    }
    let bindings = b
        .generate()
        .expect("bindgen over shim/shim.h (needs libclang: apt-get install libclang-dev)");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("writing the bindings");
}
