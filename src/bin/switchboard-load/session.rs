//! One load connection from connect to close: a single task, no actor, no channels.
//!
//! The task selects over the socket, the run phase, and at most three timers (sync
//! timeout, next send, receipt batch). Frames it must write are queued while handling
//! an event and written together with one flush. What a connection does depends on its
//! [`Role`]: idle connections only answer, senders send at a fixed rate and time acks,
//! receivers check per-conversation order, time deliveries and send receipts. Fanout
//! members receive like receivers and also log each message's arrival by its number; a
//! feed's members first subscribe, and count as settled (and joined) on `subscribed`.
//! Storm clients idle until the run sends them away, then close and hand over to
//! [`crate::storm`], with the last seq they saw in each conversation.
//!
//! Order check (per connection and conversation): frames before `synced` are replay and
//! only counted. The baseline is the highest seq seen in replay or announced by
//! `synced`; after it every `msg` must carry exactly the previous seq + 1. A larger seq
//! is a gap (the skipped seqs are counted), a smaller or equal one is out of order.

use std::borrow::Cow;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{self, Ws, ws_error_kind};
use crate::frames::{self, Incoming};
use crate::plan::{Role, user_id};
use crate::shared::{Phase, SessionEnv, duration_micros, stopped};
use crate::stats::Metric;

/// How long closing may take at the end of a run.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A timer that is not armed (far beyond any run's deadline).
const UNARMED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The `ref` of a fanout member's `subscribe`.
const SUBSCRIBE_REF: &str = "subscribe";

/// Runs connection `index` until the run stops or the connection ends. `permit` bounds
/// connections in progress; it is released once this one has settled. A churn
/// connection closes and reconnects (as the same user and device) every churn period,
/// retrying a failed reconnect a second later, until the run stops.
pub(crate) async fn run(env: Rc<SessionEnv>, index: u64, source: Option<IpAddr>, permit: OwnedSemaphorePermit) {
    let _guard = env.meters.session_guard();
    let user = user_id(&env.user_prefix, index);
    let role = crate::plan::role(env.scenario, &env.user_prefix, index);
    let mut permit = Some(permit);
    let mut rejoin = false;
    let mut phase_rx = env.phase_rx.clone();
    let (session, end) = loop {
        let started = Instant::now();
        let ws = match open(&env, index, source, &user, &mut phase_rx).await {
            Ok(ws) => ws,
            // The run stopping while a reconnect is under way is no failure.
            Err(_) if rejoin && *phase_rx.borrow() == Phase::Stop => return,
            Err(kind) => {
                env.meters.error(kind);
                if !rejoin {
                    env.meters.count(|c| {
                        c.failed += 1;
                        c.settled += 1;
                    });
                    return;
                }
                env.meters.count(|c| c.rejoin_failed += 1);
                tokio::select! {
                    () = tokio::time::sleep(REJOIN_RETRY) => continue,
                    () = stopped(&mut phase_rx) => return,
                }
            }
        };
        env.meters.count(|c| c.connected += 1);
        env.meters.record(Metric::Connect, duration_micros(started.elapsed()));

        let mut session = Session::new(Rc::clone(&env), user.clone(), role.clone(), index, started, permit.take());
        session.rejoin = rejoin;
        let end = Box::pin(session.drive(ws, phase_rx.clone())).await;
        if !matches!(end, End::Cycle) {
            break (session, end);
        }
        env.meters.count(|c| {
            c.churned += 1;
            c.closed += 1;
        });
        rejoin = true;
    };
    let mut session = session;
    if matches!(end, End::Away)
        && let Some(storm) = &env.storm
    {
        env.meters.count(|c| c.closed += 1);
        let servers = env.targets.len() as u64;
        let owed = crate::plan::storm_convs(&env.user_prefix, index, &storm.owed_per_conv, servers)
            .into_iter()
            .map(|(conv, owed)| {
                let baseline = session.convs.iter().find(|view| *view.conv == *conv).and_then(|view| view.last_seq);
                crate::storm::OwedConv::new(conv, baseline.unwrap_or(0), owed)
            })
            .collect();
        let user = std::mem::take(&mut session.user);
        drop(session);
        Box::pin(crate::storm::run(env, index, source, user, owed)).await;
        return;
    }
    session.finish(end);
}

