//! The commands: clap definitions and what each one does.

use std::io::{BufRead, IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use mayfly_api::*;
use reqwest::Method;

use crate::client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "mayfly",
    version,
    about = "Zero standing privileges: just-in-time access broker"
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The broker's address.
    #[arg(
        long = "broker-addr",
        env = "MAYFLY_ADDR",
        global = true,
        default_value = "http://127.0.0.1:8200"
    )]
    broker_addr: String,
    /// Session token (else the file written by `mayfly login`).
    #[arg(long, env = "MAYFLY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an HTTPS broker.
    #[arg(long, env = "MAYFLY_CACERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Server(ServerArgs),
    /// Run a development broker on an embedded store: auto-unsealed, demo users, an admin token.
    Dev(DevArgs),
    /// Initialize, unseal and set up the broker.
    #[command(subcommand)]
    Operator(Operator),
    /// Show whether the broker is initialized and sealed.
    Status,
    /// Log in and keep the session token in a 0600 file.
    Login(LoginArgs),
    /// Inspect or revoke the current session.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage local users (admins only).
    #[command(subcommand)]
    User(UserCommand),
    /// Configure workload login with JWTs (admins only).
    #[command(subcommand)]
    Jwt(JwtCommand),
    /// Verify and export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage targets (admins only).
    #[command(subcommand)]
    Target(crate::access::TargetCommand),
    /// Manage roles on targets (admins only).
    #[command(subcommand)]
    Role(crate::access::RoleCommand),
    /// Manage the Cedar policies.
    #[command(subcommand)]
    Policy(crate::access::PolicyCommand),
    /// Ask for access to a role.
    Request(crate::access::RequestArgs),
    /// Approve a pending request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List requests.
    Requests {
        #[arg(long)]
        pending: bool,
    },
    /// Create the credential of an allowed request and show it once.
    Activate { id: String },
    /// List grants with their time left.
    Grants {
        /// Only revocations that failed and are being retried.
        #[arg(long)]
        failing: bool,
        /// Also revoked and verified ones.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a grant now.
    Revoke { grant: String },
    /// Renew a grant: more time from now, within the maximum the policy and role allow.
    Renew {
        grant: String,
        #[arg(long, value_parser = crate::access::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Run a command with a credential in its environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
    /// PGDATABASE), revoked when it ends.
    Exec {
        #[command(flatten)]
        request: crate::access::RequestArgs,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Break-glass grants waiting for review.
    #[command(subcommand)]
    Review(crate::access::ReviewCommand),
    /// SSH with a short-lived certificate: `mayfly ssh TARGET/ROLE user@host --ttl 15m --reason R
    /// [-- cmd]`. `mayfly ssh ca TARGET` prints the target's CA public key (for
    /// `TrustedUserCAKeys`); `mayfly ssh krl TARGET FILE` writes its current KRL (for `RevokedKeys`).
    Ssh(crate::access::SshArgs),
    /// An X.509 target's client CA and CRL: `mayfly x509 ca TARGET`, `mayfly x509 crl TARGET FILE`.
    #[command(subcommand)]
    X509(crate::access::X509Command),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// JSON config file (`{"version": 1, "store": "...", ...}`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH or postgres://…
    #[arg(long, env = "MAYFLY_STORE")]
    store: Option<String>,
    /// Append the audit log to this JSON-lines file.
    #[arg(long)]
    audit_file: Option<PathBuf>,
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// One transaction per audit event (for benchmarks only).
    #[arg(long, hide = true)]
    no_group_commit: bool,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8200")]
    addr: SocketAddr,
    /// Data directory (default: a new temporary one, deleted on exit).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Operator {
    /// Create the root key, split it into shares and print them once, with a one-time setup code.
    Init {
        #[arg(long, default_value_t = 5)]
        shares: u8,
        #[arg(long, default_value_t = 3)]
        threshold: u8,
    },
    /// Give one unseal share (asked for when not given).
    Unseal {
        share: Option<String>,
        /// Forget the shares given so far.
        #[arg(long)]
        reset: bool,
    },
    /// Create the first admin with the setup code from `operator init`.
    Setup {
        #[arg(long)]
        code: String,
        #[arg(long)]
        username: String,
        /// Read the password from this file (else asked for).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// User name (password + TOTP login).
    username: Option<String>,
    /// The current TOTP code (asked for when not given).
    #[arg(long)]
    totp: Option<String>,
    /// Read the password from this file (else asked for, or read from stdin when it is not a terminal).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Workload login: the JWT role.
    #[arg(long, conflicts_with = "username", requires = "jwt_file")]
    jwt_role: Option<String>,
    /// Workload login: file holding the JWT (`-` for stdin).
    #[arg(long)]
    jwt_file: Option<PathBuf>,
    /// Print the token instead of storing it.
    #[arg(long)]
    print_token: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Show the current session.
    Lookup,
    /// Revoke the current session and delete the token file.
    Revoke,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user; prints the password (if generated) and the TOTP enrollment once.
    Add {
        username: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Read the password from this file (else one is generated).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List users.
    List,
    /// Replace a user's groups; grants the new groups no longer allow are revoked at once.
    SetGroups {
        username: String,
        /// A group (repeat for more; none leaves the user in no group).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Disable a user: no login, sessions end, active grants are revoked at once.
    Disable { username: String },
    /// Enable a disabled user again (grants are not restored; request access again).
    Enable { username: String },
}

#[derive(Debug, Subcommand)]
enum JwtCommand {
    /// Trust an issuer: by JWKS URL or by PEM public keys.
    Issuer {
        name: String,
        /// The exact `iss` claim.
        #[arg(long)]
        issuer: String,
        #[arg(long, conflicts_with = "public_key")]
        jwks_url: Option<String>,
        /// PEM public key file, optionally `FILE:KID`.
        #[arg(long)]
        public_key: Vec<String>,
        #[arg(long, default_value_t = 30)]
        leeway_seconds: u64,
    },
    /// Remove a workload binding: its sessions end and its workloads' active grants are revoked.
    DeleteRole { name: String },
    /// Bind tokens of an issuer to a Workload.
    Role {
        name: String,
        #[arg(long)]
        issuer: String,
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// `CLAIM=VALUE`; repeat for more claims or more values of one claim.
        #[arg(long = "bound-claim")]
        bound_claims: Vec<String>,
        /// The claim that names the workload.
        #[arg(long, default_value = "sub")]
        name_claim: String,
        /// Session lifetime in seconds (at most 3600).
        #[arg(long, default_value_t = 900)]
        ttl_seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and checkpoint signatures: in the store (through the broker), or in a file offline.
    Verify {
        /// A JSON-lines audit file (a sink file or `mayfly audit export`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The checkpoint public key (base64, or a file holding it); see `mayfly audit public-key`.
        #[arg(long, requires = "file")]
        public_key: Option<String>,
        /// The head the file must reach, `SEQ:HASH` as printed by `mayfly audit head`: finds a
        /// tail cut off the file, which the chain alone cannot show.
        #[arg(long, requires = "file", value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// Print the chain's head as `SEQ:HASH`, for `mayfly audit verify --file … --expect-head`.
    Head,
    /// Write the whole audit log as JSON lines.
    Export {
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print the public key that signs audit checkpoints.
    PublicKey,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::Dev(args) => dev(args).await,
        Command::Audit(AuditCommand::Verify {
            file: Some(file),
            public_key,
            expect_head,
        }) => verify_file(
            &file,
            public_key.as_deref(),
            expect_head.as_deref(),
            global.json,
        ),
        command => {
            let token = match &global.token {
                Some(token) => Some(token.clone()),
                None => read_token_file(),
            };
            let client = Client::new(&global.broker_addr, token, global.ca_cert.as_deref())?;
            client_command(&client, command, global.json).await
        }
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

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let (mut config, file_listen) = match &args.config {
        Some(path) => {
            let (config, listen) = mayfly_server::Config::from_file(path)?;
            (config, listen)
        }
        None => {
            let store = args
                .store
                .clone()
                .ok_or_else(|| anyhow!("no store: pass --store sqlite://PATH or --config FILE"))?;
            (mayfly_server::Config::new(store), None)
        }
    };
    if let Some(store) = args.store {
        config.store_url = store;
    }
    if let Some(file) = args.audit_file {
        config.audit_file = Some(file);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(mayfly_server::TlsFiles { cert, key });
    }
    config.group_commit = !args.no_group_commit;
    // Several brokers may share a PostgreSQL store: lease times come from its clock.
    config.clock_from_store = config.store_url.starts_with("postgres");
    let listen: SocketAddr = match (args.listen, file_listen) {
        (Some(listen), _) => listen,
        (None, Some(text)) => text
            .parse()
            .with_context(|| format!("`listen` = `{text}` is not an address"))?,
        (None, None) => "127.0.0.1:8200".parse()?,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!(
        "mayfly server listening on {scheme}://{}",
        listener.local_addr()?
    );
    mayfly_server::run(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn dev(args: DevArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    if !args.addr.ip().is_loopback() {
        bail!(
            "`mayfly dev` serves plain HTTP and listens on loopback only: use --addr 127.0.0.1:PORT"
        );
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
    config.audit_file = Some(data_dir.join("audit.jsonl"));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another broker running? pick another with --addr",
                args.addr
            )
        })?;
    let addr = listener.local_addr()?;
    let broker = mayfly_server::start(config).await?;
    let bootstrap = mayfly_server::dev::bootstrap(&broker, &data_dir).await?;

    let mut out = String::new();
    out.push_str("\n==================================================================\n");
    out.push_str(" WARNING: DEVELOPMENT MODE. Do not use for anything real.\n");
    out.push_str(" The root key is stored unencrypted next to the data; HTTP is plain.\n");
    out.push_str("==================================================================\n\n");
    out.push_str(&format!("Data directory: {}\n", data_dir.display()));
    out.push_str(&format!(
        "Audit log:      {}\n\n",
        data_dir.join("audit.jsonl").display()
    ));
    if bootstrap.created.is_empty() {
        out.push_str(
            "Demo users exist already (their passwords were printed when they were created).\n\n",
        );
    }
    for user in &bootstrap.created {
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
        "export MAYFLY_ADDR=http://{addr} MAYFLY_TOKEN={}\n\n",
        mayfly_crypto::ExposeSecret::expose_secret(&bootstrap.admin_token)
    ));
    out.push_str("Then try: mayfly token lookup; mayfly user list; mayfly audit verify\n");
    out.push_str("Log in as alice: mayfly login alice --totp CODE   (CODE from an authenticator app with her TOTP secret)\n");
    print!("{out}");
    let _ = std::io::stdout().flush();
    mayfly_server::serve(listener, broker, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn token_file() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("MAYFLY_TOKEN_FILE") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".mayfly-token"))
}

fn read_token_file() -> Option<String> {
    let text = std::fs::read_to_string(token_file()?).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

fn write_token_file(token: &str) -> anyhow::Result<PathBuf> {
    let path = token_file().ok_or_else(|| anyhow!("no HOME: set MAYFLY_TOKEN_FILE"))?;
    let _ = std::fs::remove_file(&path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(path)
}

/// A secret from a file, or asked for on the terminal, or one line of stdin.
pub(crate) fn read_secret(file: Option<&Path>, prompt: &str) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).context("cannot read from the terminal");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn none() -> Option<&'static ()> {
    None
}

async fn client_command(client: &Client, command: Command, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        Command::Server(_) | Command::Dev(_) => unreachable_command(),
        Command::Status => {
            let status: SealStatus = client
                .call(Method::GET, "/v1/sys/seal-status", none())
                .await?;
            if json {
                print_json(&status)?;
            } else {
                println!(
                    "initialized: {}\nsealed:      {}\nshares:      {} (threshold {}, progress {})",
                    status.initialized,
                    status.sealed,
                    status.n_shares,
                    status.threshold,
                    status.progress
                );
            }
        }
        Command::Operator(Operator::Init { shares, threshold }) => {
            let answer: InitResponse = client
                .call(
                    Method::POST,
                    "/v1/sys/init",
                    Some(&InitRequest { shares, threshold }),
                )
                .await?;
            if json {
                print_json(&answer)?;
            } else {
                for (i, share) in answer.shares.iter().enumerate() {
                    println!("Unseal share {}: {share}", i + 1);
                }
                println!("\nSetup code: {}\n", answer.setup_code);
                println!(
                    "These are shown once. Give each share to a different key holder; any {} of them unseal the broker.",
                    answer.threshold
                );
                println!(
                    "Next: `mayfly operator unseal` ({} times), then `mayfly operator setup --code CODE --username NAME`.",
                    answer.threshold
                );
            }
        }
        Command::Operator(Operator::Unseal { share, reset }) => {
            let request = if reset {
                UnsealRequest {
                    share: None,
                    reset: true,
                }
            } else {
                let share = match share {
                    Some(share) => share,
                    None => read_secret(None, "Unseal share: ")?,
                };
                UnsealRequest {
                    share: Some(share),
                    reset: false,
                }
            };
            let status: SealStatus = client
                .call(Method::POST, "/v1/sys/unseal", Some(&request))
                .await?;
            if json {
                print_json(&status)?;
            } else if status.sealed {
                println!(
                    "sealed: {} of {} shares given",
                    status.progress, status.threshold
                );
            } else {
                println!("unsealed");
            }
        }
        Command::Operator(Operator::Setup {
            code,
            username,
            password_file,
        }) => {
            let password = read_secret(password_file.as_deref(), "Password for the first admin: ")?;
            let request = SetupRequest {
                setup_code: code,
                username,
                password,
            };
            let user: UserCreated = client
                .call(Method::POST, "/v1/sys/setup", Some(&request))
                .await?;
            print_user(&user, json)?;
        }
        Command::Login(args) => login(client, args, json).await?,
        Command::Token(TokenCommand::Lookup) => {
            let info: TokenInfo = client
                .call(Method::GET, "/v1/auth/token/lookup-self", none())
                .await?;
            if json {
                print_json(&info)?;
            } else {
                println!("session:    {}", info.id);
                println!(
                    "principal:  {}:{}",
                    info.principal.kind, info.principal.name
                );
                if !info.principal.groups.is_empty() {
                    println!("groups:     {}", info.principal.groups.join(", "));
                }
                println!("expires:    {}", format_ms(info.expires_at_ms));
            }
        }
        Command::Token(TokenCommand::Revoke) => {
            client
                .call_raw(Method::POST, "/v1/auth/token/revoke-self", none())
                .await?;
            if let Some(path) = token_file() {
                let _ = std::fs::remove_file(path);
            }
            if json {
                print_json(&serde_json::json!({"revoked": true}))?;
            } else {
                println!("session revoked");
            }
        }
        Command::User(UserCommand::Add {
            username,
            groups,
            password_file,
        }) => {
            let password = match password_file {
                Some(path) => Some(read_secret(Some(&path), "")?),
                None => None,
            };
            let request = CreateUserRequest {
                username,
                password,
                groups,
            };
            let user: UserCreated = client
                .call(Method::POST, "/v1/users", Some(&request))
                .await?;
            print_user(&user, json)?;
        }
        Command::User(UserCommand::List) => {
            let users: Vec<UserSummary> = client.call(Method::GET, "/v1/users", none()).await?;
            if json {
                print_json(&users)?;
            } else {
                for user in users {
                    let state = if user.disabled { " (disabled)" } else { "" };
                    println!("{:<24} {}{state}", user.username, user.groups.join(","));
                }
            }
        }
        Command::User(UserCommand::SetGroups { username, groups }) => {
            let request = UpdateUserRequest {
                groups: Some(groups),
                disabled: None,
            };
            update_user(client, &username, &request, json).await?;
        }
        Command::User(UserCommand::Disable { username }) => {
            let request = UpdateUserRequest {
                groups: None,
                disabled: Some(true),
            };
            update_user(client, &username, &request, json).await?;
        }
        Command::User(UserCommand::Enable { username }) => {
            let request = UpdateUserRequest {
                groups: None,
                disabled: Some(false),
            };
            update_user(client, &username, &request, json).await?;
        }
        Command::Jwt(JwtCommand::DeleteRole { name }) => {
            let removed: BindingRemoved = client
                .call(
                    Method::DELETE,
                    &format!("/v1/auth/jwt/roles/{name}"),
                    none(),
                )
                .await?;
            if json {
                print_json(&removed)?;
            } else {
                println!(
                    "role `{}` removed; {} active grants revoked",
                    removed.name, removed.grants_revoked
                );
            }
        }
        Command::Jwt(JwtCommand::Issuer {
            name,
            issuer,
            jwks_url,
            public_key,
            leeway_seconds,
        }) => {
            let mut public_keys = Vec::new();
            for spec in public_key {
                let (file, kid) = match spec.rsplit_once(':') {
                    Some((file, kid)) if !Path::new(&spec).exists() => {
                        (file.to_owned(), Some(kid.to_owned()))
                    }
                    _ => (spec.clone(), None),
                };
                let pem = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read public key `{file}`"))?;
                public_keys.push(JwtPublicKey { kid, pem });
            }
            let config = JwtIssuerConfig {
                issuer,
                jwks_url,
                public_keys,
                leeway_seconds,
            };
            client
                .call_raw(
                    Method::PUT,
                    &format!("/v1/auth/jwt/issuers/{name}"),
                    Some(&config),
                )
                .await?;
            done(json, &format!("issuer `{name}` saved"))?;
        }
        Command::Jwt(JwtCommand::Role {
            name,
            issuer,
            audiences,
            bound_claims,
            name_claim,
            ttl_seconds,
        }) => {
            let mut claims: std::collections::BTreeMap<String, ClaimMatch> =
                std::collections::BTreeMap::new();
            for spec in bound_claims {
                let (claim, value) = spec
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--bound-claim `{spec}`: use CLAIM=VALUE"))?;
                let entry = claims.remove(claim);
                let next = match entry {
                    None => ClaimMatch::One(value.to_owned()),
                    Some(ClaimMatch::One(first)) => ClaimMatch::Any(vec![first, value.to_owned()]),
                    Some(ClaimMatch::Any(mut values)) => {
                        values.push(value.to_owned());
                        ClaimMatch::Any(values)
                    }
                };
                claims.insert(claim.to_owned(), next);
            }
            let config = JwtRoleConfig {
                issuer,
                audiences,
                bound_claims: claims,
                workload_name_claim: name_claim,
                token_ttl_seconds: ttl_seconds,
            };
            client
                .call_raw(
                    Method::PUT,
                    &format!("/v1/auth/jwt/roles/{name}"),
                    Some(&config),
                )
                .await?;
            done(json, &format!("role `{name}` saved"))?;
        }
        Command::Audit(AuditCommand::Verify { .. }) => {
            let report: AuditVerifyReport = client
                .call(Method::POST, "/v1/sys/audit/verify", none())
                .await?;
            if json {
                print_json(&report)?;
            } else if report.ok {
                println!(
                    "audit log intact: {} events, {} checkpoints ({} signatures checked), last event {}",
                    report.n_events,
                    report.n_checkpoints,
                    report.n_signatures_checked,
                    report.last_seq
                );
            } else {
                println!(
                    "AUDIT LOG TAMPERED: {}",
                    report.error.as_deref().unwrap_or("unknown problem")
                );
            }
            return Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        Command::Audit(AuditCommand::Export { output }) => {
            let mut writer: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create `{}`", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let mut after = 0;
            let mut n = 0u64;
            loop {
                let page: AuditEventsPage = client
                    .call(
                        Method::GET,
                        &format!("/v1/sys/audit/events?after={after}&limit=5000"),
                        none(),
                    )
                    .await?;
                if page.lines.is_empty() {
                    break;
                }
                for line in &page.lines {
                    writeln!(writer, "{line}")?;
                }
                n += page.lines.len() as u64;
                after = page.next_after;
                if output.is_some() && std::io::stderr().is_terminal() {
                    eprint!("\rexported {n} events");
                }
            }
            writer.flush()?;
            if output.is_some() {
                eprintln!("\rexported {n} events");
            }
        }
        Command::Target(command) => crate::access::target(client, command, json).await?,
        Command::Role(command) => crate::access::role(client, command, json).await?,
        Command::Policy(command) => crate::access::policy(client, command, json).await?,
        Command::Request(args) => {
            let info = crate::access::request(client, args, json).await?;
            if info.state == "denied" || info.state == "expired" {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Approve { id, comment } => {
            crate::access::decide(client, &id, comment, true, json).await?
        }
        Command::Deny { id, comment } => {
            crate::access::decide(client, &id, comment, false, json).await?
        }
        Command::Requests { pending } => crate::access::requests(client, pending, json).await?,
        Command::Activate { id } => {
            crate::access::activate(client, &id, json).await?;
        }
        Command::Grants { failing, all } => {
            crate::access::grants(client, failing, all, json).await?
        }
        Command::Revoke { grant } => crate::access::revoke(client, &grant, json).await?,
        Command::Renew { grant, ttl } => crate::access::renew(client, &grant, ttl, json).await?,
        Command::Exec { request, command } => {
            return crate::access::exec(client, request, command).await;
        }
        Command::Review(command) => crate::access::review(client, command, json).await?,
        Command::Ssh(args) => return crate::access::ssh(client, args).await,
        Command::X509(command) => crate::access::x509(client, command).await?,
        Command::Audit(AuditCommand::Head) => {
            let head: AuditHead = client
                .call(Method::GET, "/v1/sys/audit/head", none())
                .await?;
            if json {
                print_json(&head)?;
            } else {
                println!("{}:{}", head.seq, head.hash);
            }
        }
        Command::Audit(AuditCommand::PublicKey) => {
            let key: AuditPublicKey = client
                .call(Method::GET, "/v1/sys/audit/public-key", none())
                .await?;
            if json {
                print_json(&key)?;
            } else {
                println!("{}", key.public_key);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn unreachable_command() -> ! {
    // `run` handles `server` and `dev` before building a client.
    std::process::exit(2)
}

fn done(json: bool, message: &str) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({"ok": true}))
    } else {
        println!("{message}");
        Ok(())
    }
}

async fn update_user(
    client: &Client,
    username: &str,
    request: &UpdateUserRequest,
    json: bool,
) -> anyhow::Result<()> {
    let updated: UserUpdated = client
        .call(
            Method::PATCH,
            &format!("/v1/users/{username}"),
            Some(request),
        )
        .await?;
    if json {
        print_json(&updated)?;
    } else {
        let state = if updated.user.disabled {
            " (disabled)"
        } else {
            ""
        };
        println!(
            "{} {}{state}; {} active grants revoked",
            updated.user.username,
            updated.user.groups.join(","),
            updated.grants_revoked
        );
    }
    Ok(())
}

fn print_user(user: &UserCreated, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(user);
    }
    println!(
        "user `{}` created (groups: {})",
        user.username,
        user.groups.join(", ")
    );
    if let Some(password) = &user.password {
        println!("password:    {password}");
    }
    println!("TOTP secret: {}", user.totp.secret_base32);
    println!("TOTP URL:    {}", user.totp.otpauth_url);
    println!("These are shown once: add the TOTP secret to an authenticator app now.");
    Ok(())
}

async fn login(client: &Client, args: LoginArgs, json: bool) -> anyhow::Result<()> {
    let answer: LoginResponse = if let Some(role) = args.jwt_role {
        let file = args
            .jwt_file
            .ok_or_else(|| anyhow!("--jwt-file is required with --jwt-role"))?;
        let jwt = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text
        } else {
            std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?
        };
        let request = JwtLoginRequest {
            role,
            jwt: jwt.trim().to_owned(),
        };
        client
            .call(Method::POST, "/v1/auth/jwt/login", Some(&request))
            .await?
    } else {
        let username = args
            .username
            .ok_or_else(|| anyhow!("give a user name (`mayfly login alice`) or --jwt-role"))?;
        let password = read_secret(args.password_file.as_deref(), "Password: ")?;
        let totp = match args.totp {
            Some(totp) => totp,
            None => {
                eprint!("TOTP code: ");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim().to_owned()
            }
        };
        let request = PasswordLoginRequest {
            username,
            password,
            totp,
        };
        client
            .call(Method::POST, "/v1/auth/password/login", Some(&request))
            .await?
    };
    if args.print_token {
        if json {
            return print_json(&answer);
        }
        println!("{}", answer.token);
        return Ok(());
    }
    let path = write_token_file(&answer.token)?;
    if json {
        print_json(&answer.session)?;
    } else {
        println!(
            "logged in as {}:{} until {}; token saved in {} (0600)",
            answer.session.principal.kind,
            answer.session.principal.name,
            format_ms(answer.session.expires_at_ms),
            path.display()
        );
    }
    Ok(())
}

fn format_ms(ms: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return format!("{ms} ms");
    };
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{ms} ms"))
}

fn verify_file(
    path: &Path,
    public_key: Option<&str>,
    expect_head: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let expect_head = match expect_head {
        Some(text) => {
            let parsed = text.split_once(':').and_then(|(seq, hash)| {
                let seq: i64 = seq.parse().ok().filter(|seq| *seq >= 1)?;
                let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                hex.then(|| (seq, hash.to_owned()))
            });
            let Some(head) = parsed else {
                bail!(
                    "--expect-head `{text}` is not SEQ:HASH (a positive number, a colon and 64 hex digits); print it with `mayfly audit head`"
                );
            };
            Some(head)
        }
        None => None,
    };
    let public_key = match public_key {
        Some(text) => {
            let text = if Path::new(text).exists() {
                std::fs::read_to_string(text).with_context(|| format!("cannot read `{text}`"))?
            } else {
                text.to_owned()
            };
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.trim())
                    .context("--public-key is not base64 (see `mayfly audit public-key`)")?;
            if bytes.len() != 32 {
                bail!("--public-key is not an Ed25519 public key (32 bytes)");
            }
            Some(bytes)
        }
        None => None,
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut verifier = mayfly_core::audit::Verifier::new(public_key.as_deref());
    let mut failure = None;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.with_context(|| format!("cannot read line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = mayfly_core::audit::split_line(&line)
            .map_err(|reason| mayfly_core::audit::ChainError::Unreadable {
                line: number,
                reason,
            })
            .and_then(|(body, hash)| verifier.push(number, &body, &hash));
        if let Err(error) = result {
            failure = Some(error);
            break;
        }
    }
    if failure.is_none()
        && let Some((seq, hash)) = &expect_head
    {
        failure = verifier.expect_head(*seq, hash).err();
    }
    let report = verifier.finish();
    let checkpoint = report.last_checkpoint.map(|seen| {
        format!(
            "last signed checkpoint: event {} at {}, covering events up to {}",
            seen.seq,
            format_ms(seen.at_ms),
            seen.covers_to
        )
    });
    if json {
        print_json(&serde_json::json!({
            "ok": failure.is_none(),
            "error": failure.as_ref().map(ToString::to_string),
            "n_events": report.n_events,
            "n_checkpoints": report.n_checkpoints,
            "n_signatures_checked": report.n_signatures_checked,
            "last_seq": report.last_seq,
            "n_unsigned_tail": report.n_unsigned_tail,
            "last_checkpoint": report.last_checkpoint.map(|seen| serde_json::json!({
                "seq": seen.seq, "at_ms": seen.at_ms, "covers_to": seen.covers_to,
            })),
            "head_checked": expect_head.is_some(),
        }))?;
    } else if let Some(error) = &failure {
        println!("AUDIT LOG TAMPERED: {error}");
        println!(
            "{}",
            checkpoint
                .as_deref()
                .unwrap_or("no signed checkpoint in the file")
        );
    } else {
        println!("audit file intact: {report}");
        println!(
            "{}",
            checkpoint
                .as_deref()
                .unwrap_or("no signed checkpoint in the file")
        );
        if public_key.is_none() {
            println!(
                "note: checkpoint signatures were not checked; pass --public-key (from `mayfly audit public-key`)"
            );
        }
        if expect_head.is_none() {
            println!(
                "note: a tail cut off the file cannot be seen without the head; pass --expect-head (from `mayfly audit head`)"
            );
        }
    }
    Ok(if failure.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
