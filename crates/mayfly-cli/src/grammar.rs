//! The command line's grammar: clap types only, no behaviour. `server` and `dev` are the
//! [`Launch`] commands; every other command is a [`ClientCommand`] that talks to a broker.

mod access;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use access::*;

use crate::duration::{parse_duration, parse_ttl};

/// Printed under `mayfly --help`: what the exit code means (docs/cli.md says the same).
const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  error (the broker unreachable, a refused change, a timeout, ...)
  2  usage: a flag or argument is missing or malformed
  3  denied or expired: the policy or an approver refused, the broker answered 403, or the
     request or grant has expired
  4  the audit log was tampered with (`mayfly audit verify`)
`mayfly exec` and `mayfly ssh` end with their command's exit code once access was given
(130 when interrupted).

Durations: 90s, 15m, 1h30m, 2d, or plain seconds (90).
Environment: MAYFLY_ADDR, MAYFLY_TOKEN, MAYFLY_TOKEN_FILE, MAYFLY_CACERT, MAYFLY_LOG; the
server's MAYFLY_<KEY> (e.g. MAYFLY_STORE, MAYFLY_LISTEN). See docs/cli.md.";

#[derive(Debug, Parser)]
#[command(
    name = "mayfly",
    version,
    about = "Zero standing privileges: just-in-time access broker",
    after_help = EXIT_CODES,
    help_expected = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The broker's address.
    #[arg(
        long = "broker-addr",
        env = "MAYFLY_ADDR",
        global = true,
        default_value = "http://127.0.0.1:8200"
    )]
    pub broker_addr: String,
    /// Session token (else the file written by `mayfly login`).
    #[arg(long, env = "MAYFLY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for an HTTPS broker.
    #[arg(long, env = "MAYFLY_CACERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print the answer as JSON on stdout, and errors as `{"error":{"code":…,"message":…}}` on
    /// stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only this field of the answer (`grant.id` for a nested one, `0.id` in a list); an
    /// error when the answer has no such field.
    #[arg(long, global = true, value_name = "NAME")]
    pub field: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Launch(Launch),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that run a broker in this process.
#[derive(Debug, Subcommand)]
pub enum Launch {
    /// Run the broker.
    Server(ServerArgs),
    /// Run a development broker on an embedded store: auto-unsealed, demo users, an admin token.
    Dev(DevArgs),
}

/// The commands that talk to a broker.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Initialize, unseal and set up the broker.
    #[command(subcommand)]
    Operator(Operator),
    /// Show whether the broker is initialized and sealed; with `--cluster`, the nodes sharing
    /// its store, their heartbeats and claims, the lease holders and the audit head (admins).
    Status {
        /// The cluster's status (`GET /v1/sys/cluster`).
        #[arg(long)]
        cluster: bool,
    },
    /// Log in and keep the session token in a 0600 file.
    Login(LoginArgs),
    /// Prove a second factor now (TOTP) for the current session: approving, denying, break-glass
    /// and `@step_up` roles need one from the last few minutes.
    StepUp {
        /// The current TOTP code (asked for when not given).
        #[arg(long)]
        code: Option<String>,
    },
    /// End the current session (and forget its token file); with `--everywhere`, every live
    /// session of yours, on every machine and browser.
    Logout {
        /// Revoke every live session of the logged-in user, not only this one.
        #[arg(long)]
        everywhere: bool,
    },
    /// Inspect or revoke the current session.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage local users (admins only).
    #[command(subcommand)]
    User(UserCommand),
    /// Configure workload login with JWTs (admins only).
    #[command(subcommand)]
    Jwt(JwtCommand),
    /// AI agents: list them, stop one at once (`disable`: its sessions, grants, requests and
    /// pending calls end), let it in again, or get a token for one to act for you over MCP.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Configure single sign-on with OpenID Connect providers (admins only; docs/sso.md).
    #[command(subcommand)]
    Sso(SsoCommand),
    /// Set up approving from chat (admins only).
    #[command(subcommand)]
    Chat(ChatCommand),
    /// Verify and export the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage targets (admins only).
    #[command(subcommand)]
    Target(TargetCommand),
    /// Manage roles on targets (admins only).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Manage the Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage the secure proxy's routes (admins only): `add`, `ls`, `rm`.
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Ask for access to a role.
    Request(RequestArgs),
    /// Approve a pending request.
    Approve(DecideArgs),
    /// Deny a pending request.
    Deny(DecideArgs),
    /// List requests.
    Requests {
        /// Only the requests waiting for approval.
        #[arg(long)]
        pending: bool,
    },
    /// Create the credential of an allowed request and show it once.
    Activate {
        /// The request's id (printed by `mayfly request`).
        id: String,
    },
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
    Revoke {
        /// The grant's id.
        grant: String,
    },
    /// Renew a grant: more time from now, within the maximum the policy and role allow.
    Renew {
        /// The grant's id.
        grant: String,
        /// How long from now (e.g. 15m).
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        ttl: Duration,
    },
    /// Run a command with a credential in its environment, revoked when it ends. Only the
    /// command writes to stdout. Every kind: PostgreSQL (PG* variables), MariaDB (MYSQL_*),
    /// Redis (REDISCLI_AUTH), and for SSH and X.509 a key and certificate in a private temporary
    /// directory (MAYFLY_KEY_FILE, MAYFLY_CERT_FILE), deleted after; see docs/cli.md.
    Exec(ExecArgs),
    /// Break-glass grants waiting for review.
    #[command(subcommand)]
    Review(ReviewCommand),
    /// Notifications not delivered yet (admins only).
    Notifications {
        /// Only those that failed the configured number of attempts (still retried).
        #[arg(long)]
        failing: bool,
    },
    /// SSH with a short-lived certificate: `mayfly ssh TARGET/ROLE user@host --ttl 15m --reason R
    /// [-- cmd]`. `mayfly ssh ca TARGET` prints the target's CA public key (for
    /// `TrustedUserCAKeys`); `mayfly ssh krl TARGET FILE` writes its current KRL (for `RevokedKeys`).
    Ssh(SshArgs),
    /// An X.509 target's client CA and CRL: `mayfly x509 ca TARGET`, `mayfly x509 crl TARGET FILE`.
    #[command(subcommand)]
    X509(X509Command),
    /// The secret store: versioned, encrypted secrets at PROJECT/ENV/NAME (docs/secrets.md).
    #[command(subcommand)]
    Secrets(SecretsCommand),
}

