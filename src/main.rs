//! The command line: parse arguments, set up logging, call into the library, and
//! map outcomes to exit codes (0 ok, 1 runtime error, 2 usage or config error).

#![forbid(unsafe_code)]

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
enum TokenAction {
    Status,
    Refresh,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaAction {
    /// Create the CA (name-constrained to the routed hosts) in the configured files.
    Init,
    /// Print the CA certificate, what it may sign for, and how clients trust it.
    Show,
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
    /// Authorise the app in a browser (authorization code + PKCE) and store the first
    /// refresh token.
    Login {
        /// The token's name, as in [tokens.NAME].
        name: String,
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
        /// Print the URL only; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// Headless: paste the final redirect URL (or the code) instead of listening.
        #[arg(long)]
        manual: bool,
        /// How long to wait for the authorization.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Store a refresh token read from standard input (for tokens obtained elsewhere).
    Seed {
        /// The token's name, as in [tokens.NAME].
        name: String,
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
        /// Store it as given, without proving it with one refresh.
        #[arg(long)]
        no_verify: bool,
    },
    /// Ask a running instance (its admin endpoint) about a token, or make it refresh one.
    Token {
        #[arg(value_enum)]
        action: TokenAction,
        name: String,
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
        /// Print the token's status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when a running instance is ready (every routed token valid), 1 when
    /// it is not or does not answer within 5 s: a container's health check.
    Health {
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
        /// The admin listener to ask, instead of the configuration's `listen.admin`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Liveness (`/healthz`: the process serves) instead of readiness (`/readyz`).
        #[arg(long)]
        live: bool,
    },
    /// The local CA for HTTPS interception ([intercept]).
    Ca {
        #[arg(value_enum)]
        action: CaAction,
        #[arg(short, long, env = "TOKENPROXY_CONFIG")]
        config: Option<PathBuf>,
        /// init: replace an existing CA (clients must then trust the new one).
        #[arg(long)]
        force: bool,
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

/// The configuration, or `None` after printing why it is unusable.
fn load(arg: Option<PathBuf>) -> Option<Config> {
    Config::load(&config_path(arg))
        .map_err(|e| eprintln!("error: {e}"))
        .ok()
}

/// Log lines are formatted on the request path and written to stderr in batches
/// by a thread of their own (`tokenproxy::logging`): a request never waits for
/// stderr, and no line is lost. The guard writes what is left at exit.
fn init_logging(
    format: LogFormat,
) -> (tokenproxy::logging::Guard, tokenproxy::logging::RequestLog) {
    // PostgreSQL's notices reach the driver's log at INFO, whatever their weight
    // (they are the server's chatter, not tokenproxy's events): shown only when
    // RUST_LOG asks for them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let (writer, guard) = tokenproxy::logging::batched(std::io::stderr());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The per-request line, written without tracing's formatter (same bytes).
    let request_log = match format {
        LogFormat::Text if !ansi => tokenproxy::logging::RequestLog::plain_text(writer.clone()),
        _ => tokenproxy::logging::RequestLog::tracing(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    (guard, request_log)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (_log_writer, request_log) = init_logging(cli.log_format);
    tokenproxy::log_panics();
    match cli.command {
        Command::Check { config } => check(config),
        Command::Run { config } => run(config, request_log),
        Command::Seed {
            name,
            config,
            no_verify,
        } => seed(config, &name, !no_verify),
        Command::Login {
            name,
            config,
            no_browser,
            manual,
            timeout,
        } => {
            let opts = tokenproxy::login::LoginOptions {
                open_browser: !no_browser,
                manual,
                timeout,
            };
            login(config, &name, opts)
        }
        Command::Token {
            action,
            name,
            config,
            json,
        } => token(config, &name, matches!(action, TokenAction::Refresh), json),
        Command::Health {
            config,
            admin,
            live,
        } => health(config, admin, live),
        Command::Ca {
            action,
            config,
            force,
        } => ca(config, action, force),
        Command::Demo { listen } => runtime(tokenproxy::demo::run(listen, request_log)),
    }
}

/// `tokenproxy check`: the configuration described, then its store probed.
fn check(config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(&config_path(config)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", config.describe());
    // The store is part of what must work: reachable, and a schema this build
    // knows (exit 1 otherwise: the configuration itself is valid).
    runtime(async {
        let text = tokenproxy::probe_store(&config).await?;
        println!("store check: {text}");
        if let Some(text) = tokenproxy::intercept::check(&config)? {
            println!("intercept check: {text}");
        }
        Ok::<(), tokenproxy::StartError>(())
    })
}

/// `tokenproxy run`: serves until SIGTERM or SIGINT, reloading on SIGHUP.
fn run(config: Option<PathBuf>, request_log: tokenproxy::logging::RequestLog) -> ExitCode {
    let Some(config) = load(config) else {
        return ExitCode::from(2);
    };
    runtime(async move {
        // Watched before anything starts: SIGHUP's default is to terminate.
        let mut hangups = tokenproxy::server::hangups();
        let running = tokenproxy::start(config, request_log).await?;
        let stop = tokenproxy::server::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged and shown in /status.
                    let _ = running.reload().await;
                }
            }
        }
        running.shutdown().await;
        Ok::<(), tokenproxy::StartError>(())
    })
}

/// `tokenproxy seed NAME`: stores the refresh token read from standard input.
fn seed(config: Option<PathBuf>, name: &str, verify: bool) -> ExitCode {
    let Some(config) = load(config) else {
        return ExitCode::from(2);
    };
    let mut input = String::new();
    // Before the runtime starts: nothing else waits on this thread.
    #[allow(clippy::disallowed_methods)]
    let stdin = std::io::stdin();
    if let Err(e) = std::io::Read::read_to_string(&mut stdin.lock(), &mut input) {
        eprintln!("error: cannot read standard input: {e}");
        return ExitCode::from(2);
    }
    runtime(async move {
        let summary = tokenproxy::seed(config, name, &input, verify).await?;
        println!("{summary}");
        Ok::<(), tokenproxy::BootstrapError>(())
    })
}

/// `tokenproxy login NAME`: the authorization-code flow, its tokens stored.
fn login(config: Option<PathBuf>, name: &str, opts: tokenproxy::login::LoginOptions) -> ExitCode {
    let Some(config) = load(config) else {
        return ExitCode::from(2);
    };
    runtime(async move {
        let summary = tokenproxy::login(config, name, opts).await?;
        println!("{summary}");
        Ok::<(), tokenproxy::BootstrapError>(())
    })
}

/// `tokenproxy token status|refresh NAME`, through the admin listener.
fn token(config: Option<PathBuf>, name: &str, refresh: bool, json: bool) -> ExitCode {
    // Only the admin listener and its key are needed: the tokens' own secrets
    // need not be set where the command runs.
    let file = config_path(config);
    let target = match tokenproxy::config::ControlTarget::load(&file) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !target.tokens.iter().any(|t| t == name) {
        eprintln!("error: no token named `{name}` in {}", file.display());
        return ExitCode::from(2);
    }
    control(tokenproxy::control::token(
        target.admin,
        target.admin_key.as_ref(),
        name,
        refresh,
        json,
    ))
}

/// `tokenproxy health`: asks the admin listener of `--admin`, else the configured one.
fn health(config: Option<PathBuf>, admin: Option<std::net::SocketAddr>, live: bool) -> ExitCode {
    let admin = match admin {
        Some(a) => a,
        None => match tokenproxy::config::ControlTarget::load(&config_path(config)) {
            Ok(target) => target.admin,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    control(tokenproxy::control::health(admin, live))
}

/// A command answered by the admin listener: its report printed; exit 1 when the
/// report says something is wrong.
fn control(
    ask: impl Future<Output = Result<tokenproxy::control::Report, tokenproxy::control::ControlError>>,
) -> ExitCode {
    let mut ok = true;
    let code = runtime(async {
        let report = ask.await?;
        println!("{}", report.text);
        ok = report.ok;
        Ok::<(), tokenproxy::control::ControlError>(())
    });
    if ok { code } else { ExitCode::from(1) }
}

/// `tokenproxy ca init|show`: the interception CA.
fn ca(config: Option<PathBuf>, action: CaAction, force: bool) -> ExitCode {
    let Some(config) = load(config) else {
        return ExitCode::from(2);
    };
    let done = match action {
        CaAction::Init => tokenproxy::intercept::init(&config, force),
        CaAction::Show => tokenproxy::intercept::show(&config),
    };
    match done {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The async runtime: one worker thread per core (tokio's multi-thread runtime), or,
/// with `TOKIO_WORKER_THREADS=1` (a sidecar limited to one core), a current-thread
/// runtime — one event loop, as an nginx worker, without the cross-thread queues
/// and wake-ups a multi-thread runtime pays for even with one worker.
fn runtime<E: std::fmt::Display>(work: impl Future<Output = Result<(), E>>) -> ExitCode {
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let built = if one_worker {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let rt = match built {
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
