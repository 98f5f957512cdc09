//! `mmsrelay`: the command line (see README.md for the contract).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod demo;
mod inspect;
mod memory;
mod probe;
mod serve;

/// Exit codes of the contract.
const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;
const EXIT_REFUSED: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

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
enum QueueAction {
    /// Queued work per peer and the oldest items.
    List,
    /// Retry a message now.
    Retry { id: String },
    /// Give up on a message (its pending recipients end failed).
    Delete { id: String },
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay. Without -c: ./mmsrelay.toml if present, else the built-in defaults.
    Serve {
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        #[arg(long = "log-format", value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a configuration file; prints each problem with its key path, exit 2 if invalid.
    CheckConfig { file: PathBuf },
    /// Submit an MM through the API; prints its id.
    Send {
        #[arg(long, default_value = "http://127.0.0.1:8025")]
        api: String,
        #[arg(long)]
        from: String,
        #[arg(long, num_args = 1.., required = true)]
        to: Vec<String>,
        #[arg(long, num_args = 1..)]
        cc: Vec<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        text: Option<String>,
        #[arg(long, num_args = 1..)]
        attach: Vec<PathBuf>,
        #[arg(long)]
        delivery_report: bool,
        #[arg(long)]
        read_reply: bool,
    },
    /// Two operators (and a hub) in one process on free loopback ports exchange MMs directly
    /// and through the hub, with acks and reports; prints the timeline and exits 0.
    Demo,
    /// Connect to an SMTP server and print its capabilities (XMM4 and AUTH included), whether
    /// TLS works, and whether its certificate verifies against `--ca`.
    Probe {
        target: String,
        /// Check the server's certificate against the CAs in this PEM file.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// The name to check it for (default: the host of TARGET).
        #[arg(long)]
        server_name: Option<String>,
        /// TLS from the first byte (a dedicated TLS port) instead of STARTTLS.
        #[arg(long)]
        implicit_tls: bool,
    },
    /// Queue inspection and control.
    Queue {
        #[arg(long, default_value = "http://127.0.0.1:8025")]
        api: String,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Print a message's per-recipient states and timeline.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8025")]
        api: String,
        id: String,
    },
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

/// Logging to stderr through a writer thread: a busy relay writes a mail log line per change
/// of every message, and the sessions and the scheduler must not wait on those writes. Lines
/// are never dropped (a full buffer holds the writer back instead); the guard flushes them at
/// exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

/// The configuration, and the file it came from (`None`: the embedded defaults).
fn load_config(
    path: Option<PathBuf>,
) -> Result<(relay::config::Config, Option<PathBuf>), ExitCode> {
    let path = path.or_else(|| {
        let default = PathBuf::from("mmsrelay.toml");
        default.exists().then_some(default)
    });
    let Some(path) = path else {
        return Ok((relay::config::Config::defaults(), None));
    };
    relay::config::Config::load(&path)
        .map(|cfg| (cfg, Some(path.clone())))
        .map_err(|e| {
            match e {
                relay::config::ConfigError::Invalid(problems) => {
                    for p in problems {
                        eprintln!("{}: {p}", path.display());
                    }
                }
                other => eprintln!("mmsrelay: {other}"),
            }
            ExitCode::from(EXIT_INVALID)
        })
}

/// The tokio runtime, or the exit code that says why there is none.
fn runtime(cmd: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("mmsrelay {cmd}: cannot start the runtime: {e}");
        ExitCode::from(EXIT_RUNTIME)
    })
}

fn main() -> ExitCode {
    memory::keep_freed_memory_for_reuse();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => {
            let (cfg, source) = match load_config(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _flush_logs_at_exit = init_logging(log_format);
            let rt = match runtime("serve") {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(serve::run(cfg, source)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mmsrelay: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Send {
            api,
            from,
            to,
            cc,
            subject,
            text,
            attach,
            delivery_report,
            read_reply,
        } => match client::send(client::SendArgs {
            api,
            from,
            to,
            cc,
            subject,
            text,
            attach,
            delivery_report,
            read_reply,
        }) {
            Ok(id) => {
                println!("{id}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mmsrelay send: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Demo => match demo::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mmsrelay demo: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Probe {
            target,
            ca,
            server_name,
            implicit_tls,
        } => {
            let opts = probe::Options {
                ca,
                server_name,
                implicit_tls,
            };
            let rt = match runtime("probe") {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(probe::probe(&target, &opts)) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mmsrelay probe {target}: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Queue { api, action } => {
            let r = match action {
                QueueAction::List => client::request(&api, "GET", "/v1/queue", None),
                QueueAction::Retry { id } => {
                    client::request(&api, "POST", &format!("/v1/queue/{id}/retry"), None)
                }
                QueueAction::Delete { id } => {
                    client::request(&api, "DELETE", &format!("/v1/queue/{id}"), None)
                }
            };
            match r {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mmsrelay queue: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::Status { api, id } => match client::status(&api, &id) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mmsrelay status: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::CheckConfig { file } => match relay::config::Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(relay::config::ConfigError::Invalid(problems)) => {
                for p in problems {
                    println!("{}: {p}", file.display());
                }
                ExitCode::from(EXIT_INVALID)
            }
            Err(e) => {
                println!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
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
