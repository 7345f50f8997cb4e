//! Encoding: server frames to shared [`Bytes`], and client frames for tests and tools.
//!
//! `msg` is the hot path: the conversation owner encodes each message once with
//! [`encode_msg`], the store keeps those bytes and every recipient's socket gets a clone
//! of the same `Bytes`. [`encode_msg`] therefore writes the JSON by hand into a buffer
//! sized up front; a test checks that its output is byte-for-byte what serde produces for
//! [`Msg`], so the two can never drift apart. [`encode_history`] splices stored `msg`
//! frames into a `history` frame without parsing them again.

use bytes::Bytes;
use serde::Serialize;

use crate::client::ClientFrame;
use crate::ids::ConvId;
use crate::server::Msg;
#[cfg(doc)]
use crate::server::ServerFrame;

/// Why encoding a frame of this crate cannot fail: string map keys only, no fallible
/// `Serialize` impls, and writing into a `Vec` does no IO.
const INFALLIBLE: &str = "switchboard frames always serialize to JSON";

/// Encodes any server frame ([`ServerFrame`] or one of the structs it wraps) as UTF-8
/// JSON. For `msg` prefer [`encode_msg`] (same bytes, faster); for `history` built from
/// stored frames use [`encode_history`].
///
/// # Panics
///
/// If `frame`'s `Serialize` impl fails, which the frames of this crate never do. Only a
/// foreign type with, say, non-string map keys could trigger it.
pub fn encode(frame: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).expect(INFALLIBLE))
}

/// Encodes a client frame; for tests, the load generator and Rust clients.
pub fn encode_client(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).expect(INFALLIBLE)
}

/// Room for the keys, punctuation, two u64s and `"system":true` of a `msg` frame. The
/// estimate is exact unless `mid` needs escaping, which server-made ids never do.
const MSG_OVERHEAD: usize = 128;

/// Encodes a `msg` frame. Byte-for-byte equal to `encode(msg)`, without going through
/// serde's generic machinery and with a single allocation.
pub fn encode_msg(msg: &Msg) -> Bytes {
    let body = msg.body.get();
    let capacity = MSG_OVERHEAD
        + msg.conv.as_str().len()
        + msg.mid.len()
        + msg.from.as_str().len()
        + msg.dev.as_str().len()
        + body.len();
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"{\"type\":\"msg\",\"conv\":");
    push_id(&mut out, msg.conv.as_str());
    out.extend_from_slice(b",\"seq\":");
    push_u64(&mut out, msg.seq);
    out.extend_from_slice(b",\"mid\":");
    push_json_string(&mut out, &msg.mid);
    out.extend_from_slice(b",\"from\":");
    push_id(&mut out, msg.from.as_str());
    out.extend_from_slice(b",\"dev\":");
    push_id(&mut out, msg.dev.as_str());
    out.extend_from_slice(b",\"ts\":");
    push_u64(&mut out, msg.ts);
    out.extend_from_slice(b",\"body\":");
    out.extend_from_slice(body.as_bytes());
    if msg.system {
        out.extend_from_slice(b",\"system\":true");
    }
    out.push(b'}');
    Bytes::from(out)
}

