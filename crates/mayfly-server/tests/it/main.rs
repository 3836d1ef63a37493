//! The broker's integration tests: a real server on a loopback port with a real store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed step should stop the test loudly"
)]

mod access;
mod admin_rotation;
mod agents;
mod api;
mod audit;
mod audit_forward;
mod auto_unseal;
mod ca_per_target;
mod call_approvals;
mod chat;
mod cluster;
mod console;
mod console_browser;
mod console_ops;
mod dashboard;
mod domain;
mod exchange;
mod exchange_workload;
mod floods;
mod hardening;
mod jwt;
mod jwt_discovery;
mod login;
mod mcp;
mod notifications;
mod proxy;
mod run_query;
mod seal;
mod secret_store;
mod secrets_at_rest;
mod ssh;
mod sso;
mod step_up;
mod store_failover;
mod targets_admin;
mod tls;
mod token_keys;
mod x509;
