//! `conveyor bench` (the contract is `BENCH.md`), `conveyor demo` and `conveyor plot`: each run
//! starts a whole group as separate processes (`conveyor node`), one trigger and N invokers, runs
//! one workload from the trigger and reports; the baselines run the same workload over Redis
//! Streams and a Kafka-protocol broker.
//!
//! - [`args`]: the command line and its checks;
//! - [`group`]: starting a group for a run (its file, its processes, its faults), with the
//!   namespace test bed's script (`netns.sh`, embedded here) for `--hosts netns`;
//! - [`run`]: each backend in turn, and the outputs;
//! - [`report`]: the JSON report and the terminal's summary;
//! - [`demo`]: `conveyor demo` and `demo --serve`;
//! - [`plot`], `progress`: figures and the progress bar;
//! - [`baselines`]: DIFFUSE's middleware abstraction and its Redis and Kafka implementations.

pub mod args;
pub mod baselines;
pub mod demo;
pub mod group;
pub mod plot;
mod progress;
pub mod report;
pub mod run;

pub use args::BenchArgs;
pub use demo::{demo, demo_serve, DEMO_PIPELINE};
pub use group::{run_group, run_local_group, GroupOutcome, GroupRun};
pub use run::bench;
