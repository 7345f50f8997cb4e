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

    use switchboard::store::MessageStore;
    use switchboard::store::cql::{CqlOptions, CqlStore};

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
}
