//! Identifiers: users, devices, groups, feeds and conversations.
//!
//! Users, devices and the ids of groups and feeds are 1..=64 bytes of
//! `[A-Za-z0-9_.@-]` (DESIGN section 3). Conversations are `dm:<a>:<b>` with the two
//! user ids sorted, `group:<id>` or `feed:<id>`. Every id is validated once, when it is
//! made, and is cheap to clone afterwards (a shared `Arc<str>`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("id has a character outside [A-Za-z0-9_.@-]")]
    BadChar,
    #[error("conversation id must start with dm:, group: or feed:")]
    BadConvPrefix,
    #[error("dm conversation id must be dm:<a>:<b> with a <= b")]
    BadDm,
}

fn check_name(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'@' | b'-');
    if !text.bytes().all(allowed) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `text` as an id.
            pub fn new(text: &str) -> Result<Self, IdError> {
                check_name(text)?;
                Ok(Self(Arc::from(text)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::new(&text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A user id (the JWT `sub`).
    UserId
);
name_id!(
    /// A device id (the JWT `dev`, `default` when absent).
    DeviceId
);

impl DeviceId {
    /// The device of a token without a `dev` claim.
    pub fn default_device() -> Self {
        Self(Arc::from("default"))
    }
}

/// What kind of conversation an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvKind {
    /// `dm:<a>:<b>`: two users.
    Dm,
    /// `group:<id>`: members kept by the server.
    Group,
    /// `feed:<id>`: a broadcast channel with subscribers.
    Feed,
}

impl ConvKind {
    pub fn prefix(self) -> &'static str {
        match self {
            ConvKind::Dm => "dm",
            ConvKind::Group => "group",
            ConvKind::Feed => "feed",
        }
    }
}

/// A conversation id in canonical form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvId {
    text: Arc<str>,
    kind: ConvKind,
}

impl ConvId {
    /// Parses and validates a conversation id. A dm id must already be sorted.
    pub fn new(text: &str) -> Result<Self, IdError> {
        let (prefix, rest) = text.split_once(':').ok_or(IdError::BadConvPrefix)?;
        let kind = match prefix {
            "dm" => {
                let (a, b) = rest.split_once(':').ok_or(IdError::BadDm)?;
                check_name(a)?;
                check_name(b)?;
                if a > b {
                    return Err(IdError::BadDm);
                }
                ConvKind::Dm
            }
            "group" => {
                check_name(rest)?;
                ConvKind::Group
            }
            "feed" => {
                check_name(rest)?;
                ConvKind::Feed
            }
            _ => return Err(IdError::BadConvPrefix),
        };
        Ok(Self { text: Arc::from(text), kind })
    }

    /// The dm between two users, whichever order they are given in.
    pub fn dm(a: &UserId, b: &UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        Self { text: Arc::from(format!("dm:{low}:{high}")), kind: ConvKind::Dm }
    }

    /// `group:<id>` for a valid group id.
    pub fn group(id: &str) -> Result<Self, IdError> {
        Self::new_with_kind(ConvKind::Group, id)
    }

    /// `feed:<id>` for a valid feed id.
    pub fn feed(id: &str) -> Result<Self, IdError> {
        Self::new_with_kind(ConvKind::Feed, id)
    }

    fn new_with_kind(kind: ConvKind, id: &str) -> Result<Self, IdError> {
        check_name(id)?;
        Ok(Self { text: Arc::from(format!("{}:{id}", kind.prefix())), kind })
    }

    pub fn kind(&self) -> ConvKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The part after the `kind:` prefix.
    pub fn local_part(&self) -> &str {
        &self.text[self.kind.prefix().len() + 1..]
    }

    /// The two users of a dm (`None` for other kinds).
    pub fn dm_members(&self) -> Option<(UserId, UserId)> {
        if self.kind != ConvKind::Dm {
            return None;
        }
        let (a, b) = self.local_part().split_once(':')?;
        Some((UserId(Arc::from(a)), UserId(Arc::from(b))))
    }

    /// For a dm, the member other than `user` (`None` if `user` is not a member).
    /// In a dm of a user with themself the other member is that user.
    pub fn dm_peer(&self, user: &UserId) -> Option<UserId> {
        let (a, b) = self.dm_members()?;
        if &a == user {
            Some(b)
        } else if &b == user {
            Some(a)
        } else {
            None
        }
    }
}

impl FromStr for ConvId {
    type Err = IdError;
    fn from_str(text: &str) -> Result<Self, IdError> {
        Self::new(text)
    }
}

impl AsRef<str> for ConvId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_charset_and_length() {
        assert!(UserId::new("alice.b@x-y_z9").is_ok());
        assert_eq!(UserId::new(""), Err(IdError::Empty));
        assert_eq!(UserId::new(&"a".repeat(65)), Err(IdError::TooLong));
        assert!(UserId::new(&"a".repeat(64)).is_ok());
        assert_eq!(UserId::new("a:b"), Err(IdError::BadChar));
        assert_eq!(UserId::new("ä"), Err(IdError::BadChar));
    }

    #[test]
    fn dm_ids_are_sorted_and_parse_back() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let conv = ConvId::dm(&bob, &alice);
        assert_eq!(conv.as_str(), "dm:alice:bob");
        assert_eq!(ConvId::new("dm:alice:bob").unwrap(), conv);
        assert_eq!(ConvId::new("dm:bob:alice"), Err(IdError::BadDm));
        assert_eq!(conv.dm_peer(&alice), Some(bob.clone()));
        assert_eq!(conv.dm_peer(&UserId::new("carol").unwrap()), None);
        assert_eq!(conv.kind(), ConvKind::Dm);
    }

    #[test]
    fn groups_and_feeds_parse() {
        assert_eq!(ConvId::new("group:g1").unwrap().kind(), ConvKind::Group);
        assert_eq!(ConvId::new("feed:news").unwrap().local_part(), "news");
        assert_eq!(ConvId::group("g1").unwrap().as_str(), "group:g1");
        assert_eq!(ConvId::new("chan:x"), Err(IdError::BadConvPrefix));
        assert_eq!(ConvId::new("nocolon"), Err(IdError::BadConvPrefix));
        assert_eq!(ConvId::new("group:"), Err(IdError::Empty));
        assert_eq!(ConvId::new("dm:a"), Err(IdError::BadDm));
    }

    #[test]
    fn serde_validates() {
        let conv: ConvId = serde_json::from_str("\"feed:x\"").unwrap();
        assert_eq!(conv.kind(), ConvKind::Feed);
        assert!(serde_json::from_str::<ConvId>("\"feed:\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"a b\"").is_err());
    }
}
