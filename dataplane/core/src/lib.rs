//! Conveyor's protocol core: everything a member decides, with nothing it does.
//!
//! Layers, each depending only on those above it:
//! - [`types`]: protocol newtypes and the core's own time type;
//! - [`wire`]: frame formats, parse/emit, MAC; no state;
//! - [`proto`]: the sans-IO total-order multicast, a folder of parts (ordering, transmission,
//!   the view change and state transfer) composed by [`proto::Member`];
//! - [`queue`]: the replicated function-request queue state machine;
//! - [`pipeline`]: association rules (JSON) and the built-in functions' outputs;
//! - [`replica`]: [`Replica`], the member and the queue it applies the order to: the one node
//!   that the engine and the simulator both drive;
//! - [`durable`]: the on-disk formats of durable queues' logs and snapshots (no I/O);
//! - [`shard`]: the shard map (which group owns which queue) and the outbox and inbox that
//!   carry continuations between shards exactly once;
//! - [`streams`]: Redis Streams with consumer groups, run by every replica in the group's
//!   order (the RESP server's commands, as [`queue::Op::Redis`]).
//!
//! What this crate does not do, and what enforces it: no unsafe code (`forbid(unsafe_code)`);
//! no clock, no sleeping, no threads, no randomness (time comes in as [`types::Instant`], and
//! `clippy.toml` bans `Instant::now`, `SystemTime::now`, `thread::sleep`, `thread::spawn` and
//! thread RNGs); no hash maps whose iteration order could differ between replicas; no sockets,
//! no transport, no libc (CI checks with `cargo tree` that none of dpdk-sys, rdma-sys, libbpf,
//! libc, crossbeam or tracing is a dependency). Its dependencies are serde, postcard, blake3,
//! thiserror, serde_json, serde_path_to_error to name the field of a malformed pipeline, and
//! crc32fast for the log's record checksums.

#![forbid(unsafe_code)]

pub mod durable;
pub mod pipeline;
pub mod proto;
pub mod queue;
pub mod replica;
pub mod shard;
pub mod streams;
pub mod types;
pub mod wire;

pub use replica::{Applied, Claim, Decision, Persist, RecoveryStage, Replica, ReplicaStats};
