//! `mayfly`: the broker (`server`, `dev`) and its client commands. Reads `MAYFLY_ADDR` and
//! `MAYFLY_TOKEN`; every command takes `--json` and `--field`; the exit codes are in
//! `mayfly --help` and docs/cli.md.
//!
//! The modules follow the command line: `grammar` (clap types), `launcher` (`server`, `dev`),
//! `admin` and `audit` (the seal, sessions, users, the log), `access` (targets to grants),
//! `session` (`exec`, `ssh`), `secrets` (the secret store, `exec --env`), `output` (what is printed, exit codes), `client` (HTTP), `local`
//! (files on this machine), `duration`.

mod access;
mod admin;
mod agents;
mod audit;
mod client;
mod duration;
mod grammar;
mod launcher;
mod local;
mod output;
mod secrets;
mod session;
mod sso;

use std::process::ExitCode;

use crate::client::Client;
use crate::grammar::{AuditCommand, ClientCommand, Command};
use crate::output::Output;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

fn main() -> ExitCode {
    let cli = match <grammar::Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // `--json` before any `--` (after it, the words are the command's).
            let json = std::env::args()
                .skip(1)
                .take_while(|arg| arg != "--")
                .any(|arg| arg == "--json");
            return output::report_usage(&error, json);
        }
    };
    let out = Output {
        json: cli.global.json,
        field: cli.global.field.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return output::report(
                &anyhow::Error::from(error).context("cannot start the async runtime"),
                out.json,
            );
        }
    };
    match runtime.block_on(run(cli, &out)) {
        Ok(code) => code,
        Err(error) => output::report(&error, out.json),
    }
}

async fn run(cli: grammar::Cli, out: &Output) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    let command = match cli.command {
        Command::Launch(command) => return launcher::run(command, out).await,
        Command::Client(command) => command,
    };
    // Offline: no broker, so no client (its CA file may not even exist here).
    if let ClientCommand::Audit(AuditCommand::Verify {
        file: Some(file),
        public_key,
        expect_head,
    }) = &command
    {
        return audit::verify_file(file, public_key.as_deref(), expect_head.as_deref(), out);
    }
    let token = global.token.or_else(local::read_token_file);
    let client = Client::new(&global.broker_addr, token, global.ca_cert.as_deref())?;
    dispatch(&client, command, out).await
}

/// One client command: the module that does it.
async fn dispatch(
    client: &Client,
    command: ClientCommand,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    match command {
        ClientCommand::Status { cluster: false } => admin::status(client, out).await?,
        ClientCommand::Status { cluster: true } => admin::cluster_status(client, out).await?,
        ClientCommand::Operator(command) => admin::operator(client, command, out).await?,
        ClientCommand::Login(args) => admin::login(client, args, out).await?,
        ClientCommand::StepUp { code } => admin::step_up(client, code, out).await?,
        ClientCommand::Logout { everywhere } => admin::logout(client, everywhere, out).await?,
        ClientCommand::Token(command) => admin::token(client, command, out).await?,
        ClientCommand::User(command) => admin::user(client, command, out).await?,
        ClientCommand::Jwt(command) => admin::jwt(client, command, out).await?,
        ClientCommand::Agent(command) => agents::agent(client, command, out).await?,
        ClientCommand::Sso(command) => sso::sso(client, command, out).await?,
        ClientCommand::Chat(command) => admin::chat(client, command, out).await?,
        ClientCommand::Audit(command) => return audit::audit(client, command, out).await,
        ClientCommand::Target(command) => access::target(client, command, out).await?,
        ClientCommand::Role(command) => access::role(client, command, out).await?,
        ClientCommand::Policy(command) => access::policy(client, command, out).await?,
        ClientCommand::Proxy(command) => access::proxy(client, command, out).await?,
        ClientCommand::Request(args) => {
            let info = access::request(client, args.flags, args.wait, args.timeout, out).await?;
            if access::refused(&info.state) {
                return Ok(output::Exit::Refused.into());
            }
        }
        ClientCommand::Approve(args) => {
            access::decide(client, &args.id, args.comment, true, out).await?;
        }
        ClientCommand::Deny(args) => {
            access::decide(client, &args.id, args.comment, false, out).await?;
        }
        ClientCommand::Requests { pending } => access::requests(client, pending, out).await?,
        ClientCommand::Activate { id } => access::activate(client, &id, out).await?,
        ClientCommand::Grants { failing, all } => {
            access::grants(client, failing, all, out).await?;
        }
        ClientCommand::Revoke { grant } => access::revoke(client, &grant, out).await?,
        ClientCommand::Renew { grant, ttl } => access::renew(client, &grant, ttl, out).await?,
        ClientCommand::Review(command) => access::review(client, command, out).await?,
        ClientCommand::Notifications { failing } => {
            access::notifications(client, failing, out).await?;
        }
        ClientCommand::X509(command) => access::x509(client, command, out).await?,
        ClientCommand::Exec(args) => return session::exec(client, args, out).await,
        ClientCommand::Ssh(args) => return session::ssh(client, args, out).await,
        ClientCommand::Secrets(command) => secrets::secrets(client, command, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}
