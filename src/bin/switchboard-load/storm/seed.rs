//! The storm's senders: while a worker's clients are away, each sender connects, sends
//! its clients what they will be owed, waits for every answer, and leaves.
//!
//! A sender owns one conversation number of a chunk of clients on one server
//! ([`crate::plan::storm_senders`]) and sends each of them the same number of messages,
//! at most [`crate::plan::SENDS_PER_STORM_SENDER`] in all: within the server's default
//! send bursts, so rate limits do not shape the seeding. A send refused with a
//! `retry_after_ms` (rate limited, unavailable, overloaded) goes again with the same
//! `cmid`, which the server deduplicates, after that delay, at most
//! [`MAX_SEND_ATTEMPTS`] times; others count as `seed_refused`, and the owed counts
//! the clients check then no longer match.
//!
//! A sender's device is `seed<worker>`: a chunk that two workers' slices share is sent
//! by two devices of one user, which do not replace each other.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{self, Ws, ws_error_kind};
use crate::frames;
use crate::plan::StormSender;
use crate::shared::SessionEnv;

/// Unanswered sends one sender keeps in flight.
const MAX_INFLIGHT: u64 = 64;

/// Times one message is sent before it counts as refused.
const MAX_SEND_ATTEMPTS: u32 = 5;

/// Connection attempts of one sender.
const MAX_CONNECT_ATTEMPTS: u32 = 5;

/// Delay before a refused send goes again when the refusal does not say.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(200);

/// Runs `senders`, at most `concurrency` at a time, each bounded by `deadline`.
pub(crate) async fn run_all(
    env: Rc<SessionEnv>,
    senders: Vec<StormSender>,
    device: String,
    concurrency: usize,
    deadline: Instant,
) {
    futures_util::stream::iter(senders)
        .for_each_concurrent(concurrency.max(1), |sender| {
            let env = Rc::clone(&env);
            let device = device.as_str();
            async move {
                let answered = Cell::new(0);
                let outcome = tokio::time::timeout_at(deadline, run_one(&env, &sender, device, &answered)).await;
                let failure = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(kind)) => kind,
                    Err(_) => Cow::Borrowed("seed.deadline"),
                };
                tracing::warn!(user.id = %sender.user, %failure, "storm sender stopped early");
                env.meters.error(failure);
                let unanswered = sender.planned().saturating_sub(answered.get());
                env.meters.count(|c| c.seed_refused += unanswered);
            }
        })
        .await;
}

/// Connects `sender`, sends everything, waits for the answers, closes.
/// `answered` counts the sends answered (acked, or refused for good), so the caller
/// knows what is left if this stops early.
async fn run_one(
    env: &SessionEnv,
    sender: &StormSender,
    device: &str,
    answered: &Cell<u64>,
) -> Result<(), Cow<'static, str>> {
    let mut ws = connect(env, sender, device).await?;
    // The server resumes the sender first (replay, then `synced`); nothing of it matters.
    let synced_by = Instant::now() + env.sync_timeout;
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = connect::text_of("seed", frame)?;
                if text.as_deref().and_then(|text| frames::parse(text).ok()).is_some_and(|f| f.kind == "synced") {
                    break;
                }
            }
            () = sleep_until(synced_by) => return Err(Cow::Borrowed("seed.sync_timeout")),
        }
    }

    let total = sender.planned();
    let padding = env.storm.as_ref().map_or("", |storm| storm.padding.as_str());
    let mut next = 1;
    let mut inflight = 0;
    let mut attempts: HashMap<u64, u32> = HashMap::new();
    let mut retries: VecDeque<(Instant, u64)> = VecDeque::new();
    while answered.get() < total {
        // Queue what the window allows (due retries first), then one flush.
        let mut queued = 0;
        while inflight < MAX_INFLIGHT {
            let number = match retries.front() {
                Some(&(due, number)) if due <= Instant::now() => {
                    retries.pop_front();
                    number
                }
                _ if next <= total => {
                    next += 1;
                    next - 1
                }
                _ => break,
            };
            let conv = &sender.convs[usize::try_from((number - 1) / sender.per_conv).unwrap_or(usize::MAX)];
            let frame = frames::Send {
                number,
                mono_micros: env.clock.mono_micros(),
                conv,
                run_id: &env.run_id,
                body: frames::Body { unix_micros: env.clock.unix_micros(), number: None, padding },
            };
            ws.feed(Message::text(frame.json())).await.map_err(|e| ws_error_kind("seed.write", &e))?;
            inflight += 1;
            queued += 1;
        }
        if queued > 0 {
            ws.flush().await.map_err(|e| ws_error_kind("seed.write", &e))?;
            env.meters.count(|c| c.seed_sent += queued);
        }

        let retry_due = retries.front().map(|&(due, _)| due);
        tokio::select! {
            frame = ws.next() => {
                let Some(text) = connect::text_of("seed", frame)? else { continue };
                let Ok(frame) = frames::parse(&text) else { continue };
                let Some((number, _)) = frame.reference.as_deref().and_then(frames::parse_ref) else { continue };
                match frame.kind.as_ref() {
                    "ack" => {
                        inflight -= 1;
                        answered.set(answered.get() + 1);
                        env.meters.count(|c| c.seed_acked += 1);
                    }
                    "error" => {
                        inflight -= 1;
                        let code = frame.code.as_deref().unwrap_or("unknown");
                        env.meters.error(format!("seed.server.{code}"));
                        let tries = attempts.entry(number).or_insert(1);
                        let retry_after = frame.retry_after_ms.map(Duration::from_millis);
                        if *tries < MAX_SEND_ATTEMPTS && (retry_after.is_some() || code == "unavailable") {
                            *tries += 1;
                            let due = Instant::now() + retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
                            let at = retries.partition_point(|&(queued_due, _)| queued_due <= due);
                            retries.insert(at, (due, number));
                        } else {
                            answered.set(answered.get() + 1);
                            env.meters.count(|c| c.seed_refused += 1);
                        }
                    }
                    _ => {}
                }
            }
            () = sleep_until(retry_due.unwrap_or_else(Instant::now)), if retry_due.is_some() && inflight < MAX_INFLIGHT => {}
        }
    }

    let close = async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(crate::session::CLOSE_GRACE, close).await;
    Ok(())
}

/// Opens the sender's connection to its clients' server, a few attempts with backoff.
async fn connect(env: &SessionEnv, sender: &StormSender, device: &str) -> Result<Ws, Cow<'static, str>> {
    let target = &env.targets[usize::try_from(sender.server).unwrap_or(0) % env.targets.len()];
    let mut attempt = 0;
    loop {
        attempt += 1;
        let request = env.auth.request(&target.url, &sender.user, device).map_err(|_| Cow::Borrowed("seed.auth"))?;
        match connect::open(target, None, request, env.connect_timeout).await {
            Ok(ws) => return Ok(ws),
            Err(error) if attempt < MAX_CONNECT_ATTEMPTS => {
                env.meters.error(format!("seed.{}", error.kind()));
                tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
            }
            Err(error) => return Err(error.kind()),
        }
    }
}
