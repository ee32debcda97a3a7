//! The `engram` binary: parses configuration and starts things.
//! `anyhow` lives here only; libraries return typed errors.

mod bench;
mod bench_mixed;
mod bench_ui;
mod bench_webhooks;
mod cli;
mod config;
mod eval;
mod keys;
mod mcp;
mod reembed;
mod runtime;
mod scenarios;
mod serve;
mod target;
mod transfer;

use clap::{CommandFactory, FromArgMatches};

/// Parses flags, `ENGRAM_*` variables and the config file into the CLI, or
/// prints why not (clap's own errors and `--help` exit here).
fn parse() -> Result<
    (
        cli::Cli,
        clap::Command,
        clap::ArgMatches,
        Option<config::FileConfig>,
    ),
    String,
> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = cli::Cli::command();
    let file = match config::config_path(&args) {
        Some(path) => {
            let file = config::FileConfig::load(&path).map_err(|e| format!("{e:#}"))?;
            cmd = config::with_file(cmd, &file).map_err(|e| format!("{e:#}"))?;
            Some(file)
        }
        None => None,
    };
    let matches = cmd.clone().get_matches_from(args);
    let cli = cli::Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Ok((cli, cmd, matches, file))
}

/// Threads the local embedding model computes with, unless
/// `CANDLE_NUM_THREADS` says otherwise. One: candle's pool spin-waits for
/// its workers, which under concurrent load burns the cores searches and
/// batching need — one thread served 45% more adds in `engram bench
/// --mixed` and embeds a lone query as fast; a bulk batch is ~16% slower
/// (docs/benchmarks.md, "Concurrent adds").
const MODEL_THREADS: &str = "1";

fn main() -> std::process::ExitCode {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the first statement of `main`, before any thread of this
        // process exists that could read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", MODEL_THREADS) };
    }
    let (cli, cmd, matches, file) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let cli::Command::Config {
        command: config::ConfigCommand::Print(_),
    } = &cli.command
    {
        let sub = ["config", "print"];
        let (Some(c), Some(m)) = (
            cmd.find_subcommand(sub[0])
                .and_then(|c| c.find_subcommand(sub[1])),
            matches
                .subcommand_matches(sub[0])
                .and_then(|m| m.subcommand_matches(sub[1])),
        ) else {
            eprintln!("error: config print is not available");
            return std::process::ExitCode::FAILURE;
        };
        print!("{}", config::print(c, m, file.as_ref()));
        return std::process::ExitCode::SUCCESS;
    }
    let _tracing = match runtime::init_tracing(&cli.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
