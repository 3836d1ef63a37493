//! The grammar of the access commands: targets, roles, policies, requests, and the session
//! runners `exec` and `ssh`.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use mayfly_core::TargetKind;
use mayfly_core::target::UnknownKind;

use crate::duration::{parse_duration, parse_ttl};

/// What `target add KIND` takes: every [`TargetKind`] (core's list, so every kind there is), by
/// its name or its alias, with a line of help each.
fn kind_value(kind: TargetKind) -> PossibleValue {
    let value = PossibleValue::new(kind.as_str());
    match kind {
        TargetKind::Postgres => value
            .alias("postgresql")
            .help("PostgreSQL: a login role per grant"),
        TargetKind::Mysql => value
            .alias("mariadb")
            .help("MariaDB (or MySQL): a user per grant"),
        TargetKind::Redis => value.help("Redis: an ACL user per grant"),
        TargetKind::Ssh => {
            value.help("OpenSSH: a user certificate per grant, signed by the target's CA")
        }
        TargetKind::X509 => value
            .help("TLS services: an X.509 client certificate per grant, signed by the target's CA"),
    }
}

/// Parses a kind as [`kind_value`] lists them (an alias gives its kind).
fn kind_parser() -> impl TypedValueParser<Value = TargetKind> {
    PossibleValuesParser::new(TargetKind::ALL.map(kind_value)).try_map(|name: String| {
        TargetKind::ALL
            .into_iter()
            .find(|kind| kind_value(*kind).matches(&name, false))
            .ok_or(UnknownKind { given: name })
    })
}

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Add (or replace) a target. The admin password is read from --admin-password-file, or asked for.
    Add {
        /// The kind of target.
        #[arg(value_parser = kind_parser())]
        kind: TargetKind,
        /// The target's name (letters, digits, `-`, `_`).
        name: String,
        /// Where the broker reaches it, without user or password: `postgres://HOST:PORT/DB`,
        /// `mysql://HOST:PORT`, `rediss://HOST:PORT`, `ssh://HOST:PORT` or `tls://HOST:PORT`.
        #[arg(long)]
        url: String,
        /// The account the broker administers logins with (not for `ssh` and `x509`: hosts and
        /// services trust the target's CA).
        #[arg(long, default_value = "")]
        admin_user: String,
        /// Read the admin password from this file (else asked for).
        #[arg(long, value_name = "FILE")]
        admin_password_file: Option<PathBuf>,
        /// Rotate the admin password this often (at least 1h, e.g. 24h): the broker sets a fresh
        /// random one that only it knows. Without it, on demand only (`rotate-admin`).
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        rotate_admin_every: Option<Duration>,
    },
    /// List the targets (admins see their URLs and when the admin secret was last rotated).
    #[command(alias = "ls")]
    List,
    /// Rotate the broker's admin password on a database target now: a fresh random password,
    /// set on the target and kept in the barrier, known to the broker only.
    RotateAdmin {
        /// The target's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add (or replace) a role: `mayfly role add prod-db/readonly --creation-sql FILE --max-ttl 1h`.
    Add {
        /// TARGET/ROLE
        role: String,
        /// What creates the login: SQL on PostgreSQL, the GRANT statements on MariaDB, the ACL
        /// rules (`~app:* +@read`) on Redis, JSON on SSH and X.509 (docs/targets/).
        #[arg(long, alias = "rules", value_name = "FILE")]
        creation_sql: PathBuf,
        /// SQL run before the default revocation (PostgreSQL, MariaDB).
        #[arg(long, value_name = "FILE")]
        revocation_sql: Option<PathBuf>,
        /// The longest grant of this role (e.g. 1h).
        #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
        max_ttl: Duration,
    },
    /// List the roles.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the policy set with the Cedar policies in FILE (validated; refused with diagnostics).
    Put {
        /// A file of Cedar policies.
        file: PathBuf,
    },
    /// Print the current policies.
    Show,
    /// Print the Cedar schema policies are written against.
    Schema,
}

