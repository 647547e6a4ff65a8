//! Conveyor's roles, as a library for the `conveyor` command, grouped by role:
//! - [`member`]: `conveyor node`, one member of a group from the group file;
//! - [`plane`]: the control plane (`conveyor control`): its HTTP API, `/metrics`, the agent
//!   each member runs to report to it and follow it, and `conveyor ctl`, its client;
//! - [`trigger`]: what pushes work into the group: the OpenFaaS-compatible gateway, the load
//!   generator and its ramp, and the measurements they share;
//! - [`resp`]: the Redis protocol server (stream commands on the replicated state);
//! - [`executors`]: how invokers run unmodified functions (exec, http, openwhisk, lambda);
//! - [`bench`]: `conveyor bench`, `demo` and `plot`: the group launcher, the runs, the report,
//!   the plots, and the baselines (Redis Streams, a Kafka-protocol broker).
//!
//! The group file is `conveyor-config` ([`config`]); the C client library is `conveyor-mq`
//! (control/mq), which depends on none of this.

pub mod bench;
pub mod executors;
pub mod http;
pub mod member;
pub mod plane;
pub mod resp;
pub mod trigger;

pub use conveyor_config as config;
