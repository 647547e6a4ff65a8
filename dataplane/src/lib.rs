//! Conveyor's dataplane.
//!
//! Layers, each depending only on those above it:
//! - [`types`]: protocol newtypes and the core's own time type;
//! - [`wire`]: frame formats, parse/emit, MAC; no state, no unsafe;
//! - [`proto`]: the sans-IO total-order multicast (no sockets, no clock, no threads);
//! - [`queue`]: the replicated function-request queue state machine;
//! - [`pipeline`]: association rules (JSON) and the built-in functions;
//! - [`transport`]: the batch-oriented `Transport` trait and its media (`udp`);
//! - [`engine`]: the pinned polling thread driving `proto` over a transport, with lock-free
//!   rings to application threads and a configurable idle policy;
//! - [`invoker`]: the invoker role: takes requests, runs functions, pushes continuations.
//!
//! Unsafe code lives only in `transport::udp_sys` and `sys`, each block with a `// SAFETY:`
//! comment.
//!
//! What this crate does not do: choose a transport from a config file, parse TOML, or own
//! processes; that is the `conveyor` binary in `control/`.

pub mod engine;
pub mod invoker;
pub mod membership;
pub mod pipeline;
pub mod proto;
pub mod queue;
pub mod sys;
pub mod transport;
pub mod types;
pub mod wire;
