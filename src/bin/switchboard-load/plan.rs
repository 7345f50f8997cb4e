//! Who does what: how a run's connections are sliced over worker processes, and the
//! user, conversation and role of each connection.
//!
//! Connections are numbered globally `0..N`; connection `g` is user `{prefix}{g}`. The
//! idle scenario slices connections; the chat scenario slices *pairs*, so both members
//! of a pair live in the same worker: pair `p` is sender `2p` and receiver `2p + 1`,
//! talking in `dm:<a>:<b>` (the two user ids in byte order).
//!
//! The fanout scenario slices connections too; every connection is a member. A group's
//! members are users `{prefix}0..{prefix}{M-1}` plus the owner `{prefix}owner`, who
//! creates it with the first chunk of members and adds the rest chunk by chunk (a
//! frame's member list is bounded by the server's `max_list_len` and frame size).
//!
//! The storm scenario slices connections too. Client `i` has one conversation per
//! conversation number `k`: a dm with the sender `{prefix}s{k}-{t}-{j}`, where `t = i %
//! servers` is the client's server and `j` its chunk among that server's clients (at
//! most [`SENDS_PER_STORM_SENDER`] messages per sender). Sender names depend on the
//! command line only, not on the number of processes, so a chunk two workers share is
//! one user sending from two devices.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::cli::{ScenarioCommand, ScenarioKind};

/// The part of a run one worker process handles.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerPlan {
    /// Index of this worker, `0..processes`.
    pub(crate) index: u64,
    /// Global connection numbers this worker opens.
    pub(crate) connections: Range<u64>,
    /// Connects per second for this worker (its share of `--rate`).
    pub(crate) rate: f64,
    /// This worker's part of all the connections, `0..=1`.
    pub(crate) share: f64,
}

impl WorkerPlan {
    /// The slice of worker `index` for this command line.
    pub(crate) fn new(scenario: &ScenarioCommand, index: u64) -> Self {
        let common = scenario.common();
        let processes = common.process_count();
        let connections = match scenario.chat() {
            None => slice(common.connections, processes, index),
            Some(chat) => {
                let pairs = slice(chat.pairs(), processes, index);
                pairs.start * 2..pairs.end * 2
            }
        };
        let total = match scenario.chat() {
            None => common.connections,
            Some(chat) => chat.pairs() * 2,
        };
        // Proportional share, so every worker finishes its ramp at about the same time.
        let share = connections.end.saturating_sub(connections.start) as f64 / total.max(1) as f64;
        WorkerPlan { index, connections, rate: (common.rate * share).max(f64::MIN_POSITIVE), share }
    }

    /// Number of connections of this worker.
    pub(crate) fn len(&self) -> u64 {
        self.connections.end.saturating_sub(self.connections.start)
    }
}

/// The `index`-th of `parts` near-equal contiguous slices of `0..units`; the first
/// `units % parts` slices are one longer.
pub(crate) fn slice(units: u64, parts: u64, index: u64) -> Range<u64> {
    debug_assert!(parts > 0 && index < parts);
    let parts = parts.max(1);
    let base = units / parts;
    let extra = units % parts;
    let start = index * base + index.min(extra);
    let len = base + u64::from(index < extra);
    start.min(units)..(start + len).min(units)
}

/// What one connection does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Holds the connection; answers what the server sends.
    Idle,
    /// Sends to its partner in `conv`.
    Sender { conv: String },
    /// Receives from its partner and acknowledges with receipts.
    Receiver,
    /// Receives what the fanout's one sender sends to the group or feed, and
    /// acknowledges with receipts.
    Member,
}

/// User id of global connection `index`.
pub(crate) fn user_id(prefix: &str, index: u64) -> String {
    format!("{prefix}{index}")
}

/// Conversation id of the direct conversation between users `a` and `b`.
pub(crate) fn dm_conv(a: &str, b: &str) -> String {
    if a.as_bytes() <= b.as_bytes() { format!("dm:{a}:{b}") } else { format!("dm:{b}:{a}") }
}

/// Role of global connection `index` in `scenario`.
pub(crate) fn role(scenario: ScenarioKind, prefix: &str, index: u64) -> Role {
    match scenario {
        ScenarioKind::Idle => Role::Idle,
        ScenarioKind::Chat if index.is_multiple_of(2) => {
            Role::Sender { conv: dm_conv(&user_id(prefix, index), &user_id(prefix, index + 1)) }
        }
        ScenarioKind::Chat => Role::Receiver,
        ScenarioKind::Fanout => Role::Member,
        // Storm clients idle until they go away; `crate::storm` takes them from there.
        ScenarioKind::Storm => Role::Idle,
        // Churn connections idle between their cycles.
        ScenarioKind::Churn => Role::Idle,
    }
}

/// Most messages one storm sender sends: the server's default send bursts are 1,000
/// per connection and 2,000 per user, so the seeding is never rate limited.
pub(crate) const SENDS_PER_STORM_SENDER: u64 = 500;

