//! The built-in web UI (issue #9): pages and assets served from the binary with the right types,
//! gzip, ETag/304 and HEAD; assets that name no other host; the `status/storage` extension; and
//! (ignored: needs Debian's `chromium` and `chromium-driver`) the UI driven end to end in headless
//! Chromium through ChromeDriver's W3C WebDriver API, failing on any console error and writing
//! the screenshots in `docs/screenshots/`.

use crate::support::{free_port, temp_dir, wait_until, Perch};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A config that scrapes nothing.
const NO_SCRAPES: &str = "global:\n  scrape_interval: 15s\n";

const PAGES: [&str; 4] = ["/query", "/graph", "/targets", "/status"];
const ASSETS: [(&str, &str); 3] = [
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/chart.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
];

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `Connection: close`, the raw answer kept.
fn fetch(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    // Read the head, then Content-Length bytes (ChromeDriver answers `Connection: close` but
    // keeps the connection open), or to the end without one.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {path}: connection closed before the head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut r = Reply {
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
        body: raw[split + 4..].to_vec(),
    };
    let len = r
        .header("Content-Length")
        .map(|l| l.parse::<usize>().unwrap());
    match len {
        _ if method == "HEAD" || status == 304 || status == 204 => r.body.clear(),
        Some(len) => {
            while r.body.len() < len {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{method} {path}: connection closed in the body");
                r.body.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut r.body).unwrap();
        }
    }
    r
}

fn get(port: u16, path: &str) -> Reply {
    fetch(port, "GET", path, &[], b"")
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn ui_pages_and_assets_are_served_with_their_types() {
    let p = Perch::start("ui-types", Some(NO_SCRAPES));
    let r = get(p.port, "/");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("Location"), Some("/query"));
    let index = get(p.port, "/query");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(index.body.clone()).unwrap();
    assert!(html.contains("<script src=\"/ui/app.js\""), "{html}");
    for page in PAGES {
        let r = get(p.port, page);
        assert_eq!(r.status, 200, "{page}");
        assert_eq!(r.body, index.body, "{page} serves index.html");
        assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    }
    for (path, ctype) in ASSETS {
        let r = get(p.port, path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("Content-Type"), Some(ctype), "{path}");
        assert!(!r.body.is_empty());
    }
    assert_eq!(get(p.port, "/ui/nope.js").status, 404);
    assert_eq!(get(p.port, "/query/x").status, 404);
    let post = fetch(p.port, "POST", "/query", &[], b"");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    // The API is untouched by the UI's routes.
    assert_eq!(get(p.port, "/api/v1/query?query=1").status, 200);
}

#[test]
fn ui_assets_gzip_etag_304_and_head() {
    let p = Perch::start("ui-gzip", Some(NO_SCRAPES));
    for path in ["/query", "/ui/app.js", "/ui/chart.js", "/ui/app.css"] {
        let plain = get(p.port, path);
        let gz = fetch(p.port, "GET", path, &[("Accept-Encoding", "gzip, br")], b"");
        assert_eq!(gz.header("Content-Encoding"), Some("gzip"), "{path}");
        assert_eq!(gz.header("Vary"), Some("Accept-Encoding"));
        assert!(
            gz.body.len() < plain.body.len(),
            "{path} is smaller gzipped"
        );
        assert_eq!(gunzip(&gz.body), plain.body, "{path}");
        assert_eq!(plain.header("Content-Encoding"), None);

        let tag = plain.header("ETag").expect("an ETag").to_owned();
        let gz_tag = gz.header("ETag").unwrap().to_owned();
        assert_ne!(tag, gz_tag, "each encoding has its own tag");
        let not_modified = fetch(p.port, "GET", path, &[("If-None-Match", &tag)], b"");
        assert_eq!(not_modified.status, 304, "{path}");
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("ETag"), Some(tag.as_str()));
        let list = format!("\"other\", {gz_tag}");
        let r = fetch(
            p.port,
            "GET",
            path,
            &[("If-None-Match", &list), ("Accept-Encoding", "gzip")],
            b"",
        );
        assert_eq!(r.status, 304);
        let stale = fetch(p.port, "GET", path, &[("If-None-Match", "\"old\"")], b"");
        assert_eq!(stale.status, 200);

        let head = fetch(p.port, "HEAD", path, &[], b"");
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty());
        assert_eq!(head.header("Content-Type"), plain.header("Content-Type"));
        assert_eq!(head.header("ETag"), Some(tag.as_str()));
    }
    let head = fetch(p.port, "HEAD", "/", &[], b"");
    assert_eq!(head.status, 302);
}

