//! What pushes work into the group: the OpenFaaS-compatible [`gateway`], the open-loop load
//! generator ([`loadgen`]), its [`ramp`] and its [`journal`] (a run that survives the trigger's restart), and the measurements they and the baselines share
//! ([`measure`]).

pub mod gateway;
pub mod journal;
pub mod loadgen;
pub mod measure;
pub mod ramp;
