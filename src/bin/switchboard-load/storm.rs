//! The `storm` scenario's clients once they have gone away: wait for the storm,
//! reconnect (all at once, or in their slot of `--reconnect-rate`), retry like real
//! clients, and check what the resume replays.
//!
//! The run (driven by [`crate::worker`]): every client connects and syncs as in `idle`,
//! then all close (1000) and the worker's senders ([`seed`]) send each client `--owed`
//! messages over its `--convs` conversations while it is away. On `go` every client
//! reconnects; the server resumes it (replay after its cursor, then `synced`).
//!
//! A client knows what it is owed: in each of its conversations (a dm with its sender
//! there, [`crate::plan::storm_convs`]), the seqs after the last one it saw before going
//! away (its baseline), as many as it was sent. The replay must carry exactly those, in
//! order, before `synced`: a seq past the next expected one is a gap (the seqs skipped
//! are missing), one not past the last seen is a duplicate, a `synced` head short of what
//! was replayed counts the rest missing, and a head other than baseline + owed is an
//! owed mismatch (the seeding did not land, or other traffic did).
//!
//! Each attempt is bounded: TCP connect and upgrade by `--connect-timeout`, upgrade to
//! `synced` by `--sync-timeout`. A failed attempt (503 from admission, a timeout, a
//! refused or reset connection, a close before `synced`) is retried after an
//! exponential backoff, `--retry-base` doubled per attempt up to `--retry-max` and
//! jittered by ±50 %, and never before a 503's `Retry-After` (jittered up to +50 %, so a
//! refused herd does not come back at once). A client not resumed `--storm-timeout`
//! after `go` gives up. Resume latency runs from the start of the first attempt to
//! `synced`, retries included: what the user waits.
//!
//! Receipts for the replay are sent when the run stops (so the store reads counted
//! during the storm are the resumes' own), or with `--storm-receipts` as a real client
//! does, `--receipt-interval` after `synced`.

pub(crate) mod outcome;
pub(crate) mod seed;

use std::borrow::Cow;
use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{self, Ws, ws_error_kind};
use crate::frames::{self, Incoming};
use crate::shared::{Phase, SessionEnv, duration_micros, stopped};
use crate::stats::Metric;

/// What the storm's clients and senders of one worker share.
#[derive(Debug)]
pub(crate) struct StormSettings {
    /// Messages each client is owed, by conversation number.
    pub(crate) owed_per_conv: Vec<u64>,
    /// Time between two reconnects of this worker's clients (`None`: all at once).
    pub(crate) reconnect_period: Option<Duration>,
    /// The first connection number of this worker (its reconnect slot 0).
    pub(crate) first_index: u64,
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    /// How long after `go` clients keep trying.
    pub(crate) timeout: Duration,
    /// Send receipts `receipt_interval` after `synced`, not at the end.
    pub(crate) receipts_during: bool,
    /// Body padding of the senders' messages.
    pub(crate) padding: String,
    /// When this worker's last client resumed, µs since the Unix epoch (0: none yet).
    pub(crate) last_resumed_us: Cell<u64>,
}

/// One conversation of a client, as the client sees it during the storm.
#[derive(Debug, Clone)]
pub(crate) struct OwedConv {
    pub(crate) conv: String,
    /// Highest seq the client saw before going away.
    pub(crate) baseline: u64,
    /// Messages sent to it while away.
    pub(crate) owed: u64,
    /// The seq the replay must carry next (in the current attempt).
    next: u64,
    /// The head `synced` announced.
    head: u64,
}

impl OwedConv {
    pub(crate) fn new(conv: String, baseline: u64, owed: u64) -> Self {
        OwedConv { conv, baseline, owed, next: baseline + 1, head: baseline }
    }
}

/// What one attempt's replay showed; booked only for the attempt that reached `synced`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ReplayTally {
    replayed: u64,
    duplicates: u64,
    missing: u64,
    convs_with_gaps: u64,
    owed_mismatch: u64,
    extra_convs: u64,
}

