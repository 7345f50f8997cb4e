//! The driver session, the prepared statements and the schema migration.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::prepared::PreparedStatement;

use super::error::CqlError;
use super::options::CqlOptions;

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

/// Creates the keyspace and tables that do not exist yet.
pub(super) async fn migrate(options: &CqlOptions) -> Result<(), CqlError> {
    options.validate().map_err(CqlError::InvalidOptions)?;
    let session = open_session(options, MIGRATE_REQUEST_TIMEOUT).await?;
    for statement in render_schema(options) {
        let head: String = statement.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
        tracing::info!(statement = %head, "applying schema");
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|source| CqlError::Migrate { statement: head.clone(), source: Box::new(source) })?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|source| CqlError::execute("migrate", scylla::errors::ExecutionError::SchemaAgreementError(source)))?;
    Ok(())
}

/// Every statement the store runs, prepared once at connect.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) meta_select: PreparedStatement,
    pub(super) meta_commit: PreparedStatement,
    pub(super) meta_members: PreparedStatement,
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
                    "SELECT last_seq, epoch, bucket_size, members, writetime(last_seq) FROM {ks}.conv_meta \
                     WHERE conv = ?"
                ),
            )
            .await?,
            meta_commit: prepare(
                "conv_meta commit",
                format!(
                    "UPDATE {ks}.conv_meta USING TIMESTAMP ? SET last_seq = ?, epoch = ?, bucket_size = ?, kind = ? \
                     WHERE conv = ?"
                ),
            )
            .await?,
            meta_members: prepare(
                "conv_meta members",
                format!("UPDATE {ks}.conv_meta SET members = ?, kind = ? WHERE conv = ?"),
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
        assert_eq!(statements.len(), 7, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chat"));
        assert!(statements[0].contains("'replication_factor': 1"));
        assert!(statements.iter().all(|statement| !statement.contains("{{") && statement.contains("IF NOT EXISTS")));
        assert!(statements.iter().any(|statement| statement.contains("default_time_to_live = 604800")));
    }
}
