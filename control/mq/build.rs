//! Generates the C client library's header, `conveyor_mq.h`, from `src/ffi.rs` with cbindgen,
//! into `$OUT_DIR/include` and `target/<profile>/include` (next to `libconveyor.so`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))
        .expect("control/mq/cbindgen.toml parses");
    // Only the FFI module: the rest of the crate is Rust's business.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen generates conveyor_mq.h");
    let include = out.join("include");
    std::fs::create_dir_all(&include).expect("OUT_DIR is writable");
    bindings.write_to_file(include.join("conveyor_mq.h"));
    // target/<profile>/build/conveyor-mq-HASH/out -> target/<profile>/include
    if let Some(profile) = out.ancestors().nth(3) {
        let public = profile.join("include");
        if std::fs::create_dir_all(&public).is_ok() {
            bindings.write_to_file(public.join("conveyor_mq.h"));
        }
    }
}
