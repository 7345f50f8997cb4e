//! proptest strategies for valid frames, shared by the codec's tests.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::value::RawValue;

use crate::client::*;
use crate::error::ErrorCode;
use crate::ids::{ConvId, DeviceId, UserId};
use crate::server::*;

const NAME: &str = "[A-Za-z0-9_.@-]{1,12}";

pub(crate) fn user() -> impl Strategy<Value = UserId> {
    NAME.prop_map(|name| UserId::new(&name).unwrap())
}

pub(crate) fn device() -> impl Strategy<Value = DeviceId> {
    NAME.prop_map(|name| DeviceId::new(&name).unwrap())
}

pub(crate) fn conv() -> impl Strategy<Value = ConvId> {
    prop_oneof![
        (user(), user()).prop_map(|(a, b)| ConvId::dm(&a, &b)),
        NAME.prop_map(|name| ConvId::group(&name).unwrap()),
        feed(),
    ]
}

pub(crate) fn feed() -> impl Strategy<Value = ConvId> {
    NAME.prop_map(|name| ConvId::feed(&name).unwrap())
}

pub(crate) fn group() -> impl Strategy<Value = ConvId> {
    NAME.prop_map(|name| ConvId::group(&name).unwrap())
}

/// Any string, control characters, quotes and non-ASCII included.
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("(?s).{{0,{max}}}")).unwrap()
}