/// How one attempt ended.
enum Attempt {
    Resumed(Box<Ws>),
    Failed { kind: Cow<'static, str>, retry_after: Option<Duration> },
    Stopped,
}

/// Runs client `index` from the moment it went away: waits for `go`, resumes, holds the
/// connection until the run stops, then sends its receipts and closes.
pub(crate) async fn run(env: Rc<SessionEnv>, index: u64, source: Option<IpAddr>, user: String, owed: Vec<OwedConv>) {
    let Some(storm) = env.storm.as_ref() else { return };
    let meters = &env.meters;
    meters.count(|c| c.went_away += 1);
    let mut phase_rx = env.phase_rx.clone();
    if phase_rx.wait_for(|phase| *phase >= Phase::Steady).await.map_or(true, |phase| *phase == Phase::Stop) {
        return;
    }
    let go = Instant::now();
    let give_up_at = go + storm.timeout;
    if let Some(period) = storm.reconnect_period {
        let slot = u32::try_from(index.saturating_sub(storm.first_index)).unwrap_or(u32::MAX);
        tokio::select! {
            () = sleep_until(go + period.saturating_mul(slot)) => {}
            () = stopped(&mut phase_rx) => return,
        }
    }

    let mut client = Client { env: &env, index, source, user, owed, attempts: 0 };
    let started = Instant::now();
    let ws = loop {
        let (kind, retry_after) = match client.attempt(&mut phase_rx).await {
            Attempt::Resumed(ws) => break ws,
            Attempt::Stopped => {
                meters.error("storm.unfinished");
                meters.count(|c| c.resume_failed += 1);
                return;
            }
            Attempt::Failed { kind, retry_after } => (kind, retry_after),
        };
        meters.error(format!("storm.{kind}"));
        let delay = retry_delay(storm, client.attempts, retry_after, rand::random::<f64>());
        if Instant::now() + delay >= give_up_at {
            meters.error("storm.gave_up");
            meters.count(|c| c.resume_failed += 1);
            return;
        }
        meters.count(|c| c.resume_retries += 1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut phase_rx) => {
                meters.error("storm.unfinished");
                meters.count(|c| c.resume_failed += 1);
                return;
            }
        }
    };
    meters.record(Metric::Resume, duration_micros(started.elapsed()));
    let now_us = env.clock.unix_micros();
    storm.last_resumed_us.set(storm.last_resumed_us.get().max(now_us));
    client.hold(*ws, phase_rx).await;
}

/// A client during the storm.
struct Client<'e> {
    env: &'e SessionEnv,
    index: u64,
    source: Option<IpAddr>,
    user: String,
    owed: Vec<OwedConv>,
    attempts: u32,
}

