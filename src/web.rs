//! The web chat page: `GET /` (and `GET /chat`), for a person trying the server.
//!
//! One page of plain HTML, CSS and JavaScript in `src/web/`, embedded in the binary with
//! `include_str!`: no build step, nothing fetched from elsewhere. The page is a client of
//! the wire contract like any other: it opens `/ws` on its own origin, with
//! `?user=&device=` (development mode, `--dev`) or `?token=<jwt>`, and speaks
//! `switchboard.v1.json` (sends with a fresh `cmid`, retried with the same one; messages
//! deduplicated by `(conv, seq)`; `delivered` and `read` receipts; receipt ticks,
//! presence, typing, groups, feeds, history; reconnect with backoff, which resumes).
//!
//! Every file is served with `Cache-Control: no-cache` (a new binary's page is picked up
//! at once) and a strict `Content-Security-Policy`: scripts, styles and images only from
//! this origin, no inline code, connections only to this origin (in CSP level 3 `'self'`
//! also matches `ws:`/`wss:` on the same host and port), no framing, no form posts.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The policy of every file of the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file and its media type.
#[derive(Debug, Clone, Copy)]
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const PAGE: Asset = Asset { content_type: "text/html; charset=utf-8", body: include_str!("web/chat.html") };
const SCRIPT: Asset = Asset { content_type: "text/javascript; charset=utf-8", body: include_str!("web/chat.js") };
const STYLE: Asset = Asset { content_type: "text/css; charset=utf-8", body: include_str!("web/chat.css") };
const ICON: Asset = Asset { content_type: "image/svg+xml", body: include_str!("web/favicon.svg") };

/// The page's routes; they need no state, so they merge into any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve(PAGE) }))
        .route("/chat", get(|| async { serve(PAGE) }))
        .route("/assets/chat.js", get(|| async { serve(SCRIPT) }))
        .route("/assets/chat.css", get(|| async { serve(STYLE) }))
        .route("/assets/favicon.svg", get(|| async { serve(ICON) }))
}

fn serve(asset: Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router::<()>().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_file_has_its_type_and_the_policy() {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/chat", "text/html; charset=utf-8"),
            ("/assets/chat.js", "text/javascript; charset=utf-8"),
            ("/assets/chat.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
        ] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert!(!body.is_empty(), "{path}");
        }
    }

    /// Everything the page links to is served here, and nothing comes from elsewhere.
    #[tokio::test]
    async fn the_page_links_only_to_its_own_files() {
        let (_, _, page) = get("/").await;
        let links: Vec<&str> = ["src=\"", "href=\""]
            .iter()
            .flat_map(|attribute| page.split(attribute).skip(1))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(links.len() >= 3, "{links:?}");
        for link in links {
            assert!(link.starts_with('/') && !link.starts_with("//"), "not a path on this origin: {link}");
            assert_eq!(get(link).await.0, StatusCode::OK, "{link}");
        }
        assert!(!page.contains("<script>") && !page.contains("style="), "inline code breaks the policy");
    }

    #[test]
    fn the_policy_allows_only_this_origin() {
        for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
