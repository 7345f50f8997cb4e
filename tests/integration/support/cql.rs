//! The test Cassandra: where it is, and fresh keyspaces in it.
//!
//! `tests/run-all.sh` starts a real Cassandra 5.0 (`deploy/cassandra/cassandra.sh`) and
//! exports `SWITCHBOARD_TEST_CQL=cql://127.0.0.1:PORT`. Tests that need it fail loudly
//! without it: a CQL test is never skipped silently (`cargo test -- --skip cql` leaves
//! them out, on purpose and visibly).
//!
//! With `SWITCHBOARD_TEST_STORE=cql` every test server runs on the CQL store, each in a
//! keyspace of its own: `tests/run-all.sh` runs the whole integration suite that way too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `cql://host:port` of the test Cassandra, without a keyspace.
pub(crate) fn base_url() -> String {
    match std::env::var("SWITCHBOARD_TEST_CQL") {
        Ok(url) => url.trim_end_matches('/').to_owned(),
        Err(_) => panic!(
            "SWITCHBOARD_TEST_CQL is not set: run tests/run-all.sh, which starts Cassandra, or start one with \
             deploy/cassandra/cassandra.sh and export SWITCHBOARD_TEST_CQL=cql://127.0.0.1:9042"
        ),
    }
}

/// A keyspace name no other test or run uses.
pub(crate) fn fresh_keyspace(purpose: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0);
    format!("sbt_{purpose}_{}_{:x}_{}", std::process::id(), nanos % (1 << 32), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether test servers should run on the CQL store (`SWITCHBOARD_TEST_STORE=cql`).
pub(crate) fn servers_on_cql() -> bool {
    std::env::var("SWITCHBOARD_TEST_STORE").is_ok_and(|store| store == "cql")
}
