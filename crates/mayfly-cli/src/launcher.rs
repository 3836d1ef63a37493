//! `mayfly server` and `mayfly dev`: a broker in this process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use mayfly_server::config::ConfigSources;

use crate::grammar::{DevArgs, Launch, ServerArgs};
use crate::output::{Failure, Output};

pub async fn run(command: Launch, out: &Output) -> anyhow::Result<ExitCode> {
    out.no_field("server")?;
    match command {
        Launch::Server(args) => server(args, out).await,
        Launch::Dev(args) => dev(args, out).await,
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// A path flag as the config's text value.
fn path_text(path: &Path, flag: &str) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Failure::Usage(format!("{flag} `{}` is not UTF-8", path.display())).into())
}

async fn server(args: ServerArgs, out: &Output) -> anyhow::Result<ExitCode> {
    init_tracing();
    let mut sources = ConfigSources::from_env(args.config.as_deref());
    if let Some(listen) = args.listen {
        sources
            .flags
            .push(("listen", listen.to_string(), "--listen"));
    }
    if let Some(store) = args.store {
        sources.flags.push(("store", store, "--store"));
    }
    if let Some(file) = &args.audit_file {
        sources.flags.push((
            "audit_file",
            path_text(file, "--audit-file")?,
            "--audit-file",
        ));
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        sources
            .flags
            .push(("tls_cert", path_text(cert, "--tls-cert")?, "--tls-cert"));
        sources
            .flags
            .push(("tls_key", path_text(key, "--tls-key")?, "--tls-key"));
    }
    let (mut config, listen) = mayfly_server::Config::load(&sources)?;
    config.group_commit = !args.no_group_commit;
    // Lease times come from the store's clock when several brokers may share it.
    config.clock_from_store = true;
    let listen = listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8200)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    out.status(
        serde_json::json!({ "listening": url }),
        &format!("mayfly server listening on {url}"),
    );
    mayfly_server::run(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn dev(args: DevArgs, out: &Output) -> anyhow::Result<ExitCode> {
    init_tracing();
    if !args.addr.ip().is_loopback() {
        return Err(Failure::Usage(
            "`mayfly dev` serves plain HTTP and listens on loopback only: use --addr 127.0.0.1:PORT"
                .into(),
        )
        .into());
    }
    let (data_dir, _temp) = match args.data {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create data directory `{}`", dir.display()))?;
            (dir, None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("mayfly-dev-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let data_dir = std::fs::canonicalize(&data_dir)?;
    let mut config = mayfly_server::Config::new(format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("mayfly.db").display()
    ));
    let audit_file = data_dir.join("audit.jsonl");
    config.audit_file = Some(audit_file.clone());
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another broker running? pick another with --addr",
                args.addr
            )
        })?;
    let addr = listener.local_addr()?;
    config.public_url = format!("http://{addr}");
    let broker = mayfly_server::start(config).await?;
    let bootstrap = mayfly_server::dev::bootstrap(&broker, &data_dir).await?;
    let token = mayfly_crypto::ExposeSecret::expose_secret(&bootstrap.admin_token);
    if out.json {
        crate::output::print_json(&serde_json::json!({
            "addr": format!("http://{addr}"),
            "token": token,
            "data_dir": data_dir,
            "audit_file": audit_file,
            "users": bootstrap.created,
        }))?;
    } else {
        print!(
            "{}",
            dev_banner(&data_dir, &audit_file, &bootstrap.created, addr, token)
        );
    }
    std::io::stdout()
        .flush()
        .map_err(|e| anyhow!("cannot write: {e}"))?;
    mayfly_server::serve(listener, broker, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn dev_banner(
    data_dir: &Path,
    audit_file: &Path,
    created: &[mayfly_api::UserCreated],
    addr: SocketAddr,
    token: &str,
) -> String {
    let mut out = String::new();
    out.push_str("\n==================================================================\n");
    out.push_str(" WARNING: DEVELOPMENT MODE. Do not use for anything real.\n");
    out.push_str(" The root key is stored unencrypted next to the data; HTTP is plain.\n");
    out.push_str("==================================================================\n\n");
    out.push_str(&format!("Data directory: {}\n", data_dir.display()));
    out.push_str(&format!("Audit log:      {}\n\n", audit_file.display()));
    if created.is_empty() {
        out.push_str(
            "Demo users exist already (their passwords were printed when they were created).\n\n",
        );
    }
    for user in created {
        out.push_str(&format!(
            "User {:<6} password {}  groups {}\n       TOTP secret {}  ({})\n",
            user.username,
            user.password.as_deref().unwrap_or("?"),
            user.groups.join(","),
            user.totp.secret_base32,
            user.totp.otpauth_url
        ));
    }
    out.push_str("\nAn admin session for this shell (valid 24 h):\n\n");
    out.push_str(&format!(
        "export MAYFLY_ADDR=http://{addr} MAYFLY_TOKEN={token}\n\n"
    ));
    out.push_str("Then try: mayfly token lookup; mayfly user list; mayfly audit verify\n");
    out.push_str("Log in as alice: mayfly login alice --totp CODE   (CODE from an authenticator app with her TOTP secret)\n");
    out
}
