//! The fanout's one sender, run by the coordinator: it sets the group or feed up before
//! any worker starts and, on `go`, sends `--messages` at the planned pace.
//!
//! - Group: an owner connection (user `<prefix>owner`, opened like any load connection)
//!   waits for `synced`, creates the group with the first chunk of members and adds the
//!   others chunk by chunk, awaiting each answer (the server answers once the change is
//!   durable). Members connect afterwards and resume into a group that exists: their
//!   `synced` names its head, the baseline of their order check. On `go` the owner sends
//!   over the same connection, at most `--max-inflight` unacknowledged; an ack makes a
//!   message published.
//! - Feed: the conversation is `feed:<run id>`; one admin call checks the API and the
//!   token up front. On `go` each message is one `POST /api/v1/publish`, one after the
//!   other; its answer makes it published.
//!
//! Message `k` is due at go + (k - 1) * period. A send that cannot go out on time (the
//! owner at its inflight limit, a slow publish answer) goes as soon as it can; its body
//! carries its real send time, so latencies stay honest. Before `go` the owner connection
//! is read too, so the server's pings are answered. What was sent and acknowledged lives
//! in a [`PublishLog`] the coordinator shares, so it survives the sender being dropped at
//! the deadline.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::admin_api::AdminApi;
use crate::auth::Auth;
use crate::cli::{FanoutArgs, FanoutKind};
use crate::connect::{self, Target, Ws, ws_error_kind};
use crate::fanout::Published;
use crate::frames::{self, HelloLimits};
use crate::plan::{member_chunks, members_per_frame, owner_id, user_id};
use crate::shared::{Clock, Meters, duration_micros};
use crate::stats::{Metric, StatsError};

/// Longest wait for the answer to one membership change.
const SETUP_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing the owner connection may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the sender did: counters (`sent`, `acked`, `send_errors`), errors, ack latency,
/// and the published messages.
#[derive(Debug)]
pub(crate) struct PublishLog {
    pub(crate) meters: Meters,
    published: RefCell<Vec<Published>>,
}

impl PublishLog {
    fn new() -> Result<Self, StatsError> {
        Ok(PublishLog { meters: Meters::new()?, published: RefCell::new(Vec::new()) })
    }

    /// The messages acknowledged so far.
    pub(crate) fn published(&self) -> Vec<Published> {
        self.published.borrow().clone()
    }

    /// How many messages were acknowledged so far.
    pub(crate) fn published_count(&self) -> u64 {
        self.published.borrow().len() as u64
    }

    fn acknowledged(&self, n: u64, sent_us: u64, ack_micros: u64) {
        self.published.borrow_mut().push(Published { n, sent_us });
        self.meters.count(|c| c.acked += 1);
        self.meters.record(Metric::Ack, ack_micros);
    }

    fn refused(&self, kind: impl Into<Cow<'static, str>>) {
        self.meters.error(kind);
        self.meters.count(|c| c.send_errors += 1);
    }
}

/// How the sender reaches the conversation.
enum Channel {
    Owner(Box<Ws>),
    Admin(AdminApi),
}

/// The sender of one fanout run, set up and waiting for `go`.
pub(crate) struct Publisher {
    channel: Channel,
    sending: Sending,
}

/// What the sender sends, and where it books it.
struct Sending {
    conv: String,
    log: Rc<PublishLog>,
    clock: Clock,
    run_id: String,
    messages: u64,
    period: Duration,
    padding: String,
    max_inflight: usize,
    drain: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let channel = match self.channel {
            Channel::Owner(_) => "owner connection",
            Channel::Admin(_) => "admin api",
        };
        f.debug_struct("Publisher")
            .field("channel", &channel)
            .field("conv", &self.sending.conv)
            .field("messages", &self.sending.messages)
            .field("period", &self.sending.period)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Sets the run's group or feed up (see the module docs); `token_ttl` is the owner
    /// token's lifetime.
    pub(crate) async fn prepare(fanout: &FanoutArgs, run_id: &str, token_ttl: Duration) -> anyhow::Result<Self> {
        let common = &fanout.common;
        // With several servers (a cluster), the first one publishes: any node can.
        let first_url = common.url.split(',').next().unwrap_or_default().trim();
        let target = Target::resolve(first_url).await?;
        let (channel, conv) = match fanout.kind {
            FanoutKind::Group => {
                let auth = Auth::from_args(common, token_ttl).context("no auth configured")?;
                let (ws, conv) = set_up_group(fanout, &target, &auth, run_id).await?;
                (Channel::Owner(Box::new(ws)), conv)
            }
            FanoutKind::Feed => {
                let token = fanout.admin_token.as_deref().context("no admin token")?.to_owned();
                let api = AdminApi::new(&target, token);
                api.check().await.context("the admin API refuses the feed's publisher")?;
                (Channel::Admin(api), format!("feed:{run_id}"))
            }
        };
        let clock = Clock::new();
        let padding = frames::body_padding(fanout.traffic.body_bytes, clock.unix_micros(), Some(fanout.messages));
        let sending = Sending {
            conv,
            log: Rc::new(PublishLog::new()?),
            clock,
            run_id: run_id.to_owned(),
            messages: fanout.messages,
            period: fanout.send_period(),
            padding,
            max_inflight: usize::try_from(fanout.max_inflight).unwrap_or(usize::MAX).max(1),
            drain: fanout.drain,
        };
        Ok(Publisher { channel, sending })
    }

