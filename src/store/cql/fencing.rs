//! Write timestamps that fence appends by ownership epoch (see "Fencing" in [`super`]).
//!
//! A timestamp is `epoch << 40 | clock`: the epoch in the high 23 bits, so any write of a
//! higher epoch beats any write of a lower one under Cassandra's last-write-wins; within
//! an epoch, `clock` is milliseconds since 2025-01-01 UTC (40 bits last until 2059),
//! raised above the stored `conv_meta` write so that each commit of a conversation is
//! strictly later than the one before, even within one millisecond.

use std::time::{SystemTime, UNIX_EPOCH};

use super::error::CqlError;

/// Bits of the clock part.
pub(super) const CLOCK_BITS: u32 = 40;
const CLOCK_MASK: i64 = (1 << CLOCK_BITS) - 1;
/// 2025-01-01T00:00:00Z in Unix milliseconds: the zero of the clock part.
const CLOCK_BASE_MS: u64 = 1_735_689_600_000;
/// The largest epoch that fits.
pub(super) const MAX_EPOCH: u64 = (i64::MAX >> CLOCK_BITS) as u64;

/// The write timestamp of an append of `epoch`, given the write timestamp of the stored
/// `conv_meta.last_seq` (if any).
pub(super) fn write_timestamp(epoch: u64, stored: Option<i64>) -> Result<i64, CqlError> {
    write_timestamp_at(epoch, stored, now_ms())
}

fn write_timestamp_at(epoch: u64, stored: Option<i64>, now_ms: u64) -> Result<i64, CqlError> {
    let high = i64::try_from(epoch)
        .ok()
        .filter(|_| epoch <= MAX_EPOCH)
        .ok_or(CqlError::EpochTooLarge { epoch, max: MAX_EPOCH })?
        << CLOCK_BITS;
    let mut clock = i64::try_from(now_ms.saturating_sub(CLOCK_BASE_MS)).unwrap_or(CLOCK_MASK).min(CLOCK_MASK);
    if let Some(stored) = stored
        && stored >> CLOCK_BITS == high >> CLOCK_BITS
    {
        // Same epoch: strictly after the last commit (a clock that stepped back, or two
        // commits in one millisecond). Saturates at the end of the clock range.
        clock = clock.max(((stored & CLOCK_MASK) + 1).min(CLOCK_MASK));
    }
    Ok(high | clock)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = CLOCK_BASE_MS + 1_000;

    #[test]
    fn a_higher_epoch_always_wins() {
        let old_epoch_late = write_timestamp_at(6, None, CLOCK_BASE_MS + (1 << 39)).expect("ts");
        let new_epoch_early = write_timestamp_at(7, None, CLOCK_BASE_MS).expect("ts");
        assert!(new_epoch_early > old_epoch_late);
        assert!(write_timestamp_at(0, None, NOW).expect("ts") > 0);
    }

    #[test]
    fn commits_of_one_epoch_strictly_increase() {
        let first = write_timestamp_at(3, None, NOW).expect("ts");
        let same_millisecond = write_timestamp_at(3, Some(first), NOW).expect("ts");
        assert_eq!(same_millisecond, first + 1);
        let clock_went_back = write_timestamp_at(3, Some(same_millisecond), NOW - 500).expect("ts");
        assert_eq!(clock_went_back, same_millisecond + 1);
        // A stored write of another epoch does not drag the clock.
        let other = write_timestamp_at(2, Some(first), NOW).expect("ts");
        assert_eq!(other & CLOCK_MASK, 1_000);
    }

    #[test]
    fn epochs_beyond_the_range_are_refused() {
        assert!(write_timestamp_at(MAX_EPOCH, None, NOW).is_ok());
        assert!(matches!(write_timestamp_at(MAX_EPOCH + 1, None, NOW), Err(CqlError::EpochTooLarge { .. })));
    }
}
