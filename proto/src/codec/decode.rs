//! Decoding: client frames (with limits) on the server, server frames on clients.
//!
//! serde's internally tagged enums buffer fields into an intermediate `Content` value
//! and therefore cannot hold a `RawValue` (the `send` body). [`decode_client`] instead
//! parses the frame once into [`RawFields`], a borrowed view holding every field the
//! contract knows as unparsed JSON text, then builds the frame its `type` names, parsing
//! each field on its own. That gives one scan of the frame, the `ref` even when another
//! field is broken, error messages that name the field, and list lengths checked before
//! their elements are parsed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::{DecodeError, DecodeLimits};
use crate::client::{
    ClientFrame, GroupChangeFrame, GroupCreateFrame, HistoryFrame, PingFrame, PresenceSubFrame, ReceiptFrame,
    ReceiptsFrame, SendFrame, SubscribeFrame, SyncFrame, TypingFrame, UnsubscribeFrame,
};
use crate::ids::{ConvId, ConvKind, UserId};
use crate::limits::MAX_HISTORY_LIMIT;
use crate::server::{
    Ack, ErrorFrame, Group, Hello, History, Msg, Pong, Presence, ReceiptEvent, Receipts, ServerFrame, Subscribed,
    Synced, TypingEvent, Unsubscribed,
};

/// Every field of every client frame, as borrowed JSON text. Unknown fields are skipped
/// (the contract says they are ignored). `null` reads as absent, except for `body`,
/// where `null` is a legitimate value.
#[derive(Deserialize)]
struct RawFields<'a> {
    #[serde(rename = "type", borrow, default)]
    frame_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    r#ref: Option<&'a RawValue>,
    #[serde(borrow, default)]
    conv: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cmid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cursors: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    members: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    users: Option<&'a RawValue>,
    #[serde(borrow, default)]
    state: Option<&'a RawValue>,
}

