//! `cloister`: the server binary. See `cloister --help`.

use clap::Parser;
use cloister_server::config::{AdminCommand, AuditCommand, Command, RetentionCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cloister_server::config::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => cloister_server::serve::run(*args).await.map(|()| true),
            Command::Audit { command: AuditCommand::Verify(args) } => cloister_server::cli::audit_verify(&args).await,
            Command::Audit { command: AuditCommand::Proof(args) } => {
                cloister_server::cli::audit_proof(&args).await.map(|()| true)
            }
            Command::Audit { command: AuditCommand::Inventory(args) } => {
                cloister_server::cli::audit_inventory(&args).map(|()| true)
            }
            Command::Retention { command: RetentionCommand::Run(args) } => {
                cloister_server::cli::retention_run(&args).await.map(|()| true)
            }
            Command::Admin { command: AdminCommand::GrantReviewer(args) } => {
                cloister_server::cli::grant_reviewer(&args).await.map(|()| true)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // A verdict was printed (a broken audit log).
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
