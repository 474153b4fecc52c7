//! The web chat and admin console, embedded at build time (see `build.rs`): `/` and `/admin` serve the app
//! shell, `/assets/*` its script and stylesheet. Everything comes from this binary: no CDN, no second
//! server. Responses carry an ETag (revalidated, never stale after an upgrade) and a Content-Security-Policy
//! that allows nothing but this origin.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub struct Asset {
    /// Relative to the app's root: `index.html`, `assets/app.js`...
    pub path: &'static str,
    pub content_type: &'static str,
    pub etag: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The routes of the web app; merge into the server's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(shell))
        .route("/admin", get(shell))
        .route("/admin/", get(shell))
        .route("/assets/{file}", get(asset))
}

pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

async fn shell(headers: HeaderMap) -> Response {
    serve(find("index.html").expect("the build checks index.html"), &headers)
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>, headers: HeaderMap) -> Response {
    match find(&format!("assets/{file}")) {
        Some(a) => serve(a, &headers),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

fn serve(a: &'static Asset, req: &HeaderMap) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    // Names carry no hash: revalidate every time (a 304 costs little), so an upgrade is seen at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if a.content_type.starts_with("text/html") {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn serves_the_shell_and_assets_with_etags() {
        let app: Router = router();
        let r = app
            .clone()
            .oneshot(Request::get("/admin").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let js = find("assets/app.js").expect("the bundle is embedded");
        assert!(js.bytes.len() > 1000);
        let r = app
            .clone()
            .oneshot(
                Request::get("/assets/app.js")
                    .header(header::IF_NONE_MATCH, js.etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let r = app
            .oneshot(Request::get("/assets/nope.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}
