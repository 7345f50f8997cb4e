//! Row encoding: buckets, the bound values of a `messages` row, result decoding and the
//! `u64` <-> CQL `bigint` conversions.

use std::borrow::Cow;

use scylla::response::query_result::QueryResult;
use scylla::value::MaybeUnset;
use switchboard_proto::ids::ConvId;

use super::CqlResult;
use super::error::CqlError;
use crate::store::NewMessage;

/// The bucket of `seq` (seqs start at 1).
pub(super) fn bucket_of(seq: u64, bucket_size: u64) -> u64 {
    seq.saturating_sub(1) / bucket_size.max(1)
}

/// The bound values of one `messages` row.
pub(super) type MessageRow<'m> = (
    &'m str,
    i64,
    i64,
    &'m str,
    &'m str,
    MaybeUnset<Cow<'m, str>>,
    i64,
    &'m [u8],
    MaybeUnset<bool>,
    MaybeUnset<&'m str>,
    i64,
);

pub(super) fn message_row<'m>(
    conv: &'m ConvId,
    message: &'m NewMessage,
    bucket_size: u64,
    timestamp: i64,
) -> MessageRow<'m> {
    let fields = FrameFields::of(&message.frame);
    (
        conv.as_str(),
        signed(bucket_of(message.seq, bucket_size)),
        signed(message.seq),
        message.mid.as_str(),
        message.from.as_str(),
        // Unset, not null: a null would write a tombstone.
        fields.dev.map_or(MaybeUnset::Unset, MaybeUnset::Set),
        signed(message.ts),
        &message.frame[..],
        fields.system.map_or(MaybeUnset::Unset, MaybeUnset::Set),
        message.cmid.as_deref().map_or(MaybeUnset::Unset, MaybeUnset::Set),
        timestamp,
    )
}

/// The columns of `messages` that live inside the frame (for operators and tools; the
/// frame itself is what is delivered).
#[derive(Debug, Default, serde::Deserialize)]
struct FrameFields<'a> {
    #[serde(borrow, default)]
    dev: Option<Cow<'a, str>>,
    #[serde(default)]
    system: Option<bool>,
}

impl<'a> FrameFields<'a> {
    fn of(frame: &'a [u8]) -> Self {
        serde_json::from_slice(frame).unwrap_or_default()
    }
}

pub(super) fn rows<R>(result: QueryResult, what: &'static str) -> CqlResult<Vec<R>>
where
    R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    let rows = result.into_rows_result().map_err(|error| decode(what, &error.to_string()))?;
    let typed = rows.rows::<R>().map_err(|error| decode(what, &error.to_string()))?;
    typed.map(|row| row.map_err(|error| decode(what, &error.to_string()))).collect()
}

pub(super) fn first_row<R>(result: QueryResult, what: &'static str) -> CqlResult<Option<R>>
where
    R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    let rows = result.into_rows_result().map_err(|error| decode(what, &error.to_string()))?;
    rows.maybe_first_row::<R>().map_err(|error| decode(what, &error.to_string()))
}

/// Whether a lightweight transaction applied: its first column, `[applied]` (a refused
/// one adds the current values of the columns in its condition).
pub(super) fn applied(result: QueryResult) -> CqlResult<bool> {
    match first_row::<scylla::value::Row>(result, "[applied]")?.and_then(|row| row.columns.into_iter().next()) {
        Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(applied),
        _ => Err(decode("[applied]", "a conditional update answered without [applied]")),
    }
}

pub(super) fn decode(what: &'static str, reason: &str) -> CqlError {
    CqlError::Decode { what, reason: reason.to_owned() }
}

/// A seq, timestamp or epoch as CQL `bigint` (they never reach 2^63).
pub(super) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn unsigned(value: i64, what: &'static str) -> CqlResult<u64> {
    u64::try_from(value).map_err(|_| decode(what, "negative number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_bucket_size_consecutive_seqs() {
        assert_eq!([1, 4, 5, 8, 9].map(|seq| bucket_of(seq, 4)), [0, 0, 1, 1, 2]);
        assert_eq!(bucket_of(1, 1), 0);
        assert_eq!(bucket_of(2, 1), 1);
    }

    #[test]
    fn frame_fields_are_read_leniently() {
        let fields = FrameFields::of(br#"{"type":"msg","dev":"phone","system":true,"body":{"x":[1]}}"#);
        assert_eq!((fields.dev.as_deref(), fields.system), (Some("phone"), Some(true)));
        let fields = FrameFields::of(b"\x00binary");
        assert_eq!((fields.dev, fields.system), (None, None));
    }
}
