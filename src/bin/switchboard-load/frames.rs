//! The few frames of wire contract v1 (DESIGN §5) the load generator speaks.
//!
//! Outgoing frames are formatted directly: ids are restricted to characters that need no
//! JSON escaping, and a sender formats thousands of frames per second. Incoming frames
//! are parsed into one flat, borrowing struct; fields a frame type does not have are
//! `None`, and unknown fields are ignored as the contract requires.
//!
//! A send carries its timing in two places, so nothing is kept per message in flight:
//! - `ref` is `"<n>.<t>"` with `t` the send time in µs on this process's monotonic
//!   clock; the `ack` echoes it and gives send->ack latency.
//! - `body` is `{"t": <µs since the Unix epoch>, "p": "<padding>"}`; the receiver
//!   subtracts `t` from its own wall clock for send->deliver latency.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// An incoming frame; which fields are set depends on `kind` (the `type` field).
#[derive(Debug, Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(rename = "ref", default, borrow)]
    pub(crate) reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) conv: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default)]
    pub(crate) dup: Option<bool>,
    #[serde(default, borrow)]
    pub(crate) from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) code: Option<Cow<'a, str>>,
    /// `synced`: latest seq per conversation.
    #[serde(default)]
    pub(crate) convs: Option<HashMap<String, u64>>,
}

/// Parses one text frame.
pub(crate) fn parse(text: &str) -> Result<Incoming<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The send timestamp (µs since the Unix epoch) in a body this tool wrote, if any.
pub(crate) fn body_timestamp(body: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    struct Probe {
        t: Option<u64>,
    }
    // Bodies from other clients may be any JSON value; those simply have no timestamp.
    serde_json::from_str::<Probe>(body.get()).ok()?.t
}

/// Splits a `ref` this tool wrote into (sequence number, monotonic send time in µs).
pub(crate) fn parse_ref(reference: &str) -> Option<(u64, u64)> {
    let (n, t) = reference.split_once('.')?;
    Some((n.parse().ok()?, t.parse().ok()?))
}

/// Padding that makes a body `{"t":<now µs>,"p":"<pad>"}` exactly `body_bytes` long
/// (as long as `body_bytes` exceeds the ~29 bytes of the unpadded body).
pub(crate) fn body_padding(body_bytes: usize, now_unix_micros: u64) -> String {
    let unpadded = format!("{{\"t\":{now_unix_micros},\"p\":\"\"}}").len();
    "x".repeat(body_bytes.saturating_sub(unpadded))
}

/// The fields of one `send` frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Send<'a> {
    /// Per-connection sequence number of the send.
    pub(crate) number: u64,
    /// Send time on the monotonic clock, µs.
    pub(crate) mono_micros: u64,
    /// Send time on the wall clock, µs since the Unix epoch.
    pub(crate) unix_micros: u64,
    pub(crate) conv: &'a str,
    /// Run id: client message ids are `<run>-<n>`, unique across runs.
    pub(crate) run_id: &'a str,
    pub(crate) padding: &'a str,
}

impl Send<'_> {
    /// The frame's JSON text.
    pub(crate) fn json(self) -> String {
        let mut out = String::with_capacity(96 + self.conv.len() + self.padding.len());
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"type\":\"send\",\"ref\":\"{n}.{mono}\",\"conv\":\"{conv}\",\"cmid\":\"{run}-{n}\",\
             \"body\":{{\"t\":{unix},\"p\":\"{pad}\"}}}}",
            n = self.number,
            mono = self.mono_micros,
            conv = self.conv,
            run = self.run_id,
            unix = self.unix_micros,
            pad = self.padding,
        );
        out
    }
}

/// A cumulative `delivered` receipt up to `seq` in `conv`.
pub(crate) fn delivered_receipt(conv: &str, seq: u64) -> String {
    format!("{{\"type\":\"receipt\",\"conv\":\"{conv}\",\"seq\":{seq},\"kind\":\"delivered\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn send_frame_is_valid_json_with_the_contract_fields() {
        let now = 1_763_800_000_000_000;
        let padding = body_padding(100, now);
        let send = Send {
            number: 42,
            mono_micros: 123_456,
            unix_micros: now,
            conv: "dm:load-u0:load-u1",
            run_id: "r1a2b",
            padding: &padding,
        };
        let value: Value = serde_json::from_str(&send.json()).expect("valid json");
        assert_eq!(value["type"], "send");
        assert_eq!(value["ref"], "42.123456");
        assert_eq!(value["conv"], "dm:load-u0:load-u1");
        assert_eq!(value["cmid"], "r1a2b-42");
        assert_eq!(value["body"]["t"], now);
        assert_eq!(serde_json::to_string(&value["body"]).expect("body").len(), 100);
        assert_eq!(parse_ref("42.123456"), Some((42, 123_456)));
        assert_eq!(parse_ref("r1"), None);
    }

    #[test]
    fn tiny_bodies_are_not_padded() {
        assert_eq!(body_padding(10, 1_763_800_000_000_000), "");
    }

    #[test]
    fn parses_ack_and_msg() {
        let ack = parse(r#"{"type":"ack","ref":"7.99","conv":"dm:a:b","seq":3,"mid":"01J","ts":1,"dup":false}"#)
            .expect("ack");
        assert_eq!(ack.kind, "ack");
        assert_eq!(ack.reference.as_deref(), Some("7.99"));
        assert_eq!((ack.seq, ack.dup), (Some(3), Some(false)));

        let msg = parse(
            r#"{"type":"msg","conv":"dm:a:b","seq":4,"mid":"01K","from":"a","dev":"d","ts":5,
                "body":{"t":1763800000000000,"p":"xx"},"extra":[1,2]}"#,
        )
        .expect("msg");
        assert_eq!(msg.from.as_deref(), Some("a"));
        assert_eq!(msg.body.and_then(body_timestamp), Some(1_763_800_000_000_000));
    }

    #[test]
    fn foreign_bodies_have_no_timestamp() {
        let msg = parse(r#"{"type":"msg","conv":"c","seq":1,"body":"hello"}"#).expect("msg");
        assert_eq!(msg.body.and_then(body_timestamp), None);
        let msg = parse(r#"{"type":"msg","conv":"c","seq":1,"body":{"text":"hi"}}"#).expect("msg");
        assert_eq!(msg.body.and_then(body_timestamp), None);
    }

    #[test]
    fn parses_synced_and_errors_with_escapes() {
        let synced = parse(r#"{"type":"synced","convs":{"dm:a:b":12}}"#).expect("synced");
        assert_eq!(synced.convs.and_then(|c| c.get("dm:a:b").copied()), Some(12));
        let error =
            parse(r#"{"type":"error","ref":"1.2","code":"rate_limited","message":"slow \"down\""}"#).expect("error");
        assert_eq!(error.code.as_deref(), Some("rate_limited"));
        assert!(parse(r#"{"no_type":1}"#).is_err());
    }

    #[test]
    fn receipt_frame_matches_the_contract() {
        let value: Value = serde_json::from_str(&delivered_receipt("dm:a:b", 9)).expect("json");
        assert_eq!(value, serde_json::json!({"type":"receipt","conv":"dm:a:b","seq":9,"kind":"delivered"}));
    }
}