/// How many of a storm client's `owed` messages go to each of its `convs`
/// conversations: as even as can be, the first ones one more.
pub(crate) fn owed_per_conv(owed: u64, convs: u64) -> Vec<u64> {
    let convs = convs.max(1);
    (0..convs).map(|k| owed / convs + u64::from(k < owed % convs)).collect()
}

/// Clients one storm sender serves, so that it sends at most [`SENDS_PER_STORM_SENDER`].
pub(crate) fn clients_per_sender(owed_per_conv: &[u64]) -> u64 {
    let most = owed_per_conv.iter().copied().max().unwrap_or(1).max(1);
    (SENDS_PER_STORM_SENDER / most).max(1)
}

/// The user who sends storm client `index` its messages in conversation `k`.
pub(crate) fn storm_sender(prefix: &str, index: u64, k: usize, servers: u64, per_sender: u64) -> String {
    let servers = servers.max(1);
    format!("{prefix}s{k}-{}-{}", index % servers, index / servers / per_sender.max(1))
}

/// Storm client `index`'s conversations and what it is owed in each.
pub(crate) fn storm_convs(prefix: &str, index: u64, owed: &[u64], servers: u64) -> Vec<(String, u64)> {
    let per_sender = clients_per_sender(owed);
    let user = user_id(prefix, index);
    owed.iter()
        .enumerate()
        .map(|(k, &count)| (dm_conv(&user, &storm_sender(prefix, index, k, servers, per_sender)), count))
        .collect()
}

/// One storm sender's work: `per_conv` messages in each of `convs`, through the server
/// its clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StormSender {
    pub(crate) user: String,
    /// Index of the server (`--url` list).
    pub(crate) server: u64,
    pub(crate) convs: Vec<String>,
    pub(crate) per_conv: u64,
}

impl StormSender {
    /// Messages it sends.
    pub(crate) fn planned(&self) -> u64 {
        self.convs.len() as u64 * self.per_conv
    }
}

/// The senders of storm clients `clients` (a worker's slice), in a stable order.
pub(crate) fn storm_senders(prefix: &str, clients: Range<u64>, owed: &[u64], servers: u64) -> Vec<StormSender> {
    let servers = servers.max(1);
    let per_sender = clients_per_sender(owed);
    let mut senders: BTreeMap<(usize, u64, u64), StormSender> = BTreeMap::new();
    for (k, &count) in owed.iter().enumerate() {
        for index in clients.clone() {
            let (server, chunk) = (index % servers, index / servers / per_sender);
            let sender = senders.entry((k, server, chunk)).or_insert_with(|| StormSender {
                user: storm_sender(prefix, index, k, servers, per_sender),
                server,
                convs: Vec::new(),
                per_conv: count,
            });
            sender.convs.push(dm_conv(&user_id(prefix, index), &sender.user));
        }
    }
    senders.into_values().collect()
}

/// User id of the fanout group's owner, the one sender.
pub(crate) fn owner_id(prefix: &str) -> String {
    format!("{prefix}owner")
}

/// The members (global user numbers) of each membership frame that builds a group of
/// `members` users: the first goes with `group_create`, the others with `group_add`.
pub(crate) fn member_chunks(members: u64, per_frame: u64) -> Vec<Range<u64>> {
    let per_frame = per_frame.max(1);
    (0..members.div_ceil(per_frame)).map(|k| k * per_frame..((k + 1) * per_frame).min(members)).collect()
}

