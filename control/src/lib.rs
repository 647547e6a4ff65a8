//! Conveyor's members, gateway, executors, control plane and benchmarks, as a library: used by
//! the `conveyor` command, and by C programs through the POSIX-mqueue-like client library
//! ([`mq`], `libconveyor.so` with the header `conveyor_mq.h`).

pub mod bench;
pub mod config;
pub mod control;
pub mod functions;
pub mod gateway;
mod kafka_backend;
mod loadgen;
mod middleware;
pub mod mq;
pub mod mq_ffi;
pub mod node;
pub mod plot;
mod progress;
mod ramp;
mod redis_backend;
pub mod serve;
mod xdp;
