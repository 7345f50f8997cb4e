//! [`CqlOptions`]: where the cluster is and how the store talks to it.

use std::time::Duration;

pub use scylla::statement::Consistency;

use super::breaker::BreakerOptions;

/// The CQL native protocol port, used when a contact point names none.
pub const DEFAULT_CQL_PORT: u16 = 9042;

/// Options of [`super::CqlStore::connect`] and [`super::CqlStore::migrate`]. Start from
/// [`CqlOptions::from_url`] (or `Default`) and override fields.
#[derive(Debug, Clone, PartialEq)]
pub struct CqlOptions {
    /// Nodes to connect to first, `host:port`; the driver discovers the rest of the
    /// cluster from them. Default: `["127.0.0.1:9042"]`.
    pub contact_points: Vec<String>,
    /// Keyspace of every table (lowercase letters, digits, `_`). Default: `switchboard`.
    pub keyspace: String,
    /// Replication map used when [`super::CqlStore::migrate`] creates the keyspace (a CQL
    /// map literal). Default: `{'class': 'SimpleStrategy', 'replication_factor': 1}`, for
    /// tests and development only; production uses
    /// `{'class': 'NetworkTopologyStrategy', '<dc>': 3}`.
    pub replication: String,
    /// The local datacenter: requests go to its replicas first and never to other
    /// datacenters. Default: none (all nodes are local).
    pub datacenter: Option<String>,
    /// Consistency of every read and write. Default: `LOCAL_QUORUM` (with RF 3 a write
    /// survives the loss of a node and reads see every acknowledged write).
    pub consistency: Consistency,
    /// Deadline of each store call (all its requests and driver retries together), far
    /// below the driver's 30 s default so that a slow database turns into `unavailable`
    /// quickly. Default: 2 s.
    pub request_timeout: Duration,
    /// Timeout of establishing one connection. Default: 5 s.
    pub connect_timeout: Duration,
    /// Messages per `messages` partition of a new conversation (a conversation keeps
    /// the size it was created with). Default: 4,096.
    pub bucket_size: u64,
    /// How long a `cmid` deduplicates a retried send. Default: 7 days.
    pub dedup_ttl: Duration,
    /// Largest unlogged batch of message rows, in frame bytes; larger appends are split
    /// into several batches (Cassandra refuses batches over `batch_size_fail_threshold`,
    /// 50 KiB by default; ScyllaDB's default is 1 MiB). Default: 32 KiB.
    pub max_batch_bytes: usize,
    /// When the circuit breaker opens and how long it stays open.
    /// Default: 5 failures in a row, 5 s.
    pub breaker: BreakerOptions,
}

impl Default for CqlOptions {
    fn default() -> Self {
        Self {
            contact_points: vec![format!("127.0.0.1:{DEFAULT_CQL_PORT}")],
            keyspace: "switchboard".to_owned(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            datacenter: None,
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            bucket_size: 4_096,
            dedup_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            max_batch_bytes: 32 * 1024,
            breaker: BreakerOptions::default(),
        }
    }
}

/// A `--store` URL that is not `cql://host:port[,host:port]/keyspace`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CQL store url {url:?} ({reason}): expected cql://host:port[,host:port]/keyspace")]
pub struct CqlUrlError {
    pub url: String,
    pub reason: String,
}

impl CqlOptions {
    /// The default options with the contact points and keyspace of
    /// `cql://host:port[,host:port]/keyspace` (a host without a port gets 9042).
    ///
    /// # Errors
    ///
    /// [`CqlUrlError`] naming what is wrong.
    pub fn from_url(url: &str) -> Result<Self, CqlUrlError> {
        let error = |reason: &str| CqlUrlError { url: url.to_owned(), reason: reason.to_owned() };
        let rest = url.strip_prefix("cql://").ok_or_else(|| error("the scheme must be cql://"))?;
        if rest.contains(['?', '#', '@']) {
            return Err(error("query strings, fragments and credentials are not supported"));
        }
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| error("the keyspace is missing"))?;
        let mut contact_points = Vec::new();
        for host in hosts.split(',') {
            contact_points.push(contact_point(host).map_err(|reason| error(&reason))?);
        }
        validate_keyspace(keyspace).map_err(|reason| error(&reason))?;
        Ok(Self { contact_points, keyspace: keyspace.to_owned(), ..Self::default() })
    }

