//! What goes wrong in the CQL store, how it counts for the circuit breaker and how it
//! becomes a [`StoreError`]. Messages say what the operator should do.

use std::time::Duration;

use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub(super) enum CqlError {
    #[error("invalid cql store options, fix the configuration:\n{0}")]
    InvalidOptions(String),
    #[error(
        "cannot connect to the CQL cluster at {contact_points}: check that the nodes run and that the \
         addresses in --store are right: {source}"
    )]
    Connect {
        contact_points: String,
        #[source]
        source: Box<NewSessionError>,
    },
    #[error(
        "cannot prepare the {statement} statement: is the schema applied? run `switchboard migrate` \
         against this keyspace: {source}"
    )]
    Prepare {
        statement: &'static str,
        #[source]
        source: Box<PrepareError>,
    },
    #[error("cql {op} failed: {hint}: {source}")]
    Execute {
        op: &'static str,
        hint: &'static str,
        #[source]
        source: Box<ExecutionError>,
    },
    #[error(
        "cql {op} did not finish within {}ms: the database is slow or unreachable; check the nodes and \
         the network, or raise the store request timeout", after.as_millis()
    )]
    Timeout { op: &'static str, after: Duration },
    #[error(
        "the store circuit breaker is open after repeated database failures; calls fail fast for another \
         {}ms, then one probe checks the database; check the CQL nodes", retry_in.as_millis()
    )]
    BreakerOpen { retry_in: Duration },
    #[error(
        "a stored {what} row is malformed ({reason}): a bug or a schema mismatch; check that the \
         keyspace was created by `switchboard migrate` of this version"
    )]
    Decode { what: &'static str, reason: String },
    #[error(
        "append to {conv} starts at seq {first_seq} but the stored log ends at {last_seq}: a stale or \
         confused sequencer; it reloads and retries"
    )]
    SeqConflict { conv: String, first_seq: u64, last_seq: u64 },
    #[error(
        "append to {conv} would rewrite stored seq {seq} with another message: a stale sequencer; it \
         reloads and retries"
    )]
    Rewrite { conv: String, seq: u64 },
    #[error(
        "append to {conv} at epoch {epoch} is fenced: the conversation was written at epoch {stored_epoch} \
         by a newer owner; this sequencer must stop and reload"
    )]
    Fenced { conv: String, epoch: u64, stored_epoch: u64 },
    #[error("ownership epoch {epoch} is beyond the {max} that fits in a CQL write timestamp: a bug")]
    EpochTooLarge { epoch: u64, max: u64 },
    #[error("ownership of {conv} still contended after {attempts} compare-and-set attempts; retry later")]
    ClaimContended { conv: String, attempts: usize },
    #[error("schema statement failed ({statement}): {source}")]
    Migrate {
        statement: String,
        #[source]
        source: Box<ExecutionError>,
    },
}

/// What a failure says about the database, for metrics and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    /// The request or the whole call timed out.
    Timeout,
    /// No connection, a broken connection, no node to ask.
    Connection,
    /// The database answered that it cannot serve (not enough replicas, overloaded,
    /// bootstrapping, a replica timeout or failure).
    Unavailable,
    /// The breaker refused the call.
    BreakerOpen,
    /// The database refused the statement (missing table, bad query, no permission).
    Refused,
    Conflict,
    Corrupt,
    Config,
}

impl ErrorKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::BreakerOpen => "breaker_open",
            ErrorKind::Refused => "refused",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Config => "config",
        }
    }

    /// Whether this failure counts towards opening the breaker: only what says the
    /// database is down or too slow. A conflict is an answer.
    pub(super) fn trips_breaker(self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Unavailable)
    }
}

impl CqlError {
    /// Wraps a driver error of `op` with a hint for the operator.
    pub(super) fn execute(op: &'static str, source: ExecutionError) -> Self {
        let hint = match execution_kind(&source) {
            ErrorKind::Timeout => "the database did not answer in time; check the nodes' load and the network",
            ErrorKind::Connection => "no connection to the database; check that the CQL nodes run and are reachable",
            ErrorKind::Unavailable => {
                "the database cannot serve at the configured consistency; check that enough replicas are up"
            }
            ErrorKind::Refused => "the database refused the statement; run `switchboard migrate` and check permissions",
            _ => "see the logs",
        };
        CqlError::Execute { op, hint, source: Box::new(source) }
    }

    pub(super) fn kind(&self) -> ErrorKind {
        match self {
            CqlError::InvalidOptions(_) | CqlError::EpochTooLarge { .. } => ErrorKind::Config,
            CqlError::Connect { .. } => ErrorKind::Connection,
            CqlError::Prepare { .. } | CqlError::Migrate { .. } => ErrorKind::Refused,
            CqlError::Execute { source, .. } => execution_kind(source),
            CqlError::Timeout { .. } => ErrorKind::Timeout,
            CqlError::BreakerOpen { .. } => ErrorKind::BreakerOpen,
            CqlError::Decode { .. } => ErrorKind::Corrupt,
            CqlError::SeqConflict { .. }
            | CqlError::Rewrite { .. }
            | CqlError::Fenced { .. }
            | CqlError::ClaimContended { .. } => ErrorKind::Conflict,
        }
    }
}

fn execution_kind(error: &ExecutionError) -> ErrorKind {
    match error {
        ExecutionError::RequestTimeout(_) => ErrorKind::Timeout,
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => ErrorKind::Connection,
        ExecutionError::LastAttemptError(attempt) => attempt_kind(attempt),
        ExecutionError::PrepareError(PrepareError::ConnectionPoolError(_)) => ErrorKind::Connection,
        ExecutionError::SchemaAgreementError(_) | ExecutionError::MetadataError(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Refused,
    }
}

fn attempt_kind(error: &RequestAttemptError) -> ErrorKind {
    match error {
        RequestAttemptError::BrokenConnectionError(_) | RequestAttemptError::UnableToAllocStreamId => {
            ErrorKind::Connection
        }
        RequestAttemptError::DbError(db_error, _) => match db_error {
            DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => ErrorKind::Timeout,
            DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::ServerError
            | DbError::RateLimitReached { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Refused,
        },
        _ => ErrorKind::Refused,
    }
}

impl From<CqlError> for StoreError {
    fn from(error: CqlError) -> Self {
        match error.kind() {
            ErrorKind::Conflict => StoreError::Conflict(error.to_string()),
            ErrorKind::Corrupt => StoreError::Corrupt(error.to_string()),
            _ => StoreError::Unavailable(error.to_string()),
        }
    }
}
