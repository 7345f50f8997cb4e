//! Command line of `switchboard-load`: one subcommand per scenario, a shared set of
//! connection, pacing and auth flags, and the hidden flags the coordinator hands to the
//! worker processes it spawns.
//!
//! Workers are started with the coordinator's own arguments plus the hidden flags, so
//! every process parses the same command line and derives the same plan from it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::source_addr::SourceIps;

/// Most sockets one worker process may hold: the hard limit of open files is 20,000
/// per process on these machines, and a worker needs a few descriptors of its own.
pub(crate) const MAX_SOCKETS_PER_PROCESS: u64 = 19_000;

/// Sockets per worker when `--processes` is not given: a margin below the limit.
const AUTO_SOCKETS_PER_PROCESS: u64 = 18_000;

/// Drive many WebSocket connections against a switchboard server and measure it.
#[derive(Debug, Parser)]
#[command(name = "switchboard-load", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: ScenarioCommand,
}

/// The load scenarios.
#[derive(Debug, Subcommand)]
pub(crate) enum ScenarioCommand {
    /// Open N connections and hold them idle: connect latency, errors, and (with
    /// --server-pid) server memory per connection and CPU while idle.
    Idle(IdleArgs),
    /// N/2 sender->receiver pairs of direct messages: send->ack and send->deliver
    /// latency, throughput, and per-conversation ordering checks.
    Chat(ChatArgs),
}

impl ScenarioCommand {
    /// The flags every scenario shares.
    pub(crate) fn common(&self) -> &CommonArgs {
        match self {
            ScenarioCommand::Idle(args) => &args.common,
            ScenarioCommand::Chat(args) => &args.common,
        }
    }

    /// Which scenario this is.
    pub(crate) fn kind(&self) -> ScenarioKind {
        match self {
            ScenarioCommand::Idle(_) => ScenarioKind::Idle,
            ScenarioCommand::Chat(_) => ScenarioKind::Chat,
        }
    }

    /// The chat flags, if this is the chat scenario.
    pub(crate) fn chat(&self) -> Option<&ChatArgs> {
        match self {
            ScenarioCommand::Idle(_) => None,
            ScenarioCommand::Chat(args) => Some(args),
        }
    }
}

/// Scenario names as they appear in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ScenarioKind {
    Idle,
    Chat,
}

impl ScenarioKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::Idle => "idle",
            ScenarioKind::Chat => "chat",
        }
    }
}

/// Flags of the `idle` scenario.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Flags of the `chat` scenario.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,

    /// Messages per second sent in each pair (sender -> receiver).
    #[arg(long, default_value_t = 1.0, conflicts_with = "send_rate")]
    pub(crate) msg_rate: f64,

    /// Total messages per second over all pairs (instead of --msg-rate).
    #[arg(long)]
    pub(crate) send_rate: Option<f64>,

    /// Messages a sender writes per tick, with one flush (fewer syscalls at high rates;
    /// the tick interval grows accordingly, the rate stays the same).
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: u32,

    /// Size in bytes of each message body (JSON carrying the send timestamp, padded).
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,

    /// Most unacknowledged sends per sender; a send due beyond it is skipped and counted
    /// as throttled.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_inflight: u32,

    /// How long a receiver batches `delivered` receipts before sending them.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub(crate) receipt_interval: Duration,

    /// Receivers never send receipts, not even when the run ends: every message stays
    /// owed to them, so the next connection of these devices replays it. Primes a
    /// reconnect storm (README "Benchmarks").
    #[arg(long)]
    pub(crate) no_receipts: bool,

    /// After the steady phase, how long to wait for outstanding acks and deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain: Duration,
}

impl ChatArgs {
    /// Number of sender->receiver pairs.
    pub(crate) fn pairs(&self) -> u64 {
        self.common.connections / 2
    }

    /// Messages per second of one sender.
    pub(crate) fn per_pair_rate(&self) -> f64 {
        match self.send_rate {
            Some(total) => total / self.pairs().max(1) as f64,
            None => self.msg_rate,
        }
    }

    /// Interval between two send ticks of one sender (each tick sends `--batch`).
    pub(crate) fn send_period(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.batch.max(1)) / self.per_pair_rate())
    }
}

/// Flags every scenario shares.
#[derive(Args)]
pub(crate) struct CommonArgs {
    /// WebSocket endpoint of the server (ws:// only); several, comma-separated, for a
    /// cluster: connections go round-robin over them, so chat pairs span two nodes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: String,

    /// Total number of connections over all processes.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub(crate) connections: u64,

    /// New connections per second over all processes.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,

    /// Length of the steady phase (holding idle, or sending) once every connection is up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,

