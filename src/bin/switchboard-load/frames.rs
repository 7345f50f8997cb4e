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
//!   subtracts `t` from its own wall clock for send->deliver latency. A fanout body also
//!   carries the message number, `{"t": .., "n": <number>, "p": ..}`, so every receiver,
//!   in whatever process, can say when it got which message.

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
    /// `error`: what went wrong, for people.
    #[serde(default, borrow)]
    pub(crate) message: Option<Cow<'a, str>>,
    /// `error`: when to try again (rate limited, unavailable, overloaded).
    #[serde(default)]
    pub(crate) retry_after_ms: Option<u64>,
    /// `hello`: what the server accepts.
    #[serde(default)]
    pub(crate) limits: Option<HelloLimits>,
}

/// The `limits` of `hello` this tool heeds; absent fields take the contract's defaults.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default)]
pub(crate) struct HelloLimits {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_list_len: usize,
}

impl Default for HelloLimits {
    fn default() -> Self {
        HelloLimits { max_frame_bytes: 64 * 1024, max_list_len: 1000 }
    }
}

/// What a body this tool wrote says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct Stamp {
    /// Send time, µs since the Unix epoch.
    pub(crate) t: u64,
    /// Message number (fanout bodies only).
    #[serde(default)]
    pub(crate) n: Option<u64>,
}

/// Parses one text frame.
pub(crate) fn parse(text: &str) -> Result<Incoming<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The stamp of a body this tool wrote, if it is one.
pub(crate) fn body_stamp(body: &RawValue) -> Option<Stamp> {
    // Bodies from other clients (and system messages) may be any JSON value; those
    // simply have no stamp.
    serde_json::from_str::<Stamp>(body.get()).ok()
}

/// Splits a `ref` this tool wrote into (sequence number, monotonic send time in µs).
pub(crate) fn parse_ref(reference: &str) -> Option<(u64, u64)> {
    let (n, t) = reference.split_once('.')?;
    Some((n.parse().ok()?, t.parse().ok()?))
}

/// Padding that makes a body `{"t":<now µs>,"p":"<pad>"}` (with `"n":<number>` when
/// given) exactly `body_bytes` long, as long as `body_bytes` exceeds the ~29 bytes of the
/// unpadded body. Numbers with fewer digits make a body that much shorter.
pub(crate) fn body_padding(body_bytes: usize, now_unix_micros: u64, number: Option<u64>) -> String {
    let unpadded = Body { unix_micros: now_unix_micros, number, padding: "" }.json().len();
    "x".repeat(body_bytes.saturating_sub(unpadded))
}

/// A message body this tool writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Body<'a> {
    /// Send time on the wall clock, µs since the Unix epoch.
    pub(crate) unix_micros: u64,
    /// Message number (fanout).
    pub(crate) number: Option<u64>,
    pub(crate) padding: &'a str,
}

impl Body<'_> {
    /// Appends the body's JSON text to `out`.
    fn write_json(self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = match self.number {
            Some(n) => write!(out, "{{\"t\":{},\"n\":{n},\"p\":\"{}\"}}", self.unix_micros, self.padding),
            None => write!(out, "{{\"t\":{},\"p\":\"{}\"}}", self.unix_micros, self.padding),
        };
    }

    /// The body's JSON text.
    pub(crate) fn json(self) -> String {
        let mut out = String::with_capacity(48 + self.padding.len());
        self.write_json(&mut out);
        out
    }
}

/// The fields of one `send` frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Send<'a> {
    /// Per-connection sequence number of the send.
    pub(crate) number: u64,
    /// Send time on the monotonic clock, µs.
    pub(crate) mono_micros: u64,
    pub(crate) conv: &'a str,
    /// Run id: client message ids are `<run>-<n>`, unique across runs.
    pub(crate) run_id: &'a str,
    pub(crate) body: Body<'a>,
}

impl Send<'_> {
    /// The frame's JSON text.
    pub(crate) fn json(self) -> String {
        let mut out = String::with_capacity(128 + self.conv.len() + self.body.padding.len());
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"type\":\"send\",\"ref\":\"{n}.{mono}\",\"conv\":\"{conv}\",\"cmid\":\"{run}-{n}\",\"body\":",
            n = self.number,
            mono = self.mono_micros,
            conv = self.conv,
            run = self.run_id,
        );
        self.body.write_json(&mut out);
        out.push('}');
        out
    }
}

/// A `group_create` of `members` (user ids, which need no escaping), named `name` (a
/// name this tool makes, which needs none either).
pub(crate) fn group_create(reference: &str, name: &str, members: &[String]) -> String {
    format!(
        "{{\"type\":\"group_create\",\"ref\":\"{reference}\",\"name\":\"{name}\",\"members\":{}}}",
        id_list(members)
    )
}