impl Client<'_> {
    /// One connection attempt, up to `synced`.
    async fn attempt(&mut self, phase_rx: &mut watch::Receiver<Phase>) -> Attempt {
        self.attempts += 1;
        let env = self.env;
        let target = env.target(self.index);
        let request = match env.auth.request(&target.url, &self.user, &env.device) {
            Ok(request) => request,
            Err(_) => return Attempt::Failed { kind: Cow::Borrowed("auth.request"), retry_after: None },
        };
        let opened = tokio::select! {
            opened = Box::pin(connect::open(target, self.source, request, env.connect_timeout)) => opened,
            () = stopped(phase_rx) => return Attempt::Stopped,
        };
        let mut ws = match opened {
            Ok(ws) => ws,
            Err(error) => return Attempt::Failed { kind: error.kind(), retry_after: error.retry_after() },
        };
        env.meters.count(|c| c.connected += 1);
        for view in &mut self.owed {
            view.next = view.baseline + 1;
        }

        let mut tally = ReplayTally::default();
        let sync_timer = sleep_until(Instant::now() + env.sync_timeout);
        tokio::pin!(sync_timer);
        let failure = loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(frame) = frames::parse(text.as_str()) else {
                            env.meters.error("frame.unparseable");
                            continue;
                        };
                        match frame.kind.as_ref() {
                            "msg" => self.on_replayed(&frame, &mut tally),
                            "synced" => {
                                self.on_synced(&frame, &mut tally);
                                env.meters.count(|c| {
                                    c.resumed += 1;
                                    c.resume_replayed += tally.replayed;
                                    c.resume_duplicates += tally.duplicates;
                                    c.resume_missing += tally.missing;
                                    c.resume_gap_convs += tally.convs_with_gaps;
                                    c.owed_mismatch += tally.owed_mismatch;
                                    c.resume_extra_convs += tally.extra_convs;
                                });
                                return Attempt::Resumed(Box::new(ws));
                            }
                            "error" => env.meters.error(format!("storm.server.{}", frame.code.as_deref().unwrap_or("unknown"))),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        break Cow::Owned(close.map_or("closed.no_code".to_owned(), |c| format!("closed.{}", u16::from(c.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break ws_error_kind("read", &error),
                    None => break Cow::Borrowed("read.eof"),
                },
                () = &mut sync_timer => break Cow::Borrowed("sync_timeout"),
                () = stopped(phase_rx) => {
                    env.meters.count(|c| c.closed += 1);
                    return Attempt::Stopped;
                }
            }
        };
        env.meters.count(|c| c.closed += 1);
        Attempt::Failed { kind: failure, retry_after: None }
    }

    /// A message before `synced`: the next one owed in its conversation, or a gap, or a
    /// duplicate.
    fn on_replayed(&mut self, frame: &Incoming<'_>, tally: &mut ReplayTally) {
        let (Some(conv), Some(seq)) = (frame.conv.as_deref(), frame.seq) else {
            self.env.meters.error("frame.msg_without_seq");
            return;
        };
        let Some(view) = self.owed.iter_mut().find(|view| view.conv == conv) else {
            // A conversation this client was owed nothing in (an earlier run's).
            tally.replayed += 1;
            return;
        };
        if seq < view.next {
            tally.duplicates += 1;
            return;
        }
        tally.replayed += 1;
        if seq > view.next {
            tally.missing += seq - view.next;
            tally.convs_with_gaps += 1;
        }
        view.next = seq + 1;
    }

    /// `synced`: every owed conversation must have been replayed up to its head, and its
    /// head must be what was sent to it.
    fn on_synced(&mut self, frame: &Incoming<'_>, tally: &mut ReplayTally) {
        let heads = frame.convs.as_ref();
        for view in &mut self.owed {
            let head = heads.and_then(|heads| heads.get(&view.conv)).copied().unwrap_or(0);
            view.head = head;
            let replayed_to = view.next - 1;
            if head > replayed_to {
                tally.missing += head - replayed_to;
                tally.convs_with_gaps += 1;
            }
            if head != view.baseline + view.owed {
                tally.owed_mismatch += 1;
            }
        }
        if let Some(heads) = heads {
            tally.extra_convs =
                heads.keys().filter(|conv| !self.owed.iter().any(|view| &view.conv == *conv)).count() as u64;
        }
    }

    /// Holds the resumed connection until the run stops: sends the receipts (after
    /// `--receipt-interval` with `--storm-receipts`, else at the end), then closes.
    async fn hold(&mut self, mut ws: Ws, mut phase_rx: watch::Receiver<Phase>) {
        let env = self.env;
        let during = env.storm.as_ref().is_some_and(|storm| storm.receipts_during);
        let receipt_timer = sleep_until(Instant::now() + env.receipt_interval);
        tokio::pin!(receipt_timer);
        let mut receipted = false;
        loop {
            tokio::select! {
                () = stopped(&mut phase_rx) => break,
                () = &mut receipt_timer, if during && !receipted => {
                    receipted = true;
                    if self.send_receipts(&mut ws).await.is_err() {
                        env.meters.count(|c| { c.dropped += 1; c.closed += 1; });
                        return;
                    }
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        env.meters.count(|c| c.frames_in += 1);
                        if frames::parse(text.as_str()).is_ok_and(|frame| frame.kind == "msg") {
                            env.meters.count(|c| c.delivered += 1);
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
                        let kind = close.map_or("closed.no_code".to_owned(), |c| format!("closed.{}", u16::from(c.code)));
                        env.meters.error(format!("storm.after_resume.{kind}"));
                        env.meters.count(|c| { c.dropped += 1; c.closed += 1; });
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        env.meters.error("storm.after_resume.lost");
                        env.meters.count(|c| { c.dropped += 1; c.closed += 1; });
                        return;
                    }
                },
            }
        }
        let close = async {
            if !receipted {
                let _ = self.send_receipts(&mut ws).await;
            }
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        };
        let _ = tokio::time::timeout(crate::session::CLOSE_GRACE, close).await;
        env.meters.count(|c| c.closed += 1);
    }

    /// A `delivered` receipt for every conversation the resume moved.
    async fn send_receipts(&self, ws: &mut Ws) -> Result<(), Cow<'static, str>> {
        let mut count = 0;
        for view in self.owed.iter().filter(|view| view.head > view.baseline) {
            let receipt = frames::delivered_receipt(&view.conv, view.head);
            ws.feed(Message::text(receipt)).await.map_err(|e| ws_error_kind("write", &e))?;
            count += 1;
        }
        ws.flush().await.map_err(|e| ws_error_kind("write", &e))?;
        self.env.meters.count(|c| {
            c.receipts_sent += count;
            c.frames_out += count;
        });
        Ok(())
    }
}