    /// The conversation the run fans out in.
    pub(crate) fn conv(&self) -> &str {
        &self.sending.conv
    }

    /// What the sender did, shared with the coordinator.
    pub(crate) fn log(&self) -> Rc<PublishLog> {
        Rc::clone(&self.sending.log)
    }

    /// Waits for `go` (answering the server meanwhile), sends every message, and waits
    /// at most `--drain` for the last answers. `Err` says why sending ended early.
    pub(crate) async fn run(self, go_rx: oneshot::Receiver<()>) -> Result<(), Cow<'static, str>> {
        let Publisher { channel, sending } = self;
        match channel {
            Channel::Owner(ws) => {
                let mut ws = *ws;
                let outcome = sending.send_as_owner(&mut ws, go_rx).await;
                let close = async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                };
                let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
                outcome
            }
            Channel::Admin(api) => {
                // An error means the coordinator gave up before the steady phase.
                if go_rx.await.is_ok() {
                    sending.publish_through(&api).await;
                }
                Ok(())
            }
        }
    }
}

impl Sending {
    /// When message `n` is due.
    fn due(&self, start: Instant, n: u64) -> Instant {
        start + self.period.saturating_mul(u32::try_from(n - 1).unwrap_or(u32::MAX))
    }

    fn body(&self, n: u64) -> (u64, String) {
        let unix_micros = self.clock.unix_micros();
        (unix_micros, frames::Body { unix_micros, number: Some(n), padding: &self.padding }.json())
    }

    async fn publish_through(&self, api: &AdminApi) {
        let start = Instant::now();
        for n in 1..=self.messages {
            sleep_until(self.due(start, n)).await;
            let (sent_us, body) = self.body(n);
            let sent_at = Instant::now();
            self.log.meters.count(|c| c.sent += 1);
            match api.publish(&self.conv, &body).await {
                Ok(answer) => {
                    tracing::debug!(n, seq = answer.seq, "published");
                    self.log.acknowledged(n, sent_us, duration_micros(sent_at.elapsed()));
                }
                Err(error) => {
                    tracing::debug!(%error, n, "publish refused");
                    self.log.refused(error.kind());
                }
            }
        }
    }

    async fn send_as_owner(&self, ws: &mut Ws, mut go_rx: oneshot::Receiver<()>) -> Result<(), Cow<'static, str>> {
        loop {
            tokio::select! {
                go = &mut go_rx => match go {
                    Ok(()) => break,
                    // The coordinator gave up before the steady phase.
                    Err(_) => return Ok(()),
                },
                frame = ws.next() => { connect::text_of("owner", frame)?; }
            }
        }

        let start = Instant::now();
        // Send time (µs since the Unix epoch) of message n at n - 1; 0 until sent.
        let mut sent_us = vec![0u64; usize::try_from(self.messages).unwrap_or(0)];
        let mut next = 1;
        let mut inflight = 0usize;
        let mut last_seq = 0;
        let mut drain_until = None;
        loop {
            if next > self.messages && (inflight == 0 || drain_until.is_some_and(|until| Instant::now() >= until)) {
                break;
            }
            let sending = next <= self.messages && inflight < self.max_inflight;
            let due = if sending { self.due(start, next) } else { drain_until.unwrap_or(start) };
            tokio::select! {
                () = sleep_until(due), if sending || drain_until.is_some() => {
                    if !sending {
                        continue;
                    }
                    let unix_micros = self.clock.unix_micros();
                    let frame = frames::Send {
                        number: next,
                        mono_micros: self.clock.mono_micros(),
                        conv: &self.conv,
                        run_id: &self.run_id,
                        body: frames::Body { unix_micros, number: Some(next), padding: &self.padding },
                    };
                    ws.send(Message::text(frame.json())).await.map_err(|e| ws_error_kind("owner.write", &e))?;
                    if let Some(slot) = usize::try_from(next - 1).ok().and_then(|i| sent_us.get_mut(i)) {
                        *slot = unix_micros;
                    }
                    self.log.meters.count(|c| c.sent += 1);
                    inflight += 1;
                    next += 1;
                    if next > self.messages {
                        drain_until = Some(Instant::now() + self.drain);
                    }
                }
                frame = ws.next() => {
                    let Some(text) = connect::text_of("owner", frame)? else { continue };
                    let Ok(frame) = frames::parse(&text) else { continue };
                    let Some((n, sent_mono)) = frame.reference.as_deref().and_then(frames::parse_ref) else {
                        continue;
                    };
                    match frame.kind.as_ref() {
                        "ack" => {
                            inflight = inflight.saturating_sub(1);
                            last_seq = last_seq.max(frame.seq.unwrap_or(0));
                            let sent = usize::try_from(n.saturating_sub(1)).ok().and_then(|i| sent_us.get(i));
                            let ack_micros = self.clock.mono_micros().saturating_sub(sent_mono);
                            self.log.acknowledged(n, sent.copied().unwrap_or(0), ack_micros);
                        }
                        "error" => {
                            inflight = inflight.saturating_sub(1);
                            let code = frame.code.as_deref().unwrap_or("unknown");
                            self.log.refused(format!("server.{code}"));
                        }
                        _ => {}
                    }
                }
            }
        }
        if inflight > 0 {
            tracing::warn!(unanswered = inflight, "owner sends without an answer by the end of the drain");
        }
        // Leave the owner's cursor at the end, so a later run does not replay this one.
        if last_seq > 0 {
            let receipt = frames::delivered_receipt(&self.conv, last_seq);
            ws.send(Message::text(receipt)).await.map_err(|e| ws_error_kind("owner.write", &e))?;
        }
        Ok(())
    }
}

