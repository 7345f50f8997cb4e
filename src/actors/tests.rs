//! The actor tree under failure: a crashed conversation actor is restarted on its next
//! message, loses nothing acknowledged, and touches no other conversation; a crash loop
//! past the restart limit escalates.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_cluster::InProcessBus;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Directory;
use super::conversation::{Accepted, ConvMsg, SendError, SendRequest};
use super::supervisor::RestartPolicy;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::node::Node;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

async fn node(max_restarts: u32) -> (Arc<Node>, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let config = Config { dev: true, ..Config::default() };
    let auth = Authenticator::new(&config.auth, None, true).unwrap();
    let escalation = CancellationToken::new();
    let policy = RestartPolicy { max_restarts, window: Duration::from_secs(60) };
    let directory = Directory::start(policy, escalation.clone()).await.unwrap();
    let node = Node::new(config, Arc::new(store), Arc::new(InProcessBus::new()), auth, directory, None);
    (Arc::new(node), escalation, dir)
}

async fn send(node: &Arc<Node>, conv: &ConvId, cmid: &str) -> Result<Accepted, SendError> {
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = SendRequest {
        from: UserId::new("alice").unwrap(),
        dev: DeviceId::new("phone").unwrap(),
        conn_id: None,
        cmid: Some(cmid.to_owned()),
        body: RawValue::from_string("\"hi\"".to_owned()).unwrap(),
        system: false,
        admin: false,
        reply: reply_tx,
    };
    if node.directory.conv(node, conv, ConvMsg::Send(request)).await.is_err() {
        return Err(SendError::Unavailable);
    }
    // A reply dropped unanswered (the actor died first) is what clients see as `unavailable`.
    tokio::time::timeout(Duration::from_secs(5), reply_rx).await.unwrap().unwrap_or(Err(SendError::Unavailable))
}

fn conv(peer: &str) -> ConvId {
    ConvId::dm(&UserId::new("alice").unwrap(), &UserId::new(peer).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_conversation_restarts_with_its_log_and_others_are_untouched() {
    let (node, escalation, _dir) = node(5).await;
    let (crashing, bystander) = (conv("bob"), conv("carol"));
    assert_eq!(send(&node, &crashing, "a1").await.unwrap().seq, 1);
    assert_eq!(send(&node, &bystander, "c1").await.unwrap().seq, 1);

    node.directory.conv(&node, &crashing, ConvMsg::Crash).await.unwrap();
    // The bystander keeps working while the crashed one is down.
    assert_eq!(send(&node, &bystander, "c2").await.unwrap().seq, 2);
    // The next send starts a new incarnation that continues the stored log, and still
    // knows the acknowledged cmid.
    let mut next = send(&node, &crashing, "a2").await;
    for _ in 0..20 {
        if next.is_ok() {
            break;
        }
        // A send that raced the crash is refused (the client retries with its cmid).
        tokio::time::sleep(Duration::from_millis(20)).await;
        next = send(&node, &crashing, "a2").await;
    }
    assert_eq!(next.unwrap().seq, 2);
    let retried = send(&node, &crashing, "a1").await.unwrap();
    assert_eq!((retried.seq, retried.dup), (1, true));
    assert!(!escalation.is_cancelled());
    node.directory.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_past_the_restart_limit_escalates() {
    // 3 restarts per supervisor: the 4th crash fails the convs supervisor, root restarts
    // it (3 times), and the 4th failure of that escalates out of root: 16 crashes.
    let (node, escalation, _dir) = node(3).await;
    let looping = conv("bob");
    for round in 0..40 {
        if escalation.is_cancelled() {
            break;
        }
        let _ = send(&node, &looping, &format!("m{round}")).await;
        let _ = node.directory.conv(&node, &looping, ConvMsg::Crash).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), escalation.cancelled()).await.expect("the supervisor never escalated");
}
