//! `mayfly`: the broker (`server`, `dev`) and its client commands. Reads `MAYFLY_ADDR` and
//! `MAYFLY_TOKEN`; every client command takes `--json`.

mod access;
mod client;
mod commands;

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mayfly_server::Allocator = mayfly_server::Allocator;

fn main() -> ExitCode {
    let cli = <commands::Cli as clap::Parser>::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