    /// Hard limit for the whole run; everything stops then, whatever its state.
    /// Default: twice the ramp time plus timeouts, duration and drain, plus 30 s.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) deadline: Option<Duration>,

    /// Worker processes to spread connections over (each holds at most 19,000 sockets).
    /// Default: enough for 18,000 sockets each.
    #[arg(long)]
    pub(crate) processes: Option<u64>,

    /// Local source addresses, used round-robin: a range `A-B`, a list `A,B,C-D`, or
    /// `none` to let the kernel choose. Each address gives ~28k ephemeral ports.
    #[arg(long, default_value = "127.0.0.1-127.0.0.50")]
    pub(crate) source_ips: SourceIps,

    /// Development auth: `?user=&device=` instead of a token (server started with --dev).
    #[arg(long)]
    pub(crate) dev: bool,

    /// HS256 secret to mint tokens with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,

    /// Send the token as `?token=` instead of an `Authorization: Bearer` header.
    #[arg(long)]
    pub(crate) token_in_query: bool,

    /// User ids are this prefix followed by the connection number.
    #[arg(long, default_value = "load-u")]
    pub(crate) user_prefix: String,

    /// Device id of every connection.
    #[arg(long, default_value = "load")]
    pub(crate) device: String,

    /// Server process to sample RSS (VmRSS) and CPU time from.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,

    /// Write the machine-readable result to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Most connection attempts in progress at once, per process.
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_connecting: usize,

    /// Time allowed for TCP connect plus WebSocket upgrade.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// Time allowed from upgrade to `synced`; a connection slower than that counts a
    /// `sync_timeout` error and stays open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) sync_timeout: Duration,

    /// Do not print a progress line every second.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,

    /// Internal: this process is worker number N of a run.
    #[arg(long, hide = true)]
    pub(crate) worker_index: Option<u64>,

    /// Internal: run id shared by all workers (makes client message ids unique).
    #[arg(long, hide = true)]
    pub(crate) run_id: Option<String>,

    /// Internal: the run's hard deadline in ms since the Unix epoch.
    #[arg(long, hide = true)]
    pub(crate) deadline_unix_ms: Option<u64>,
}

impl fmt::Debug for CommonArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonArgs")
            .field("url", &self.url)
            .field("connections", &self.connections)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("deadline", &self.deadline)
            .field("processes", &self.processes)
            .field("source_ips", &self.source_ips)
            .field("dev", &self.dev)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("token_in_query", &self.token_in_query)
            .field("user_prefix", &self.user_prefix)
            .field("device", &self.device)
            .field("server_pid", &self.server_pid)
            .field("json", &self.json)
            .field("max_connecting", &self.max_connecting)
            .field("connect_timeout", &self.connect_timeout)
            .field("sync_timeout", &self.sync_timeout)
            .field("quiet", &self.quiet)
            .field("worker_index", &self.worker_index)
            .field("run_id", &self.run_id)
            .field("deadline_unix_ms", &self.deadline_unix_ms)
            .finish()
    }
}

impl CommonArgs {
    /// Worker processes of the run (explicit, or enough for the connection count).
    pub(crate) fn process_count(&self) -> u64 {
        self.processes.unwrap_or_else(|| self.connections.div_ceil(AUTO_SOCKETS_PER_PROCESS)).max(1)
    }

    /// Estimated time to open every connection at `--rate`.
    pub(crate) fn ramp_estimate(&self) -> Duration {
        Duration::from_secs_f64(self.connections as f64 / self.rate)
    }
}

