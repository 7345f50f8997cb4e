//! Command line of `switchboard-load`: one subcommand per scenario, a shared set of
//! connection, pacing and auth flags, and the hidden flags the coordinator hands to the
//! worker processes it spawns.
//!
//! Workers are started with the coordinator's own arguments plus the hidden flags, so
//! every process parses the same command line and derives the same plan from it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::source_addr::SourceIps;

/// Most sockets one worker process may hold: the hard limit of open files is 20,000
/// per process on these machines, and a worker needs a few descriptors of its own.
pub(crate) const MAX_SOCKETS_PER_PROCESS: u64 = 19_000;

/// Sockets per worker when `--processes` is not given: a margin below the limit.
const AUTO_SOCKETS_PER_PROCESS: u64 = 18_000;

/// Most messages of one fanout run: every worker keeps a slot per message, and reports
/// them all in its result line.
pub(crate) const MAX_FANOUT_MESSAGES: u64 = 100_000;

/// Most messages a storm client may be owed in one conversation: one sender sends them
/// all, within its connection's default send burst.
pub(crate) const MAX_STORM_OWED_PER_CONV: u64 = crate::plan::SENDS_PER_STORM_SENDER;

/// Most conversations a storm client may be owed messages in.
pub(crate) const MAX_STORM_CONVS: u64 = 100;

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
    /// One sender, N receivers: a group's owner sends to its N connected members, or the
    /// admin API publishes to a feed N connections subscribe to. Time to the last
    /// delivery of each message, deliveries/s, missing and out-of-order deliveries.
    Fanout(FanoutArgs),
    /// N clients connect and sync, go away, are sent messages while away, then all
    /// reconnect at once (or at --reconnect-rate), retrying with jittered backoff: time
    /// until every client has resumed, resume latency, failed and retried attempts, gaps
    /// and duplicates in the replays, and the store reads per resume (from /metrics).
    Storm(StormArgs),
    /// N connections connect and sync, then each closes and reconnects (same user and
    /// device, so it resumes) once per N / --churn-rate seconds, spread evenly: the
    /// disconnects and reconnects per second the server sustains, reconnect->synced
    /// latency, failures, and (with --server-pid) whether its memory returns.
    Churn(ChurnArgs),
}

impl ScenarioCommand {
    /// The flags every scenario shares.
    pub(crate) fn common(&self) -> &CommonArgs {
        match self {
            ScenarioCommand::Idle(args) => &args.common,
            ScenarioCommand::Chat(args) => &args.common,
            ScenarioCommand::Fanout(args) => &args.common,
            ScenarioCommand::Storm(args) => &args.common,
            ScenarioCommand::Churn(args) => &args.common,
        }
    }

    /// Which scenario this is.
    pub(crate) fn kind(&self) -> ScenarioKind {
        match self {
            ScenarioCommand::Idle(_) => ScenarioKind::Idle,
            ScenarioCommand::Chat(_) => ScenarioKind::Chat,
            ScenarioCommand::Fanout(_) => ScenarioKind::Fanout,
            ScenarioCommand::Storm(_) => ScenarioKind::Storm,
            ScenarioCommand::Churn(_) => ScenarioKind::Churn,
        }
    }

    /// The chat flags, if this is the chat scenario.
    pub(crate) fn chat(&self) -> Option<&ChatArgs> {
        match self {
            ScenarioCommand::Chat(args) => Some(args),
            ScenarioCommand::Idle(_)
            | ScenarioCommand::Fanout(_)
            | ScenarioCommand::Storm(_)
            | ScenarioCommand::Churn(_) => None,
        }
    }

    /// The fanout flags, if this is the fanout scenario.
    pub(crate) fn fanout(&self) -> Option<&FanoutArgs> {
        match self {
            ScenarioCommand::Fanout(args) => Some(args),
            ScenarioCommand::Idle(_)
            | ScenarioCommand::Chat(_)
            | ScenarioCommand::Storm(_)
            | ScenarioCommand::Churn(_) => None,
        }
    }