/// Time before attempt `attempts + 1`: `retry_base * 2^(attempts - 1)`, at most
/// `retry_max`, times `0.5 + jitter` (`jitter` in `[0, 1)`); after a `Retry-After`, never
/// less than it, and up to half of it more.
pub(crate) fn retry_delay(
    storm: &StormSettings,
    attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let backoff = storm.retry_base.saturating_mul(1 << doublings).min(storm.retry_max);
    let jittered = backoff.mul_f64(0.5 + jitter);
    match retry_after {
        Some(after) => jittered.max(after.mul_f64(1.0 + jitter / 2.0)),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tokio::sync::Semaphore;

    use crate::auth::Auth;
    use crate::cli::ScenarioKind;
    use crate::mock_server::{self, MockOptions, MockServer};
    use crate::shared::test_env;
    use crate::stats::Counters;

    const CLIENTS: u64 = 6;

    fn settings(owed_per_conv: Vec<u64>) -> StormSettings {
        StormSettings {
            owed_per_conv,
            reconnect_period: None,
            first_index: 0,
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            timeout: Duration::from_secs(5),
            receipts_during: false,
            padding: String::new(),
            last_resumed_us: Cell::new(0),
        }
    }

    /// Polls `done` every 5 ms, for at most 5 s.
    async fn until(done: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A whole storm of `CLIENTS` against the mock: connect, go away, seed, come back
    /// (the first `refusals` upgrades of the storm refused with 503), stop.
    async fn storm_against(server: &MockServer, refusals: u64) -> Counters {
        let owed = vec![3, 2];
        let storm = settings(owed.clone());
        let (env, phase_tx) = test_env(&server.url(), Auth::dev(), ScenarioKind::Storm, None, None, Some(storm)).await;
        let meters = Rc::clone(&env.meters);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let connecting = Arc::new(Semaphore::new(8));
                for index in 0..CLIENTS {
                    let permit = Arc::clone(&connecting).acquire_owned().await.expect("permit");
                    tokio::task::spawn_local(crate::session::run(Rc::clone(&env), index, None, permit));
                }
                until(|| meters.counters().settled == CLIENTS).await;
                phase_tx.send_replace(Phase::Away);
                until(|| meters.counters().went_away == CLIENTS).await;
                let senders = crate::plan::storm_senders("t-u", 0..CLIENTS, &owed, 1);
                let deadline = Instant::now() + Duration::from_secs(5);
                seed::run_all(Rc::clone(&env), senders, "seed0".to_owned(), 4, deadline).await;
                server.refuse_upgrades(refusals);
                phase_tx.send_replace(Phase::Steady);
                until(|| {
                    let c = meters.counters();
                    c.resumed + c.resume_failed == CLIENTS
                })
                .await;
                phase_tx.send_replace(Phase::Stop);
                until(|| meters.live_sessions() == 0).await;
            })
            .await;
        let last = env.storm.as_ref().map_or(0, |storm| storm.last_resumed_us.get());
        assert!(last > 0, "the last resume is timed");
        meters.counters()
    }

    #[tokio::test]
    async fn clients_resume_exactly_what_they_were_sent_while_away() {
        let server = mock_server::spawn(MockOptions::default(), 0).await.expect("mock server");
        let c = storm_against(&server, 3).await;
        assert_eq!((c.went_away, c.resumed, c.resume_failed, c.resume_retries), (CLIENTS, CLIENTS, 0, 3), "{c:?}");
        assert_eq!((c.seed_sent, c.seed_acked, c.seed_refused), (5 * CLIENTS, 5 * CLIENTS, 0), "{c:?}");
        assert_eq!(c.resume_replayed, 5 * CLIENTS, "{c:?}");
        assert_eq!((c.resume_missing, c.resume_duplicates, c.owed_mismatch, c.resume_extra_convs), (0, 0, 0, 0));
        assert_eq!(server.counts.refused.load(Ordering::Relaxed), 3);
        // Receipts at the end: two conversations per client.
        assert_eq!(c.receipts_sent, 2 * CLIENTS, "{c:?}");

        // A second storm on the same server: the receipts moved the cursors, so each
        // client is owed only the new seeding, from baselines above zero.
        let c = storm_against(&server, 0).await;
        assert_eq!((c.resumed, c.resume_replayed, c.resume_retries), (CLIENTS, 5 * CLIENTS, 0), "{c:?}");
        assert_eq!((c.resume_missing, c.resume_duplicates, c.owed_mismatch), (0, 0, 0), "{c:?}");
    }

    #[tokio::test]
    async fn a_gap_in_the_replay_is_missing_and_mismatched() {
        // The mock skips a seq after every 2 messages of a conversation: the heads run
        // past what was sent.
        let options = MockOptions { skip_every: Some(2), ..MockOptions::default() };
        let server = mock_server::spawn(options, 0).await.expect("mock server");
        let c = storm_against(&server, 0).await;
        assert_eq!(c.resumed, CLIENTS, "{c:?}");
        assert!(c.resume_missing > 0 && c.resume_gap_convs > 0, "{c:?}");
        assert!(c.owed_mismatch > 0, "{c:?}");
    }

    #[test]
    fn retries_back_off_with_jitter_and_respect_retry_after() {
        let storm = settings(vec![1]);
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(&storm, 1, None, 0.5), ms(10));
        assert_eq!(retry_delay(&storm, 2, None, 0.5), ms(20));
        assert_eq!(retry_delay(&storm, 3, None, 0.0), ms(20));
        assert_eq!(retry_delay(&storm, 30, None, 0.5), ms(40));
        assert_eq!(retry_delay(&storm, 1, Some(ms(1000)), 0.0), ms(1000));
        assert_eq!(retry_delay(&storm, 1, Some(ms(1000)), 0.5), ms(1250));
    }
}
