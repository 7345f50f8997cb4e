//! The store conformance suite, run against the embedded store.

use std::sync::Arc;

use switchboard::store::embedded::{EmbeddedOptions, EmbeddedStore};

#[path = "store_conformance.rs"]
mod store_conformance;

async fn embedded() -> store_conformance::StoreFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open the embedded store");
    store_conformance::StoreFixture::new(Arc::new(store), dir)
}

store_conformance::store_conformance_tests!(embedded);