    /// The storm flags, if this is the storm scenario.
    pub(crate) fn storm(&self) -> Option<&StormArgs> {
        match self {
            ScenarioCommand::Storm(args) => Some(args),
            ScenarioCommand::Idle(_)
            | ScenarioCommand::Chat(_)
            | ScenarioCommand::Fanout(_)
            | ScenarioCommand::Churn(_) => None,
        }
    }

    /// The churn flags, if this is the churn scenario.
    pub(crate) fn churn(&self) -> Option<&ChurnArgs> {
        match self {
            ScenarioCommand::Churn(args) => Some(args),
            ScenarioCommand::Idle(_)
            | ScenarioCommand::Chat(_)
            | ScenarioCommand::Fanout(_)
            | ScenarioCommand::Storm(_) => None,
        }
    }

    /// The message flags, if this scenario sends messages.
    pub(crate) fn traffic(&self) -> Option<&TrafficArgs> {
        match self {
            ScenarioCommand::Idle(_) | ScenarioCommand::Churn(_) => None,
            ScenarioCommand::Chat(args) => Some(&args.traffic),
            ScenarioCommand::Fanout(args) => Some(&args.traffic),
            ScenarioCommand::Storm(args) => Some(&args.traffic),
        }
    }

    /// How long the run waits, after its last send, for what is still on its way.
    pub(crate) fn drain(&self) -> Duration {
        match self {
            ScenarioCommand::Idle(_) | ScenarioCommand::Storm(_) | ScenarioCommand::Churn(_) => Duration::ZERO,
            ScenarioCommand::Chat(args) => args.drain,
            ScenarioCommand::Fanout(args) => args.drain,
        }
    }
}

/// Scenario names as they appear in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ScenarioKind {
    Idle,
    Chat,
    Fanout,
    Storm,
    Churn,
}

impl ScenarioKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScenarioKind::Idle => "idle",
            ScenarioKind::Chat => "chat",
            ScenarioKind::Fanout => "fanout",
            ScenarioKind::Storm => "storm",
            ScenarioKind::Churn => "churn",
        }
    }
}

/// Flags of the `idle` scenario.
#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// Flags of the `churn` scenario.
#[derive(Debug, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,

    /// Disconnects per second over all processes during the steady phase, each followed
    /// at once by that connection's reconnect: every connection cycles once per
    /// -n / --churn-rate seconds, the connections' turns spread evenly over that period.
    #[arg(long, default_value_t = 500.0)]
    pub(crate) churn_rate: f64,
}

impl ChurnArgs {
    /// How long one connection stays up between two cycles.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_secs_f64(self.common.connections as f64 / self.churn_rate)
    }
}

/// Flags of the scenarios that send messages: what a message is like, and how its
/// receivers acknowledge it.
#[derive(Debug, Args)]
pub(crate) struct TrafficArgs {
    /// Size in bytes of each message body (JSON carrying the send timestamp, and a
    /// fanout's message number, padded).
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,

    /// How long a receiver batches `delivered` receipts before sending them.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub(crate) receipt_interval: Duration,
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

    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,

    /// Most unacknowledged sends per sender; a send due beyond it is skipped and counted
    /// as throttled.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_inflight: u32,

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

/// Which fanout the `fanout` scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FanoutKind {
    /// An owner connection creates a group of `--members` users (plus itself) and sends
    /// to it; the first N members connect and receive.
    Group,
    /// N connections subscribe to `feed:<run id>`; the admin HTTP API publishes to it.
    Feed,
}

impl FanoutKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FanoutKind::Group => "group",
            FanoutKind::Feed => "feed",
        }
    }
}

