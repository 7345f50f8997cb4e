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
    node_with(max_restarts, 1024).await
}

async fn node_with(max_restarts: u32, conv_mailbox: usize) -> (Arc<Node>, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let config = Config { dev: true, ..Config::default() };
    let auth = Authenticator::new(&config.auth, None, true).unwrap();
    let escalation = CancellationToken::new();
    let policy = RestartPolicy { max_restarts, window: Duration::from_secs(60) };
    let mailboxes = super::MailboxLimits { user: 1024, conv: conv_mailbox };
    let directory = Directory::start(policy, escalation.clone(), mailboxes).await.unwrap();
    let node = Node::new(config, Arc::new(store), Arc::new(InProcessBus::new()), None, auth, directory, None);
    (Arc::new(node), escalation, dir)
}

fn request(cmid: &str) -> (SendRequest, oneshot::Receiver<Result<Accepted, SendError>>) {
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
    (request, reply_rx)
}

async fn send(node: &Arc<Node>, conv: &ConvId, cmid: &str) -> Result<Accepted, SendError> {
    let (request, reply_rx) = request(cmid);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_work_instead_of_buffering_it() {
    let (node, _escalation, _dir) = node_with(5, 16).await;
    let busy = conv("bob");
    // Warm the actor up, then queue far more than 16 sends without waiting.
    assert_eq!(send(&node, &busy, "warm").await.unwrap().seq, 1);
    let (mut refused, mut replies) = (0, Vec::new());
    for index in 0..2_000 {
        let (request, reply) = request(&format!("c{index}"));
        match node.directory.conv(&node, &busy, ConvMsg::Send(request)).await {
            Ok(()) => replies.push(reply),
            Err(super::DirectoryError::Overloaded(depth)) => {
                assert!(depth >= 16, "{depth}");
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused > 0, "nothing was refused");
    // Everything that was taken is answered, with consecutive seqs.
    let mut seqs = Vec::new();
    for reply in replies {
        seqs.push(tokio::time::timeout(Duration::from_secs(10), reply).await.unwrap().unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..2 + seqs.len() as u64).collect::<Vec<_>>());
    // The count drained with the queue: new work is taken again.
    assert!(send(&node, &busy, "after").await.is_ok());
}