/// A `group_add` of `members` to `conv`.
pub(crate) fn group_add(reference: &str, conv: &str, members: &[String]) -> String {
    format!("{{\"type\":\"group_add\",\"ref\":\"{reference}\",\"conv\":\"{conv}\",\"members\":{}}}", id_list(members))
}

/// A `subscribe` to the feed `conv`, from its head.
pub(crate) fn subscribe(reference: &str, conv: &str) -> String {
    format!("{{\"type\":\"subscribe\",\"ref\":\"{reference}\",\"conv\":\"{conv}\"}}")
}

/// A JSON array of ids.
fn id_list(ids: &[String]) -> String {
    let mut out = String::with_capacity(2 + ids.iter().map(|id| id.len() + 3).sum::<usize>());
    out.push('[');
    for (index, id) in ids.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(id);
        out.push('"');
    }
    out.push(']');
    out
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
        let padding = body_padding(100, now, None);
        let send = Send {
            number: 42,
            mono_micros: 123_456,
            conv: "dm:load-u0:load-u1",
            run_id: "r1a2b",
            body: Body { unix_micros: now, number: None, padding: &padding },
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
        assert_eq!(body_padding(10, 1_763_800_000_000_000, None), "");
    }

    #[test]
    fn fanout_bodies_carry_the_number() {
        let now = 1_763_800_000_000_000;
        let padding = body_padding(100, now, Some(100));
        let body = Body { unix_micros: now, number: Some(100), padding: &padding }.json();
        assert_eq!(body.len(), 100);
        let raw = RawValue::from_string(body).expect("json");
        assert_eq!(body_stamp(&raw), Some(Stamp { t: now, n: Some(100) }));
        let raw = RawValue::from_string(r#"{"event":"created","by":"u"}"#.to_owned()).expect("json");
        assert_eq!(body_stamp(&raw), None);
    }

    #[test]
    fn membership_frames_match_the_contract() {
        let members = vec!["u0".to_owned(), "u1".to_owned()];
        let value: Value = serde_json::from_str(&group_create("g1", "load r1", &members)).expect("json");
        assert_eq!(value, serde_json::json!({"type":"group_create","ref":"g1","name":"load r1","members":["u0","u1"]}));
        let value: Value = serde_json::from_str(&group_add("g2", "group:x", &members[..1])).expect("json");
        assert_eq!(value, serde_json::json!({"type":"group_add","ref":"g2","conv":"group:x","members":["u0"]}));
        let value: Value = serde_json::from_str(&group_add("g3", "group:x", &[])).expect("json");
        assert_eq!(value["members"], serde_json::json!([]));
        let value: Value = serde_json::from_str(&subscribe("s", "feed:r1")).expect("json");
        assert_eq!(value, serde_json::json!({"type":"subscribe","ref":"s","conv":"feed:r1"}));
    }

    #[test]
    fn hello_limits_default_when_absent() {
        let hello = parse(r#"{"type":"hello","limits":{"max_list_len":10,"max_body_bytes":5}}"#).expect("hello");
        let limits = hello.limits.expect("limits");
        assert_eq!((limits.max_list_len, limits.max_frame_bytes), (10, 64 * 1024));
        assert!(parse(r#"{"type":"hello"}"#).expect("hello").limits.is_none());
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
        assert_eq!(msg.body.and_then(body_stamp), Some(Stamp { t: 1_763_800_000_000_000, n: None }));
    }

    #[test]
    fn foreign_bodies_have_no_timestamp() {
        let msg = parse(r#"{"type":"msg","conv":"c","seq":1,"body":"hello"}"#).expect("msg");
        assert_eq!(msg.body.and_then(body_stamp), None);
        let msg = parse(r#"{"type":"msg","conv":"c","seq":1,"body":{"text":"hi"}}"#).expect("msg");
        assert_eq!(msg.body.and_then(body_stamp), None);
    }

    #[test]
    fn parses_synced_and_errors_with_escapes() {
        let synced = parse(r#"{"type":"synced","convs":{"dm:a:b":12}}"#).expect("synced");
        assert_eq!(synced.convs.and_then(|c| c.get("dm:a:b").copied()), Some(12));
        let error =
            parse(r#"{"type":"error","ref":"1.2","code":"rate_limited","message":"slow \"down\""}"#).expect("error");
        assert_eq!(error.code.as_deref(), Some("rate_limited"));
        let error = parse(r#"{"type":"error","code":"unavailable","retry_after_ms":200}"#).expect("error");
        assert_eq!(error.retry_after_ms, Some(200));
        assert!(parse(r#"{"no_type":1}"#).is_err());
    }

    #[test]
    fn receipt_frame_matches_the_contract() {
        let value: Value = serde_json::from_str(&delivered_receipt("dm:a:b", 9)).expect("json");
        assert_eq!(value, serde_json::json!({"type":"receipt","conv":"dm:a:b","seq":9,"kind":"delivered"}));
    }
}