/// A secret from the command line or the environment; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Flags of the `fanout` scenario.
///
/// There is one group (or feed) per run and every connection is a member (or subscriber)
/// of it, so `--connections` may not exceed `--members`; several groups at once are
/// several runs with distinct `--user-prefix`es. The owner is an extra user,
/// `<prefix>owner`, on an extra connection of the coordinator, so each message has
/// exactly N recipients. The steady phase lasts until every message is sent and
/// delivered, or `--drain` after the last send (`--duration` does not apply).
#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,

    /// Group: an owner sends to a group of --members; feed: the admin API publishes to a
    /// feed every connection subscribes to.
    #[arg(long, value_enum, default_value_t = FanoutKind::Group)]
    pub(crate) kind: FanoutKind,

    /// Group members besides the owner (group only). The first --connections of them
    /// connect; the rest stay offline. Default: --connections.
    #[arg(long)]
    pub(crate) members: Option<u64>,

    /// Messages the owner sends, or broadcasts the admin API publishes.
    #[arg(long, default_value_t = 100)]
    pub(crate) messages: u64,

    /// Messages per second (default: 10 for a group, 1 for a feed).
    #[arg(long, conflicts_with = "interval")]
    pub(crate) msg_rate: Option<f64>,

    /// Time between two messages (instead of --msg-rate).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) interval: Option<Duration>,

    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,

    /// Most unacknowledged sends of the group owner; the next send waits for an ack.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_inflight: u32,

    /// After the last send, how long to wait for deliveries still missing; what has not
    /// arrived by then is counted missing.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain: Duration,

    /// Admin API token (feed: publishes go through `POST /api/v1/publish`).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<Secret>,

    /// Internal: the conversation the coordinator set up (the group, or the feed).
    #[arg(long, hide = true)]
    pub(crate) conv: Option<String>,
}

impl FanoutArgs {
    /// Group members besides the owner.
    pub(crate) fn member_count(&self) -> u64 {
        self.members.unwrap_or(self.common.connections)
    }

    /// Time between two sends.
    pub(crate) fn send_period(&self) -> Duration {
        if let Some(interval) = self.interval {
            return interval;
        }
        let rate = self.msg_rate.unwrap_or(match self.kind {
            FanoutKind::Group => 10.0,
            FanoutKind::Feed => 1.0,
        });
        Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX)
    }

    /// Planned time from the first send to the last.
    pub(crate) fn send_span(&self) -> Duration {
        self.send_period().saturating_mul(u32::try_from(self.messages.saturating_sub(1)).unwrap_or(u32::MAX))
    }
}

/// Flags of the `storm` scenario (see `storm.rs` for the whole run).
///
/// Client `i` has `--convs` conversations, each a dm with a sender user
/// (`<prefix>s<k>-<server>-<chunk>`) who sends it its share of `--owed` messages while
/// it is away. The initial connects go at `--rate`; the storm phase lasts until every
/// client has resumed or given up (`--storm-timeout`; `--duration` does not apply).
#[derive(Debug, Args)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,

    /// Messages each client is sent while it is away (and so owed when it comes back).
    #[arg(long, default_value_t = 10)]
    pub(crate) owed: u64,

    /// Conversations each client's owed messages are spread over (the first
    /// `--owed % --convs` get one more).
    #[arg(long, default_value_t = 2)]
    pub(crate) convs: u64,

    /// Reconnects per second over all processes (default: every client at once).
    #[arg(long)]
    pub(crate) reconnect_rate: Option<f64>,

    /// First delay before retrying a failed reconnect; it doubles per attempt up to
    /// --retry-max, jittered by ±50 %, and is never shorter than a 503's Retry-After.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub(crate) retry_base: Duration,

    /// Longest delay between two reconnect attempts.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) retry_max: Duration,

    /// How long after the storm starts clients keep trying; a client not resumed by then
    /// has failed.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) storm_timeout: Duration,

    /// Send `delivered` receipts for the replay --receipt-interval after `synced`, as a
    /// real client does (default: when the run stops, so the store reads counted during
    /// the storm are the resumes' alone).
    #[arg(long)]
    pub(crate) storm_receipts: bool,

    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
}