/// Opens connection `index` for `user`: TCP connect and WebSocket upgrade, bounded by
/// the connect timeout and cut short when the run stops. Fails with the error's kind.
async fn open(
    env: &SessionEnv,
    index: u64,
    source: Option<IpAddr>,
    user: &str,
    phase_rx: &mut tokio::sync::watch::Receiver<Phase>,
) -> Result<Ws, Cow<'static, str>> {
    let target = env.target(index);
    let request = env.auth.request(&target.url, user, &env.device).map_err(|error| {
        tracing::warn!(user.id = %user, %error, "cannot build upgrade request");
        Cow::Borrowed("auth.request")
    })?;
    // Boxed: the handshake future is ~3 KB, and the task would keep that size for its
    // whole life; boxed, it is freed once the connection is up.
    tokio::select! {
        opened = Box::pin(connect::open(target, source, request, env.connect_timeout)) => opened.map_err(|error| {
            tracing::debug!(user.id = %user, %error, "connect failed");
            error.kind()
        }),
        () = stopped(phase_rx) => Err(Cow::Borrowed("connect.cancelled")),
    }
}

/// How long a churn connection waits before retrying a failed reconnect.
const REJOIN_RETRY: Duration = Duration::from_secs(1);

/// Why the session loop ended.
#[derive(Debug)]
enum End {
    /// The run stopped; we closed.
    Stopped,
    /// Storm: the run sent the client away; we closed.
    Away,
    /// Churn: the connection's turn to reconnect came; we closed.
    Cycle,
    /// The server or the network ended the connection.
    Lost(Cow<'static, str>),
}

/// Sending state of a sender.
#[derive(Debug)]
struct Sender {
    conv: String,
    period: Duration,
    /// When the next send is due.
    next_due: Instant,
    /// Sends written.
    sent: u64,
    /// Sends answered (ack or error).
    answered: u64,
    max_inflight: u32,
    active: bool,
}

/// What one connection knows of one conversation.
#[derive(Debug)]
struct ConvView {
    conv: Box<str>,
    /// Highest seq seen (replay, `synced` or live).
    last_seq: Option<u64>,
    /// Highest seq acknowledged with a receipt.
    receipted: u64,
    gap_seen: bool,
}

struct Session {
    env: Rc<SessionEnv>,
    index: u64,
    user: String,
    started: Instant,
    /// Released once the connection has settled (synced, failed or timed out).
    permit: Option<OwnedSemaphorePermit>,
    /// Churn: this is a reconnect (its `synced` is a rejoin, and it settled long ago).
    rejoin: bool,
    /// Churn: when this connection closes for its next cycle.
    churn_due: Option<Instant>,
    settled: bool,
    synced: bool,
    phase: Phase,
    sender: Option<Sender>,
    /// The conversation whose order is checked (chat); others are only receipted.
    watched_conv: Option<String>,
    convs: Vec<ConvView>,
    receipt_due: Option<Instant>,
    /// Frames to write after the current event.
    outbox: Vec<String>,
}

impl Session {
    fn new(
        env: Rc<SessionEnv>,
        user: String,
        role: Role,
        index: u64,
        started: Instant,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let (sender, watched_conv) = match (&role, &env.chat) {
            (Role::Sender { conv }, Some(chat)) => (
                Some(Sender {
                    conv: conv.clone(),
                    period: chat.send_period,
                    next_due: Instant::now() + UNARMED,
                    sent: 0,
                    answered: 0,
                    max_inflight: chat.max_inflight,
                    active: false,
                }),
                Some(conv.clone()),
            ),
            (Role::Receiver, Some(_)) => {
                let partner = user_id(&env.user_prefix, index.saturating_sub(1));
                (None, Some(crate::plan::dm_conv(&partner, &user)))
            }
            (Role::Member, _) => (None, env.fanout.as_ref().map(|fanout| fanout.conv.clone())),
            _ => (None, None),
        };
        Session {
            env,
            index,
            user,
            started,
            settled: permit.is_none(),
            permit,
            rejoin: false,
            churn_due: None,
            synced: false,
            phase: Phase::Ramp,
            sender,
            watched_conv,
            convs: Vec::new(),
            receipt_due: None,
            outbox: Vec::new(),
        }
    }

