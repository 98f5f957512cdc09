//! `mmsrelay`: the command line (see README.md for the contract).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod inspect;

/// Exit codes of the contract.
const EXIT_RUNTIME: u8 = 1;
const EXIT_REFUSED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "mmsrelay",
    version,
    about = "MMS Relay/Server for the 3GPP MM4 reference point"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse one mail as MM4 (or a DSN) and print it as JSON; exit 3 when it is refused.
    Inspect {
        /// The mail file, or `-` for standard input.
        file: PathBuf,
    },
}

fn read_input(file: &PathBuf) -> std::io::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(file)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect { file } => {
            let raw = match read_input(&file) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("mmsrelay inspect: cannot read {}: {e}", file.display());
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let report = inspect::inspect(&raw);
            println!(
                "{}",
                serde_json::to_string_pretty(&report.json).unwrap_or_default()
            );
            if report.refused {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