/// Also the size report the README quotes:
/// `cargo test --test it ui_assets_are_local_and_small -- --nocapture`.
#[test]
fn ui_assets_are_local_and_small() {
    let p = Perch::start("ui-local", Some(NO_SCRAPES));
    let html = String::from_utf8(get(p.port, "/query").body).unwrap();
    // Every src/href of the page is this server's path (or an inline data: URL).
    let refs: Vec<&str> = html
        .split(['"', '\''])
        .zip(html.split(['"', '\'']).skip(1))
        .filter(|(before, _)| before.ends_with("src=") || before.ends_with("href="))
        .map(|(_, url)| url)
        .collect();
    assert!(refs.len() >= 5, "{refs:?}");
    for url in &refs {
        assert!(
            url.starts_with("data:") || url.starts_with('/') && !url.starts_with("//"),
            "index.html refers to {url:?}, not a local path"
        );
    }
    let (mut plain, mut gz) = (0, 0);
    for path in ["/query", "/ui/app.js", "/ui/chart.js", "/ui/app.css"] {
        let body = get(p.port, path).body;
        let text = String::from_utf8(body.clone()).unwrap();
        for scheme in ["http://", "https://", "//cdn", "@import"] {
            assert!(!text.contains(scheme), "{path} contains {scheme:?}");
        }
        let z = fetch(p.port, "GET", path, &[("Accept-Encoding", "gzip")], b"").body;
        println!("{path:14} {:6} bytes, gzip {:6}", body.len(), z.len());
        plain += body.len();
        gz += z.len();
    }
    println!("{:14} {plain:6} bytes, gzip {gz:6}", "total");
    assert!(plain < 100 << 10, "the UI grew past 100 KiB: {plain} bytes");
}

#[test]
fn status_storage_reports_the_store_against_its_budget() {
    let p = Perch::start_with(
        "ui-storage",
        Some(NO_SCRAPES),
        &["--storage.tsdb.retention.size", "1MB"],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let body = format!("a_metric 1 {}\na_metric 2 {}\n", now - 60_000, now);
    let r = fetch(
        p.port,
        "POST",
        "/api/v1/import/prometheus",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 204);
    let r = get(p.port, "/api/v1/status/storage");
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["status"], "success");
    let d = &v["data"];
    assert_eq!(d["budgetBytes"], 1 << 20);
    assert_eq!(d["retentionTimeSeconds"], 15 * 24 * 3600);
    assert_eq!(d["minTime"], now - 60_000);
    assert_eq!(d["maxTime"], now);
    assert_eq!(d["coveredSeconds"], 60);
    assert_eq!(d["timeRetentionReached"], false);
    assert_eq!(d["series"], 1);
    for k in [
        "diskBytes",
        "segmentBytes",
        "samplesInMemory",
        "memoryBytes",
        "bytesWrittenTotal",
        "writeErrorsTotal",
        "corruptRecordsTotal",
        "startTime",
    ] {
        assert!(d[k].is_u64(), "{k}: {d}");
    }
    assert!(d["sizeRetentionReached"].is_boolean());
    assert_eq!(
        fetch(p.port, "POST", "/api/v1/status/storage", &[], b"").status,
        405
    );
}

// ---------------------------------------------------------------- headless Chromium

/// A ChromeDriver process and one browser session; both ended when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

