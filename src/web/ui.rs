//! The built-in web UI: a few hand-written static files embedded in the binary.
//!
//! Contract:
//! - `/` answers 302 to `/query`; the pages `/query`, `/graph` (Prometheus's name for it),
//!   `/targets` and `/status` all serve `index.html`, whose script renders the page for its
//!   path; `/ui/app.js`, `/ui/chart.js` and `/ui/app.css` are the assets. Everything else is
//!   not ours ([`is_ui_path`] is false) and the router answers as before.
//! - GET and HEAD only (405 with `Allow` otherwise). The bytes come from `src/web/ui/` through
//!   `include_bytes!`; nothing is read from disk and nothing is fetched from another host: the
//!   scripts talk only to this server's Prometheus API.
//! - A client that accepts gzip gets the gzip form, compressed once (best level) on first use
//!   and kept for the life of the process; the others get the plain bytes. Each form has its
//!   own strong `ETag` (a hash of the plain bytes, `-gz` appended for gzip) and
//!   `Vary: Accept-Encoding`; `If-None-Match` with a matching tag answers 304 with no body.
//! - `Cache-Control: no-cache`: the asset URLs carry no version, so a browser revalidates each
//!   load (a 304 of a few hundred bytes on the LAN) and never mixes files of two releases.
//!
//! Memory: the plain bytes live in the binary's read-only data; the gzip forms, once built, are
//! a few tens of KB on the heap.

use super::http::{Request, Response};
use std::sync::OnceLock;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
    /// FNV-1a of `bytes`, computed at compile time.
    hash: u64,
    gzip: OnceLock<Vec<u8>>,
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($file:literal, $ct:literal) => {
        Asset {
            content_type: $ct,
            bytes: include_bytes!(concat!("ui/", $file)),
            hash: fnv1a(include_bytes!(concat!("ui/", $file))),
            gzip: OnceLock::new(),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8");
static CHART_JS: Asset = asset!("chart.js", "text/javascript; charset=utf-8");
static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8");

/// The pages the single-page app renders; each serves `index.html`.
const PAGES: &[&str] = &["/query", "/graph", "/targets", "/status"];

/// The embedded files by URL path, for the router and the size report in tests.
fn asset(path: &str) -> Option<&'static Asset> {
    match path {
        "/ui/app.js" => Some(&APP_JS),
        "/ui/chart.js" => Some(&CHART_JS),
        "/ui/app.css" => Some(&APP_CSS),
        p if PAGES.contains(&p) => Some(&INDEX),
        _ => None,
    }
}

/// Whether `path` belongs to the UI (the router sends it to [`serve`]).
pub fn is_ui_path(path: &str) -> bool {
    path == "/" || asset(path).is_some()
}

/// Answers a request for a UI path (see the module doc).
pub fn serve(req: &Request) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(405, "Method Not Allowed\n").with_header("Allow", "GET, HEAD");
    }
    if req.path == "/" {
        return Response::new(
            302,
            "text/html; charset=utf-8",
            "<a href=\"/query\">Found</a>.\n",
        )
        .with_header("Location", "/query");
    }
    let Some(a) = asset(&req.path) else {
        return Response::text(404, "404 page not found\n");
    };
    let gzip = req.accepts_gzip();
    let etag = if gzip {
        format!("\"{:016x}-gz\"", a.hash)
    } else {
        format!("\"{:016x}\"", a.hash)
    };
    let fresh = req.header("if-none-match").is_some_and(|h| {
        h.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    });
    let (status, body) = match (fresh, gzip) {
        (true, _) => (304, Vec::new()),
        (false, true) => (200, a.gzip.get_or_init(|| compress(a.bytes)).clone()),
        (false, false) => (200, a.bytes.to_vec()),
    };
    let mut resp = Response::new(status, a.content_type, body)
        .with_header("ETag", etag)
        .with_header("Cache-Control", "no-cache")
        .with_header("Vary", "Accept-Encoding");
    if gzip && status == 200 {
        resp.headers.push(("Content-Encoding", "gzip".into()));
    }
    resp
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        serve(&Request {
            method: "GET".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        })
    }

    #[test]
    fn gzip_form_decompresses_to_the_plain_bytes() {
        use std::io::Read;
        let r = get("/ui/app.js", &[("Accept-Encoding", "gzip")]);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, APP_JS.bytes);
    }

    #[test]
    fn etag_differs_by_encoding_and_matches_for_304() {
        let plain = get("/query", &[]);
        let tag = &plain.headers.iter().find(|h| h.0 == "ETag").unwrap().1;
        assert_eq!(get("/query", &[("If-None-Match", tag)]).status, 304);
        let gz = get(
            "/query",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", tag)],
        );
        assert_eq!(gz.status, 200);
    }
}