    /// The event loop; returns why it ended. Every wait in it is bounded by a timer or
    /// by the run phase, which the worker drives to `Stop` before its deadline.
    async fn drive(&mut self, mut ws: Ws, mut phase_rx: tokio::sync::watch::Receiver<Phase>) -> End {
        let far = Instant::now() + UNARMED;
        let mut sync_timer = Box::pin(sleep_until(self.started + self.env.sync_timeout));
        let mut send_timer = Box::pin(sleep_until(far));
        let mut receipt_timer = Box::pin(sleep_until(far));
        let mut churn_timer = Box::pin(sleep_until(far));
        // The phase may have moved on while connecting.
        let initial = *phase_rx.borrow_and_update();
        self.enter_phase(initial, &mut send_timer);

        let end = loop {
            match self.phase {
                Phase::Stop => break End::Stopped,
                Phase::Away => break End::Away,
                Phase::Ramp | Phase::Steady | Phase::Drain => {}
            }
            self.arm_churn();
            if let Some(due) = self.churn_due
                && churn_timer.deadline() != due
            {
                churn_timer.as_mut().reset(due);
            }
            tokio::select! {
                changed = phase_rx.changed() => {
                    let phase = if changed.is_ok() { *phase_rx.borrow_and_update() } else { Phase::Stop };
                    self.enter_phase(phase, &mut send_timer);
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str(), &mut receipt_timer),
                    Some(Ok(Message::Close(close))) => {
                        let kind = match close {
                            Some(close) => format!("closed.{}", u16::from(close.code)),
                            None => "closed.no_code".to_owned(),
                        };
                        break End::Lost(Cow::Owned(kind));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break End::Lost(ws_error_kind("read", &error)),
                    None => break End::Lost(Cow::Borrowed("read.eof")),
                },
                () = &mut sync_timer, if !self.settled => {
                    self.env.meters.error("sync_timeout");
                    self.env.meters.count(|c| c.sync_timeouts += 1);
                    self.settle();
                }
                () = &mut send_timer, if self.sending() => self.on_send_due(&mut send_timer),
                () = &mut receipt_timer, if self.receipt_due.is_some() => self.queue_receipts(),
                () = &mut churn_timer, if self.churn_due.is_some() => break End::Cycle,
            }
            if let Err(kind) = self.flush_outbox(&mut ws).await {
                break End::Lost(kind);
            }
        };

        if matches!(end, End::Stopped | End::Away | End::Cycle) {
            // Leave the cursor where we are, so the next run is not replayed old frames.
            self.queue_receipts();
            let close = async {
                let _ = self.flush_outbox(&mut ws).await;
                let _ = ws.close(None).await;
                // Read the server's close reply (bounded by CLOSE_GRACE).
                while let Some(Ok(_)) = ws.next().await {}
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
        }
        end
    }

    /// Books the end of the connection.
    fn finish(&mut self, end: End) {
        let settled = self.settled;
        let meters = Rc::clone(&self.env.meters);
        if let End::Lost(kind) = end {
            tracing::debug!(user.id = %self.user, kind = %kind, "connection lost");
            meters.error(kind);
            meters.count(|c| {
                if settled {
                    c.dropped += 1;
                } else {
                    c.failed += 1;
                }
            });
        }
        self.settle();
        meters.count(|c| c.closed += 1);
    }

    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.env.meters.count(|c| c.settled += 1);
            self.permit = None;
        }
    }

