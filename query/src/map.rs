//! The live fleet map: a static page (`GET /map`) and its assets
//! (`/map/map.js`, `/map/map.css`, `/map/icon.svg`), embedded in the binary
//! from `query/assets/map/`, served on the API's listener.
//!
//! The page is the same for everyone and needs no credential to load: it
//! holds no data. Its data calls (`/v1/fences`, the track, events, the
//! feed) carry the token the URL's fragment gives it (`/map#token=...` or
//! `/map#share=fps_...`); a fragment never reaches the server, so the token
//! is in no access log. The page trusts the server's scopes: it draws what
//! the API and the feed answer and asks a share link only for what a share
//! link may read.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles,
//! images and connections from the page's own origin only (the feed's
//! WebSocket included: `'self'` matches `ws:`/`wss:` of the same host), no
//! inline script or style, no frames, no forms, so a bug that let data into
//! the page as markup could still run nothing and send nothing elsewhere.
//! The page is rendered once at start: the two thresholds the API derives a
//! vehicle's state with (`api.offline_after`, `api.moving_speed_kmh`) are
//! written into it, so it colours vehicles exactly as `GET /v1/vehicles`
//! names their states.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::Digest as _;

use crate::config::ApiConfig;

/// The policy of every map answer (see the module documentation).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const HTML: &str = include_str!("../assets/map/index.html");
const JS: &str = include_str!("../assets/map/map.js");
const CSS: &str = include_str!("../assets/map/map.css");
const ICON: &str = include_str!("../assets/map/icon.svg");

/// One embedded file, ready to serve.
#[derive(Debug)]
struct Asset {
    body: Arc<str>,
    content_type: &'static str,
    /// Strong validator: the SHA-256 of the body, quoted.
    etag: HeaderValue,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Self {
        let digest = sha2::Sha256::digest(body.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            etag: HeaderValue::from_str(&format!("\"{hex}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"map\"")),
            body: body.into(),
            content_type,
        }
    }

    /// The body, or 304 when the client's copy is current. `no-cache`: a
    /// browser keeps the file but asks each time (a 304 costs a round
    /// trip, and an upgraded fleetpipe is never paired with a stale script).
    fn answer(&self, request: &HeaderMap) -> Response {
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .any(|t| t.trim() == "*" || t.trim().as_bytes() == self.etag.as_bytes())
            });
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            (
                [(header::CONTENT_TYPE, self.content_type)],
                self.body.to_string(),
            )
                .into_response()
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        response
    }
}

/// The page with the state thresholds of `config` written in.
fn render(config: &ApiConfig) -> String {
    HTML.replace(
        "{{offline_after_s}}",
        &config.offline_after.as_secs_f64().to_string(),
    )
    .replace("{{moving_speed_kmh}}", &config.moving_speed_kmh.to_string())
}

/// The map's routes, to be merged into the API's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(config: &ApiConfig) -> Router<S> {
    let page = Arc::new(Asset::new(render(config), "text/html; charset=utf-8"));
    let js = Arc::new(Asset::new(JS.to_owned(), "text/javascript; charset=utf-8"));
    let css = Arc::new(Asset::new(CSS.to_owned(), "text/css; charset=utf-8"));
    let icon = Arc::new(Asset::new(ICON.to_owned(), "image/svg+xml"));
    let serve = |asset: Arc<Asset>| move |headers: HeaderMap| async move { asset.answer(&headers) };
    Router::new()
        .route("/map", get(serve(page)))
        .route("/map/map.js", get(serve(js)))
        .route("/map/map.css", get(serve(css)))
        .route("/map/icon.svg", get(serve(icon)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::time::Duration;
    use tower::ServiceExt as _;

    async fn get(router: &Router, uri: &str, etag: Option<&str>) -> Response {
        let mut request = axum::http::Request::builder().uri(uri);
        if let Some(tag) = etag {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn router() -> Router {
        let mut config = ApiConfig::new("postgresql://postgres@127.0.0.1:1/none");
        config.offline_after = Duration::from_secs(90);
        config.moving_speed_kmh = 7.5;
        routes(&config)
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types_and_policy() {
        let router = router();
        for (uri, content_type) in [
            ("/map", "text/html; charset=utf-8"),
            ("/map/map.js", "text/javascript; charset=utf-8"),
            ("/map/map.css", "text/css; charset=utf-8"),
            ("/map/icon.svg", "image/svg+xml"),
        ] {
            let response = get(&router, uri, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            let h = response.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{uri}");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{uri}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            let etag = h[header::ETAG].to_str().unwrap().to_owned();
            assert!(!text(response).await.is_empty(), "{uri}");
            // The browser's copy is current: 304 without a body.
            let again = get(&router, uri, Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{uri}");
            assert_eq!(
                again.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert!(text(again).await.is_empty());
            let stale = get(&router, uri, Some("\"other\"")).await;
            assert_eq!(stale.status(), StatusCode::OK, "{uri}");
        }
        assert_eq!(
            get(&router, "/map/other.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn the_page_carries_the_state_thresholds_and_loads_nothing_from_elsewhere() {
        let html = text(get(&router(), "/map", None).await).await;
        assert!(html.contains(r#"data-offline-after-s="90""#), "{html}");
        assert!(html.contains(r#"data-moving-speed-kmh="7.5""#), "{html}");
        assert!(!html.contains("{{"), "a placeholder left: {html}");
        // Everything the page and script refer to is on this origin, and
        // nothing is inline (the policy would refuse it).
        for asset in [HTML, JS, CSS, ICON] {
            // The SVG namespace is an identifier, never fetched.
            let rest = asset.replace("http://www.w3.org/2000/svg", "");
            assert!(!rest.contains("://"), "an absolute URL in an asset");
        }
        assert!(!html.contains("<script>") && !html.contains("style="));
    }
}
