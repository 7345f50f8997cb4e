//! A minimal client of the server's admin HTTP API (DESIGN §5): the feed fanout
//! publishes through `POST /api/v1/publish`; the storm reads `GET /metrics` ([`get`]),
//! which needs no token.
//!
//! One request per TCP connection (HTTP/1.1, `Connection: close`): a broadcast every so
//! often does not need keep-alive, and a connection that lives for one request is never
//! found closed by a server's idle timeout. The answer is read to the end of the stream,
//! bounded in size and time. The token is sent as `Authorization: Bearer` and never
//! shown (`Debug` hides it).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::connect::{Target, io_kind};

/// Longest wait for one request's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// The admin API of one server.
pub(crate) struct AdminApi {
    addr: SocketAddr,
    token: String,
}

impl fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminApi").field("addr", &self.addr).field("token", &"<redacted>").finish()
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("cannot reach the admin API: {0}")]
    Io(#[from] io::Error),
    #[error("the admin API did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("the admin API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unreadable admin API answer: {0}")]
    Malformed(&'static str),
}

impl AdminError {
    /// Short error kind for the report, e.g. `admin.http.503`, `admin.tcp.refused`.
    pub(crate) fn kind(&self) -> Cow<'static, str> {
        match self {
            AdminError::Io(error) => io_kind("admin.tcp", error),
            AdminError::Timeout => Cow::Borrowed("admin.timeout"),
            AdminError::Status { status, .. } => Cow::Owned(format!("admin.http.{status}")),
            AdminError::Malformed(_) => Cow::Borrowed("admin.malformed"),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PublishAnswer {
    pub(crate) seq: u64,
}

impl AdminApi {
    /// The admin API on the listener of `target` (DESIGN §5: the same listener).
    pub(crate) fn new(target: &Target, token: String) -> Self {
        AdminApi { addr: target.addr, token }
    }

    /// Checks the API answers and takes the token (`GET /api/v1/stats`).
    pub(crate) async fn check(&self) -> Result<(), AdminError> {
        self.request("GET", "/api/v1/stats", None).await.map(drop)
    }

    /// Publishes `body` (JSON text) to `conv` and returns its answer.
    pub(crate) async fn publish(&self, conv: &str, body: &str) -> Result<PublishAnswer, AdminError> {
        // Conversation ids need no JSON escaping (the server's id alphabet).
        let request = format!("{{\"conv\":\"{conv}\",\"body\":{body}}}");
        let answer = self.request("POST", "/api/v1/publish", Some(&request)).await?;
        serde_json::from_slice(&answer).map_err(|_| AdminError::Malformed("publish answer without seq"))
    }

    /// One request; the body of a 2xx answer, or an error.
    async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Vec<u8>, AdminError> {
        request(self.addr, method, path, Some(&self.token), body).await
    }
}

/// `GET path` on the server at `addr` without a token (`/metrics`); the body of a 2xx
/// answer.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<Vec<u8>, AdminError> {
    request(addr, "GET", path, None, None).await
}

/// One request on its own connection; the body of a 2xx answer, or an error.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Vec<u8>, AdminError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let body = body.unwrap_or("");
        let authorization = token.map_or(String::new(), |token| format!("Authorization: Bearer {token}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
             Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
            length = body.len(),
        );
        stream.write_all(format!("{head}{body}").as_bytes()).await?;
        let mut answer = Vec::new();
        (&mut stream).take(MAX_ANSWER_BYTES).read_to_end(&mut answer).await?;
        Ok::<_, AdminError>(answer)
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| AdminError::Timeout)??;
    let (status, body) = parse_answer(&answer)?;
    if !(200..300).contains(&status) {
        return Err(AdminError::Status { status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    Ok(body)
}

/// Splits an HTTP/1.1 answer into its status and its body (de-chunked if need be).
fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), AdminError> {
    let head_end = find(answer, b"\r\n\r\n").ok_or(AdminError::Malformed("no end of header"))?;
    let head = std::str::from_utf8(&answer[..head_end]).map_err(|_| AdminError::Malformed("header not UTF-8"))?;
    let status =
        head.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or(AdminError::Malformed("no status code"))?;
    let chunked = head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &answer[head_end + 4..];
    let body = if chunked { dechunk(body).ok_or(AdminError::Malformed("bad chunked body"))? } else { body.to_vec() };
    Ok((status, body))
}

/// The payload of a chunked body; `None` if it is cut short or malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(payload);
        }
        payload.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_length_or_chunks_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"seq\":7}";
        assert_eq!(parse_answer(plain).expect("parses"), (200, b"{\"seq\":7}".to_vec()));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"er\r\n5;x=1\r\nror\"}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).expect("parses"), (503, b"{\"error\"}".to_vec()));
        assert!(matches!(parse_answer(b"HTTP/1.1 200 OK\r\n"), Err(AdminError::Malformed(_))));
        assert!(matches!(parse_answer(b"garbage\r\n\r\n"), Err(AdminError::Malformed(_))));
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nshort";
        assert!(matches!(parse_answer(cut), Err(AdminError::Malformed(_))));
    }

    #[tokio::test]
    async fn publish_sends_the_token_and_reads_the_seq() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let read = stream.read(&mut request).await.expect("read");
            let answer =
                "HTTP/1.1 200 OK\r\ncontent-length: 45\r\n\r\n{\"conv\":\"feed:r1\",\"seq\":3,\"mid\":\"m\",\"ts\":1}";
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        let target = Target::resolve(&format!("ws://{addr}/ws")).await.expect("target");
        let api = AdminApi::new(&target, "s3cret".to_owned());
        assert!(!format!("{api:?}").contains("s3cret"));
        let answer = api.publish("feed:r1", r#"{"t":1,"n":1,"p":""}"#).await.expect("published");
        assert_eq!(answer.seq, 3);
        let request = server.await.expect("server");
        assert!(request.starts_with("POST /api/v1/publish HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Authorization: Bearer s3cret\r\n"), "{request}");
        assert!(request.ends_with(r#"{"conv":"feed:r1","body":{"t":1,"n":1,"p":""}}"#), "{request}");
    }
}