/// How many user ids fit in one membership frame: at most `max_list_len`, and few enough
/// that the frame (ids of at most `max_id_bytes`, quoted, comma-separated) stays within
/// `max_frame_bytes`, with room for the rest of the frame.
pub(crate) fn members_per_frame(max_list_len: usize, max_frame_bytes: usize, max_id_bytes: usize) -> u64 {
    /// Bytes of a `group_add` frame besides its member list (type, ref, conv).
    const FRAME_OVERHEAD: usize = 256;
    let by_size = max_frame_bytes.saturating_sub(FRAME_OVERHEAD) / (max_id_bytes + 3);
    u64::try_from(max_list_len.min(by_size).max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn slices_cover_everything_exactly_once() {
        for units in [0, 1, 7, 100, 19_001, 40_000] {
            for parts in 1..=7 {
                let mut next = 0;
                let mut sizes = Vec::new();
                for index in 0..parts {
                    let range = slice(units, parts, index);
                    assert_eq!(range.start, next, "units {units} parts {parts}");
                    next = range.end;
                    sizes.push(range.end - range.start);
                }
                assert_eq!(next, units);
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1));
            }
        }
    }

    #[test]
    fn chat_keeps_pairs_in_one_worker() {
        let cli =
            Cli::try_parse_from(["switchboard-load", "chat", "--dev", "-n", "11", "--processes", "2", "--rate", "100"])
                .expect("parses");
        let first = WorkerPlan::new(&cli.scenario, 0);
        let second = WorkerPlan::new(&cli.scenario, 1);
        // 11 connections make 5 pairs: 3 + 2 pairs, the odd connection is unused.
        assert_eq!(first.connections, 0..6);
        assert_eq!(second.connections, 6..10);
        assert!((first.rate - 60.0).abs() < 1e-9);
        assert!((second.rate - 40.0).abs() < 1e-9);
    }

    #[test]
    fn idle_slices_connections() {
        let cli = Cli::try_parse_from(["switchboard-load", "idle", "--dev", "-n", "40000", "--rate", "9000"])
            .expect("parses");
        let plans: Vec<_> = (0..3).map(|i| WorkerPlan::new(&cli.scenario, i)).collect();
        assert_eq!(plans[0].connections, 0..13_334);
        assert_eq!(plans[2].connections, 26_667..40_000);
        let total_rate: f64 = plans.iter().map(|p| p.rate).sum();
        assert!((total_rate - 9000.0).abs() < 1e-6);
    }

    #[test]
    fn dm_conv_orders_by_bytes() {
        assert_eq!(dm_conv("load-u10", "load-u11"), "dm:load-u10:load-u11");
        assert_eq!(dm_conv("load-u9", "load-u10"), "dm:load-u10:load-u9");
        assert_eq!(dm_conv("bob", "alice"), "dm:alice:bob");
    }

    #[test]
    fn fanout_slices_connections_and_every_one_is_a_member() {
        let cli = Cli::try_parse_from(["switchboard-load", "fanout", "--dev", "-n", "19000", "--processes", "2"])
            .expect("parses");
        let plans: Vec<_> = (0..2).map(|i| WorkerPlan::new(&cli.scenario, i)).collect();
        assert_eq!(plans[0].connections, 0..9_500);
        assert_eq!(plans[1].connections, 9_500..19_000);
        assert_eq!(role(ScenarioKind::Fanout, "u", 7), Role::Member);
        assert_eq!(owner_id("load-u"), "load-uowner");
    }

    #[test]
    fn group_membership_goes_in_chunks() {
        assert_eq!(member_chunks(1000, 1000), vec![Range { start: 0, end: 1000 }]);
        assert_eq!(member_chunks(2500, 1000), [0..1000, 1000..2000, 2000..2500]);
        assert_eq!(member_chunks(1, 1000), vec![Range { start: 0, end: 1 }]);
        assert!(member_chunks(0, 1000).is_empty());
        assert_eq!(member_chunks(3, 0), [0..1, 1..2, 2..3]);
        // The server's defaults: 1,000 ids per list, 64 KiB frames; short ids fit 1,000.
        assert_eq!(members_per_frame(1000, 64 * 1024, 12), 1000);
        // Long ids in a small frame: the frame size binds.
        assert_eq!(members_per_frame(1000, 16 * 1024, 64), 240);
        assert_eq!(members_per_frame(1000, 100, 64), 1);
    }

    #[test]
    fn storm_senders_cover_every_client_conversation_once() {
        assert_eq!(owed_per_conv(10, 2), [5, 5]);
        assert_eq!(owed_per_conv(11, 3), [4, 4, 3]);
        assert_eq!(clients_per_sender(&[5, 5]), 100);
        assert_eq!(clients_per_sender(&[900]), 1);
        let owed = owed_per_conv(10, 2);
        // Clients 150..450 of a run on 2 servers: per conversation number, server 0
        // holds the even clients (chunks of 100: 0..200 is chunk 0, 200..400 chunk 1).
        let senders = storm_senders("u", 150..450, &owed, 2);
        let total: u64 = senders.iter().map(StormSender::planned).sum();
        assert_eq!(total, 300 * 10);
        assert!(senders.iter().all(|s| s.planned() <= SENDS_PER_STORM_SENDER), "{senders:?}");
        for index in [150, 151, 449] {
            for (conv, count) in storm_convs("u", index, &owed, 2) {
                let holders: Vec<_> = senders.iter().filter(|s| s.convs.contains(&conv)).collect();
                assert_eq!(holders.len(), 1, "{conv}");
                assert_eq!((holders[0].per_conv, holders[0].server), (count, index % 2));
            }
        }
        assert_eq!(storm_sender("u", 151, 1, 2, 100), "us1-1-0");
        assert_eq!(storm_convs("u", 401, &owed, 2)[0].0, "dm:u401:us0-1-2");
    }

    #[test]
    fn chat_roles_alternate() {
        assert_eq!(role(ScenarioKind::Chat, "u", 8), Role::Sender { conv: "dm:u8:u9".to_owned() });
        assert_eq!(role(ScenarioKind::Chat, "u", 9), Role::Receiver);
        assert_eq!(role(ScenarioKind::Idle, "u", 8), Role::Idle);
    }
}