    /// Churn: once synced in the steady phase, schedules this connection's next cycle.
    /// A first connection's turn falls at its golden-ratio share of the period (so the
    /// connections' turns spread evenly over it), a reconnect's a whole period later.
    fn arm_churn(&mut self) {
        let Some(period) = self.env.churn_period else {
            return;
        };
        if self.churn_due.is_some() || !self.synced || self.phase != Phase::Steady {
            return;
        }
        let share = if self.rejoin { 1.0 } else { (self.index as f64 * 0.618_033_988_75).fract() };
        self.churn_due = Some(Instant::now() + period.mul_f64(share));
    }

    fn sending(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.active)
    }

    fn enter_phase(&mut self, phase: Phase, send_timer: &mut Pin<Box<Sleep>>) {
        if phase == self.phase {
            return;
        }
        self.phase = phase;
        let Some(sender) = self.sender.as_mut() else {
            return;
        };
        match phase {
            Phase::Steady if !sender.active => {
                // Spread the senders' first sends over one period (golden-ratio
                // sequence by connection), so they do not all fire at once.
                let offset = (self.index as f64 * 0.618_033_988_75).fract();
                sender.next_due = Instant::now() + sender.period.mul_f64(offset);
                sender.active = true;
                send_timer.as_mut().reset(sender.next_due);
            }
            Phase::Steady | Phase::Ramp | Phase::Away => {}
            Phase::Drain | Phase::Stop => sender.active = false,
        }
    }

    fn on_send_due(&mut self, send_timer: &mut Pin<Box<Sleep>>) {
        let Some(sender) = self.sender.as_mut() else {
            return;
        };
        let meters = &self.env.meters;
        let (padding, batch) = self.env.chat.as_ref().map_or(("", 1), |chat| (chat.padding.as_str(), chat.batch));
        let clock = &self.env.clock;
        for queued in 0..batch {
            let inflight = sender.sent.saturating_sub(sender.answered);
            if inflight >= u64::from(sender.max_inflight) {
                meters.count(|c| c.throttled += u64::from(batch - queued));
                break;
            }
            sender.sent += 1;
            let frame = frames::Send {
                number: sender.sent,
                mono_micros: clock.mono_micros(),
                conv: &sender.conv,
                run_id: &self.env.run_id,
                body: frames::Body { unix_micros: clock.unix_micros(), number: None, padding },
            };
            self.outbox.push(frame.json());
            meters.count(|c| c.sent += 1);
        }

        // Next slot; slots already past are skipped and counted, so a slow generator
        // shows up as send_lag instead of a burst of catch-up sends.
        let now = Instant::now();
        let mut next = sender.next_due + sender.period;
        if next <= now {
            let behind = now.duration_since(next).as_nanos();
            let missed = u64::try_from(behind / sender.period.as_nanos().max(1)).unwrap_or(u64::MAX) + 1;
            meters.count(|c| c.send_lag += missed.saturating_mul(u64::from(batch)));
            next = now + sender.period;
        }
        sender.next_due = next;
        send_timer.as_mut().reset(next);
    }

    fn on_text(&mut self, text: &str, receipt_timer: &mut Pin<Box<Sleep>>) {
        self.env.meters.count(|c| c.frames_in += 1);
        let frame = match frames::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(user.id = %self.user, %error, "unparseable frame");
                self.env.meters.error("frame.unparseable");
                return;
            }
        };
        match frame.kind.as_ref() {
            "hello" => self.on_hello(),
            "synced" => self.on_synced(&frame),
            "subscribed" => self.on_subscribed(&frame),
            "ack" => self.on_ack(&frame),
            "msg" => self.on_msg(&frame, receipt_timer),
            "error" => self.on_error(&frame),
            // receipt, presence, typing, pong: nothing to measure yet.
            _ => {}
        }
    }

    fn on_hello(&mut self) {
        let elapsed = duration_micros(self.started.elapsed());
        self.env.meters.count(|c| c.hellos += 1);
        self.env.meters.record(Metric::Hello, elapsed);
    }

    fn on_synced(&mut self, frame: &Incoming<'_>) {
        // A storm client's baselines: the head of every conversation it is in.
        if self.env.storm.is_some()
            && let Some(convs) = &frame.convs
        {
            for (conv, &latest) in convs {
                let view = view_mut(&mut self.convs, conv);
                view.last_seq = Some(view.last_seq.map_or(latest, |seen| seen.max(latest)));
            }
        }
        if let (Some(conv), Some(convs)) = (&self.watched_conv, &frame.convs)
            && let Some(&latest) = convs.get(conv.as_str())
        {
            let view = view_mut(&mut self.convs, conv);
            view.last_seq = Some(view.last_seq.map_or(latest, |seen| seen.max(latest)));
        }
        if self.synced {
            return;
        }
        self.synced = true;
        let elapsed = duration_micros(self.started.elapsed());
        self.env.meters.count(|c| c.synced += 1);
        self.env.meters.record(Metric::Synced, elapsed);
        if self.rejoin {
            self.env.meters.count(|c| c.rejoined += 1);
            self.env.meters.record(Metric::Rejoin, elapsed);
        }
        match &self.env.fanout {
            // A feed member is ready once subscribed: settled on `subscribed`.
            Some(fanout) if fanout.subscribe => self.outbox.push(frames::subscribe(SUBSCRIBE_REF, &fanout.conv)),
            Some(_) => {
                self.env.meters.count(|c| c.joined += 1);
                self.settle();
            }
            None => self.settle(),
        }
    }

    /// A feed member's subscription is in place: from the feed's head on, every message
    /// must arrive, in order.
    fn on_subscribed(&mut self, frame: &Incoming<'_>) {
        let (Some(conv), Some(head)) = (frame.conv.as_deref(), frame.seq) else {
            self.env.meters.error("frame.subscribed_without_seq");
            return;
        };
        let view = view_mut(&mut self.convs, conv);
        view.last_seq = Some(view.last_seq.map_or(head, |seen| seen.max(head)));
        if frame.reference.as_deref() == Some(SUBSCRIBE_REF) && !self.settled {
            self.env.meters.count(|c| c.joined += 1);
            self.settle();
        }
    }

    fn on_ack(&mut self, frame: &Incoming<'_>) {
        let Some((_, sent_micros)) = frame.reference.as_deref().and_then(frames::parse_ref) else {
            self.env.meters.error("frame.unknown_ack");
            return;
        };
        let latency = self.env.clock.mono_micros().saturating_sub(sent_micros);
        self.env.meters.record(Metric::Ack, latency);
        let dup = frame.dup == Some(true);
        self.env.meters.count(|c| {
            c.acked += 1;
            c.dup_acks += u64::from(dup);
        });
        if let Some(sender) = self.sender.as_mut() {
            sender.answered += 1;
        }
    }

    fn on_error(&mut self, frame: &Incoming<'_>) {
        let code = frame.code.as_deref().unwrap_or("unknown");
        tracing::debug!(user.id = %self.user, code, "error frame");
        self.env.meters.error(format!("server.{code}"));
        let answers_send = frame.reference.as_deref().and_then(frames::parse_ref).is_some();
        self.env.meters.count(|c| {
            c.server_errors += 1;
            c.send_errors += u64::from(answers_send);
        });
        if answers_send && let Some(sender) = self.sender.as_mut() {
            sender.answered += 1;
        }
        if frame.reference.as_deref() == Some(SUBSCRIBE_REF) {
            // Not joined; settled, so the ramp does not wait for the sync timeout.
            self.settle();
        }
    }

    fn on_msg(&mut self, frame: &Incoming<'_>, receipt_timer: &mut Pin<Box<Sleep>>) {
        let meters = &self.env.meters;
        let (Some(conv), Some(seq)) = (frame.conv.as_deref(), frame.seq) else {
            meters.error("frame.msg_without_seq");
            return;
        };
        let live = self.synced;
        let checked = self.watched_conv.as_deref() == Some(conv);
        let view = view_mut(&mut self.convs, conv);
        let previous = view.last_seq;
        view.last_seq = Some(previous.map_or(seq, |last| last.max(seq)));

        let own = frame.from.as_deref() == Some(self.user.as_str());
        if !live {
            meters.count(|c| {
                c.replayed += 1;
                c.replayed_own += u64::from(own);
            });
        } else {
            if checked && let Some(last) = previous {
                if seq <= last {
                    meters.count(|c| c.out_of_order += 1);
                    return;
                }
                if seq > last + 1 {
                    let first_gap = !view.gap_seen;
                    view.gap_seen = true;
                    meters.count(|c| {
                        c.gap_events += 1;
                        c.missing_seqs += seq - last - 1;
                        c.convs_with_gaps += u64::from(first_gap);
                    });
                }
            }
            if own {
                meters.count(|c| c.own_echo += 1);
            } else {
                meters.count(|c| c.delivered += 1);
                if let Some(stamp) = frame.body.and_then(frames::body_stamp) {
                    let now = self.env.clock.unix_micros();
                    meters.record(Metric::Deliver, now.saturating_sub(stamp.t));
                    if let Some(number) = stamp.n
                        && self.env.fanout.is_some()
                    {
                        meters.record_delivery(number, stamp.t, now);
                    }
                }
            }
        }

        if self.receipt_due.is_none() {
            let due = Instant::now() + self.env.receipt_interval;
            self.receipt_due = Some(due);
            receipt_timer.as_mut().reset(due);
        }
    }

    /// Queues a cumulative `delivered` receipt for every conversation that advanced.
    fn queue_receipts(&mut self) {
        self.receipt_due = None;
        if self.env.chat.as_ref().is_some_and(|chat| !chat.receipts) {
            return;
        }
        for view in &mut self.convs {
            if let Some(last) = view.last_seq
                && last > view.receipted
            {
                view.receipted = last;
                self.outbox.push(frames::delivered_receipt(&view.conv, last));
                self.env.meters.count(|c| c.receipts_sent += 1);
            }
        }
    }

    /// Writes queued frames with a single flush.
    async fn flush_outbox(&mut self, ws: &mut Ws) -> Result<(), Cow<'static, str>> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let count = self.outbox.len() as u64;
        for frame in self.outbox.drain(..) {
            ws.feed(Message::text(frame)).await.map_err(|e| ws_error_kind("write", &e))?;
        }
        ws.flush().await.map_err(|e| ws_error_kind("write", &e))?;
        self.env.meters.count(|c| c.frames_out += count);
        Ok(())
    }
}

