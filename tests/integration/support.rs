//! The test harness: a real server process, a WebSocket test client, tokens, and a
//! plain HTTP client for the probes.

pub(crate) mod client;
pub(crate) mod cql;
pub(crate) mod http;
pub(crate) mod nats;
pub(crate) mod server;
pub(crate) mod token;

/// Polls `$cond` until it holds or `$timeout` passes, then fails with `$msg`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}
