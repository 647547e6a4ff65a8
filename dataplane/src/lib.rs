//! Conveyor's dataplane: everything that moves frames and runs the protocol core
//! (`conveyor-core`) for real.
//!
//! - [`transport`]: the batch-oriented `Transport` trait, one folder per medium (`udp`, `shm`,
//!   `afxdp`, `dpdk`, `rdma`, each with its unsafe code in a `sys` module), wrappers over any
//!   transport (`impair`, the XDP member filter), and the factory that opens one from its
//!   spec;
//! - [`engine`]: the pinned polling thread driving a `conveyor_core::Replica` over a
//!   transport, with lock-free rings to application threads and a configurable idle policy;
//! - [`invoker`]: the invoker role: takes requests, runs functions, pushes continuations;
//! - [`durable`]: a member's data directory: the log of delivered operations (group commit,
//!   torn tails cut, corruption refused by file and offset) and its snapshots;
//! - [`sys`]: the engine's system calls (eventfd, poll, timer slack, CPU clocks).
//!
//! Unsafe code lives only in `sys` and in each medium's `sys` module (and the verbs binding),
//! each block with a `// SAFETY:` comment; everything above them is safe Rust.
//!
//! What this crate does not do: decide anything of the protocol (that is `conveyor-core`),
//! parse TOML, or own processes (the `conveyor` binary in `control/`).

pub mod durable;
pub mod engine;
pub mod invoker;
pub mod shard;
pub mod sys;
pub mod transport;
