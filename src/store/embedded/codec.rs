//! Keys and values of the embedded store: composite keys, the records stored in each
//! keyspace, and the LEB128 varints they share.
//!
//! Sans-IO: nothing here touches fjall beyond decoding the entries a scan yields. The
//! layout itself (which key and value each keyspace holds, and why keys sort the way
//! they do) is documented on the parent module, [`super`].

use bytes::Bytes;
use switchboard_proto::ids::{ConvId, ConvKind, UserId};

use super::{EmbeddedError, EmbeddedResult, FORMAT_V1};
use crate::store::{NewMessage, StoredMessage};

/// Separates the parts of a composite key (ids never contain it).
const SEP: u8 = 0x00;

/// Flag bit of a message value: a cmid follows.
const MESSAGE_HAS_CMID: u8 = 0b1;

/// `parts` joined by [`SEP`]: a full key.
pub(super) fn key_of(parts: &[&str]) -> Vec<u8> {
    let mut key = prefix_of(parts);
    key.pop();
    key
}

/// Each of `parts` followed by [`SEP`]: the prefix that every key below `parts` starts
/// with, and only those (no id contains [`SEP`]).
pub(super) fn prefix_of(parts: &[&str]) -> Vec<u8> {
    let len = parts.iter().map(|part| part.len() + 1).sum();
    let mut prefix = Vec::with_capacity(len);
    for part in parts {
        debug_assert!(!part.as_bytes().contains(&SEP), "ids never contain the key separator");
        prefix.extend_from_slice(part.as_bytes());
        prefix.push(SEP);
    }
    prefix
}

/// `conv 00 seq` (seq big-endian, so keys sort in seq order).
pub(super) fn message_key(conv: &ConvId, seq: u64) -> Vec<u8> {
    let mut key = prefix_of(&[conv.as_str()]);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `conv 00 from 00 cmid`: the cmid comes last, so any bytes in it are safe.
pub(super) fn dedup_key(conv: &ConvId, from: &UserId, cmid: &str) -> Vec<u8> {
    let mut key = prefix_of(&[conv.as_str(), from.as_str()]);
    key.extend_from_slice(cmid.as_bytes());
    key
}

/// `written_at_ms 00 dedup_key`.
pub(super) fn dedup_expiry_key(written_at_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + dedup_key.len());
    key.extend_from_slice(&written_at_ms.to_be_bytes());
    key.push(SEP);
    key.extend_from_slice(dedup_key);
    key
}

pub(super) fn parse_conv(bytes: &[u8], what: &'static str) -> EmbeddedResult<ConvId> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| ConvId::new(text).ok())
        .ok_or(EmbeddedError::Decode { what, reason: "invalid conversation id in key" })
}

pub(super) fn encode_message(message: &NewMessage) -> Vec<u8> {
    let cmid_len = message.cmid.as_ref().map_or(0, |cmid| cmid.len() + 10);
    let mut value = Vec::with_capacity(2 + cmid_len + message.frame.len());
    value.push(FORMAT_V1);
    match &message.cmid {
        Some(cmid) => {
            value.push(MESSAGE_HAS_CMID);
            put_bytes(&mut value, cmid.as_bytes());
        }
        None => value.push(0),
    }
    value.extend_from_slice(&message.frame);
    value
}

pub(super) fn decode_stored_message(
    entry: fjall::Result<(fjall::UserKey, fjall::UserValue)>,
) -> EmbeddedResult<StoredMessage> {
    const WHAT: &str = "messages";
    let (key, value) = entry.map_err(|error| EmbeddedError::fjall("scan messages", error))?;
    let seq_bytes = key
        .len()
        .checked_sub(8)
        .and_then(|start| key.get(start..))
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .ok_or(EmbeddedError::Decode { what: WHAT, reason: "key too short" })?;
    let mut reader = Reader::new(&value, WHAT)?;
    let flags = reader.u8()?;
    if flags & MESSAGE_HAS_CMID != 0 {
        reader.bytes()?;
    }
    Ok(StoredMessage { seq: u64::from_be_bytes(seq_bytes), frame: Bytes::copy_from_slice(reader.rest()) })
}

/// A `conv_meta` row: kind, last seq, epoch, members, then the name as an optional
/// trailing field.
///
/// The name came after the first release: a record without it (every record that
/// release wrote) decodes with `name: None`, and a record with it is still read by that
/// release, whose decoder ignores trailing bytes. A record without a name is encoded
/// exactly as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MetaRecord {
    pub(super) kind: ConvKind,
    pub(super) last_seq: u64,
    pub(super) epoch: u64,
    pub(super) members: Vec<UserId>,
    pub(super) name: Option<String>,
}