/// Connects the owner and builds the group: create with the first chunk of members, add
/// the rest. Returns the owner connection and the group's conversation id.
async fn set_up_group(fanout: &FanoutArgs, target: &Target, auth: &Auth, run_id: &str) -> anyhow::Result<(Ws, String)> {
    let common = &fanout.common;
    let owner = owner_id(&common.user_prefix);
    let request = auth.request(&target.url, &owner, &common.device)?;
    let mut ws = connect::open(target, None, request, common.connect_timeout)
        .await
        .map_err(|error| anyhow!("the group owner cannot connect ({}): {error}", error.kind()))?;

    // hello (its limits size the membership frames), then the owner's own resume.
    let mut limits = HelloLimits::default();
    let synced = async {
        loop {
            let text = next_owner_text(&mut ws).await?;
            let frame = frames::parse(&text)?;
            match frame.kind.as_ref() {
                "hello" => limits = frame.limits.unwrap_or_default(),
                "synced" => return Ok::<_, anyhow::Error>(()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(common.sync_timeout, synced)
        .await
        .map_err(|_| anyhow!("the group owner was not synced within --sync-timeout"))??;

    let members = fanout.member_count();
    let longest_id = user_id(&common.user_prefix, members.saturating_sub(1)).len();
    let chunks = member_chunks(members, members_per_frame(limits.max_list_len, limits.max_frame_bytes, longest_id));
    let name = format!("fanout {run_id}");
    let mut conv = String::new();
    let started = Instant::now();
    for (k, chunk) in chunks.iter().enumerate() {
        let ids: Vec<String> = chunk.clone().map(|g| user_id(&common.user_prefix, g)).collect();
        let reference = format!("member-chunk-{k}");
        let frame = if k == 0 {
            frames::group_create(&reference, &name, &ids)
        } else {
            frames::group_add(&reference, &conv, &ids)
        };
        ws.send(Message::text(frame)).await.map_err(|e| anyhow!("owner connection: {}", ws_error_kind("write", &e)))?;
        conv = tokio::time::timeout(SETUP_REPLY_TIMEOUT, group_reply(&mut ws, &reference))
            .await
            .map_err(|_| anyhow!("no answer to membership change {k} within {SETUP_REPLY_TIMEOUT:?}"))??;
    }
    tracing::info!(
        conv = %conv,
        members,
        frames = chunks.len(),
        secs = started.elapsed().as_secs_f64(),
        "group set up"
    );
    Ok((ws, conv))
}

/// The owner connection's next text frame (pings and the like skipped).
async fn next_owner_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        if let Some(text) =
            connect::text_of("owner", ws.next().await).map_err(|kind| anyhow!("owner connection: {kind}"))?
        {
            return Ok(text);
        }
    }
}

/// Reads until the answer to the membership change `reference`: the group's id, or why
/// it was refused.
async fn group_reply(ws: &mut Ws, reference: &str) -> anyhow::Result<String> {
    loop {
        let text = next_owner_text(ws).await?;
        let frame = frames::parse(&text)?;
        if frame.reference.as_deref() != Some(reference) {
            continue;
        }
        match (frame.kind.as_ref(), frame.conv) {
            ("group", Some(conv)) => return Ok(conv.into_owned()),
            ("error", _) => bail!(
                "membership change refused: {} ({})",
                frame.code.as_deref().unwrap_or("unknown"),
                frame.message.as_deref().unwrap_or("")
            ),
            (kind, _) => bail!("unexpected {kind:?} answer to a membership change"),
        }
    }
}
