//! The web console under `/ui/` (issue 21): pages rendered on the server.

pub mod charts;
pub mod dashboard;