fn need(program: &str) {
    assert!(
        Path::new(program).exists(),
        "{program} is missing: this test needs Debian's chromium and chromium-driver \
         (apt-get install chromium chromium-driver; .ci/run installs them)"
    );
}

/// One WebDriver command: JSON in, the `value` of the answer out; panics on a WebDriver error.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = fetch(
        port,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {e}: {:?}",
            String::from_utf8_lossy(&r.body)
        )
    });
    assert!(
        r.status == 200,
        "{method} {path} → {}: {}",
        r.status,
        v["value"]
    );
    v["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        need("/usr/bin/chromium");
        need("/usr/bin/chromedriver");
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1280,900", "--disable-dev-shm-usage",
                         "--hide-scrollbars", "--lang=en-US"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = wd(port, "POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap().to_owned();
        b
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `script` (a function body returning a value) until it returns true.
    fn wait(&self, what: &str, script: &str) {
        let start = Instant::now();
        loop {
            if self.js(script) == Value::Bool(true) {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let errors = self.js("return window.__perchErrors");
                let html = self.js("return document.querySelector('main').innerText");
                panic!("timed out waiting for {what}; errors {errors}; page: {html}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types into the element `css`, emptied first (WebDriver keys: "\u{E007}" is Enter).
    fn type_into(&self, css: &str, text: &str) {
        self.keys(css, text, true)
    }

    fn keys(&self, css: &str, text: &str, clear: bool) {
        let e = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = e["element-6066-11e4-a52e-4f735466cecf"].as_str().unwrap();
        if clear {
            self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        }
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Fails on any error the page recorded or the browser logged since the last call, except
    /// network errors whose message contains one of `expected`.
    fn assert_no_errors(&self, page: &str, expected: &[&str]) {
        let errors = self.js("return window.__perchErrors || ['no __perchErrors: app not loaded']");
        assert_eq!(errors, json!([]), "{page}: errors in the page");
        let log = self.cmd("POST", "/se/log", Some(json!({"type": "browser"})));
        let severe: Vec<&Value> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter(|e| {
                let msg = e["message"].as_str().unwrap_or("");
                !expected.iter().any(|x| msg.contains(x))
            })
            .collect();
        assert!(severe.is_empty(), "{page}: console errors: {severe:?}");
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = fetch(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (val(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// An hour of memory use of three boards, every 15 s, for the graph to draw.
fn demo_data(now_ms: i64) -> String {
    let mut s = String::new();
    for (i, board) in ["rpi-zero-2w", "rpi4", "rpi5"].iter().enumerate() {
        let base = [180.0, 620.0, 1400.0][i] * 1024.0 * 1024.0;
        for k in 0..240 {
            let t = now_ms - (240 - k) * 15_000;
            let x = k as f64 / 240.0 * std::f64::consts::TAU;
            let v = base * (1.0 + 0.08 * (x * (i as f64 + 1.0)).sin() + 0.03 * (x * 7.0).cos());
            s.push_str(&format!(
                "demo_memory_used_bytes{{board=\"{board}\",site=\"greenhouse\"}} {v:.0} {t}\n"
            ));
        }
    }
    s
}

#[test]
#[ignore = "needs chromium and chromedriver (Debian chromium, chromium-driver)"]
fn ui_in_headless_chromium() {
    // The default config: Perch scrapes itself, so Targets has the `perch` target.
    // Self-scraping as by default, and a remote_write whose receiver is down.
    let port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: perch\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\nremote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    name: central\n",
        free_port()
    );
    let perch = Perch::start_on(port, temp_dir("ui-chromium"), Some(&config), &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let r = fetch(
        perch.port,
        "POST",
        "/api/v1/import/prometheus",
        &[("Content-Type", "text/plain")],
        demo_data(now).as_bytes(),
    );
    assert_eq!(r.status, 204);
    wait_until(Duration::from_secs(30), || {
        perch.get("/api/v1/query?query=up").1.contains("\"value\"")
    });
    let base = format!("http://127.0.0.1:{}", perch.port);
    let b = Browser::start();

    // Query: type, autocomplete the name with Tab, Enter runs it, the table shows the series.
    b.go(&format!("{base}/"));
    b.wait("the query page", "return !!document.querySelector('#expr')");
    assert!(b.js("return location.pathname").as_str() == Some("/query"));
    b.type_into("#expr", "demo_mem");
    b.wait(
        "autocomplete",
        "const a = document.querySelector('ul.ac'); return !a.hidden && a.textContent.includes('demo_memory_used_bytes')",
    );
    b.keys("#expr", "\u{E004}", false);
    assert_eq!(
        b.js("return document.querySelector('#expr').value"),
        "demo_memory_used_bytes"
    );
    b.keys("#expr", "\u{E007}", false);
    b.wait(
        "table rows",
        "return document.querySelectorAll('#table tbody tr').length === 3",
    );
    let first = b.js("return document.querySelector('#table tbody td').textContent");
    assert!(
        first
            .as_str()
            .unwrap()
            .starts_with("demo_memory_used_bytes{"),
        "{first}"
    );
    assert!(b
        .js("return location.search")
        .as_str()
        .unwrap()
        .contains("g0.expr=demo_memory_used_bytes"));
    b.assert_no_errors("query table", &[]);
    b.screenshot("query-table");

    // Graph: drawn pixels in colour, a legend, hover values, legend toggle, stacking.
    b.js("document.querySelectorAll('.tab')[1].click()");
    b.wait(
        "the legend",
        "return document.querySelectorAll('#graph .legend .item').length === 3",
    );
    let coloured = "const c = document.querySelector('#graph canvas.plot');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) n++;
        }
        return n;";
    let drawn = b.js(coloured).as_u64().unwrap();
    assert!(drawn > 500, "the graph drew {drawn} coloured pixels");
    let ticks = b.js("return document.querySelector('#graph').innerText");
    assert!(ticks
        .as_str()
        .unwrap()
        .contains("demo_memory_used_bytes{board=\"rpi4\""));
    b.js("document.querySelector('.legend .item').click()");
    let fewer = b.js(coloured).as_u64().unwrap();
    assert!(
        fewer < drawn,
        "hiding a series draws less: {fewer} vs {drawn}"
    );
    b.js("document.querySelector('.legend .item').click()");
    b.js("const o = document.querySelector('#graph canvas.overlay').getBoundingClientRect();
          document.querySelector('#graph canvas.overlay').dispatchEvent(new PointerEvent('pointermove',
            {clientX: o.left + o.width * 0.6, clientY: o.top + o.height * 0.4, bubbles: true}));");
    b.wait(
        "hover values",
        "const t = document.querySelector('.tip'); return !t.hidden && t.querySelectorAll('.row').length === 3",
    );
    let tip = b.js("return document.querySelector('.tip').innerText");
    assert!(tip.as_str().unwrap().contains("MiB"), "bytes unit: {tip}");
    assert!(b
        .js("return location.search")
        .as_str()
        .unwrap()
        .contains("g0.tab=0"));
    b.assert_no_errors("query graph", &[]);
    b.screenshot("query-graph");

    // Many series: 500 series of 500 points, drawn plain and stacked, and hovered.
    let ms = b.js("const div = document.createElement('div');
        document.querySelector('main').append(div);
        const chart = new PerchChart(div), n = 500, times = [];
        for (let k = 0; k < n; k++) times.push(1.7e12 + k * 15000);
        const series = [];
        for (let i = 0; i < 500; i++) series.push({label: `s{i=\"${i}\"}`,
          values: Float64Array.from(times, (t, k) => k % 97 === i % 97 ? NaN : Math.sin(k / 20 + i) + i / 50)});
        const t0 = performance.now();
        chart.set({times, series, unit: 'none', stacked: false, start: times[0], end: times[n - 1]});
        const t1 = performance.now();
        chart.setStacked(true);
        const t2 = performance.now();
        const r = div.querySelector('canvas.overlay').getBoundingClientRect();
        chart.hover(r.left + r.width / 2, r.top + r.height / 2);
        const t3 = performance.now();
        const listed = div.querySelectorAll('.legend .item').length;
        div.remove();
        return [t1 - t0, t2 - t1, t3 - t2, listed];");
    println!("500 series × 500 points: draw, stacked, hover (ms), legend entries: {ms}");
    for t in ms.as_array().unwrap()[..3].iter() {
        assert!(t.as_f64().unwrap() < 2000.0, "too slow: {ms}");
    }
    assert_eq!(ms[3], 200, "the legend lists at most 200 series");
    b.assert_no_errors("many series", &[]);

    // A link holds the state: reloading it shows the graph again, stacked.
    b.go(&format!(
        "{base}/graph?g0.expr=demo_memory_used_bytes&g0.tab=0&g0.stacked=1&g0.range_input=30m"
    ));
    b.wait(
        "the shared graph",
        "return document.querySelectorAll('#graph .legend .item').length === 3 && document.querySelector('#stacked').checked && document.querySelector('#range').value === '30m'",
    );
    // An API error is shown plainly (the browser logs the 400 itself: expected).
    b.type_into("#expr", "sum(\u{E007}");
    b.wait(
        "the error",
        "const e = document.querySelector('.msg.error'); return !!e && e.textContent.includes('bad_data')",
    );
    b.assert_no_errors("query error", &["status of 400"]);

    // Targets: the perch pool with its target up.
    b.go(&format!("{base}/targets"));
    b.wait(
        "the perch target",
        "return [...document.querySelectorAll('details.pool')].some(d => d.dataset.pool === 'perch' && d.querySelector('.health.up'))",
    );
    b.assert_no_errors("targets", &[]);
    b.screenshot("targets");

    // Status: build information and the storage section.
    b.go(&format!("{base}/status"));
    b.wait(
        "the status page",
        "return document.querySelector('main').dataset.ready === '1'",
    );
    let build = b.js("return document.querySelector('#build').innerText");
    assert!(
        build.as_str().unwrap().contains(env!("CARGO_PKG_VERSION")),
        "{build}"
    );
    let storage = b.js("return document.querySelector('#storage').innerText");
    let storage = storage.as_str().unwrap();
    for want in [
        "Disk used",
        "Oldest sample",
        "Series",
        "demo_memory_used_bytes",
    ] {
        assert!(
            storage.contains(want),
            "storage section lacks {want:?}: {storage}"
        );
    }
    let remote = b.js("return document.querySelector('#remote').innerText");
    let remote = remote.as_str().unwrap();
    for want in ["central", "Live queue", "Oldest cursor", "Export"] {
        assert!(
            remote.contains(want),
            "remote section lacks {want:?}: {remote}"
        );
    }
    assert!(b
        .js("return !!document.querySelector('#flags') && !!document.querySelector('#config pre')")
        .as_bool()
        .unwrap());
    b.assert_no_errors("status", &[]);
    b.screenshot("status");

    // A phone: 375 px wide, as a phone lays out the page (viewport meta, touch).
    b.cmd(
        "POST",
        "/goog/cdp/execute",
        Some(
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params":
            {"width": 375, "height": 800, "deviceScaleFactor": 2, "mobile": true}}),
        ),
    );
    b.go(&format!(
        "{base}/query?g0.expr=demo_memory_used_bytes&g0.tab=0&g0.range_input=1h"
    ));
    b.wait(
        "the phone graph",
        "return document.querySelectorAll('#graph .legend .item').length === 3",
    );
    let fits = b.js("return [innerWidth, document.documentElement.scrollWidth]");
    assert_eq!(
        fits,
        json!([375, 375]),
        "no horizontal scrolling on a phone"
    );
    assert!(b.js(coloured).as_u64().unwrap() > 500);
    b.assert_no_errors("phone", &[]);
    b.screenshot("phone-query");
}