impl StormArgs {
    /// Messages owed in each conversation, by conversation number.
    pub(crate) fn owed_per_conv(&self) -> Vec<u64> {
        crate::plan::owed_per_conv(self.owed, self.convs)
    }

    /// How long the storm phase may last: the storm timeout, plus an attempt begun just
    /// before it.
    pub(crate) fn storm_bound(&self) -> Duration {
        self.storm_timeout + self.common.connect_timeout + self.common.sync_timeout
    }
}

/// Flags every scenario shares.
#[derive(Debug, Args)]
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
    pub(crate) secret: Option<Secret>,

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

    /// Draw the run to this SVG file: connections open and rates per second over time,
    /// and every latency by percentile.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,

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
        ScenarioCommand::Idle(_)
        | ScenarioCommand::Fanout(_)
        | ScenarioCommand::Storm(_)
        | ScenarioCommand::Churn(_) => (common.connections, 1),
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

    if let ScenarioCommand::Fanout(fanout) = scenario {
        validate_fanout(fanout, &mut problems);
    }
    if let ScenarioCommand::Storm(storm) = scenario {
        validate_storm(storm, &mut problems);
    }
    if let ScenarioCommand::Churn(churn) = scenario
        && !(churn.churn_rate.is_finite() && churn.churn_rate > 0.0 && churn.period() >= Duration::from_millis(10))
    {
        problems.push(format!(
            "--churn-rate must be positive and at most 100 x -n per second (each connection up at least 10 ms), got {}",
            churn.churn_rate
        ));
    }

    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

fn validate_fanout(fanout: &FanoutArgs, problems: &mut Vec<String>) {
    let connections = fanout.common.connections;
    if fanout.kind == FanoutKind::Group && fanout.member_count() < connections {
        problems.push(format!(
            "--members {} is fewer than --connections {connections}: every connection is a member of the one \
             group (run several fanouts with distinct --user-prefix for several groups)",
            fanout.member_count()
        ));
    }
    if fanout.kind == FanoutKind::Feed && fanout.members.is_some() {
        problems.push("--members is for --kind group (every connection subscribes to the feed)".to_owned());
    }
    if fanout.kind == FanoutKind::Feed && fanout.admin_token.as_deref().is_none_or(str::is_empty) {
        problems.push(
            "a feed is published through the admin API: pass --admin-token or set SWITCHBOARD_ADMIN_TOKEN".to_owned(),
        );
    }
    if !(1..=MAX_FANOUT_MESSAGES).contains(&fanout.messages) {
        problems.push(format!("--messages must be between 1 and {MAX_FANOUT_MESSAGES}, got {}", fanout.messages));
    }
    if let Some(rate) = fanout.msg_rate
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push(format!("--msg-rate must be positive (got {rate})"));
    } else if fanout.send_period() < Duration::from_micros(100) {
        problems.push("more than 10,000 messages/s: lower --msg-rate or raise --interval".to_owned());
    }
    if fanout.max_inflight == 0 {
        problems.push("--max-inflight must be at least 1".to_owned());
    }
}