/// The view of `conv`, created on first sight.
fn view_mut<'v>(convs: &'v mut Vec<ConvView>, conv: &str) -> &'v mut ConvView {
    let position = match convs.iter().position(|v| &*v.conv == conv) {
        Some(position) => position,
        None => {
            convs.push(ConvView { conv: conv.into(), last_seq: None, receipted: 0, gap_seen: false });
            convs.len() - 1
        }
    };
    &mut convs[position]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tokio::sync::{Semaphore, watch};

    use crate::auth::Auth;
    use crate::cli::ScenarioKind;
    use crate::mock_server::{self, MockOptions};
    use crate::shared::{ChatSettings, Clock, FanoutSettings, test_env};
    use crate::stats::{Counters, LatencySummary};

    struct PairRun {
        counters: Counters,
        errors: Vec<(String, u64)>,
        ack: LatencySummary,
        deliver: LatencySummary,
        receipts_seen_by_server: u64,
    }

    /// Connections `0..connections` of `env`: once they have settled, the run goes
    /// steady until `steady` completes, then drains briefly and stops.
    async fn run_sessions(
        env: Rc<SessionEnv>,
        phase_tx: &watch::Sender<Phase>,
        connections: u64,
        steady: impl std::future::Future<Output = ()>,
    ) {
        let meters = Rc::clone(&env.meters);
        let connecting = Arc::new(Semaphore::new(4));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                for index in 0..connections {
                    let permit = Arc::clone(&connecting).acquire_owned().await.expect("permit");
                    let source = Some(IpAddr::from([127, 0, 0, 2 + index as u8]));
                    tokio::task::spawn_local(run(Rc::clone(&env), index, source, permit));
                }
                let until = Instant::now() + Duration::from_secs(5);
                while meters.counters().settled < connections && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                phase_tx.send_replace(Phase::Steady);
                steady.await;
                phase_tx.send_replace(Phase::Drain);
                tokio::time::sleep(Duration::from_millis(200)).await;
                phase_tx.send_replace(Phase::Stop);
                let until = Instant::now() + Duration::from_secs(3);
                while meters.live_sessions() > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
    }

    /// One sender/receiver pair against the mock: ramp, `steady` of sending at
    /// 100 msg/s, drain, stop.
    async fn run_pair(options: MockOptions, auth: Auth, steady: Duration) -> PairRun {
        let server = mock_server::spawn(options, 0).await.expect("mock server");
        let clock = Clock::new();
        let chat = ChatSettings {
            send_period: Duration::from_millis(10),
            batch: 1,
            padding: frames::body_padding(100, clock.unix_micros(), None),
            max_inflight: 64,
            receipts: true,
        };
        let (env, phase_tx) = test_env(&server.url(), auth, ScenarioKind::Chat, Some(chat), None, None).await;
        let meters = Rc::clone(&env.meters);
        run_sessions(env, &phase_tx, 2, tokio::time::sleep(steady)).await;
        // Let the mock count the last receipts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hists = meters.encoded_histograms().expect("encode");
        let mut decoded = crate::stats::Histograms::new().expect("new");
        decoded.add_encoded(&hists).expect("decode");
        PairRun {
            counters: meters.counters(),
            errors: meters.errors().iter().map(|(k, n)| (k.to_owned(), n)).collect(),
            ack: LatencySummary::of(decoded.get(Metric::Ack)),
            deliver: LatencySummary::of(decoded.get(Metric::Deliver)),
            receipts_seen_by_server: server.counts.receipts.load(Ordering::Relaxed),
        }
    }

    #[tokio::test]
    async fn pair_sends_acks_and_delivers_in_order() {
        let run = run_pair(MockOptions::default(), Auth::dev(), Duration::from_millis(500)).await;
        let c = &run.counters;
        assert_eq!((c.connected, c.hellos, c.synced, c.settled), (2, 2, 2, 2), "{c:?}");
        assert!((30..=60).contains(&c.sent), "about 50 sends expected: {c:?}");
        assert_eq!(c.acked, c.sent, "{c:?}");
        assert_eq!(c.delivered, c.sent, "{c:?}");
        assert_eq!((c.gap_events, c.out_of_order, c.dropped, c.failed), (0, 0, 0, 0), "{c:?}");
        assert_eq!(c.closed, 2);
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(run.ack.count, c.acked);
        assert_eq!(run.deliver.count, c.delivered);
        assert!(run.deliver.max < 1_000_000, "{:?}", run.deliver);
        assert!(c.receipts_sent > 0 && run.receipts_seen_by_server == c.receipts_sent, "{c:?}");
    }

    #[tokio::test]
    async fn feed_members_subscribe_and_log_each_message() {
        let server = mock_server::spawn(MockOptions::default(), 0).await.expect("mock server");
        let conv = "feed:rtest";
        let fanout = FanoutSettings { conv: conv.to_owned(), subscribe: true };
        let (env, phase_tx) =
            test_env(&server.url(), Auth::dev(), ScenarioKind::Fanout, None, Some(fanout), None).await;
        let meters = Rc::clone(&env.meters);
        // Published before anyone subscribed: the subscriptions start after it.
        server.publish(conv, r#"{"text":"before"}"#);
        let clock = Clock::new();
        let publish = async {
            for n in 1..=5 {
                let body = frames::Body { unix_micros: clock.unix_micros(), number: Some(n), padding: "" }.json();
                server.publish(conv, &body);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        run_sessions(env, &phase_tx, 3, publish).await;

        let c = meters.counters();
        assert_eq!((c.synced, c.joined, c.settled, c.failed), (3, 3, 3, 0), "{c:?}");
        assert_eq!(c.delivered, 15, "{c:?}");
        assert_eq!((c.out_of_order, c.gap_events, c.replayed), (0, 0, 0), "{c:?}");
        assert!(c.receipts_sent >= 3, "{c:?}");
        let messages = meters.message_deliveries();
        assert_eq!(messages.iter().map(|m| m.n).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(messages.iter().all(|m| m.count == 3 && m.last_us >= m.sent_us), "{messages:?}");
        assert!(meters.errors().iter().next().is_none(), "{:?}", meters.errors());
    }

    #[tokio::test]
    async fn churn_connections_close_and_reconnect_each_period() {
        let server = mock_server::spawn(MockOptions::default(), 0).await.expect("mock server");
        let (env, phase_tx) = test_env(&server.url(), Auth::dev(), ScenarioKind::Churn, None, None, None).await;
        let mut env = Rc::into_inner(env).expect("sole owner");
        env.churn_period = Some(Duration::from_millis(100));
        let env = Rc::new(env);
        let meters = Rc::clone(&env.meters);
        run_sessions(env, &phase_tx, 4, tokio::time::sleep(Duration::from_millis(550))).await;

        // 4 connections, each up 100 ms per cycle (the first turn sooner): at most 8
        // cycles each in 550 ms of steady and 200 ms of drain, fewer as reconnecting
        // takes its time too.
        let c = meters.counters();
        assert!((8..=32).contains(&c.churned), "{c:?}");
        assert!(c.rejoined + 4 >= c.churned && c.rejoined <= c.churned, "{c:?}");
        assert_eq!((c.rejoin_failed, c.failed, c.dropped), (0, 0, 0), "{c:?}");
        // Every connection, first or reconnect, was closed by us in the end.
        assert_eq!(c.connected, c.closed, "{c:?}");
        assert_eq!(c.settled, 4, "a reconnect does not settle again: {c:?}");
        assert!(meters.errors().iter().next().is_none(), "{:?}", meters.errors());
    }

    #[tokio::test]
    async fn gaps_are_detected() {
        let options = MockOptions { skip_every: Some(10), ..MockOptions::default() };
        let run = run_pair(options, Auth::dev(), Duration::from_millis(400)).await;
        let c = &run.counters;
        assert!(c.delivered >= 25, "{c:?}");
        assert!(c.gap_events >= 2, "{c:?}");
        assert_eq!(c.missing_seqs, c.gap_events);
        assert_eq!(c.convs_with_gaps, 1);
    }

    #[tokio::test]
    async fn tokens_are_accepted_and_bad_ones_refused() {
        let secret = "mock-secret";
        let options = MockOptions { secret: Some(secret.to_owned()), ..MockOptions::default() };
        let good =
            run_pair(options.clone(), Auth::hs256(secret, false, Duration::from_secs(60)), Duration::from_millis(100))
                .await;
        assert_eq!(good.counters.synced, 2, "{:?}", good.counters);

        let bad =
            run_pair(options, Auth::hs256("wrong", false, Duration::from_secs(60)), Duration::from_millis(50)).await;
        assert_eq!((bad.counters.connected, bad.counters.failed), (0, 2));
        assert_eq!(bad.errors, [("http.401".to_owned(), 2)]);
    }
}
