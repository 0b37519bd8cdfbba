//! The `tidelog` command: `tidelog serve` (the default) runs one broker; `tidelog config
//! print` shows the effective configuration and `tidelog config check FILE` validates one.
//!
//! Logs are `tracing` events on stderr, one line per significant event (start, stop, topic
//! changes, recovery, failed partitions), text or JSON; stdout carries only the
//! `listening on` line that scripts and tests read.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tidelog::config::BrokerConfig;
use tidelog::node::Node;

#[derive(Debug, Parser)]
#[command(
    name = "tidelog",
    version,
    about = "A Kafka-style partitioned commit log served over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker (the default).
    Serve(ServeArgs),
    /// Show or check a configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment, flags) as TOML.
    Print(ConfigArgs),
    /// Check a config file: known keys, valid values, nothing that cannot work. Exit 0 if so.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
}

/// Where the configuration comes from: what `serve` and `config print` share.
#[derive(Debug, Clone, clap::Args)]
struct ConfigArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "TIDELOG_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the data.
    #[arg(long, env = "TIDELOG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML config file; flags and environment variables override it.
    #[arg(long, env = "TIDELOG_CONFIG")]
    config: Option<PathBuf>,
    /// This broker's id in the cluster.
    #[arg(long, env = "TIDELOG_NODE_ID")]
    node_id: Option<u32>,
    /// The cluster's brokers, `ID=HOST:PORT,...`; without it the broker runs alone.
    #[arg(long, env = "TIDELOG_PEERS")]
    peers: Option<String>,
    /// Start although this voter's data directory lost its cluster state while the other
    /// voters know its node id: it votes again only once it caught up with their log.
    #[arg(long)]
    rejoin_after_data_loss: bool,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or `RUST_LOG` syntax
    /// (`tidelog=debug,tower=warn`). Without it, `RUST_LOG`, else `info`.
    #[arg(long)]
    log_level: Option<String>,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TIDELOG_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn main() -> ExitCode {
    tidelog::node::install_panic_hook();
    let cli = Cli::parse();
    let args = match cli.command {
        None => cli.serve,
        Some(Command::Serve(args)) => args,
        Some(Command::Config(ConfigCommand::Print(args))) => {
            return match effective_config(&args) {
                Ok(config) => {
                    print!("{}", toml::to_string(&config).expect("a config serializes"));
                    ExitCode::SUCCESS
                }
                Err(e) => bad_config(&e),
            };
        }
        Some(Command::Config(ConfigCommand::Check { file })) => {
            return match BrokerConfig::from_toml_file(&file).and_then(|c| c.validate()) {
                Ok(()) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => bad_config(&e),
            };
        }
    };
    let config = match effective_config(&args.config) {
        Ok(config) => config,
        Err(e) => return bad_config(&e),
    };
    if let Err(e) = init_logging(args.log_level.as_deref(), args.log_format) {
        eprintln!("tidelog: bad --log-level: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = tidelog::cluster::check_config(&config) {
        eprintln!("tidelog: {e}");
        return ExitCode::from(2);
    }
    raise_open_files_limit();
    bound_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(usize::try_from(config.blocking_threads).unwrap_or(usize::MAX))
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// An idle file-work thread stays this long (tokio's default is 10 s): under steady traffic
/// the pool keeps its threads instead of ending and starting them (with fresh stacks) every
/// few seconds.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(300);

/// glibc's malloc gives threads that allocate at once their own arenas, up to 8 per core, and
/// each keeps the memory freed into it: with a blocking pool of tens of threads, the resident
/// size rises for minutes as more arenas fill. Two per core holds that to a fixed level
/// reached early (the soak benchmark in the README). `MALLOC_ARENA_MAX` in the environment
/// still decides if it is set.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(2 * cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable; called before any other thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// A configuration that is refused: exit code 2, like a bad flag.
fn bad_config(error: &str) -> ExitCode {
    eprintln!("tidelog: bad config: {error}");
    ExitCode::from(2)
}

/// Defaults, then the file, then environment and flags (clap merged those two); validated.
fn effective_config(args: &ConfigArgs) -> Result<BrokerConfig, String> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_toml_file(path)?,
        None => BrokerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(peers) = &args.peers {
        config.peers = peers.clone();
    }
    if args.rejoin_after_data_loss {
        config.rejoin_after_data_loss = true;
    }
    config.validate()?;
    Ok(config)
}

/// Installs the stderr subscriber: `--log-level`, else `RUST_LOG`, else `info`. openraft
/// logs every vote and message at `info`: it gets `warn` unless a directive names it.
fn init_logging(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let quiet_raft = |directives: String| {
        if directives.contains("openraft") {
            directives
        } else {
            format!("{directives},openraft=warn")
        }
    };
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(quiet_raft(level.to_string())).map_err(|e| e.to_string())?
        }
        None => {
            let from_env = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
            let directives = if from_env.trim().is_empty() {
                "info".to_string()
            } else {
                from_env
            };
            EnvFilter::try_new(quiet_raft(directives))
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"))
        }
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

async fn serve(mut config: BrokerConfig) -> Result<(), String> {
    // Handlers first: a SIGTERM that arrives right after the address is printed must still
    // mean a clean shutdown, not the default action (immediate death).
    let signals = Signals::install().map_err(|e| format!("cannot handle signals: {e}"))?;
    // Held until the process ends: a second broker on this directory is refused before it
    // binds or reads anything.
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    check_data_format(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    config.listen = listener.local_addr().map_err(|e| e.to_string())?;
    let listen = config.listen;
    let data_dir = config.data_dir.clone();
    let node = Node::open(config).await.map_err(|e| e.to_string())?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %listen,
        data_dir = %data_dir.display(),
        "tidelog started"
    );
    println!("listening on http://{listen}");
    let _ = std::io::stdout().flush();
    let signal_node = node.clone();
    let mut signals = signals;
    let shutdown = async move {
        tokio::select! {
            _ = signals.wait() => {
                tracing::info!("shutting down: a signal arrived");
                // A cluster member first hands its leaderships over (bounded); a second
                // signal stops it at once.
                tokio::select! {
                    _ = signal_node.drain() => {}
                    _ = signals.wait() => tracing::warn!("a second signal: stopping without waiting for the controlled shutdown"),
                }
            }
            _ = signal_node.cluster.failed() => tracing::error!("shutting down: the cluster failed"),
        }
        // Ends long-polls and streams so the graceful shutdown below does not wait on them.
        signal_node.begin_shutdown();
    };
    tidelog::http::serve(node.clone(), listener, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    node.close()
        .await
        .map_err(|e| format!("clean shutdown failed: {e}"))?;
    if let Some(why) = node.cluster.fatal_error() {
        return Err(why);
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The file in the data directory that the running broker holds an exclusive lock on.
const DATA_DIR_LOCK_FILE: &str = "tidelog.lock";

/// Takes the data directory for this process: two brokers on one directory would both
/// acknowledge writes that only one log keeps. The lock (flock) goes with the process, so a
/// crash never leaves it behind; the file itself stays and means nothing while unlocked.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        )
    })?;
    let path = data_dir.join(DATA_DIR_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the data directory {} is in use by another tidelog process (it holds a lock on {}); \
             stop it or choose another --data-dir",
            data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// The file in the data directory that says which on-disk format it holds.
const DATA_FORMAT_FILE: &str = "format-version";

/// The on-disk format this build writes. A broker reads every format up to its own and
/// refuses a newer one (written after an upgrade it does not know), rather than misread it.
const DATA_FORMAT_VERSION: u32 = 1;

/// Reads the data directory's format version, or records ours in a directory that has none
/// (a fresh one, or one written before the file existed, which is format 1).
fn check_data_format(data_dir: &std::path::Path) -> Result<(), String> {
    let path = data_dir.join(DATA_FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let version: u32 = text.trim().parse().map_err(|_| {
                format!(
                    "{} does not hold a format version: {text:?}",
                    path.display()
                )
            })?;
            if version > DATA_FORMAT_VERSION {
                return Err(format!(
                    "the data directory {} holds data format {version}, written by a newer \
                     tidelog; this tidelog {} reads formats up to {DATA_FORMAT_VERSION}: run \
                     the newer tidelog, or restore a backup taken before the upgrade",
                    data_dir.display(),
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written whole or not at all: a temporary file renamed over, then synced.
            let temporary = data_dir.join(format!("{DATA_FORMAT_FILE}.tmp"));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&temporary)?;
                file.write_all(format!("{DATA_FORMAT_VERSION}\n").as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temporary, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// SIGTERM and SIGINT, registered at start so none is lost before the server runs.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or Ctrl-C (each wait takes one).
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// Every partition and connection holds file descriptors: lift the soft limit to the hard one
/// so the configured limits (`partitions_max`, `connections_max`) are what binds, not the
/// shell's default.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    soft = limit.rlim_cur,
                    "could not raise the open files limit"
                );
            }
        }
    }
}
