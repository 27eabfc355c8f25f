//! The `darkroom` binary: parse arguments, set up logging, run, map errors to exit codes.

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    // A write past RLIMIT_FSIZE must fail with EFBIG (an error the job reports and retries)
    // instead of killing the process with SIGXFSZ.
    // SAFETY: setting a signal's disposition to ignore, before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = cli::Cli::parse();
    if !matches!(cli.command, cli::Command::Serve { .. }) {
        // A one-shot command whose output goes into a pipe that closes (`darkroom status |
        // head`) ends quietly, as Unix tools do, instead of panicking on the write. The
        // daemon keeps SIGPIPE ignored: a tool that exits early must not take it down.
        // SAFETY: setting a signal's disposition to the default, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Some(code) = cli::run_daemon_command(&cli.command) {
        std::process::exit(code);
    }
    let default_level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only on a terminal: piped or captured logs stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .init();
    if let Err(error) = cli::run(cli) {
        eprintln!("darkroom: error: {error}");
        std::process::exit(error.exit_kind() as i32);
    }
}
