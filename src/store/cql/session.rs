//! The driver session, the prepared statements and the schema migration.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::prepared::PreparedStatement;

use super::error::CqlError;
use super::options::CqlOptions;
use super::rows::first_row;

/// The DDL, embedded at build time from its single source of truth.
pub(super) const SCHEMA_CQL: &str = include_str!("../../../deploy/cql/schema.cql");

/// Schema changes take longer than data requests (and wait for schema agreement).
const MIGRATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A session to the cluster: token-aware routing (preferring `datacenter` when one is
/// set), the configured consistency and request timeout, and client-side monotonic
/// timestamps, so a request's retries carry the timestamp of its first attempt and
/// cannot overwrite a later write.
pub(super) async fn open_session(options: &CqlOptions, request_timeout: Duration) -> Result<Session, CqlError> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(datacenter) = &options.datacenter {
        policy = policy.prefer_datacenter(datacenter.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(options.consistency)
        .request_timeout(Some(request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    SessionBuilder::new()
        .known_nodes(&options.contact_points)
        .connection_timeout(options.connect_timeout)
        .default_execution_profile_handle(profile.into_handle())
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
        .build()
        .await
        .map_err(|source| CqlError::Connect {
            contact_points: options.contact_points.join(","),
            source: Box::new(source),
        })
}

/// The schema with its placeholders filled in, split into statements.
pub(super) fn render_schema(options: &CqlOptions) -> Vec<String> {
    let text: String = SCHEMA_CQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{{keyspace}}", &options.keyspace)
        .replace("{{replication}}", options.replication.trim())
        .replace("{{dedup_ttl_seconds}}", &options.dedup_ttl_seconds().to_string());
    debug_assert!(!text.contains("{{"), "every placeholder of schema.cql is filled in");
    text.split(';').map(str::trim).filter(|statement| !statement.is_empty()).map(str::to_owned).collect()
}

/// The table and column that an `ALTER TABLE keyspace.table ADD column type` statement
/// adds, as `system_schema.columns` names them; `None` for any other statement.
pub(super) fn added_column(statement: &str) -> Option<(String, String)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let [alter, table_word, qualified, add, column, _type, ..] = words.as_slice() else { return None };
    let keywords = [(alter, "ALTER"), (table_word, "TABLE"), (add, "ADD")];
    if !keywords.iter().all(|(word, keyword)| word.eq_ignore_ascii_case(keyword)) {
        return None;
    }
    let (_keyspace, table) = qualified.split_once('.')?;
    // Unquoted identifiers are case-insensitive and stored in lower case.
    let identifier = |name: &str| match name.strip_prefix('"').and_then(|name| name.strip_suffix('"')) {
        Some(quoted) => quoted.to_owned(),
        None => name.to_ascii_lowercase(),
    };
    Some((identifier(table), identifier(column)))
}

/// Creates the keyspace and tables that do not exist yet and adds the columns that
/// tables created by an earlier version lack (see the header of `schema.cql`).
pub(super) async fn migrate(options: &CqlOptions) -> Result<(), CqlError> {
    options.validate().map_err(CqlError::InvalidOptions)?;
    let session = open_session(options, MIGRATE_REQUEST_TIMEOUT).await?;
    for statement in render_schema(options) {
        let head: String = statement.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
        let added = added_column(&statement);
        if let Some((table, column)) = &added {
            // The tables this run created must be known wherever the check runs.
            await_schema_agreement(&session).await?;
            if column_exists(&session, &options.keyspace, table, column).await? {
                tracing::info!(statement = %head, "schema column already there");
                continue;
            }
        }
        tracing::info!(statement = %head, "applying schema");
        match session.query_unpaged(statement.as_str(), ()).await {
            Ok(_) => {}
            // A concurrent migrate added it since the check.
            Err(source) if added.is_some() && is_existing_column(&source) => {
                tracing::info!(statement = %head, "schema column already there");
            }
            Err(source) => return Err(CqlError::Migrate { statement: head, source: Box::new(source) }),
        }
    }
    await_schema_agreement(&session).await
}

async fn await_schema_agreement(session: &Session) -> Result<(), CqlError> {
    session
        .await_schema_agreement()
        .await
        .map(drop)
        .map_err(|source| CqlError::execute("migrate", ExecutionError::SchemaAgreementError(source)))
}

async fn column_exists(session: &Session, keyspace: &str, table: &str, column: &str) -> Result<bool, CqlError> {
    let query = "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ? AND column_name = ?";
    let result = session
        .query_unpaged(query, (keyspace, table, column))
        .await
        .map_err(|source| CqlError::execute("migrate", source))?;
    Ok(first_row::<(String,)>(result, "system_schema.columns")?.is_some())
}

/// Whether an `ALTER TABLE ... ADD` failed because the column exists: Apache Cassandra
/// says "Column with name 'x' already exists", ScyllaDB "Invalid column name x because
/// it conflicts with an existing column".
fn is_existing_column(error: &ExecutionError) -> bool {
    let ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, message)) = error else {
        return false;
    };
    message.contains("already exists") || message.contains("conflicts with an existing column")
}

/// A compare-and-set (lightweight transaction). Not idempotent: a retry after a lost
/// answer could find its own write and report it as someone else's; the caller re-reads
/// and decides instead.
async fn prepare_lwt(session: &Session, name: &'static str, cql: String) -> Result<PreparedStatement, CqlError> {
    let mut statement =
        session.prepare(cql).await.map_err(|source| CqlError::Prepare { statement: name, source: Box::new(source) })?;
    statement.set_is_idempotent(false);
    statement.set_serial_consistency(Some(scylla::statement::SerialConsistency::LocalSerial));
    Ok(statement)
}

/// Every statement the store runs, prepared once at connect.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) meta_select: PreparedStatement,
    pub(super) meta_commit: PreparedStatement,
    pub(super) meta_commit_group: PreparedStatement,
    pub(super) message_insert: PreparedStatement,
    pub(super) messages_compare: PreparedStatement,
    pub(super) messages_ascending: PreparedStatement,
    pub(super) messages_descending: PreparedStatement,
    pub(super) message_mid: PreparedStatement,
    pub(super) dedup_insert: PreparedStatement,
    pub(super) dedup_select: PreparedStatement,
    pub(super) user_conv_insert: PreparedStatement,
    pub(super) user_conv_delete: PreparedStatement,
    pub(super) user_convs_select: PreparedStatement,
    pub(super) cursor_select: PreparedStatement,
    pub(super) cursor_advance: PreparedStatement,
    pub(super) cursors_select: PreparedStatement,
    pub(super) mark_select: PreparedStatement,
    pub(super) mark_delivered: PreparedStatement,
    pub(super) mark_read: PreparedStatement,
    pub(super) marks_select: PreparedStatement,
    pub(super) presence_raise: PreparedStatement,
    pub(super) presence_select: PreparedStatement,
    pub(super) revocation_raise: PreparedStatement,
    pub(super) revocation_select: PreparedStatement,
    pub(super) owner_select: PreparedStatement,
    pub(super) claim: PreparedStatement,
    pub(super) claim_first: PreparedStatement,
    pub(super) health: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, keyspace: &str) -> Result<Self, CqlError> {
        let ks = keyspace;
        let prepare = |name: &'static str, cql: String| async move {
            let mut statement = session
                .prepare(cql)
                .await
                .map_err(|source| CqlError::Prepare { statement: name, source: Box::new(source) })?;
            // Every statement here is idempotent: same key, same value, and writes carry
            // a timestamp fixed before the first attempt (client-side or USING
            // TIMESTAMP), so the driver may retry them.
            statement.set_is_idempotent(true);
            Ok::<_, CqlError>(statement)
        };
        Ok(Self {
            meta_select: prepare(
                "conv_meta select",
                format!(
                    "SELECT last_seq, epoch, bucket_size, members, name, writetime(last_seq) FROM {ks}.conv_meta \
                     WHERE conv = ?"
                ),
            )
            .await?,
            meta_commit: prepare(
                "conv_meta commit",
                format!(
                    "UPDATE {ks}.conv_meta USING TIMESTAMP ? SET last_seq = ?, bucket_size = ?, kind = ? \
                     WHERE conv = ?"
                ),
            )
            .await?,
            meta_commit_group: prepare(
                "conv_meta commit with group",
                format!(
                    "UPDATE {ks}.conv_meta USING TIMESTAMP ? SET last_seq = ?, bucket_size = ?, kind = ?, \
                     members = ?, name = ? WHERE conv = ?"
                ),
            )
            .await?,
            message_insert: prepare(
                "messages insert",
                format!(
                    "INSERT INTO {ks}.messages (conv, bucket, seq, mid, \"from\", dev, ts, frame, system, cmid) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
                ),
            )
            .await?,
            messages_compare: prepare(
                "messages compare",
                format!(
                    "SELECT seq, mid, frame, cmid FROM {ks}.messages \
                     WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ?"
                ),
            )
            .await?,
            messages_ascending: prepare(
                "messages ascending",
                format!(
                    "SELECT seq, frame FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ? \
                     ORDER BY seq ASC LIMIT ?"
                ),
            )
            .await?,
            messages_descending: prepare(
                "messages descending",
                format!(
                    "SELECT seq, frame FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq >= ? AND seq <= ? \
                     ORDER BY seq DESC LIMIT ?"
                ),
            )
            .await?,
            message_mid: prepare(
                "messages mid",
                format!("SELECT mid FROM {ks}.messages WHERE conv = ? AND bucket = ? AND seq = ?"),
            )
            .await?,
            dedup_insert: prepare(
                "dedup insert",
                format!(
                    "INSERT INTO {ks}.dedup (conv, \"from\", cmid, seq, mid, ts) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
                ),
            )
            .await?,
            dedup_select: prepare(
                "dedup select",
                format!("SELECT seq, mid, ts FROM {ks}.dedup WHERE conv = ? AND \"from\" = ? AND cmid = ?"),
            )
            .await?,
            user_conv_insert: prepare(
                "user_convs insert",
                format!("INSERT INTO {ks}.user_convs (user, conv) VALUES (?, ?)"),
            )
            .await?,
            user_conv_delete: prepare(
                "user_convs delete",
                format!("DELETE FROM {ks}.user_convs WHERE user = ? AND conv = ?"),
            )
            .await?,
            user_convs_select: prepare("user_convs select", format!("SELECT conv FROM {ks}.user_convs WHERE user = ?"))
                .await?,
            cursor_select: prepare(
                "cursors select one",
                format!("SELECT delivered FROM {ks}.cursors WHERE user = ? AND device = ? AND conv = ?"),
            )
            .await?,
            cursor_advance: prepare(
                "cursors advance",
                format!(
                    "UPDATE {ks}.cursors USING TIMESTAMP ? SET delivered = ? WHERE user = ? AND device = ? AND conv = ?"
                ),
            )
            .await?,
            cursors_select: prepare(
                "cursors select",
                format!("SELECT conv, delivered FROM {ks}.cursors WHERE user = ? AND device = ?"),
            )
            .await?,
            mark_select: prepare(
                "receipts select one",
                format!("SELECT delivered, read FROM {ks}.receipts WHERE conv = ? AND user = ?"),
            )
            .await?,
            mark_delivered: prepare(
                "receipts delivered",
                format!("UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered = ? WHERE conv = ? AND user = ?"),
            )
            .await?,
            mark_read: prepare(
                "receipts read",
                format!(
                    "UPDATE {ks}.receipts USING TIMESTAMP ? SET delivered = ?, read = ? \
                     WHERE conv = ? AND user = ?"
                ),
            )
            .await?,
            marks_select: prepare(
                "receipts select",
                format!("SELECT user, delivered, read FROM {ks}.receipts WHERE conv = ?"),
            )
            .await?,
            presence_raise: prepare(
                "presence raise",
                format!("UPDATE {ks}.presence USING TIMESTAMP ? SET last_seen = ? WHERE user = ?"),
            )
            .await?,
            presence_select: prepare("presence select", format!("SELECT last_seen FROM {ks}.presence WHERE user = ?"))
                .await?,
            revocation_raise: prepare(
                "revocations raise",
                format!("UPDATE {ks}.revocations USING TIMESTAMP ? SET before = ? WHERE user = ?"),
            )
            .await?,
            revocation_select: prepare(
                "revocations select",
                format!("SELECT before FROM {ks}.revocations WHERE user = ?"),
            )
            .await?,
            owner_select: prepare(
                "conv_meta owner select",
                format!("SELECT epoch, owner FROM {ks}.conv_meta WHERE conv = ?"),
            )
            .await?,
            claim: prepare_lwt(
                session,
                "conv_meta claim",
                format!("UPDATE {ks}.conv_meta SET epoch = ?, owner = ? WHERE conv = ? IF epoch = ?"),
            )
            .await?,
            claim_first: prepare_lwt(
                session,
                "conv_meta first claim",
                format!("UPDATE {ks}.conv_meta SET epoch = ?, owner = ? WHERE conv = ? IF epoch = null"),
            )
            .await?,
            health: prepare("health", "SELECT release_version FROM system.local WHERE key = 'local'".to_owned())
                .await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_renders_with_every_placeholder_filled() {
        let options = CqlOptions { keyspace: "chat".to_owned(), ..CqlOptions::default() };
        let statements = render_schema(&options);
        assert_eq!(statements.len(), 11, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chat"));
        assert!(statements[0].contains("'replication_factor': 1"));
        assert!(statements.iter().all(|statement| !statement.contains("{{")));
        // Idempotent: a CREATE says IF NOT EXISTS, an ALTER adds one column that migrate
        // checks for first.
        for statement in &statements {
            let idempotent = statement.contains("IF NOT EXISTS") || added_column(statement).is_some();
            assert!(idempotent, "not idempotent: {statement}");
        }
        assert!(statements.iter().any(|statement| statement.contains("default_time_to_live = 604800")));
        let added: Vec<_> = statements.iter().filter_map(|statement| added_column(statement)).collect();
        assert_eq!(added, [("conv_meta".to_owned(), "name".to_owned()), ("conv_meta".to_owned(), "owner".to_owned())]);
    }

    #[test]
    fn added_columns_are_recognised() {
        let added = |statement: &str| added_column(statement);
        assert_eq!(
            added("alter table ks.Conv_Meta add \"Name\" text"),
            Some(("conv_meta".to_owned(), "Name".to_owned()))
        );
        assert_eq!(added("ALTER TABLE ks.t ADD c frozen<list<text>>"), Some(("t".to_owned(), "c".to_owned())));
        assert_eq!(added("ALTER TABLE ks.t DROP c"), None);
        assert_eq!(added("ALTER TABLE t ADD c text"), None, "the schema always names the keyspace");
        assert_eq!(added("CREATE TABLE IF NOT EXISTS ks.t (c text PRIMARY KEY)"), None);
    }
}