pub(crate) fn reference() -> impl Strategy<Value = Option<String>> {
    option::of(text(16))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        text(12).prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            btree_map(text(6), inner, 0..4).prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A JSON body, kept as text: either compact serde output or with extra whitespace, to
/// show the text is carried verbatim.
pub(crate) fn body() -> impl Strategy<Value = Box<RawValue>> {
    (json_value(), any::<bool>()).prop_map(|(value, pretty)| {
        let text =
            if pretty { serde_json::to_string_pretty(&value).unwrap() } else { serde_json::to_string(&value).unwrap() };
        RawValue::from_string(text).unwrap()
    })
}

fn seq() -> impl Strategy<Value = u64> {
    1..=u64::MAX
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let users = || vec(user(), 0..5);
    prop_oneof![
        (reference(), conv(), "[ -~]{1,20}", body())
            .prop_map(|(r#ref, conv, cmid, body)| { ClientFrame::Send(SendFrame { r#ref, conv, cmid, body }) }),
        (conv(), seq(), prop_oneof![Just(ReceiptKind::Delivered), Just(ReceiptKind::Read)])
            .prop_map(|(conv, seq, kind)| ClientFrame::Receipt(ReceiptFrame { conv, seq, kind })),
        (reference(), option::of(btree_map(conv(), any::<u64>(), 0..4)))
            .prop_map(|(r#ref, cursors)| ClientFrame::Sync(SyncFrame { r#ref, cursors })),
        (reference(), conv(), option::of(any::<u64>()), option::of(1..=200u32))
            .prop_map(|(r#ref, conv, before, limit)| ClientFrame::History(HistoryFrame { r#ref, conv, before, limit })),
        (reference(), text(20).prop_filter("non-empty", |name| !name.is_empty()), users())
            .prop_map(|(r#ref, name, members)| ClientFrame::GroupCreate(GroupCreateFrame { r#ref, name, members })),
        (reference(), group(), users()).prop_map(|(r#ref, conv, members)| ClientFrame::GroupAdd(GroupChangeFrame {
            r#ref,
            conv,
            members
        })),
        (reference(), group(), users()).prop_map(|(r#ref, conv, members)| ClientFrame::GroupRemove(GroupChangeFrame {
            r#ref,
            conv,
            members
        })),
        (reference(), feed(), option::of(any::<u64>()))
            .prop_map(|(r#ref, conv, since)| { ClientFrame::Subscribe(SubscribeFrame { r#ref, conv, since }) }),
        (reference(), feed()).prop_map(|(r#ref, conv)| ClientFrame::Unsubscribe(UnsubscribeFrame { r#ref, conv })),
        (reference(), users()).prop_map(|(r#ref, users)| ClientFrame::PresenceSub(PresenceSubFrame { r#ref, users })),
        (reference(), users()).prop_map(|(r#ref, users)| ClientFrame::PresenceUnsub(PresenceSubFrame { r#ref, users })),
        (conv(), prop_oneof![Just(TypingState::Start), Just(TypingState::Stop)])
            .prop_map(|(conv, state)| ClientFrame::Typing(TypingFrame { conv, state })),
        reference().prop_map(|r#ref| ClientFrame::Ping(PingFrame { r#ref })),
    ]
}

pub(crate) fn msg() -> impl Strategy<Value = Msg> {
    (conv(), any::<u64>(), text(30), user(), device(), any::<u64>(), body(), any::<bool>())
        .prop_map(|(conv, seq, mid, from, dev, ts, body, system)| Msg { conv, seq, mid, from, dev, ts, body, system })
}

pub(crate) fn server_frame() -> impl Strategy<Value = ServerFrame> {
    let users = || vec(user(), 0..4);
    prop_oneof![
        (user(), device(), text(10), text(10)).prop_map(|(user, device, node, server)| {
            ServerFrame::Hello(Hello { user, device, node, server, limits: crate::limits::Limits::default() })
        }),
        (reference(), conv(), any::<u64>(), text(26), any::<u64>(), any::<bool>())
            .prop_map(|(r#ref, conv, seq, mid, ts, dup)| ServerFrame::Ack(Ack { r#ref, conv, seq, mid, ts, dup })),
        msg().prop_map(ServerFrame::Msg),
        (conv(), user(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(conv, user, seq, ts, all)| {
            ServerFrame::Receipt(ReceiptEvent { conv, user, kind: ReceiptKind::Read, seq, ts, all })
        }),
        (reference(), group(), vec((user(), any::<u64>(), any::<u64>()), 0..4)).prop_map(|(r#ref, conv, marks)| {
            let members =
                marks.into_iter().map(|(user, delivered, read)| MemberReceipts { user, delivered, read }).collect();
            ServerFrame::Receipts(Receipts { r#ref, conv, members })
        }),
        (reference(), btree_map(conv(), any::<u64>(), 0..4))
            .prop_map(|(r#ref, convs)| ServerFrame::Synced(Synced { r#ref, convs })),
        (reference(), conv(), vec(msg(), 0..3))
            .prop_map(|(r#ref, conv, messages)| { ServerFrame::History(History { r#ref, conv, messages }) }),
        (reference(), group(), text(10), users())
            .prop_map(|(r#ref, conv, name, members)| { ServerFrame::Group(Group { r#ref, conv, name, members }) }),
        (reference(), feed(), any::<u64>()).prop_map(|(r#ref, conv, seq)| ServerFrame::Subscribed(Subscribed {
            r#ref,
            conv,
            seq
        })),
        (reference(), feed()).prop_map(|(r#ref, conv)| ServerFrame::Unsubscribed(Unsubscribed { r#ref, conv })),
        (user(), any::<bool>(), any::<u64>()).prop_map(|(user, online, last_seen)| {
            let status = if online { PresenceStatus::Online } else { PresenceStatus::Offline };
            ServerFrame::Presence(Presence { user, status, last_seen })
        }),
        (conv(), user())
            .prop_map(|(conv, user)| { ServerFrame::Typing(TypingEvent { conv, user, state: TypingState::Stop }) }),
        (reference(), proptest::sample::select(ErrorCode::ALL.to_vec()), text(20), option::of(any::<u64>())).prop_map(
            |(r#ref, code, message, retry_after_ms)| {
                ServerFrame::Error(ErrorFrame { r#ref, code, message, retry_after_ms })
            }
        ),
        reference().prop_map(|r#ref| ServerFrame::Pong(Pong { r#ref })),
    ]
}
