//! Per-message bookkeeping of the fanout scenario: which message reached how many
//! receivers, and when the last of them got it.
//!
//! Every fanout body carries its message number and send time ([`crate::frames::Stamp`]),
//! so a worker needs no word from the sender: it keeps one slot per message number (how
//! many of its connections got the message, and when the latest one did) and reports
//! the slots in its result. The coordinator adds the counts over workers and takes the
//! latest arrival; a message's time to last delivery is that arrival minus its send time.
//! Workers and sender share one wall clock (one machine), as the chat scenario's
//! send->deliver latency already assumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cli::MAX_FANOUT_MESSAGES;

/// What one worker (or, merged, the whole run) saw of one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageDeliveries {
    /// Message number, from 1.
    pub(crate) n: u64,
    /// Send time from the body, µs since the Unix epoch.
    pub(crate) sent_us: u64,
    /// Deliveries (each connection at most once: a repeat is out of order, not counted).
    pub(crate) count: u64,
    /// Arrival of the latest delivery, µs since the Unix epoch.
    pub(crate) last_us: u64,
}

impl MessageDeliveries {
    /// Adds what another worker saw of the same message.
    fn merge(&mut self, other: &MessageDeliveries) {
        if self.count == 0 {
            // An empty slot: it takes the other's number and send time.
            *self = *other;
            return;
        }
        debug_assert_eq!(self.n, other.n);
        self.sent_us = self.sent_us.min(other.sent_us);
        self.count += other.count;
        self.last_us = self.last_us.max(other.last_us);
    }
}

/// One worker's deliveries by message number.
#[derive(Debug, Default)]
pub(crate) struct DeliveryLog {
    /// Slot `n - 1` is message `n`; a slot with `count == 0` saw nothing yet.
    slots: Vec<MessageDeliveries>,
}

impl DeliveryLog {
    /// Counts one delivery of message `n`, sent at `sent_us`, arrived at `arrived_us`.
    /// Numbers outside the scenario's range are not this run's and are ignored.
    pub(crate) fn record(&mut self, n: u64, sent_us: u64, arrived_us: u64) {
        if !(1..=MAX_FANOUT_MESSAGES).contains(&n) {
            return;
        }
        let Ok(index) = usize::try_from(n - 1) else { return };
        if self.slots.len() <= index {
            self.slots.resize(index + 1, MessageDeliveries::default());
        }
        let slot = &mut self.slots[index];
        slot.merge(&MessageDeliveries { n, sent_us, count: 1, last_us: arrived_us });
    }

    /// The messages that were delivered at least once, by number.
    pub(crate) fn delivered(&self) -> Vec<MessageDeliveries> {
        self.slots.iter().filter(|slot| slot.count > 0).copied().collect()
    }
}

/// Every worker's deliveries, merged by message number.
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageTotals {
    by_number: BTreeMap<u64, MessageDeliveries>,
}

impl MessageTotals {
    /// Adds one worker's report.
    pub(crate) fn absorb(&mut self, reported: &[MessageDeliveries]) {
        for message in reported.iter().filter(|message| message.count > 0) {
            self.by_number.entry(message.n).and_modify(|merged| merged.merge(message)).or_insert(*message);
        }
    }

    /// What the run saw of message `n`.
    pub(crate) fn get(&self, n: u64) -> Option<&MessageDeliveries> {
        self.by_number.get(&n)
    }
}

/// A message the server acknowledged (ack of a send, or answer of a publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) n: u64,
    /// Send time (the body's), µs since the Unix epoch.
    pub(crate) sent_us: u64,
}

/// The fanout figures of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FanoutOutcome {
    /// Messages the server acknowledged.
    pub(crate) published: u64,
    /// Receivers that joined (synced members, or subscribed connections): the deliveries
    /// each message should have.
    pub(crate) recipients: u64,
    /// `published * recipients`.
    pub(crate) expected: u64,
    /// Deliveries of published messages.
    pub(crate) delivered: u64,
    /// Expected deliveries that did not arrive (by the end of the drain, or the deadline).
    pub(crate) missing: u64,
    /// Published messages that did not reach every recipient.
    pub(crate) incomplete_messages: u64,
    /// From the first send to the last delivery, seconds.
    pub(crate) span_secs: f64,
    /// `delivered / span_secs`.
    pub(crate) deliveries_per_sec: f64,
    /// Per published message that arrived at all: its send to its last delivery, µs.
    #[serde(skip)]
    pub(crate) last_delivery_us: Vec<u64>,
}

