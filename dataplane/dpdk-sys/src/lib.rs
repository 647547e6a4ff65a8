//! Raw bindings to the system's DPDK (22.11 through pkg-config) and Conveyor's C shim over its
//! `static inline` fast path. Only the calls Conveyor uses are bound (an allowlist): DPDK's
//! structs stay on the C side, Rust sees scalars and opaque `rte_mbuf` / `rte_mempool`
//! pointers. The safe layer is `conveyor_dataplane::transport::dpdk`.
#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    missing_debug_implementations
)]
// Generated code.
#![allow(clippy::all)]

/// A packet buffer; its layout is DPDK's business (the shim reads it).
#[repr(C)]
pub struct rte_mbuf {
    _opaque: [u8; 0],
    _pinned: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// A pool of packet buffers; opaque.
#[repr(C)]
pub struct rte_mempool {
    _opaque: [u8; 0],
    _pinned: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
