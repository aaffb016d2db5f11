//! The command line: parse arguments, set up logging, call into the library, and
//! map outcomes to exit codes (0 ok, 1 runtime error, 2 usage or config error).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokenproxy::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "A sidecar forward proxy that injects OAuth 2.0 bearer tokens"
)]
struct Cli {
    /// Log line format on stderr; filter with RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy and the admin endpoints.
    Run {
        /// Configuration file [default: $TOKENPROXY_CONFIG, then ./tokenproxy.toml]
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print the resolved routes (secrets redacted).
    Check {
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a local token server, a local API and the proxy, and print what to try.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("tokenproxy.toml"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => match Config::load(&config_path(config)) {
            Ok(config) => {
                print!("{}", tokenproxy::describe(&config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config_path(config)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime(async move {
                let running = tokenproxy::start(config).await?;
                tokenproxy::server::shutdown_signal().await;
                running.shutdown().await;
                Ok::<(), tokenproxy::StartError>(())
            })
        }
        Command::Demo { listen } => runtime(tokenproxy::demo::run(listen)),
    }
}

fn runtime<E: std::fmt::Display>(work: impl Future<Output = Result<(), E>>) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
