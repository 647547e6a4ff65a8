//! Compiles the XDP programs with clang for the BPF target and generates their libbpf-rs
//! skeletons (libbpf-cargo). Needs clang and the kernel's UAPI headers (Debian: clang,
//! linux-libc-dev); `testbed/setup.sh` installs them.

use libbpf_cargo::SkeletonBuilder;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let src = "src/bpf/conveyor.bpf.c";
    // Debian keeps <asm/types.h>, which the UAPI headers include, under the multiarch path.
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    if let Err(e) = SkeletonBuilder::new()
        .source(src)
        .clang_args(["-Wall", "-O2", &format!("-I/usr/include/{arch}")])
        .build_and_generate(out.join("conveyor.skel.rs"))
    {
        panic!(
            "building {src} failed (is clang installed? bash testbed/setup.sh installs it): {e:#}"
        );
    }
    println!("cargo:rerun-if-changed={src}");
}