impl MetaRecord {
    pub(super) fn new(kind: ConvKind) -> Self {
        Self { kind, last_seq: 0, epoch: 0, members: Vec::new(), name: None }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let name_len = self.name.as_ref().map_or(0, |name| name.len() + 10);
        let mut value = Vec::with_capacity(24 + self.members.len() * 16 + name_len);
        value.push(FORMAT_V1);
        value.push(match self.kind {
            ConvKind::Dm => 0,
            ConvKind::Group => 1,
            ConvKind::Feed => 2,
        });
        put_varint(&mut value, self.last_seq);
        put_varint(&mut value, self.epoch);
        put_varint(&mut value, self.members.len() as u64);
        for member in &self.members {
            put_bytes(&mut value, member.as_str().as_bytes());
        }
        // Length-prefixed, so an empty name (one zero byte) differs from no name.
        if let Some(name) = &self.name {
            put_bytes(&mut value, name.as_bytes());
        }
        value
    }

    pub(super) fn decode(value: &[u8]) -> EmbeddedResult<Self> {
        const WHAT: &str = "conv_meta";
        let mut reader = Reader::new(value, WHAT)?;
        let kind = match reader.u8()? {
            0 => ConvKind::Dm,
            1 => ConvKind::Group,
            2 => ConvKind::Feed,
            _ => {
                return Err(EmbeddedError::Decode { what: WHAT, reason: "unknown conversation kind" });
            }
        };
        let last_seq = reader.varint()?;
        let epoch = reader.varint()?;
        let count = reader.varint()?;
        let mut members = Vec::new();
        for _ in 0..count {
            let member = std::str::from_utf8(reader.bytes()?)
                .ok()
                .and_then(|text| UserId::new(text).ok())
                .ok_or(EmbeddedError::Decode { what: WHAT, reason: "invalid member id" })?;
            members.push(member);
        }
        let name = if reader.is_empty() {
            None
        } else {
            let name = std::str::from_utf8(reader.bytes()?)
                .map_err(|_| EmbeddedError::Decode { what: WHAT, reason: "name is not utf-8" })?;
            Some(name.to_owned())
        };
        Ok(Self { kind, last_seq, epoch, members, name })
    }
}

/// A `dedup` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DedupRecord {
    pub(super) written_at_ms: u64,
    pub(super) seq: u64,
    pub(super) ts: u64,
    pub(super) mid: String,
}

impl DedupRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(1 + 30 + self.mid.len());
        value.push(FORMAT_V1);
        put_varint(&mut value, self.written_at_ms);
        put_varint(&mut value, self.seq);
        put_varint(&mut value, self.ts);
        value.extend_from_slice(self.mid.as_bytes());
        value
    }

    pub(super) fn decode(value: &[u8]) -> EmbeddedResult<Self> {
        const WHAT: &str = "dedup";
        let mut reader = Reader::new(value, WHAT)?;
        let written_at_ms = reader.varint()?;
        let seq = reader.varint()?;
        let ts = reader.varint()?;
        let mid = std::str::from_utf8(reader.rest())
            .map_err(|_| EmbeddedError::Decode { what: WHAT, reason: "mid is not utf-8" })?
            .to_owned();
        Ok(Self { written_at_ms, seq, ts, mid })
    }
}

pub(super) fn encode_cursor(seq: u64) -> Vec<u8> {
    let mut value = vec![FORMAT_V1];
    put_varint(&mut value, seq);
    value
}

pub(super) fn decode_cursor(value: &[u8]) -> EmbeddedResult<u64> {
    Reader::new(value, "cursors")?.varint()
}

/// A `presence` or `revocations` value: a time in milliseconds.
pub(super) fn encode_time_ms(time_ms: u64) -> Vec<u8> {
    let mut value = vec![FORMAT_V1];
    put_varint(&mut value, time_ms);
    value
}

pub(super) fn decode_time_ms(value: &[u8], what: &'static str) -> EmbeddedResult<u64> {
    Reader::new(value, what)?.varint()
}

pub(super) fn encode_marks(delivered: u64, read: u64) -> Vec<u8> {
    let mut value = vec![FORMAT_V1];
    put_varint(&mut value, delivered);
    put_varint(&mut value, read);
    value
}