/// Encodes a `history` frame around already-encoded `msg` frames (as stored), newest
/// first as given. The stored frames are copied in verbatim, never parsed: each keeps its
/// own `"type":"msg"`, which a client ignores inside `messages`.
pub fn encode_history(r#ref: Option<&str>, conv: &ConvId, messages: &[Bytes]) -> Bytes {
    let messages_len: usize = messages.iter().map(Bytes::len).sum::<usize>() + messages.len();
    let ref_len = r#ref.map_or(0, |reference| reference.len() + 10);
    let mut out = Vec::with_capacity(48 + ref_len + conv.as_str().len() + messages_len);
    out.extend_from_slice(b"{\"type\":\"history\"");
    if let Some(reference) = r#ref {
        out.extend_from_slice(b",\"ref\":");
        push_json_string(&mut out, reference);
    }
    out.extend_from_slice(b",\"conv\":");
    push_id(&mut out, conv.as_str());
    out.extend_from_slice(b",\"messages\":[");
    for (index, message) in messages.iter().enumerate() {
        debug_assert!(message.first() == Some(&b'{'), "history entries must be encoded msg frames");
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Writes a validated id (user, device, conversation) as a JSON string. Their alphabet
/// (`[A-Za-z0-9_.@-]` and `:`) never needs escaping.
fn push_id(out: &mut Vec<u8>, id: &str) {
    debug_assert!(!id.bytes().any(needs_escape), "ids never need escaping");
    out.push(b'"');
    out.extend_from_slice(id.as_bytes());
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Writes `text` as a JSON string exactly as serde_json does: `"` and `\` escaped, the
/// control characters as `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else
/// (non-ASCII included) verbatim.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        out.extend_from_slice(&bytes[clean_from..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            control => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(control >> 4)]);
                out.push(HEX[usize::from(control & 0xf)]);
            }
        }
        clean_from = index + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;
    use crate::codec::{decode_server, strategies};
    use crate::ids::{DeviceId, UserId};
    use crate::server::{History, ServerFrame};

    fn sample_msg(seq: u64) -> Msg {
        Msg {
            conv: ConvId::new("group:g").unwrap(),
            seq,
            mid: format!("01J{seq:023}"),
            from: UserId::new("alice").unwrap(),
            dev: DeviceId::new("phone").unwrap(),
            ts: 1_700_000_000_000 + seq,
            body: RawValue::from_string(r#"{"text":"hello"}"#.into()).unwrap(),
            system: false,
        }
    }

    #[test]
    fn encode_msg_is_the_wire_form() {
        let bytes = encode_msg(&sample_msg(1));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"msg","conv":"group:g","seq":1,"mid":"01J00000000000000000000001","from":"alice","dev":"phone","ts":1700000000001,"body":{"text":"hello"}}"#
        );
        let system = Msg { system: true, ..sample_msg(2) };
        assert!(encode_msg(&system).ends_with(br#","system":true}"#));
    }

    #[test]
    fn encode_history_splices_stored_frames() {
        let messages: Vec<Bytes> = (1..=3).rev().map(|seq| encode_msg(&sample_msg(seq))).collect();
        let conv = ConvId::new("group:g").unwrap();
        let bytes = encode_history(Some("h\"1"), &conv, &messages);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(r#"{"type":"history","ref":"h\"1","conv":"group:g","messages":[{"type":"msg""#));
        let ServerFrame::History(history) = decode_server(text).unwrap() else { panic!("not history") };
        assert_eq!(history.r#ref.as_deref(), Some("h\"1"));
        assert_eq!(history.messages, vec![sample_msg(3), sample_msg(2), sample_msg(1)]);

        let empty = encode_history(None, &conv, &[]);
        assert_eq!(&empty[..], br#"{"type":"history","conv":"group:g","messages":[]}"#);
    }

    #[test]
    fn json_strings_escape_like_serde_json() {
        let tricky = "q\"b\\s/\u{0}\u{1f}\u{7f}\u{8}\t\n\u{c}\r é 😀";
        let mut out = Vec::new();
        push_json_string(&mut out, tricky);
        assert_eq!(out, serde_json::to_vec(tricky).unwrap());
    }

    #[test]
    fn u64_digits() {
        for value in [0, 7, 10, 12_345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }

    proptest! {
        #[test]
        fn encode_msg_matches_serde_byte_for_byte(msg in strategies::msg()) {
            prop_assert_eq!(encode_msg(&msg), encode(&msg));
        }

        #[test]
        fn encode_history_matches_serde_byte_for_byte(
            r#ref in strategies::reference(),
            conv in strategies::conv(),
            messages in proptest::collection::vec(strategies::msg(), 0..4),
        ) {
            let stored: Vec<Bytes> = messages.iter().map(encode_msg).collect();
            let spliced = encode_history(r#ref.as_deref(), &conv, &stored);
            let history = History { r#ref, conv, messages };
            prop_assert_eq!(spliced, encode(&history));
        }

        #[test]
        fn json_strings_match_serde_json(text in strategies::text(40)) {
            let mut out = Vec::new();
            push_json_string(&mut out, &text);
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }
}
