//! The operator console (`GET /console`, issue 17): one HTML page, a style sheet and three
//! JavaScript modules, embedded in the binary at build time (`include_str!`), served by the state
//! API itself so that the page and the API share one origin. Nothing is fetched from anywhere
//! else, at build time or at run time.
//!
//! The page and its assets are public: they hold no data. The page asks for the API key, keeps it
//! in `sessionStorage` and sends it as `Authorization: Bearer …` on every API call it makes.
//!
//! Every console response carries a Content-Security-Policy that allows scripts, styles, images
//! and connections from this origin only (no inline script or style, no `eval`), forbids framing
//! (`frame-ancestors 'none'`, and `X-Frame-Options: DENY` for older browsers), sends no referrer,
//! and isolates the page from other windows (`Cross-Origin-Opener-Policy`).

use crate::error::HttpError;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName};
use http::{HeaderValue, StatusCode};
use opscore_api::paths;

/// The policy of every console response. `default-src 'none'` refuses whatever is not listed;
/// `form-action 'none'`: the page's forms are handled by script, never submitted.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page itself.
const INDEX_HTML: &str = include_str!("../console/index.html");

/// The assets under `/console/assets/`, by file name, with their media types.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/api.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/views.js"),
    ),
    ("favicon.svg", "image/svg+xml", include_str!("../console/favicon.svg")),
];

/// A console response: `body` as `content_type`, with the security headers.
fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    // Small and embedded: revalidated on every load, so a new deployment is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[utoipa::path(get, path = paths::CONSOLE,
    responses((status = 200, description = "The operator console (HTML); public, it asks for the API key",
                content((String = "text/html")))))]
pub(crate) async fn console() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

#[utoipa::path(get, path = paths::CONSOLE_ASSET,
    params(("file" = String, Path, description = "An asset of the console (`app.js`, `console.css`, …)")),
    responses((status = 200, description = "The asset",
                content((String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
              (status = 404, description = "No such asset", body = crate::error::ErrorBody)))]
pub(crate) async fn console_asset(Path(file): Path<String>) -> Result<Response, HttpError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| HttpError::NoRoute(format!("GET /console/assets/{file}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{Surface, test_router};
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(surface: Surface, path: &str) -> Response {
        let req = http::Request::get(path).body(Body::empty()).unwrap();
        test_router(surface).oneshot(req).await.unwrap()
    }

    /// The page and its assets need no key, carry the policy and the framing refusal, and are
    /// served by the state API only (not by the webhook's function URL).
    #[tokio::test]
    async fn the_console_is_public_and_carries_its_security_headers() {
        for (path, media) in [
            ("/console", "text/html; charset=utf-8"),
            ("/console/", "text/html; charset=utf-8"),
            ("/console/assets/app.js", "text/javascript; charset=utf-8"),
            ("/console/assets/console.css", "text/css; charset=utf-8"),
        ] {
            let resp = get(Surface::StateApi, path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_TYPE], media, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
        }
        for directive in [
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        let missing = get(Surface::StateApi, "/console/assets/secrets.txt").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(get(Surface::Webhook, "/console").await.status(), StatusCode::NOT_FOUND);
    }

    /// Every asset the page and the modules name is served, and nothing is loaded from another
    /// origin: no absolute URL, no inline script or style (the policy would refuse them).
    #[test]
    fn the_page_names_only_embedded_assets() {
        let mut texts = vec![("index.html", INDEX_HTML)];
        texts.extend(ASSETS.iter().map(|(n, _, b)| (*n, *b)));
        for (name, text) in &texts {
            // The SVG namespace is a name, not a location: nothing is fetched from it.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} names {scheme}");
            }
            assert!(!text.contains("style=\""), "{name} has an inline style");
            assert!(!text.contains("innerHTML"), "{name} writes HTML from strings");
            assert!(!text.contains("eval("), "{name} evaluates strings");
        }
        for asset in INDEX_HTML.split("/console/assets/").skip(1) {
            let file = asset.split('"').next().unwrap();
            assert!(ASSETS.iter().any(|(n, _, _)| *n == file), "index.html names {file}");
        }
        assert!(!INDEX_HTML.contains("<script>"), "an inline script");
        for (name, _, body) in ASSETS {
            for import in body.split("from './").skip(1) {
                let file = import.split('\'').next().unwrap();
                assert!(ASSETS.iter().any(|(n, _, _)| *n == file), "{name} imports {file}");
            }
        }
    }
}
