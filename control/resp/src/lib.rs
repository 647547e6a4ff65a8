//! The Redis protocol as Conveyor's members will serve it (issue 23): RESP2 and RESP3
//! requests parsed with `redis-server`'s limits and error messages ([`request`]), and replies
//! encoded for either version ([`reply`]). No I/O: the server that reads sockets, runs the
//! stream commands on the replicated queues and writes the replies is built on this.

#![forbid(unsafe_code)]

pub mod reply;
pub mod request;

pub use reply::{Proto, Reply};
pub use request::{parse, Limits, Parsed, ProtocolError};