/// A field that is present is `Some`, even when its value is `null`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Decodes one client text frame, enforcing `limits`.
///
/// Errors are `too_large` for anything over a limit and `bad_request` for everything
/// else (not JSON, not an object, no string `type`, unknown `type`, a missing or invalid
/// field); the `ref` is echoed whenever it was a string within `max_ref_bytes`.
pub fn decode_client(text: &str, limits: &DecodeLimits) -> Result<ClientFrame, DecodeError> {
    // Before anything else, so an oversized frame costs no parsing.
    if text.len() > limits.max_frame_bytes {
        return Err(DecodeError::too_large(format!(
            "frame is {} bytes, more than max_frame_bytes {}",
            text.len(),
            limits.max_frame_bytes
        )));
    }
    // serde would also accept a JSON array for a struct (fields by position).
    if !is_json_object(text) {
        return Err(DecodeError::bad_request("frame must be a JSON object"));
    }
    let fields: RawFields<'_> = serde_json::from_str(text)
        .map_err(|error| DecodeError::bad_request(format!("frame is not valid JSON: {error}")))?;
    let reference = read_ref(fields.r#ref, limits)?;

    let frame_type: Cow<'_, str> = match fields.frame_type {
        None => {
            return Err(DecodeError { r#ref: reference, ..DecodeError::bad_request("field `type` is missing") });
        }
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(frame_type) => frame_type,
            Err(_) => {
                let error = DecodeError::bad_request("field `type` must be a string");
                return Err(DecodeError { r#ref: reference, ..error });
            }
        },
    };
    // The ref moves into the frame; the error path reads it again rather than cloning it
    // for every frame.
    let decoder = FrameDecoder { fields: &fields, limits };
    let frame = match &*frame_type {
        "send" => decoder.send(reference).map(ClientFrame::Send),
        "receipt" => decoder.receipt().map(ClientFrame::Receipt),
        "sync" => decoder.sync(reference).map(ClientFrame::Sync),
        "history" => decoder.history(reference).map(ClientFrame::History),
        "group_create" => decoder.group_create(reference).map(ClientFrame::GroupCreate),
        "group_add" => decoder.group_change(reference).map(ClientFrame::GroupAdd),
        "group_remove" => decoder.group_change(reference).map(ClientFrame::GroupRemove),
        "subscribe" => decoder.subscribe(reference).map(ClientFrame::Subscribe),
        "unsubscribe" => decoder.unsubscribe(reference).map(ClientFrame::Unsubscribe),
        "presence_sub" => decoder.presence(reference).map(ClientFrame::PresenceSub),
        "presence_unsub" => decoder.presence(reference).map(ClientFrame::PresenceUnsub),
        "typing" => decoder.typing().map(ClientFrame::Typing),
        "ping" => Ok(ClientFrame::Ping(PingFrame { r#ref: reference })),
        "receipts" => decoder.receipts(reference).map(ClientFrame::Receipts),
        unknown => Err(DecodeError::bad_request(format!("unknown frame type {unknown:?}"))),
    };
    frame.map_err(|error| DecodeError { r#ref: read_ref(fields.r#ref, limits).ok().flatten(), ..error })
}

/// Whether the text starts, after JSON whitespace, with `{`.
fn is_json_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// Reads the `ref`: a string of at most `max_ref_bytes`. A bad `ref` is reported
/// without one, since it cannot be echoed.
fn read_ref(raw: Option<&RawValue>, limits: &DecodeLimits) -> Result<Option<String>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    let reference: String =
        serde_json::from_str(raw.get()).map_err(|_| DecodeError::bad_request("field `ref` must be a string"))?;
    if reference.len() > limits.max_ref_bytes {
        return Err(DecodeError::too_large(format!(
            "field `ref` is {} bytes, more than max_ref_bytes {}",
            reference.len(),
            limits.max_ref_bytes
        )));
    }
    Ok(Some(reference))
}

/// Builds typed frames from the raw fields, one method per frame shape.
struct FrameDecoder<'f, 'a> {
    fields: &'f RawFields<'a>,
    limits: &'f DecodeLimits,
}

impl FrameDecoder<'_, '_> {
    fn send(&self, r#ref: Option<String>) -> Result<SendFrame, DecodeError> {
        let conv = required("conv", self.fields.conv)?;
        let cmid: String = required("cmid", self.fields.cmid)?;
        if cmid.is_empty() {
            return Err(DecodeError::bad_request("field `cmid` must not be empty"));
        }
        check_bytes("cmid", &cmid, self.limits.max_cmid_bytes, "max_cmid_bytes")?;
        let body = self.fields.body.ok_or_else(|| DecodeError::bad_request("field `body` is missing"))?;
        check_bytes("body", body.get(), self.limits.max_body_bytes, "max_body_bytes")?;
        Ok(SendFrame { r#ref, conv, cmid, body: body.to_owned() })
    }

    fn receipt(&self) -> Result<ReceiptFrame, DecodeError> {
        let conv = required("conv", self.fields.conv)?;
        let seq: u64 = required("seq", self.fields.seq)?;
        if seq == 0 {
            return Err(DecodeError::bad_request("field `seq` must be at least 1"));
        }
        let kind = required("kind", self.fields.kind)?;
        Ok(ReceiptFrame { conv, seq, kind })
    }

    fn sync(&self, r#ref: Option<String>) -> Result<SyncFrame, DecodeError> {
        let cursors: Option<BTreeMap<ConvId, u64>> = optional("cursors", self.fields.cursors)?;
        if let Some(cursors) = &cursors
            && cursors.len() > self.limits.max_cursors
        {
            return Err(DecodeError::too_large(format!(
                "field `cursors` has {} entries, more than max_cursors {}",
                cursors.len(),
                self.limits.max_cursors
            )));
        }
        Ok(SyncFrame { r#ref, cursors })
    }

    fn history(&self, r#ref: Option<String>) -> Result<HistoryFrame, DecodeError> {
        let conv = required("conv", self.fields.conv)?;
        let before = optional("before", self.fields.before)?;
        let limit: Option<u32> = optional("limit", self.fields.limit)?;
        if let Some(limit) = limit
            && !(1..=MAX_HISTORY_LIMIT).contains(&limit)
        {
            return Err(DecodeError::bad_request(format!(
                "field `limit` must be between 1 and {MAX_HISTORY_LIMIT}, not {limit}"
            )));
        }
        Ok(HistoryFrame { r#ref, conv, before, limit })
    }

    fn group_create(&self, r#ref: Option<String>) -> Result<GroupCreateFrame, DecodeError> {
        let name: String = required("name", self.fields.name)?;
        if name.is_empty() {
            return Err(DecodeError::bad_request("field `name` must not be empty"));
        }
        check_bytes("name", &name, self.limits.max_name_bytes, "max_name_bytes")?;
        let members = self.user_list("members", self.fields.members)?;
        Ok(GroupCreateFrame { r#ref, name, members })
    }

    fn group_change(&self, r#ref: Option<String>) -> Result<GroupChangeFrame, DecodeError> {
        let conv: ConvId = required("conv", self.fields.conv)?;
        if conv.kind() != ConvKind::Group {
            return Err(DecodeError::bad_request("field `conv` must be a group: conversation"));
        }
        let members = self.user_list("members", self.fields.members)?;
        Ok(GroupChangeFrame { r#ref, conv, members })
    }

    fn subscribe(&self, r#ref: Option<String>) -> Result<SubscribeFrame, DecodeError> {
        let conv = feed("conv", self.fields.conv)?;
        let since = optional("since", self.fields.since)?;
        Ok(SubscribeFrame { r#ref, conv, since })
    }

    fn unsubscribe(&self, r#ref: Option<String>) -> Result<UnsubscribeFrame, DecodeError> {
        let conv = feed("conv", self.fields.conv)?;
        Ok(UnsubscribeFrame { r#ref, conv })
    }

    fn presence(&self, r#ref: Option<String>) -> Result<PresenceSubFrame, DecodeError> {
        let users = self.user_list("users", self.fields.users)?;
        Ok(PresenceSubFrame { r#ref, users })
    }

    fn receipts(&self, r#ref: Option<String>) -> Result<ReceiptsFrame, DecodeError> {
        let conv = required("conv", self.fields.conv)?;
        Ok(ReceiptsFrame { r#ref, conv })
    }

    fn typing(&self) -> Result<TypingFrame, DecodeError> {
        let conv = required("conv", self.fields.conv)?;
        let state = required("state", self.fields.state)?;
        Ok(TypingFrame { conv, state })
    }

    /// A list of user ids: its length is checked before any element is parsed, and a bad
    /// element is named by its index.
    fn user_list(&self, name: &str, raw: Option<&RawValue>) -> Result<Vec<UserId>, DecodeError> {
        let elements: Vec<&RawValue> = required(name, raw)?;
        if elements.len() > self.limits.max_list_len {
            return Err(DecodeError::too_large(format!(
                "field `{name}` has {} entries, more than max_list_len {}",
                elements.len(),
                self.limits.max_list_len
            )));
        }
        elements.iter().enumerate().map(|(index, element)| parse(&format!("{name}[{index}]"), element)).collect()
    }
}

/// Parses a field that must be present and not `null`.
fn required<'a, T: Deserialize<'a>>(name: &str, raw: Option<&'a RawValue>) -> Result<T, DecodeError> {
    match raw {
        Some(raw) => parse(name, raw),
        None => Err(DecodeError::bad_request(format!("field `{name}` is missing"))),
    }
}

/// Parses a field that may be absent or `null`.
fn optional<T: DeserializeOwned>(name: &str, raw: Option<&RawValue>) -> Result<Option<T>, DecodeError> {
    raw.map(|raw| parse(name, raw)).transpose()
}

fn parse<'a, T: Deserialize<'a>>(name: &str, raw: &'a RawValue) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get())
        .map_err(|error| DecodeError::bad_request(format!("field `{name}`: {}", without_position(&error))))
}

/// A conversation that must be a `feed:` (subscribe, unsubscribe).
fn feed(name: &str, raw: Option<&RawValue>) -> Result<ConvId, DecodeError> {
    let conv: ConvId = required(name, raw)?;
    if conv.kind() != ConvKind::Feed {
        return Err(DecodeError::bad_request(format!("field `{name}` must be a feed: conversation")));
    }
    Ok(conv)
}

fn check_bytes(name: &str, value: &str, max: usize, limit_name: &str) -> Result<(), DecodeError> {
    if value.len() > max {
        return Err(DecodeError::too_large(format!(
            "field `{name}` is {} bytes, more than {limit_name} {max}",
            value.len()
        )));
    }
    Ok(())
}

/// serde_json appends " at line L column C" to its messages; inside a single field the
/// position is relative to that field's text and would only mislead.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if error.line() == 0 {
        return message;
    }
    match message.rfind(" at line ") {
        Some(end) => message[..end].to_owned(),
        None => message,
    }
}

/// Decodes one server text frame; for clients, tests and the load generator. Unknown
/// fields are ignored; an unknown `type` is an error (a client should skip the frame).
/// The error's code is always `bad_request` and carries no `ref`.
pub fn decode_server(text: &str) -> Result<ServerFrame, DecodeError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        frame_type: Cow<'a, str>,
    }

    if !is_json_object(text) {
        return Err(DecodeError::bad_request("frame must be a JSON object"));
    }
    let envelope: Envelope<'_> = serde_json::from_str(text)
        .map_err(|error| DecodeError::bad_request(format!("frame has no string `type`: {error}")))?;
    fn typed<T: DeserializeOwned>(text: &str, wrap: fn(T) -> ServerFrame) -> Result<ServerFrame, DecodeError> {
        serde_json::from_str(text).map(wrap).map_err(|error| DecodeError::bad_request(error.to_string()))
    }
    match &*envelope.frame_type {
        "hello" => typed::<Hello>(text, ServerFrame::Hello),
        "ack" => typed::<Ack>(text, ServerFrame::Ack),
        "msg" => typed::<Msg>(text, ServerFrame::Msg),
        "receipt" => typed::<ReceiptEvent>(text, ServerFrame::Receipt),
        "synced" => typed::<Synced>(text, ServerFrame::Synced),
        "history" => typed::<History>(text, ServerFrame::History),
        "group" => typed::<Group>(text, ServerFrame::Group),
        "subscribed" => typed::<Subscribed>(text, ServerFrame::Subscribed),
        "unsubscribed" => typed::<Unsubscribed>(text, ServerFrame::Unsubscribed),
        "presence" => typed::<Presence>(text, ServerFrame::Presence),
        "typing" => typed::<TypingEvent>(text, ServerFrame::Typing),
        "error" => typed::<ErrorFrame>(text, ServerFrame::Error),
        "pong" => typed::<Pong>(text, ServerFrame::Pong),
        "receipts" => typed::<Receipts>(text, ServerFrame::Receipts),
        unknown => Err(DecodeError::bad_request(format!("unknown frame type {unknown:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{encode, encode_client, strategies};
    use crate::error::ErrorCode;

    fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        decode_client(text, &DecodeLimits::default())
    }

    fn refused(text: &str) -> DecodeError {
        decode(text).expect_err("frame should be refused")
    }

    #[test]
    fn decodes_a_send_with_its_body_verbatim() {
        let text = r#"{"type":"send","ref":"r1","conv":"dm:alice:bob","cmid":"c-1","body":{"text":"hi", "n": [1,2]}}"#;
        let ClientFrame::Send(send) = decode(text).unwrap() else { panic!("not a send") };
        assert_eq!(send.r#ref.as_deref(), Some("r1"));
        assert_eq!(send.conv.as_str(), "dm:alice:bob");
        assert_eq!(send.cmid, "c-1");
        assert_eq!(send.body.get(), r#"{"text":"hi", "n": [1,2]}"#);
    }

    #[test]
    fn null_body_is_a_body_but_null_ref_is_no_ref() {
        let ClientFrame::Send(send) =
            decode(r#"{"type":"send","ref":null,"conv":"group:g","cmid":"c","body":null}"#).unwrap()
        else {
            panic!("not a send")
        };
        assert_eq!(send.body.get(), "null");
        assert_eq!(send.r#ref, None);
    }

    #[test]
    fn unknown_fields_are_ignored_wherever_they_are() {
        let frame = decode(r#"{"extra":{"deep":[1]},"ref":"p","future":true,"type":"ping"}"#).unwrap();
        assert_eq!(frame, ClientFrame::Ping(PingFrame { r#ref: Some("p".into()) }));
    }

    #[test]
    fn every_frame_type_decodes() {
        let cases = [
            r#"{"type":"receipt","conv":"group:g","seq":4,"kind":"delivered"}"#,
            r#"{"type":"sync","ref":"s","cursors":{"group:g":3,"dm:a:b":0}}"#,
            r#"{"type":"sync"}"#,
            r#"{"type":"history","ref":"h","conv":"feed:f","before":10,"limit":200}"#,
            r#"{"type":"group_create","ref":"g","name":"team","members":["a","b"]}"#,
            r#"{"type":"group_add","ref":"g","conv":"group:g","members":["c"]}"#,
            r#"{"type":"group_remove","ref":"g","conv":"group:g","members":["c"]}"#,
            r#"{"type":"subscribe","ref":"s","conv":"feed:news","since":5}"#,
            r#"{"type":"unsubscribe","ref":"u","conv":"feed:news"}"#,
            r#"{"type":"presence_sub","ref":"p","users":["a"]}"#,
            r#"{"type":"presence_unsub","ref":"p","users":[]}"#,
            r#"{"type":"typing","conv":"dm:a:b","state":"start"}"#,
            r#"{"type":"ping"}"#,
        ];
        for text in cases {
            let frame = decode(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            let expected: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(frame.type_name(), expected["type"]);
        }
        let ClientFrame::Sync(sync) = decode(r#"{"type":"sync","cursors":{"group:g":3}}"#).unwrap() else {
            panic!("not a sync")
        };
        assert_eq!(sync.cursors.unwrap()[&ConvId::new("group:g").unwrap()], 3);
    }

    #[test]
    fn malformed_frames_are_bad_requests() {
        for text in ["", "not json", "[1,2]", "\"send\"", "{", "{\"type\":\"ping\"} trailing", "{}"] {
            let error = refused(text);
            assert_eq!(error.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(error.r#ref, None);
        }
        assert!(refused("{}").message.contains("`type` is missing"));
    }

    #[test]
    fn errors_echo_the_ref_when_it_could_be_read() {
        let cases = [
            (r#"{"type":5,"ref":"a"}"#, "`type` must be a string"),
            (r#"{"type":"launch","ref":"a"}"#, "unknown frame type \"launch\""),
            (r#"{"type":"send","ref":"a","conv":"chan:x","cmid":"c","body":1}"#, "field `conv`: conversation id"),
            (r#"{"type":"send","ref":"a","conv":"dm:b:a","cmid":"c","body":1}"#, "field `conv`: dm"),
            (r#"{"type":"send","ref":"a","cmid":"c","body":1}"#, "field `conv` is missing"),
            (r#"{"type":"send","ref":"a","conv":"group:g","cmid":"c"}"#, "field `body` is missing"),
            (r#"{"type":"send","ref":"a","conv":"group:g","cmid":"","body":1}"#, "`cmid` must not be empty"),
            (r#"{"type":"send","ref":"a","conv":"group:g","cmid":7,"body":1}"#, "field `cmid`: invalid type"),
            (r#"{"type":"history","ref":"a","conv":"group:g","limit":0}"#, "`limit` must be between 1 and 200"),
            (r#"{"type":"history","ref":"a","conv":"group:g","limit":201}"#, "not 201"),
            (r#"{"type":"group_add","ref":"a","conv":"group:g","members":["ok","b d"]}"#, "`members[1]`"),
            (r#"{"type":"group_add","ref":"a","conv":"feed:f","members":[]}"#, "must be a group:"),
            (r#"{"type":"subscribe","ref":"a","conv":"group:g"}"#, "must be a feed:"),
            (r#"{"type":"sync","ref":"a","cursors":{"nope":1}}"#, "field `cursors`"),
            (r#"{"type":"typing","ref":"a","conv":"group:g","state":"maybe"}"#, "field `state`: unknown variant"),
        ];
        for (text, expected) in cases {
            let error = refused(text);
            assert_eq!(error.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(error.r#ref.as_deref(), Some("a"), "{text}");
            assert!(error.message.contains(expected), "{text}: {:?} lacks {expected:?}", error.message);
            assert!(!error.message.contains("at line"), "{text}: {:?}", error.message);
        }
    }

    #[test]
    fn receipts_need_a_positive_seq() {
        let error = refused(r#"{"type":"receipt","conv":"group:g","seq":0,"kind":"read"}"#);
        assert!(error.message.contains("`seq` must be at least 1"));
        let error = refused(r#"{"type":"receipt","conv":"group:g","seq":-1,"kind":"read"}"#);
        assert_eq!(error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_bad_ref_is_reported_without_a_ref() {
        let error = refused(r#"{"type":"ping","ref":1}"#);
        assert_eq!((error.code, error.r#ref), (ErrorCode::BadRequest, None));
        let long = "r".repeat(129);
        let error = refused(&format!(r#"{{"type":"ping","ref":"{long}"}}"#));
        assert_eq!((error.code, error.r#ref), (ErrorCode::TooLarge, None));
    }

    #[test]
    fn limits_give_too_large() {
        let limits = DecodeLimits {
            max_frame_bytes: 300,
            max_body_bytes: 10,
            max_cmid_bytes: 4,
            max_list_len: 2,
            max_cursors: 1,
            max_name_bytes: 3,
            ..DecodeLimits::default()
        };
        let cases = [
            format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(300)),
            r#"{"type":"send","ref":"a","conv":"group:g","cmid":"c","body":"12345678901"}"#.to_owned(),
            r#"{"type":"send","ref":"a","conv":"group:g","cmid":"12345","body":1}"#.to_owned(),
            r#"{"type":"presence_sub","ref":"a","users":["a","b","c"]}"#.to_owned(),
            r#"{"type":"group_create","ref":"a","name":"abcd","members":[]}"#.to_owned(),
            r#"{"type":"sync","ref":"a","cursors":{"group:a":1,"group:b":2}}"#.to_owned(),
        ];
        for (index, text) in cases.iter().enumerate() {
            let error = decode_client(text, &limits).expect_err(text);
            assert_eq!(error.code, ErrorCode::TooLarge, "{text}: {}", error.message);
            // The oversized frame is refused before parsing, so its ref is unknown.
            let expected_ref = if index == 0 { None } else { Some("a") };
            assert_eq!(error.r#ref.as_deref(), expected_ref, "{text}");
        }
        // At the limit exactly is fine.
        let at_limit = r#"{"type":"send","conv":"group:g","cmid":"1234","body":"12345678"}"#;
        assert!(decode_client(at_limit, &limits).is_ok());
    }

    #[test]
    fn decode_server_reads_every_type_and_refuses_unknown_ones() {
        let ack = r#"{"type":"ack","ref":"r","conv":"dm:a:b","seq":1,"mid":"m","ts":2,"dup":true,"new":0}"#;
        let ServerFrame::Ack(frame) = decode_server(ack).unwrap() else { panic!("not an ack") };
        assert!(frame.dup);
        assert!(decode_server(r#"{"type":"teleport"}"#).unwrap_err().message.contains("teleport"));
        assert!(decode_server("[]").is_err());
        assert!(decode_server(r#"{"type":"ack"}"#).is_err());
        let via_serde: ServerFrame = serde_json::from_str(ack).unwrap();
        assert_eq!(via_serde, ServerFrame::Ack(frame));
    }

    #[test]
    fn history_decodes_spliced_stored_frames() {
        let msg = r#"{"type":"msg","conv":"group:g","seq":2,"mid":"m2","from":"a","dev":"d","ts":1,"body":"x"}"#;
        let text = format!(r#"{{"type":"history","ref":"h","conv":"group:g","messages":[{msg},{msg}]}}"#);
        let ServerFrame::History(history) = decode_server(&text).unwrap() else { panic!("not history") };
        assert_eq!(history.messages.len(), 2);
        assert_eq!(history.messages[0].body.get(), "\"x\"");
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in strategies::client_frame()) {
            let text = encode_client(&frame);
            prop_assert_eq!(decode(&text).unwrap(), frame);
        }

        #[test]
        fn server_frames_round_trip(frame in strategies::server_frame()) {
            let bytes = encode(&frame);
            let text = std::str::from_utf8(&bytes).unwrap();
            prop_assert_eq!(decode_server(text).unwrap(), frame);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_text(text in strategies::text(200)) {
            let _ = decode(&text);
            let _ = decode_server(&text);
        }

        #[test]
        fn decode_never_panics_on_damaged_frames(
            frame in strategies::client_frame(),
            cut in any::<proptest::sample::Index>(),
            insert in strategies::text(3),
        ) {
            let text = encode_client(&frame);
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let _ = decode(&text[..at]);
            let damaged = format!("{}{insert}{}", &text[..at], &text[at..]);
            let _ = decode(&damaged);
        }
    }
}