/// Checks the whole command line and reports every problem at once.
pub(crate) fn validate(scenario: &ScenarioCommand) -> Result<(), String> {
    let common = scenario.common();
    let mut problems = Vec::new();

    for url in common.url.split(',').map(str::trim) {
        if !url.starts_with("ws://") {
            problems.push(format!("--url must be ws:// URLs, comma-separated (got {url:?}; TLS is not supported)"));
        }
    }
    if common.connections == 0 {
        problems.push("--connections must be at least 1".to_owned());
    }
    if !(common.rate.is_finite() && common.rate > 0.0) {
        problems.push(format!("--rate must be positive (got {})", common.rate));
    }
    if common.processes == Some(0) {
        problems.push("--processes must be at least 1".to_owned());
    }
    if common.max_connecting == 0 {
        problems.push("--max-connecting must be at least 1".to_owned());
    }
    if common.dev && common.token_in_query {
        problems.push("--token-in-query makes no sense with --dev".to_owned());
    }
    if !common.dev && common.secret.as_deref().is_none_or(str::is_empty) {
        problems.push(
            "no auth: pass --dev (server in dev mode) or a secret via --secret or \
             SWITCHBOARD_JWT_SECRET"
                .to_owned(),
        );
    }
    if let Err(problem) = check_id("--user-prefix", &common.user_prefix, 40) {
        problems.push(problem);
    }
    if let Err(problem) = check_id("--device", &common.device, 64) {
        problems.push(problem);
    }

    let processes = common.process_count();
    // Chat keeps both members of a pair in one process, so it slices pairs.
    let (units, sockets_per_unit) = match scenario {
        ScenarioCommand::Idle(_) => (common.connections, 1),
        ScenarioCommand::Chat(chat) => (chat.pairs(), 2),
    };
    let largest_slice = units.div_ceil(processes) * sockets_per_unit;
    if largest_slice > MAX_SOCKETS_PER_PROCESS {
        problems.push(format!(
            "{largest_slice} sockets in one process exceeds {MAX_SOCKETS_PER_PROCESS} \
             (open-file limit): use --processes {} or more",
            (units * sockets_per_unit).div_ceil(MAX_SOCKETS_PER_PROCESS)
        ));
    }
    if processes > units.max(1) {
        problems.push(format!("--processes {processes} is more than the {units} units of work to spread"));
    }

    if let ScenarioCommand::Chat(chat) = scenario {
        if chat.pairs() == 0 {
            problems.push("chat needs --connections of at least 2 (one pair)".to_owned());
        }
        let rate = chat.send_rate.unwrap_or(chat.msg_rate);
        if !(rate.is_finite() && rate > 0.0) {
            problems.push(format!("send rate must be positive (got {rate})"));
        } else if chat.pairs() > 0 && chat.send_period() < Duration::from_micros(100) {
            problems.push("more than 10,000 send ticks/s per pair: raise --batch or add pairs".to_owned());
        }
        if chat.max_inflight == 0 {
            problems.push("--max-inflight must be at least 1".to_owned());
        }
        if chat.batch == 0 || chat.batch > chat.max_inflight {
            problems.push(format!(
                "--batch must be between 1 and --max-inflight ({}), got {}",
                chat.max_inflight, chat.batch
            ));
        }
    }

    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Ids travel unescaped in URLs and JSON, so only the server's id alphabet is allowed.
fn check_id(flag: &str, value: &str, max_len: usize) -> Result<(), String> {
    let valid_chars = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if value.is_empty() || value.len() > max_len || !valid_chars {
        return Err(format!("{flag} must be 1..={max_len} characters of [A-Za-z0-9_.@-] (got {value:?})"));
    }
    Ok(())
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds (fractions allowed).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("switchboard-load").chain(args.iter().copied()))
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn defaults_validate_with_dev_auth() {
        let cli = parse(&["idle", "--dev"]).expect("parses");
        assert_eq!(validate(&cli.scenario), Ok(()));
        assert_eq!(cli.scenario.common().process_count(), 1);
        assert_eq!(cli.scenario.common().source_ips.len(), 50);
    }

    #[test]
    fn missing_auth_and_bad_ids_are_all_reported() {
        let cli =
            parse(&["chat", "--secret", "", "--user-prefix", "bad prefix", "--connections", "1"]).expect("parses");
        let problems = validate(&cli.scenario).expect_err("invalid");
        assert!(problems.contains("no auth"), "{problems}");
        assert!(problems.contains("--user-prefix"), "{problems}");
        assert!(problems.contains("one pair"), "{problems}");
    }

    #[test]
    fn too_many_sockets_per_process_is_refused() {
        let cli = parse(&["idle", "--dev", "-n", "40000", "--processes", "2"]).expect("parses");
        let problems = validate(&cli.scenario).expect_err("invalid");
        assert!(problems.contains("--processes 3"), "{problems}");

        let cli = parse(&["idle", "--dev", "-n", "40000"]).expect("parses");
        assert_eq!(cli.scenario.common().process_count(), 3);
        assert_eq!(validate(&cli.scenario), Ok(()));
    }

    #[test]
    fn send_rate_is_spread_over_pairs() {
        let cli = parse(&["chat", "--dev", "-n", "100", "--send-rate", "500"]).expect("parses");
        let chat = cli.scenario.chat().expect("chat");
        assert_eq!(chat.pairs(), 50);
        assert_eq!(chat.send_period(), Duration::from_millis(100));
        let cli = parse(&["chat", "--dev", "-n", "2", "--msg-rate", "100", "--batch", "5"]).expect("parses");
        let chat = cli.scenario.chat().expect("chat");
        assert_eq!(chat.per_pair_rate(), 100.0);
        assert_eq!(chat.send_period(), Duration::from_millis(50));
        assert_eq!(validate(&cli.scenario), Ok(()));
        assert!(parse(&["chat", "--send-rate", "5", "--msg-rate", "1"]).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let cli = parse(&["idle", "--secret", "hunter2"]).expect("parses");
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