pub(super) fn decode_marks(value: &[u8]) -> EmbeddedResult<(u64, u64)> {
    let mut reader = Reader::new(value, "receipts")?;
    Ok((reader.varint()?, reader.varint()?))
}

/// LEB128: seven bits a byte, low bits first.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation keeps the low seven bits, which is the point.
        #[allow(clippy::cast_possible_truncation)]
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads a value written by this module, after checking its format byte.
#[derive(Debug)]
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(value: &'a [u8], what: &'static str) -> EmbeddedResult<Self> {
        let mut reader = Self { rest: value, what };
        match reader.u8()? {
            FORMAT_V1 => Ok(reader),
            _ => Err(EmbeddedError::Decode { what, reason: "unknown format byte (written by a newer version?)" }),
        }
    }

    fn error(&self, reason: &'static str) -> EmbeddedError {
        EmbeddedError::Decode { what: self.what, reason }
    }

    fn u8(&mut self) -> EmbeddedResult<u8> {
        let (&first, rest) = self.rest.split_first().ok_or_else(|| self.error("value truncated"))?;
        self.rest = rest;
        Ok(first)
    }

    fn varint(&mut self) -> EmbeddedResult<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 64 bits"))
    }

    fn bytes(&mut self) -> EmbeddedResult<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| self.error("length overflows"))?;
        if len > self.rest.len() {
            return Err(self.error("value truncated"));
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(bytes)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{alice, conv};
    use super::*;

    #[test]
    fn values_roundtrip_and_reject_unknown_formats() {
        let meta = MetaRecord {
            kind: ConvKind::Group,
            last_seq: 300,
            epoch: u64::MAX,
            members: vec![alice(), UserId::new("bob").expect("valid user id")],
            name: Some("Caf\u{e9} crew".to_owned()),
        };
        assert_eq!(MetaRecord::decode(&meta.encode()).expect("decode"), meta);
        for name in [None, Some(String::new())] {
            let meta = MetaRecord { name, ..meta.clone() };
            assert_eq!(MetaRecord::decode(&meta.encode()).expect("decode"), meta);
        }
        let dedup = DedupRecord { written_at_ms: 5, seq: 1 << 40, ts: 7, mid: "m".to_owned() };
        assert_eq!(DedupRecord::decode(&dedup.encode()).expect("decode"), dedup);
        assert_eq!(decode_marks(&encode_marks(9, 3)).expect("decode"), (9, 3));
        assert_eq!(decode_cursor(&encode_cursor(0)).expect("decode"), 0);
        assert_eq!(decode_time_ms(&encode_time_ms(1_735_689_600_000), "presence").expect("decode"), 1_735_689_600_000);

        let mut newer = meta.encode();
        newer[0] = 2;
        assert!(matches!(MetaRecord::decode(&newer), Err(EmbeddedError::Decode { .. })));
        assert!(matches!(MetaRecord::decode(&meta.encode()[..3]), Err(EmbeddedError::Decode { .. })));
        assert!(matches!(decode_cursor(&[]), Err(EmbeddedError::Decode { .. })));
    }

    #[test]
    fn meta_records_of_the_first_release_still_decode() {
        // As the first release wrote them: format, kind (group), last seq 300 (varint),
        // epoch 2, one member "alice"; no name.
        let old = [FORMAT_V1, 1, 0xac, 0x02, 2, 1, 5, b'a', b'l', b'i', b'c', b'e'];
        let decoded = MetaRecord::decode(&old).expect("decode");
        let expected =
            MetaRecord { kind: ConvKind::Group, last_seq: 300, epoch: 2, members: vec![alice()], name: None };
        assert_eq!(decoded, expected);
        // Without a name this version writes the very same bytes.
        assert_eq!(expected.encode(), old);
        // A name is a trailing field: it starts where the old record ended.
        let named = MetaRecord { name: Some("crew".to_owned()), ..expected };
        assert_eq!(named.encode()[..old.len()], old);
        // A truncated name is refused, not read as no name.
        let encoded = named.encode();
        assert!(matches!(MetaRecord::decode(&encoded[..encoded.len() - 1]), Err(EmbeddedError::Decode { .. })));
    }

    #[test]
    fn message_keys_sort_by_seq_within_a_conversation_only() {
        let short = conv("a");
        let long = conv("ab");
        assert!(message_key(&short, 255) < message_key(&short, 256));
        assert!(message_key(&short, u64::MAX) < message_key(&long, 0));
        assert!(!message_key(&long, 1).starts_with(&prefix_of(&[short.as_str()])));
    }
}
