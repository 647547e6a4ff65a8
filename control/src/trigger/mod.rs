//! What pushes work into the group: the OpenFaaS-compatible [`gateway`], the open-loop load
//! generator ([`loadgen`]) and its [`ramp`], and the measurements they and the baselines share
//! ([`measure`]).

pub mod gateway;
pub mod loadgen;
pub mod measure;
pub mod ramp;