/// `mayfly secrets …`. A value is never taken from the command line (which `ps` shows): it comes
/// from stdin or a file.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Write a new version of a secret; the value is read from stdin (or --from-file).
    Put {
        /// PROJECT/ENV/NAME, e.g. shop/prod/STRIPE_KEY.
        path: String,
        /// Read the value from this file (as it is, up to 64 KiB) instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Check-and-set: write only if the current version is N (0: only if it does not exist).
        #[arg(long, value_name = "N")]
        cas: Option<i64>,
    },
    /// Print a secret's value (only the value; --json for the whole answer).
    Get {
        /// PROJECT/ENV/NAME.
        path: String,
        /// This version instead of the current one.
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// List the secrets of an environment (names, versions and ages; never values).
    Ls {
        /// PROJECT/ENV.
        environment: String,
    },
    /// A secret's versions: when, by whom, deleted or destroyed (never values).
    History {
        /// PROJECT/ENV/NAME.
        path: String,
    },
    /// Soft-delete the current version (or --version N); `undelete` restores it.
    Rm {
        /// PROJECT/ENV/NAME.
        path: String,
        /// Delete this version instead of the current one.
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// Restore a soft-deleted version (the current one, or --version N).
    Undelete {
        /// PROJECT/ENV/NAME.
        path: String,
        /// Restore this version instead of the current one.
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// Remove versions' values for good (--version N, repeatable).
    Destroy {
        /// PROJECT/ENV/NAME.
        path: String,
        /// A version to destroy (repeat for several).
        #[arg(long = "version", value_name = "N", required = true)]
        versions: Vec<i64>,
    },
    /// Write each KEY=VALUE line of a dotenv file as a secret of an environment.
    Import {
        /// The .env file (`KEY=VALUE`, `export KEY=VALUE`, quotes, `#` comments).
        file: PathBuf,
        /// PROJECT/ENV to write into.
        #[arg(long = "env", value_name = "PROJECT/ENV")]
        environment: String,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML config file (`version = 1`, `store = "…"`, …); every key can also be set by
    /// `MAYFLY_<KEY>` (e.g. MAYFLY_STORE), and the flags below win over both.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8200; MAYFLY_LISTEN).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Store URL: sqlite://PATH or postgres://… (MAYFLY_STORE).
    #[arg(long)]
    pub store: Option<String>,
    /// Append the audit log to this JSON-lines file (MAYFLY_AUDIT_FILE).
    #[arg(long, value_name = "FILE")]
    pub audit_file: Option<PathBuf>,
    /// The broker's TLS certificate chain, PEM (MAYFLY_TLS_CERT).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The broker's TLS private key, PEM (MAYFLY_TLS_KEY).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// One transaction per audit event (for benchmarks only).
    #[arg(long, hide = true)]
    pub no_group_commit: bool,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub addr: SocketAddr,
    /// Data directory (default: a new temporary one, deleted on exit).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Operator {
    /// Create the root key, split it into shares and print them once, with a one-time setup code.
    Init {
        /// How many unseal shares to make.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// How many shares unseal the broker.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
    },
    /// Give one unseal share (asked for when not given).
    Unseal {
        /// The share, as `operator init` printed it (asked for when not given).
        share: Option<String>,
        /// Forget the shares given so far.
        #[arg(long)]
        reset: bool,
    },
    /// Create the first admin with the setup code from `operator init`.
    Setup {
        /// The one-time setup code `operator init` printed.
        #[arg(long)]
        code: String,
        /// The first admin's user name.
        #[arg(long)]
        username: String,
        /// Read the password from this file (else asked for).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Make new token signing keys (EdDSA, ES256), which sign from now on; the previous keys stay
    /// in the JWKS until every token they signed has expired (admins).
    RotateSigningKey,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name (password + TOTP login).
    pub username: Option<String>,
    /// The current TOTP code (asked for when not given).
    #[arg(long)]
    pub totp: Option<String>,
    /// Read the password from this file (else asked for, or read from stdin when it is not a terminal).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Single sign-on: log in through an OpenID Connect provider in the browser; the broker
    /// sends the browser back to a listener on 127.0.0.1 (docs/sso.md).
    #[arg(long, conflicts_with_all = ["username", "jwt_role"])]
    pub oidc: bool,
    /// With --oidc: the provider's name (needed when the broker has several).
    #[arg(long, requires = "oidc")]
    pub provider: Option<String>,
    /// With --oidc: print the URL to open instead of opening a browser.
    #[arg(long, requires = "oidc")]
    pub no_browser: bool,
    /// Workload login: the JWT role.
    #[arg(long, conflicts_with = "username", requires = "jwt_file")]
    pub jwt_role: Option<String>,
    /// Workload login: file holding the JWT (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub jwt_file: Option<PathBuf>,
    /// Print the token instead of storing it.
    #[arg(long)]
    pub print_token: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Show the current session.
    Lookup,
    /// Revoke the current session and delete the token file.
    Revoke,
    /// Exchange a token (RFC 8693) for a short JWT for one audience; prints the token.
    Exchange {
        /// The service the token is for.
        #[arg(long)]
        audience: String,
        /// Space-separated scopes, e.g. "read write".
        #[arg(long)]
        scope: Option<String>,
        /// The lifetime asked for (at most 1h; policy may shorten it).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// The token to exchange (`-` for stdin); default: the current session.
        #[arg(long, value_name = "FILE")]
        subject_token_file: Option<PathBuf>,
        /// `session`, `jwt` (a workload JWT or one this broker issued), `access_token`, or a
        /// token type URN; default: `jwt` for a JWT, else `session`.
        #[arg(long, value_name = "TYPE")]
        subject_token_type: Option<String>,
        /// A token of the party acting for the subject (named in `act`).
        #[arg(long, value_name = "FILE")]
        actor_token_file: Option<PathBuf>,
        /// The actor token's type, as `--subject-token-type`.
        #[arg(long, value_name = "TYPE", requires = "actor_token_file")]
        actor_token_type: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the password (if generated) and the TOTP enrollment once.
    Add {
        /// The new user's name.
        username: String,
        /// A group (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Read the password from this file (else one is generated).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// List users.
    List,
    /// Replace a user's groups; grants the new groups no longer allow are revoked at once.
    SetGroups {
        /// The user's name.
        username: String,
        /// A group (repeat for more; none leaves the user in no group).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Disable a user: no login, sessions end, active grants are revoked at once.
    Disable {
        /// The user's name.
        username: String,
    },
    /// Enable a disabled user again (grants are not restored; request access again).
    Enable {
        /// The user's name.
        username: String,
    },
    /// Link a Slack user id (`U…`) to a user, so that their clicks in Slack approve as them.
    LinkSlack {
        /// The user's name.
        username: String,
        /// The Slack user id (Slack: profile → ⋮ → Copy member ID).
        #[arg(required_unless_present = "unlink")]
        slack_user_id: Option<String>,
        /// Remove the user's link instead.
        #[arg(long, conflicts_with = "slack_user_id")]
        unlink: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Set the Slack app's signing secret (asked for, or read from the file or stdin); it is
    /// sealed by the broker and never shown again.
    SlackSecret {
        /// Read the signing secret from this file.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SsoCommand {
    /// Add or replace an OpenID Connect provider; its endpoints are found by discovery.
    Add {
        /// A name for the provider, used by `mayfly login --oidc --provider`.
        name: String,
        /// The issuer, exactly as its ID tokens' `iss` says.
        #[arg(long)]
        issuer: String,
        /// The client id the provider gave the broker.
        #[arg(long)]
        client_id: String,
        /// File holding the client secret (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        client_secret_file: PathBuf,
        /// The ID token claim that lists the person's groups.
        #[arg(long)]
        groups_claim: Option<String>,
        /// `IDP-GROUP=MAYFLY-GROUP` (repeat); groups not mapped are ignored.
        #[arg(long = "map-group", value_name = "IDP=MAYFLY")]
        map_groups: Vec<String>,
        /// The claim that names users made at first login.
        #[arg(long, default_value = "preferred_username")]
        username_claim: String,
        /// Scopes besides `openid` (repeat; default `profile email`).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// `acr_values` asked for when a session re-authenticates (step-up).
        #[arg(long)]
        step_up_acr_values: Option<String>,
    },
    /// List the providers and the redirect URI to register at each.
    Ls,
    /// Remove a provider (the users it made stay).
    Rm {
        /// The provider's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List the agents the broker knows (admins only).
    Ls,
    /// The kill switch (admins only): the agent's sessions, grants (its own and those it acted
    /// in), open requests and pending call approvals end at once, and it is refused until enabled.
    Disable {
        /// The agent's name (`claude` for `agent:claude`).
        name: String,
    },
    /// Lift the kill switch (admins only); nothing the agent had comes back.
    Enable {
        /// The agent's name.
        name: String,
    },
    /// Exchange your session for a short token with which the agent NAME acts for you on the
    /// broker's MCP endpoint (`act` = `agent:NAME`, and only that agent may use it); prints it.
    Token {
        /// The agent's name.
        name: String,
        /// The lifetime asked for (at most 1h; policy may shorten it).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// The audience; default: the broker's MCP resource (`<public URL>/mcp`, from its
        /// protected-resource metadata).
        #[arg(long)]
        audience: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Trust an issuer: by JWKS URL, by PEM public keys, or (with neither) by discovery of its
    /// JWKS URL at `<issuer>/.well-known/openid-configuration`.
    Issuer {
        /// A name for the issuer, used by `jwt role --issuer`.
        name: String,
        /// The exact `iss` claim.
        #[arg(long)]
        issuer: String,
        /// Where the issuer publishes its keys (JWKS).
        #[arg(long, conflicts_with = "public_key")]
        jwks_url: Option<String>,
        /// PEM public key file, optionally `FILE:KID` (repeat for more).
        #[arg(long)]
        public_key: Vec<String>,
        /// Clock skew allowed on `exp`, `nbf` and `iat` (at most 60s).
        #[arg(
            long = "leeway",
            alias = "leeway-seconds",
            value_parser = parse_duration,
            default_value = "30s",
            value_name = "DURATION"
        )]
        leeway: Duration,
    },
    /// Remove a workload binding: its sessions end and its workloads' active grants are revoked.
    DeleteRole {
        /// The binding's name.
        name: String,
    },
    /// Bind tokens of an issuer to a Workload.
    Role {
        /// A name for the binding, used by `mayfly login --jwt-role`.
        name: String,
        /// The issuer's name (from `jwt issuer`).
        #[arg(long)]
        issuer: String,
        /// An accepted `aud` (repeat for more).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// `CLAIM=VALUE`; repeat for more claims or more values of one claim.
        #[arg(long = "bound-claim")]
        bound_claims: Vec<String>,
        /// The claim that names the workload.
        #[arg(long, default_value = "sub")]
        name_claim: String,
        /// Session lifetime (at most 1h).
        #[arg(
            long = "ttl",
            alias = "ttl-seconds",
            value_parser = parse_ttl,
            default_value = "15m",
            value_name = "DURATION"
        )]
        ttl: Duration,
        /// The binding is an AI agent's: its logins are `agent:NAME` (NAME being the binding's),
        /// which `mayfly agent disable NAME` stops.
        #[arg(long)]
        agent: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain and checkpoint signatures: in the store (through the broker), or in a
    /// file offline. Exits 4 when the log was tampered with.
    Verify {
        /// A JSON-lines audit file (a sink file or `mayfly audit export`).
        #[arg(long, value_name = "FILE")]
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
        /// Write to this file instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the public key that signs audit checkpoints.
    PublicKey,
    /// The audit forwarding sinks (syslog, webhook): cursor, lag and state of each.
    Sinks,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the grammar, with `help_expected`: every command, argument and flag
    /// has help text (this fails naming the one that has none).
    #[test]
    fn every_command_and_flag_has_help() {
        super::Cli::command().debug_assert();
    }
}
