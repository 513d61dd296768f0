//! `plyfs`: parses the command line and mounts. Everything else is in the
//! library.

use clap::Parser;
use clap::error::ErrorKind;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if plyfs::cmd::is_subcommand(&args) {
        std::process::exit(plyfs::cmd::main(args));
    }
    if args.len() == 2 && matches!(args[1].to_str(), Some("--version" | "-V")) {
        print!("{}", plyfs::version::text());
        return;
    }
    let cli = match plyfs::cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        // --help and --version print and succeed.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other input error, and exit code 1.
            eprintln!("plyfs: {} (see plyfs --help)", plyfs::cli::one_line(&e));
            std::process::exit(1);
        }
    };
    let req = match cli.into_request() {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("plyfs: {msg}");
            std::process::exit(1);
        }
    };
    plyfs::logging::init(req.options.debug);
    std::process::exit(plyfs::daemon::run(req));
}
