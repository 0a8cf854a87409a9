//! `cloister`: the server binary. See `cloister --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cloister_server::config::Cli::parse();
    match cli.command {
        cloister_server::config::Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(cloister_server::serve::run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
