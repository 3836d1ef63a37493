//! The Mayfly broker: the HTTP API, authentication, the audit pipeline (group commit, signed
//! checkpoints, sinks), the seal.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests run a real server on port 0.

pub mod access;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod error;
pub mod exchange;
pub mod failpoint;
pub mod mcp;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod outbound;
pub mod proxy;
pub mod seal;
pub mod secrets;
pub mod ssh;
pub mod state;
pub mod token_key_cache;
pub mod token_keys;
pub mod users;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::{Config, TlsFiles};
/// The memory allocator of every broker binary (`mayfly`, the benchmarks). Under the SSH
/// signing benchmark the C library's allocator took 14 % of all CPU samples in the committer
/// thread alone, freeing what the HTTP tasks allocated and consolidating its free lists
/// (BENCHMARKS.md); mimalloc keeps per-thread heaps. Not its `secure` mode: +20 % CPU per
/// certificate (ARCHITECTURE.md). Set in a binary with
/// `#[global_allocator] static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;`.
pub use mimalloc::MiMalloc as Allocator;
pub use state::Broker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] mayfly_store::StoreError),
    #[error("{0}")]
    Start(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server I/O")]
    Io(#[from] std::io::Error),
}

/// Opens the store and builds the broker; auto-unseals when a dev key file is configured.
pub async fn start(mut config: Config) -> Result<Broker, ServerError> {
    metrics::install();
    let store = Arc::new(mayfly_store::open_any(&config.store_urls).await?);
    // Several brokers may share the store: lease times then come from its clock.
    if config.clock_from_store && !mayfly_store::Store::capabilities(store.as_ref()).sole_writer {
        let clock = clock::StoreClock::default();
        let offset = clock.sync(store.as_ref()).await?;
        tracing::info!(offset_ms = offset, "taking time from the store's clock");
        config.clock = Arc::new(clock.clone());
        // The broker's own store handle: `sync` keeps the quickest of its round trips, so a
        // moment of waiting behind the broker's work does not skew the offset.
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Some(store) = weak.upgrade() else { return };
                if let Err(error) = clock.sync(store.as_ref()).await {
                    tracing::warn!(error = %error, "cannot read the store's clock; keeping the last offset");
                }
            }
        });
    }
    let broker = Broker::new(store, config).map_err(|e| ServerError::Start(e.to_string()))?;
    ::metrics::gauge!("mayfly_sealed").set(1.0);
    Ok(broker)
}

/// Serves the API on `listener` until `shutdown` completes. Background work (checkpoints, the
/// audit file sink, session clean-up) runs alongside and stops with it.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    let tls = match &broker.inner.config.tls {
        Some(files) => Some(api::tls::acceptor(files)?),
        None => None,
    };
    if tls.is_none() && !local.ip().is_loopback() {
        return Err(ServerError::Start(format!(
            "refusing plain HTTP on {local}: configure `tls_cert` and `tls_key`, or listen on 127.0.0.1"
        )));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Registered (and holding what leases are free) before the first call is answered.
    cluster::beat_once(&broker).await;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(cluster::heartbeat(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(cluster::listen(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(audit::checkpoint::run(
        broker.clone(),
        stopped.clone(),
    )));
    if let Some(path) = broker.inner.config.audit_file.clone() {
        let sink =
            audit::sink::FileSink::open(&path).map_err(|e| ServerError::Start(e.to_string()))?;
        tasks.push(tokio::spawn(audit::sink::run(
            broker.clone(),
            sink,
            stopped.clone(),
        )));
    }
    for status in broker.inner.sinks.statuses() {
        tasks.push(tokio::spawn(audit::forward::run(
            broker.clone(),
            status.clone(),
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(purge_sessions(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(access::expiry::run(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(access::rotation::run(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(notify::deliver::run(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(seal::auto::run(
        broker.clone(),
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(audit::refused::flush_refusals_every(
        broker.clone(),
        stopped.clone(),
    )));

    let router = api::router(broker.clone());
    let result = match tls {
        Some(acceptor) => api::tls::serve(listener, acceptor, router, shutdown).await,
        // No Nagle: an answer written in pieces (headers, then a streamed body, as the proxy
        // does) would otherwise wait for the client's delayed ACK, 40 ms a call.
        None => axum::serve(
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %error, "TCP_NODELAY refused");
                }
            }),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Io),
    };
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    result
}

/// [`start`], unseal (from the dev key file, or by auto-unseal), then [`serve`]. A failed
/// auto-unseal does not stop the server: it serves sealed, says why in health and tries again.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let broker = start(config).await?;
    if let Some(key_file) = broker.inner.config.dev_key_file.clone() {
        dev::unseal_from_file(&broker, &key_file).await?;
    }
    // Serve unsealed from the first answer when the key is at hand; `serve`'s seal watch tries
    // again after a failure.
    seal::auto::unseal_at_start(&broker).await;
    serve(listener, broker, shutdown).await
}

async fn purge_sessions(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
        // Keep expired sessions a day for investigations, then drop them.
        let before = broker.now() - Duration::from_secs(86_400);
        if let Err(error) = broker.store().purge_sessions(before).await {
            tracing::warn!(error = %error, "session clean-up failed");
        }
    }
}
