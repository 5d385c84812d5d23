//! The monitoring-room web UI: static files (`central/ui/`) embedded in the binary at build time and
//! served at `/` and `/ui/...` without authentication (they hold no data; every call they make to
//! `/api/v1/` is authenticated). Nothing is fetched from elsewhere at runtime: the page loads only
//! these files, which the Content-Security-Policy enforces.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// `(path under /ui/, contents)` of every embedded file, listed by hand so the build fails when one
/// goes missing; a unit test fails when a file in `central/ui/` is not listed.
macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $path)) as &[u8])),*]
    };
}

static ASSETS: &[(&str, &[u8])] = assets![
    "index.html",
    "app.css",
    "app.js",
    "api.js",
    "dom.js",
    "i18n.js",
    "sound.js",
    "live.js",
    "park-layout.json",
    "views/login.js",
    "views/alarms.js",
    "views/overview.js",
    "views/point.js",
    "views/gateways.js",
    "views/windows.js",
    "views/reports.js",
    "vendor/uplot/uPlot.esm.js",
    "vendor/uplot/uPlot.min.css",
    "vendor/uplot/LICENSE",
];

/// Only our own origin: no CDN, no web fonts, no inline script. uPlot sets element styles from
/// script (CSSOM, which `style-src 'self'` allows); the page has no inline `<style>` or `style=`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The UI's routes: `/` and `/ui/` answer `index.html`, `/ui/{path}` the embedded file; any other
/// path under `/ui/` except a missing asset (`.js`, `.css`, ...) also answers `index.html`.
/// `park_layout` (already checked by [`check_layout`]) replaces the embedded example layout.
pub fn routes<S: Clone + Send + Sync + 'static>(park_layout: Option<PathBuf>) -> Router<S> {
    let router = Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset));
    match park_layout {
        Some(path) => router.route(LAYOUT_ROUTE, get(move |headers: HeaderMap| layout_file(path.clone(), headers))),
        None => router,
    }
}

const LAYOUT_ROUTE: &str = "/ui/park-layout.json";

/// Why the park layout file at `path` cannot be drawn, if it cannot: unreadable, not JSON, or
/// without an `objects` array of objects each with an `id` and a `kind`.
pub fn check_layout(path: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    layout_problem(&bytes).map_or(Ok(()), |why| Err(format!("{}: {why}", path.display())))
}

fn layout_problem(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Some(format!("not JSON: {e}")),
    };
    let Some(objects) = v.get("objects").and_then(|o| o.as_array()) else {
        return Some("no \"objects\" array".into());
    };
    objects.iter().enumerate().find_map(|(i, o)| {
        let named = o.get("id").and_then(|x| x.as_str()).is_some() && o.get("kind").and_then(|x| x.as_str()).is_some();
        (!named).then(|| format!("objects[{i}] needs a string \"id\" and \"kind\""))
    })
}

/// The configured layout, read now: a park edits it without restarting central. A file broken
/// since start-up is answered with a 500 naming the problem (and logged), never a half layout.
async fn layout_file(path: PathBuf, headers: HeaderMap) -> Response {
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "park layout unreadable");
            return (StatusCode::INTERNAL_SERVER_ERROR, "park layout unreadable").into_response();
        }
    };
    if let Some(why) = layout_problem(&bytes) {
        tracing::error!(path = %path.display(), why, "park layout invalid");
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("park layout invalid: {why}")).into_response();
    }
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&bytes)[..12]));
    respond("park-layout.json", bytes, &etag, &headers)
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if find(&path).is_some() {
        return serve(&path, &headers);
    }
    // A missing script or stylesheet is a 404 (a page there would only confuse the browser); any
    // other path is one of the page's own routes (point ids hold dots: `/ui/point/gw-1/TK101.LT`).
    let last = path.rsplit('/').next().unwrap_or_default();
    let ext = last.rsplit_once('.').map(|(_, e)| e);
    if ext.is_some_and(|e| ["js", "mjs", "css", "json", "svg", "png", "woff2", "map", "html", "ico"].contains(&e)) {
        return (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "no such UI file")
            .into_response();
    }
    serve("index.html", &headers)
}

fn find(path: &str) -> Option<usize> {
    ASSETS.iter().position(|(p, _)| *p == path)
}

/// Strong validators of every file, computed once: a browser revalidates (`no-cache`) and gets a
/// 304 without the body while the binary is unchanged, and the new file at once after an upgrade.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS.iter().map(|(_, body)| format!("\"{}\"", hex::encode(&Sha256::digest(body)[..12]))).collect()
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = find(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    respond(path, ASSETS[i].1, &etags()[i], headers)
}

