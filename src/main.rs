//! `plyfs`: parses the command line and mounts. Everything else is in the
//! library.

use clap::Parser;

fn main() {
    let cli = plyfs::cli::Cli::parse();
    let req = match cli.into_request() {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("plyfs: {msg}");
            std::process::exit(1);
        }
    };
    let level = if req.options.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_micros()
        .init();
    std::process::exit(plyfs::daemon::run(req));
}