/// What every request for access says.
#[derive(Debug, Clone, Args)]
pub struct RequestFlags {
    /// TARGET/ROLE
    pub role: String,
    /// How long the access should last (e.g. 15m).
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
    pub ttl: Duration,
    /// Why you need it (recorded in the audit log, shown to approvers).
    #[arg(long)]
    pub reason: String,
    /// A ticket reference (recorded with the request).
    #[arg(long)]
    pub ticket: Option<String>,
    /// Emergency access, where a policy permits `break_glass`: at once, notified, reviewed later.
    #[arg(long)]
    pub break_glass: bool,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub flags: RequestFlags,
    /// Wait while the request is pending approval (exit 3 if it is denied or expires).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 1; the request stays pending).
    #[arg(long, requires = "wait", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The request's id.
    pub id: String,
    /// A comment recorded with the decision.
    #[arg(long)]
    pub comment: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// TARGET/ROLE (not with --env).
    #[arg(
        required_unless_present = "environment",
        conflicts_with = "environment"
    )]
    pub role: Option<String>,
    /// How long the access should last (e.g. 15m).
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION", required_unless_present = "environment", conflicts_with = "environment")]
    pub ttl: Option<Duration>,
    /// Why you need it (recorded in the audit log, shown to approvers).
    #[arg(
        long,
        required_unless_present = "environment",
        conflicts_with = "environment"
    )]
    pub reason: Option<String>,
    /// A ticket reference (recorded with the request).
    #[arg(long, conflicts_with = "environment")]
    pub ticket: Option<String>,
    /// Emergency access, where a policy permits `break_glass`: at once, notified, reviewed later.
    #[arg(long, conflicts_with = "environment")]
    pub break_glass: bool,
    /// Instead of a grant: the secrets of the secret store's PROJECT/ENV that you may read, each
    /// as an environment variable of its name.
    #[arg(long = "env", value_name = "PROJECT/ENV")]
    pub environment: Option<String>,
    /// Give up waiting for approval after this long (exit 1); default: wait until the request is
    /// decided or expires.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "environment")]
    pub timeout: Option<Duration>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// The request a grant-backed `exec` makes (`None` with --env, where there is none).
    pub fn flags(&self) -> Option<RequestFlags> {
        Some(RequestFlags {
            role: self.role.clone()?,
            ttl: self.ttl?,
            reason: self.reason.clone()?,
            ticket: self.ticket.clone(),
            break_glass: self.break_glass,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List break-glass grants waiting for review.
    List,
    /// Acknowledge a break-glass grant.
    Ack {
        /// The grant's id.
        grant: String,
    },
}

/// `mayfly ssh ROLE user@host [-- cmd]`, `mayfly ssh ca TARGET`, `mayfly ssh krl TARGET FILE`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SshArgs {
    #[command(subcommand)]
    pub list: Option<SshCommand>,
    /// TARGET/ROLE.
    #[arg(required = true)]
    pub role: Option<String>,
    /// user@host.
    pub destination: Option<String>,
    /// How long the certificate is valid (e.g. 15m).
    #[arg(long, value_parser = parse_ttl, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Why you need access (recorded in the audit log, shown to approvers).
    #[arg(long)]
    pub reason: Option<String>,
    /// A ticket reference (recorded with the request).
    #[arg(long)]
    pub ticket: Option<String>,
    /// Emergency access, where a policy permits `break_glass`.
    #[arg(long)]
    pub break_glass: bool,
    /// Give up waiting for approval after this long (exit 1).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Your private key (its `.pub` beside it is certified); default: a fresh key, deleted after.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The host's SSH port (default: the target's).
    #[arg(long)]
    pub port: Option<u16>,
    /// An option for ssh (`-o OPTION`), e.g. `--ssh-option StrictHostKeyChecking=accept-new`.
    #[arg(long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,
    /// The command to run on the host.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What a host of an SSH target needs from the broker. Each target has its own CA: a host trusts
/// the CA of its own target only, and loads that target's KRL.
#[derive(Debug, Subcommand)]
pub enum SshCommand {
    /// Print the target's CA public key (for `TrustedUserCAKeys`).
    Ca {
        /// The SSH target's name.
        target: String,
    },
    /// Write the target's current KRL to FILE, atomically (for `RevokedKeys`).
    Krl {
        /// The SSH target's name.
        target: String,
        /// Where to write the KRL.
        file: PathBuf,
    },
}

/// What a service of an X.509 target needs from the broker. Each target has its own CA: a
/// service trusts the CA of its own target only, and loads that target's CRL.
#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Print the target's client CA certificate (PEM), to trust for client certificates.
    Ca {
        /// The X.509 target's name.
        target: String,
    },
    /// Write the target's current CRL (PEM) to FILE, atomically.
    Crl {
        /// The X.509 target's name.
        target: String,
        /// Where to write the CRL.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name_and_alias() {
        let parse = |text: &str| {
            clap::Command::new("t")
                .arg(clap::Arg::new("kind").value_parser(kind_parser()))
                .try_get_matches_from(["t", text])
                .map(|m| *m.get_one::<TargetKind>("kind").unwrap())
        };
        for kind in TargetKind::ALL {
            assert_eq!(parse(kind.as_str()).unwrap(), kind);
        }
        assert_eq!(parse("postgresql").unwrap(), TargetKind::Postgres);
        assert_eq!(parse("mariadb").unwrap(), TargetKind::Mysql);
        for bad in ["oracle", "Postgres", "tls", ""] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("postgres, mysql, redis, ssh, x509"),
                "{error}"
            );
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Add (or replace) a route of the secure proxy: `mayfly proxy add stripe --upstream
    /// https://api.stripe.com --inject 'header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}'`.
    /// Callers then call `/v1/proxy/stripe/…` with their own token; see docs/proxy.md.
    Add {
        /// The route's name (`a-z`, `0-9`, `-`).
        name: String,
        /// `https://HOST[:PORT][/PREFIX]` (plain `http://` only to this machine).
        #[arg(long)]
        upstream: String,
        /// `header:NAME=VALUE`, `basic:USER=PASSWORD` or `query:NAME=VALUE`, values naming secrets
        /// as `{{secret:PROJECT/ENV/NAME}}` (repeat for more).
        #[arg(long = "inject", required = true)]
        inject: Vec<String>,
        /// Requests per second per principal, as `RATE[/BURST]` (default 10/20).
        #[arg(long, value_name = "RATE[/BURST]")]
        rate: Option<String>,
        /// Requests per second for the whole route, as `RATE[/BURST]` (default 100/200).
        #[arg(long, value_name = "RATE[/BURST]")]
        route_rate: Option<String>,
        /// An origin whose browsers may call the route (CORS; repeat for more).
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// The largest request body forwarded, in bytes (default 1 MiB).
        #[arg(long, value_name = "BYTES")]
        max_request_bytes: Option<u64>,
        /// The largest answer body passed back, in bytes (default 10 MiB).
        #[arg(long, value_name = "BYTES")]
        max_response_bytes: Option<u64>,
        /// How long the upstream has to answer (default 30s).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        timeout: Option<Duration>,
    },
    /// List the routes.
    Ls,
    /// Remove a route.
    Rm {
        /// The route's name.
        name: String,
    },
}