/// `body` as file `path` with validator `etag` (304 when the browser has it) and the page's policy.
fn respond(path: &str, body: impl IntoResponse, etag: &str, headers: &HeaderMap) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read as _, Write as _};

    use super::*;

    /// Serves the UI routes on a real socket; returns its port.
    async fn serve_ui() -> u16 {
        serve_with(None).await
    }

    async fn serve_with(layout: Option<PathBuf>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, routes::<()>(layout)).await });
        port
    }

    #[tokio::test]
    async fn a_configured_layout_replaces_the_example_and_edits_show_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layout.json");
        let first = r#"{"objects":[{"id":"tank-farm-1","kind":"tank_farm"}]}"#;
        std::fs::write(&file, first).unwrap();
        check_layout(&file).unwrap();
        let port = serve_with(Some(file.clone())).await;
        let (status, head, body) = get(port, "/ui/park-layout.json", "").await;
        assert_eq!((status, body.as_slice()), (200, first.as_bytes()));
        assert!(head.contains("application/json") && head.contains("content-security-policy"), "{head}");
        let second = r#"{"objects":[{"id":"warehouse-2","kind":"warehouse"}]}"#;
        std::fs::write(&file, second).unwrap();
        assert_eq!(get(port, "/ui/park-layout.json", "").await.2, second.as_bytes());
        // Broken after start-up: a 500 naming the problem, never a half layout.
        std::fs::write(&file, r#"{"objects":[{"kind":"camera"}]}"#).unwrap();
        let (status, _, body) = get(port, "/ui/park-layout.json", "").await;
        assert_eq!(status, 500);
        assert!(String::from_utf8_lossy(&body).contains("objects[0]"));
        // Other files are still the embedded ones.
        assert_eq!(get(port, "/ui/app.js", "").await.0, 200);
    }

    #[test]
    fn layout_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("l.json");
        assert!(check_layout(&file).unwrap_err().contains("cannot read"));
        for (text, why) in [("{", "not JSON"), ("{}", "no \"objects\""), (r#"{"objects":[{"id":"a"}]}"#, "objects[0]")]
        {
            std::fs::write(&file, text).unwrap();
            let err = check_layout(&file).unwrap_err();
            assert!(err.contains(why) && err.contains("l.json"), "{text}: {err}");
        }
        let embedded = ASSETS[find("park-layout.json").unwrap()].1;
        assert_eq!(layout_problem(embedded), None, "the shipped example is valid");
    }

    /// One GET over a plain socket: (status, lower-cased head, body).
    async fn get(port: u16, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        let (path, extra) = (path.to_owned(), extra.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).unwrap();
            let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            (status, head, raw[end + 4..].to_vec())
        })
        .await
        .unwrap()
    }

    fn files_under(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                files_under(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_file_in_the_ui_directory_is_embedded_with_a_known_type() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut files = Vec::new();
        files_under(&base, &base, &mut files);
        for f in &files {
            assert!(find(f).is_some(), "central/ui/{f} is not listed in ui.rs ASSETS");
        }
        assert_eq!(files.len(), ASSETS.len(), "ASSETS lists a file twice");
        for (p, _) in ASSETS {
            let known = content_type(p) != "text/plain; charset=utf-8" || p.ends_with("LICENSE");
            assert!(known, "{p}: no content type");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_another_origin() {
        for (p, body) in ASSETS {
            if p.starts_with("vendor/") {
                continue;
            }
            // The SVG namespace is an identifier, not a fetch.
            let text = String::from_utf8_lossy(body).replace("http://www.w3.org/", "");
            for bad in ["http://", "https://", "//cdn", "fonts.googleapis"] {
                assert!(!text.contains(bad), "{p} names {bad}");
            }
        }
    }

    #[tokio::test]
    async fn files_are_served_with_type_validator_and_policy() {
        let port = serve_ui().await;
        let (status, head, body) = get(port, "/", "").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(head.contains("content-security-policy: default-src 'self'"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("/ui/app.js"));

        let (status, head, body) = get(port, "/ui/vendor/uplot/uPlot.esm.js", "").await;
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/javascript"), "{head}");
        assert_eq!(body, ASSETS[find("vendor/uplot/uPlot.esm.js").unwrap()].1);
        let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().to_owned();

        let (status, _, body) = get(port, "/ui/vendor/uplot/uPlot.esm.js", &format!("If-None-Match: {etag}\r\n")).await;
        assert_eq!(status, 304);
        assert!(body.is_empty());
        let (status, _, _) = get(port, "/ui/vendor/uplot/uPlot.esm.js", "If-None-Match: \"other\"\r\n").await;
        assert_eq!(status, 200);
        let (_, head, _) = get(port, "/ui/app.css", "").await;
        assert!(head.contains("content-type: text/css"), "{head}");
    }

    #[tokio::test]
    async fn page_routes_fall_back_to_the_index_and_missing_files_are_404() {
        let port = serve_ui().await;
        let index = ASSETS[find("index.html").unwrap()].1;
        for path in ["/ui/alarms", "/ui/point/gw-1/TK101.LT", "/ui/", "/ui"] {
            let (status, head, body) = get(port, path, "").await;
            assert_eq!(status, 200, "{path}");
            assert!(head.contains("text/html"), "{path}: {head}");
            assert_eq!(body, index, "{path}");
        }
        let (status, _, _) = get(port, "/ui/nothing.js", "").await;
        assert_eq!(status, 404);
        let (status, _, _) = get(port, "/ui/views/missing.css", "").await;
        assert_eq!(status, 404);
    }
}
