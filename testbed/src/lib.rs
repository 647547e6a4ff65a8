//! Conveyor's test bed. [`sim`]: a deterministic, seeded simulator of a whole group with
//! checkers for every property of the total-order multicast and the replicated queue. The
//! network-namespace scripts live beside this crate (`testbed/*.sh`).

pub mod disk;
pub mod scale;
pub mod shardsim;
pub mod sim;
