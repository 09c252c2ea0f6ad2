//! The `labelmill` binary: parse the command line, set up logging, hand over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use labelmill::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // candle sizes its thread pools from these variables on first use, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.max(1).to_string());
    }
    init_tracing(cli.log_json);
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LABELMILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
