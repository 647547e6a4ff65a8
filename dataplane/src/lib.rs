//! Conveyor's dataplane.
//!
//! Layers, each depending only on those above it:
//! - [`types`]: protocol newtypes and the core's own time type;
//! - [`wire`]: frame formats, parse/emit, MAC; no state, no unsafe;
//! - [`proto`]: the sans-IO total-order multicast (no sockets, no clock, no threads);
//! - [`queue`]: the replicated function-request queue state machine;
//! - [`pipeline`]: association rules (JSON) and the built-in functions.
//!
//! What this crate does not do: choose a transport from a config file, parse TOML, or own
//! processes; that is the `conveyor` binary in `control/`.

pub mod pipeline;
pub mod proto;
pub mod queue;
pub mod types;
pub mod wire;
