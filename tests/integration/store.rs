//! The store conformance suite, run against every store: the embedded store, and the
//! CQL store on the real Cassandra that `tests/run-all.sh` starts.

#[path = "store_conformance.rs"]
mod store_conformance;

mod embedded {
    use std::sync::Arc;

    use switchboard::store::embedded::{EmbeddedOptions, EmbeddedStore};

    use super::store_conformance;

    async fn embedded() -> store_conformance::StoreFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open the embedded store");
        store_conformance::StoreFixture::new(Arc::new(store), dir)
    }

    store_conformance::store_conformance_tests!(embedded);
}

mod cql {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use scylla::client::session_builder::SessionBuilder;
    use switchboard::store::cql::{CqlOptions, CqlStore};
    use switchboard::store::{AppendBatch, GroupMeta, MessageStore, NewMessage};
    use switchboard_proto::ids::{ConvId, UserId};

    use super::store_conformance;
    use crate::support::cql::{base_url, fresh_keyspace};

    /// One keyspace for this run, with 16-message buckets so paging crosses bucket
    /// boundaries all the time.
    fn options() -> CqlOptions {
        static KEYSPACE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let keyspace = KEYSPACE.get_or_init(|| fresh_keyspace("conformance"));
        let mut options = CqlOptions::from_url(&format!("{}/{keyspace}", base_url())).expect("CQL url");
        options.bucket_size = 16;
        options.request_timeout = Duration::from_secs(10);
        options
    }

    async fn cql() -> store_conformance::StoreFixture {
        static MIGRATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let options = options();
        MIGRATED.get_or_init(|| async { CqlStore::migrate(&options).await.expect("migrate") }).await;
        let store = CqlStore::connect(options).await.expect("connect to the test Cassandra");
        store_conformance::StoreFixture::new(Arc::new(store), ())
    }

    store_conformance::store_conformance_tests!(cql);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_is_idempotent() {
        let _fixture = cql().await;
        CqlStore::migrate(&options()).await.expect("second migrate");
        let store: Arc<dyn MessageStore> = Arc::new(CqlStore::connect(options()).await.expect("connect"));
        store.health().await.expect("health");
    }

    /// A keyspace that the first release created (`conv_meta` without `name`, no
    /// `presence` or `revocations`) is brought up to date by migrate, also by two at once,
    /// and its rows read as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_upgrades_a_keyspace_of_the_first_release() {
        let keyspace = fresh_keyspace("upgrade");
        let options = CqlOptions::from_url(&format!("{}/{keyspace}", base_url())).expect("CQL url");
        let session = SessionBuilder::new().known_nodes(&options.contact_points).build().await.expect("session");
        let first_release = [
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE {keyspace}.conv_meta (conv text PRIMARY KEY, kind text, last_seq bigint, epoch bigint, \
                 bucket_size bigint, members frozen<list<text>>)"
            ),
        ];
        for statement in first_release {
            session.query_unpaged(statement, ()).await.expect("the first release's schema");
        }
        let conv = ConvId::group("old").expect("valid group id");
        let alice = UserId::new("alice").expect("valid user id");
        // As the first release's append committed it: with a fencing timestamp (epoch 0).
        session
            .query_unpaged(
                format!(
                    "UPDATE {keyspace}.conv_meta USING TIMESTAMP 1 SET last_seq = 3, epoch = 0, bucket_size = 16, \
                     kind = 'group' WHERE conv = ?"
                ),
                (conv.as_str(),),
            )
            .await
            .expect("a row of the first release");

        let (first, second) = tokio::join!(CqlStore::migrate(&options), CqlStore::migrate(&options));
        first.expect("migrate");
        second.expect("a concurrent migrate");
        CqlStore::migrate(&options).await.expect("migrate again");

        let store = CqlStore::connect(options).await.expect("connect to the upgraded keyspace");
        let meta = store.load_conv(&conv).await.expect("load_conv").expect("the old row");
        assert_eq!((meta.last_seq, meta.members, meta.name), (3, Vec::new(), None));
        let group = GroupMeta { name: "named".to_owned(), members: vec![alice.clone()] };
        let message = NewMessage {
            seq: 4,
            mid: "m4".to_owned(),
            from: alice.clone(),
            ts: 1,
            cmid: None,
            frame: Bytes::from_static(br#"{"type":"msg"}"#),
        };
        let batch = AppendBatch {
            conv: conv.clone(),
            messages: vec![message],
            epoch: 0,
            index_users: Vec::new(),
            unindex_users: Vec::new(),
            group: Some(group),
        };
        store.append(batch).await.expect("append");
        let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
        assert_eq!((meta.last_seq, meta.members, meta.name.as_deref()), (4, vec![alice.clone()], Some("named")));
        store.revoke_before(&alice, 5).await.expect("revocations exist");
        store.set_last_seen(&alice, 7).await.expect("presence exists");
        assert_eq!(store.last_seen(&alice).await.expect("last_seen"), Some(7));
    }
}