    /// Checks the options.
    ///
    /// # Errors
    ///
    /// Every invalid option at once, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.contact_points.is_empty() {
            problems.push("contact_points must name at least one node".to_owned());
        }
        for point in &self.contact_points {
            if let Err(reason) = contact_point(point) {
                problems.push(format!("contact point {point:?}: {reason}"));
            }
        }
        if let Err(reason) = validate_keyspace(&self.keyspace) {
            problems.push(format!("keyspace {:?}: {reason}", self.keyspace));
        }
        let replication = self.replication.trim();
        if !(replication.starts_with('{') && replication.ends_with('}')) || replication.contains(';') {
            problems.push(
                "replication must be one CQL map literal such as {'class': 'NetworkTopologyStrategy', 'dc1': 3}"
                    .to_owned(),
            );
        }
        if self.request_timeout.is_zero() {
            problems.push("request_timeout must be longer than zero".to_owned());
        }
        if self.connect_timeout.is_zero() {
            problems.push("connect_timeout must be longer than zero".to_owned());
        }
        if self.bucket_size == 0 || self.bucket_size > 1 << 30 {
            problems.push("bucket_size must be between 1 and 2^30".to_owned());
        }
        if self.dedup_ttl.as_secs() == 0 || self.dedup_ttl.as_secs() > 20 * 365 * 24 * 60 * 60 {
            problems.push("dedup_ttl must be between 1 s and 20 years (the CQL TTL limit)".to_owned());
        }
        if self.max_batch_bytes == 0 {
            problems.push("max_batch_bytes must be at least 1".to_owned());
        }
        if self.breaker.failure_threshold == 0 {
            problems.push("breaker.failure_threshold must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }

    /// The dedup TTL in whole seconds, as CQL wants it.
    pub(super) fn dedup_ttl_seconds(&self) -> i32 {
        i32::try_from(self.dedup_ttl.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Parses a consistency level by its CQL name (`LOCAL_QUORUM`, `quorum`, `one`, ...).
///
/// # Errors
///
/// The names it accepts, if `name` is none of them.
pub fn parse_consistency(name: &str) -> Result<Consistency, String> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(format!(
                "unknown consistency {name:?}: use ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM or LOCAL_ONE"
            ));
        }
    })
}

/// `host[:port]` -> `host:port`.
fn contact_point(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty host".to_owned());
    }
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an unclosed [ in an IPv6 address")?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| format!("port {port:?} is not a number from 1 to 65535"))?,
        None => DEFAULT_CQL_PORT,
    };
    if port == 0 || host.len() <= 2 && host.starts_with('[') || host.is_empty() {
        return Err("a host and a port from 1 to 65535 are needed".to_owned());
    }
    Ok(format!("{host}:{port}"))
}

/// Keyspace names are put into CQL text, so only plain lowercase identifiers pass.
fn validate_keyspace(keyspace: &str) -> Result<(), String> {
    let mut chars = keyspace.chars();
    let starts_with_letter = chars.next().is_some_and(|first| first.is_ascii_lowercase());
    if !starts_with_letter
        || keyspace.len() > 48
        || !keyspace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("a keyspace is 1 to 48 lowercase letters, digits or _, starting with a letter".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_contact_points_and_keyspace() {
        let options = CqlOptions::from_url("cql://10.0.0.1:9043,db2,[::1]:9044/chat_prod").expect("valid");
        assert_eq!(options.contact_points, ["10.0.0.1:9043", "db2:9042", "[::1]:9044"]);
        assert_eq!(options.keyspace, "chat_prod");
        assert_eq!(options.consistency, Consistency::LocalQuorum);
        assert_eq!(options.request_timeout, Duration::from_secs(2));
        options.validate().expect("valid options");
    }

    #[test]
    fn bad_urls_say_why() {
        for url in
            ["http://h/k", "cql://h", "cql://h:x/k", "cql://h/K-1", "cql://,h/k", "cql://h/k?dc=1", "cql://h:0/k"]
        {
            let error = CqlOptions::from_url(url).expect_err(url);
            assert!(error.to_string().contains("cql://host:port"), "{error}");
        }
    }

    #[test]
    fn invalid_options_are_reported_together() {
        let options = CqlOptions { bucket_size: 0, request_timeout: Duration::ZERO, ..CqlOptions::default() };
        let problems = options.validate().expect_err("invalid");
        assert!(problems.contains("bucket_size") && problems.contains("request_timeout"), "{problems}");
        assert_eq!(parse_consistency("local_quorum"), Ok(Consistency::LocalQuorum));
        assert!(parse_consistency("most").is_err());
    }
}
