//! Mayfly's domain: names, principals, kinds of target, timestamps, requests and their decisions,
//! grants and audit events.
//!
//! This crate does no I/O, runs no async code and never reads the clock: time is passed in as a
//! [`Timestamp`]. Everything here is pure and can be tested with tables of cases.

pub mod audit;
pub mod bounded;
pub mod grant;
pub mod name;
pub mod policy;
pub mod principal;
pub mod proxy;
pub mod request;
pub mod secret_path;
pub mod sql;
pub mod target;
pub mod time;

pub use name::{GroupName, LoginName, NameError, Namespace, Username};
pub use principal::Principal;
pub use secret_path::{SecretPath, SecretPathError, SecretScope};
pub use target::TargetKind;
pub use time::Timestamp;