fn validate_storm(storm: &StormArgs, problems: &mut Vec<String>) {
    if !(1..=MAX_STORM_CONVS).contains(&storm.convs) {
        problems.push(format!("--convs must be between 1 and {MAX_STORM_CONVS}, got {}", storm.convs));
    }
    if storm.owed < storm.convs {
        problems.push(format!(
            "--owed {} is fewer than --convs {}: every conversation needs a message",
            storm.owed, storm.convs
        ));
    } else if storm.owed.div_ceil(storm.convs.max(1)) > MAX_STORM_OWED_PER_CONV {
        problems.push(format!(
            "more than {MAX_STORM_OWED_PER_CONV} messages owed in one conversation: lower --owed or raise --convs"
        ));
    }
    if let Some(rate) = storm.reconnect_rate
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push(format!("--reconnect-rate must be positive (got {rate})"));
    }
    if storm.retry_base.is_zero() || storm.retry_max < storm.retry_base {
        problems.push("--retry-base must be above zero and at most --retry-max".to_owned());
    }
    if storm.storm_timeout.is_zero() {
        problems.push("--storm-timeout must be above zero".to_owned());
    }
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
    fn fanout_pacing_and_membership() {
        let cli = parse(&["fanout", "--dev", "-n", "1000"]).expect("parses");
        let fanout = cli.scenario.fanout().expect("fanout");
        assert_eq!((fanout.kind, fanout.member_count()), (FanoutKind::Group, 1000));
        assert_eq!(fanout.send_period(), Duration::from_millis(100));
        assert_eq!(fanout.send_span(), Duration::from_millis(9900));
        assert_eq!(cli.scenario.drain(), Duration::from_secs(10));
        assert_eq!(validate(&cli.scenario), Ok(()));

        let cli =
            parse(&["fanout", "--dev", "--kind", "feed", "--admin-token", "t", "--messages", "3"]).expect("parses");
        let fanout = cli.scenario.fanout().expect("fanout");
        assert_eq!(fanout.send_period(), Duration::from_secs(1));
        assert_eq!(fanout.send_span(), Duration::from_secs(2));
        assert_eq!(validate(&cli.scenario), Ok(()));

        let cli = parse(&["fanout", "--dev", "--interval", "250ms", "--msg-rate", "2"]);
        assert!(cli.is_err(), "--interval and --msg-rate conflict");
    }

    #[test]
    fn fanout_problems_are_all_reported() {
        let cli = parse(&["fanout", "--dev", "-n", "10", "--members", "5", "--messages", "0", "--msg-rate", "0"])
            .expect("parses");
        let problems = validate(&cli.scenario).expect_err("invalid");
        assert!(problems.contains("--members 5 is fewer"), "{problems}");
        assert!(problems.contains("--messages must be"), "{problems}");
        assert!(problems.contains("--msg-rate must be positive"), "{problems}");

        let cli = parse(&["fanout", "--dev", "--kind", "feed", "--members", "5", "--admin-token", ""]).expect("parses");
        let problems = validate(&cli.scenario).expect_err("invalid");
        assert!(problems.contains("--members is for --kind group"), "{problems}");
        assert!(problems.contains("SWITCHBOARD_ADMIN_TOKEN"), "{problems}");
    }

    #[test]
    fn storm_spreads_what_is_owed_and_checks_its_bounds() {
        let cli = parse(&["storm", "--dev", "-n", "100", "--owed", "11", "--convs", "3"]).expect("parses");
        let storm = cli.scenario.storm().expect("storm");
        assert_eq!(storm.owed_per_conv(), [4, 4, 3]);
        assert_eq!(storm.storm_bound(), Duration::from_secs(140));
        assert_eq!(cli.scenario.drain(), Duration::ZERO);
        assert_eq!(validate(&cli.scenario), Ok(()));

        let cli =
            parse(&["storm", "--dev", "--owed", "1", "--convs", "2", "--reconnect-rate", "0", "--retry-base", "0"])
                .expect("parses");
        let problems = validate(&cli.scenario).expect_err("invalid");
        assert!(problems.contains("--owed 1 is fewer than --convs 2"), "{problems}");
        assert!(problems.contains("--reconnect-rate must be positive"), "{problems}");
        assert!(problems.contains("--retry-base"), "{problems}");
        let cli = parse(&["storm", "--dev", "--owed", "2000", "--convs", "1"]).expect("parses");
        assert!(validate(&cli.scenario).expect_err("invalid").contains("more than 500 messages owed"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let cli = parse(&["idle", "--secret", "hunter2"]).expect("parses");
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let cli = parse(&["fanout", "--kind", "feed", "--secret", "s", "--admin-token", "hunter3"]).expect("parses");
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter3"), "{debug}");
    }
}
