//! The broker's integration tests: a real server on a loopback port with a real store.

mod api;
mod audit;
mod jwt;
mod login;
mod seal;