impl FanoutOutcome {
    /// Figures of `published` messages to `recipients` receivers, given what arrived.
    pub(crate) fn new(published: &[Published], recipients: u64, totals: &MessageTotals) -> Self {
        let mut outcome = FanoutOutcome {
            published: published.len() as u64,
            recipients,
            expected: published.len() as u64 * recipients,
            delivered: 0,
            missing: 0,
            incomplete_messages: 0,
            span_secs: 0.0,
            deliveries_per_sec: 0.0,
            last_delivery_us: Vec::with_capacity(published.len()),
        };
        let mut first_send_us = u64::MAX;
        let mut last_arrival_us = 0;
        for message in published {
            let seen = totals.get(message.n).copied().unwrap_or_default();
            outcome.delivered += seen.count;
            let missing = recipients.saturating_sub(seen.count);
            outcome.missing += missing;
            outcome.incomplete_messages += u64::from(missing > 0);
            first_send_us = first_send_us.min(message.sent_us);
            if seen.count > 0 {
                outcome.last_delivery_us.push(seen.last_us.saturating_sub(message.sent_us));
                last_arrival_us = last_arrival_us.max(seen.last_us);
            }
        }
        if last_arrival_us > first_send_us {
            outcome.span_secs = (last_arrival_us - first_send_us) as f64 / 1e6;
            outcome.deliveries_per_sec = outcome.delivered as f64 / outcome.span_secs;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_counts_each_message_and_keeps_the_latest_arrival() {
        let mut log = DeliveryLog::default();
        log.record(2, 1_000, 1_500);
        log.record(2, 1_000, 1_900);
        log.record(2, 1_000, 1_700);
        log.record(1, 500, 600);
        log.record(0, 1, 2);
        log.record(MAX_FANOUT_MESSAGES + 1, 1, 2);
        assert_eq!(
            log.delivered(),
            [
                MessageDeliveries { n: 1, sent_us: 500, count: 1, last_us: 600 },
                MessageDeliveries { n: 2, sent_us: 1_000, count: 3, last_us: 1_900 },
            ]
        );
    }

    #[test]
    fn workers_add_up_counts_and_take_the_latest_arrival() {
        let mut totals = MessageTotals::default();
        totals.absorb(&[
            MessageDeliveries { n: 1, sent_us: 100, count: 10, last_us: 400 },
            MessageDeliveries { n: 2, sent_us: 200, count: 10, last_us: 900 },
        ]);
        totals.absorb(&[MessageDeliveries { n: 1, sent_us: 100, count: 5, last_us: 700 }]);
        totals.absorb(&[MessageDeliveries { n: 3, sent_us: 300, count: 0, last_us: 0 }]);
        assert_eq!(totals.get(1), Some(&MessageDeliveries { n: 1, sent_us: 100, count: 15, last_us: 700 }));
        assert_eq!(totals.get(2).map(|m| m.count), Some(10));
        assert_eq!(totals.get(3), None);
    }

    #[test]
    fn outcome_counts_missing_deliveries_and_the_time_to_the_last() {
        let mut totals = MessageTotals::default();
        // Two workers of 10 recipients in all; message 2 misses one delivery, message 3
        // none arrived, message 4 arrived but its ack was never seen (not published).
        totals.absorb(&[
            MessageDeliveries { n: 1, sent_us: 1_000_000, count: 6, last_us: 1_002_000 },
            MessageDeliveries { n: 2, sent_us: 1_100_000, count: 6, last_us: 1_103_000 },
            MessageDeliveries { n: 4, sent_us: 1_300_000, count: 6, last_us: 1_301_000 },
        ]);
        totals.absorb(&[
            MessageDeliveries { n: 1, sent_us: 1_000_000, count: 4, last_us: 1_005_000 },
            MessageDeliveries { n: 2, sent_us: 1_100_000, count: 3, last_us: 1_101_000 },
        ]);
        let published = [
            Published { n: 1, sent_us: 1_000_000 },
            Published { n: 2, sent_us: 1_100_000 },
            Published { n: 3, sent_us: 1_200_000 },
        ];
        let outcome = FanoutOutcome::new(&published, 10, &totals);
        assert_eq!((outcome.published, outcome.expected, outcome.delivered), (3, 30, 19));
        assert_eq!((outcome.missing, outcome.incomplete_messages), (11, 2));
        assert_eq!(outcome.last_delivery_us, [5_000, 3_000]);
        // First send at 1.000 s, last delivery of a published message at 1.103 s.
        assert!((outcome.span_secs - 0.103).abs() < 1e-9, "{outcome:?}");
        assert!((outcome.deliveries_per_sec - 19.0 / 0.103).abs() < 1e-6, "{outcome:?}");
    }

    #[test]
    fn nothing_published_is_all_zeros() {
        let outcome = FanoutOutcome::new(&[], 1000, &MessageTotals::default());
        assert_eq!((outcome.expected, outcome.missing, outcome.deliveries_per_sec), (0, 0, 0.0));
    }
}
