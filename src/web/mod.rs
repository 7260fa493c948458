//! The HTTP server: the Prometheus API, Perch's own `/metrics`, health, readiness and lifecycle.
//!
//! Runs on the same executor as the scrapers: an accept loop spawns one task per connection
//! ([`http`] reads requests and writes responses with bounds and timeouts), a router maps the
//! path and method to a handler ([`api`], [`status`], [`ingest`]), and every request is counted
//! by handler and status code, with its duration and response size. Queries are evaluated by the
//! cooperative PromQL engine and raced against their timeout, so a heavy query yields to scrapes
//! and a slow client holds up nothing but its own connection.
//!
//! Routing follows Prometheus 2.42: `/api/v1/*` answers `OPTIONS` with 204 and CORS headers, a
//! known path with a wrong method gets 405 with an `Allow` header, an unknown path 404
//! (`404 page not found`); HEAD is served on `/-/healthy` and `/-/ready` only, and any HEAD
//! answer carries the `Content-Length` of the body it leaves out. API answers carry CORS
//! headers when the request has an `Origin` (per `--web.cors.origin`) and are gzip-compressed
//! when the client accepts gzip. Where Grafana may send POST to an endpoint Prometheus serves
//! only with GET (label values, metadata, rules, alerts, buildinfo), Perch accepts POST too.
//! `/-/reload` and `/-/quit` need `--web.enable-lifecycle` (403 otherwise), `/api/v1/admin/*`
//! needs `--web.enable-admin-api`.

pub mod api;
pub mod expfmt;
pub mod export;
pub mod federate;
pub mod http;
pub mod ingest;
pub mod json;
pub mod remote_read;
pub mod snappy;
pub mod status;
pub mod time;
pub mod ui;

use crate::config::Config;
use crate::promql::Engine;
use crate::scrape::{DroppedTarget, TargetStatus};
use crate::storage::Storage;
use crate::telemetry::Telemetry;
use api::{ApiError, Params};
use async_io::Async;
use http::{ClientGone, Limits, ReadError, Request, Response};
use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A reload of the config, done by the runtime: `Err` carries the reason it failed.
pub type ReloadFn = Box<dyn Fn() -> Result<(), String>>;

/// A one-way "stop" signal from the web server (`/-/quit`) to the runtime's main loop.
#[derive(Default)]
pub struct QuitSignal {
    requested: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl QuitSignal {
    /// Asks the runtime to stop; wakes its main loop.
    pub fn request(&self) {
        self.requested.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.get()
    }

    /// Completes once [`QuitSignal::request`] was called.
    pub async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.requested.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// What the handlers share.
pub struct WebState {
    /// The config in force; replaced by a successful reload.
    pub config: RefCell<Rc<Config>>,
    pub storage: Rc<dyn Storage>,
    pub engine: Engine,
    pub telemetry: Rc<Telemetry>,
    /// The scrapers' target states, replaced when scraping is (re)started.
    pub targets: RefCell<Vec<Rc<RefCell<TargetStatus>>>>,
    /// The targets relabeling dropped, replaced with `targets`.
    pub dropped_targets: RefCell<Rc<Vec<DroppedTarget>>>,
    pub limits: Limits,
    /// `--web.cors.origin`, anchored.
    pub cors_origin: regex::Regex,
    /// Set by `/-/quit`; the runtime's main loop waits on it.
    pub quit: Rc<QuitSignal>,
    /// Set by the runtime: reloads the config file and applies it (see [`crate::runtime`]).
    pub reload: RefCell<Option<ReloadFn>>,
    /// When the config was last (re)loaded successfully, ms since the epoch.
    pub last_config_ms: Cell<i64>,
    /// Whether the last reload attempt succeeded.
    pub reload_success: Cell<bool>,
    /// Connections open right now.
    pub connections: Cell<usize>,
    /// The remote-write senders, for `/metrics` and the status page.
    pub remote: RefCell<Option<Rc<crate::remote::RemoteWriters>>>,
}

/// The allowed methods of an API route, as Go's router lists them in `Allow`.
const GET: &[&str] = &["GET"];
const GET_POST: &[&str] = &["GET", "POST"];
const GET_POST_DELETE: &[&str] = &["DELETE", "GET", "POST"];
const POST: &[&str] = &["POST"];
const POST_PUT: &[&str] = &["POST", "PUT"];

/// The API v1 routes: (path after `/api/v1/`, handler name for telemetry, methods).
const API_ROUTES: &[(&str, &str, &[&str])] = &[
    ("query", "query", GET_POST),
    ("query_range", "query_range", GET_POST),
    ("query_exemplars", "query_exemplars", GET_POST),
    ("format_query", "format_query", GET_POST),
    ("labels", "labels", GET_POST),
    ("series", "series", GET_POST_DELETE),
    ("metadata", "metadata", GET_POST),
    ("targets", "targets", GET),
    ("targets/metadata", "targets_metadata", GET),
    ("alertmanagers", "alertmanagers", GET),
    ("rules", "rules", GET_POST),
    ("alerts", "alerts", GET_POST),
    ("status/config", "status_config", GET),
    ("status/flags", "status_flags", GET),
    ("status/runtimeinfo", "status_runtimeinfo", GET),
    ("status/buildinfo", "buildinfo", GET_POST),
    ("status/tsdb", "status_tsdb", GET),
    ("status/walreplay", "status_walreplay", GET),
    ("status/remote", "status_remote", GET),
    ("status/storage", "status_storage", GET),
    ("write", "remote_write", POST),
    ("import/prometheus", "import_prometheus", POST),
    ("read", "remote_read", POST),
    ("export", "export", GET_POST),
    ("admin/tsdb/delete_series", "admin", POST_PUT),
    ("admin/tsdb/clean_tombstones", "admin", POST_PUT),
    ("admin/tsdb/snapshot", "admin", POST_PUT),
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn method_not_allowed(allowed: &[&str]) -> Response {
    let mut list: Vec<&str> = allowed.to_vec();
    list.push("OPTIONS");
    list.sort_unstable();
    Response::text(405, "Method Not Allowed\n").with_header("Allow", list.join(", "))
}

fn not_found() -> Response {
    Response::text(404, "404 page not found\n")
}

impl WebState {
    /// The web state for `config`, before the runtime sets the reload hook and targets.
    pub fn new(
        config: Rc<Config>,
        storage: Rc<dyn Storage>,
        engine: Engine,
        telemetry: Rc<Telemetry>,
        limits: Limits,
    ) -> WebState {
        // Validated when the flags were parsed; `.*` if it somehow is not.
        let cors_origin = regex::Regex::new(&format!("^(?:{})$", config.flags.cors_origin))
            .unwrap_or_else(|_| regex::Regex::new("^(?:.*)$").expect("a valid regex"));
        WebState {
            config: RefCell::new(config),
            storage,
            engine,
            telemetry,
            targets: RefCell::new(Vec::new()),
            dropped_targets: RefCell::new(Rc::new(Vec::new())),
            limits,
            cors_origin,
            quit: Rc::new(QuitSignal::default()),
            reload: RefCell::new(None),
            last_config_ms: Cell::new(now_ms()),
            reload_success: Cell::new(true),
            connections: Cell::new(0),
            remote: RefCell::new(None),
        }
    }

    /// The config in force.
    pub fn config(&self) -> Rc<Config> {
        self.config.borrow().clone()
    }

    fn scrape_status(&self) -> Vec<Rc<RefCell<TargetStatus>>> {
        self.targets.borrow().clone()
    }

    /// Routes one request; returns the handler name (for telemetry) and the response. `gone`
    /// completes if the client goes away: a query then stops and answers 499 `canceled`.
    pub async fn route(&self, req: &Request, gone: ClientGone<'_>) -> (&'static str, Response) {
        let path = req.path.as_str();
        if let Some(rest) = path.strip_prefix("/api/v1/") {
            let (handler, mut resp) = self.route_api(rest, req, gone).await;
            self.set_cors(req, &mut resp);
            // Remote read answers are snappy-framed protobuf, never gzip (as in Prometheus).
            if req.accepts_gzip() && handler != "remote_read" {
                resp.gzip();
            }
            return (handler, resp);
        }
        // As 2.42's router: HEAD only on the health and readiness checks.
        let (get, head) = (req.method == "GET", req.method == "HEAD");
        let get_only =
            |allow: &str| Response::text(405, "Method Not Allowed\n").with_header("Allow", allow);
        match path {
            "/metrics" if get => {
                let mut out = String::with_capacity(8192);
                self.telemetry.render(&self.storage.stats(), &mut out);
                if let Some(r) = &*self.remote.borrow() {
                    r.render(&mut out);
                }
                let mut resp = Response::new(200, "text/plain; version=0.0.4; charset=utf-8", out);
                if req.accepts_gzip() {
                    resp.gzip();
                }
                ("metrics", resp)
            }
            "/-/healthy" if get => ("healthy", Response::text(200, "Perch is Healthy.\n")),
            "/-/ready" if get => ("ready", Response::text(200, "Perch is Ready.\n")),
            "/-/healthy" if head => ("healthy", Response::bare(200)),
            "/-/ready" if head => ("ready", Response::bare(200)),
            // Prometheus serves GET; POST is accepted too, for long `match[]` lists.
            "/federate" if get || req.method == "POST" => {
                ("federate", self.federate(req, now_ms()).await)
            }
            "/metrics" => ("other", get_only("GET, OPTIONS")),
            "/federate" => ("other", get_only("GET, OPTIONS, POST")),
            "/-/healthy" | "/-/ready" => ("other", get_only("GET, HEAD, OPTIONS")),
            "/-/reload" | "/-/quit" => {
                let handler = if path == "/-/quit" { "quit" } else { "reload" };
                (handler, self.lifecycle(handler, req))
            }
            p if ui::is_ui_path(p) => ("ui", ui::serve(req)),
            _ => ("other", not_found()),
        }
    }

    /// `/-/reload` and `/-/quit`, with Prometheus's answers. The quit itself happens after the
    /// answer is written (see [`connection`]).
    fn lifecycle(&self, handler: &str, req: &Request) -> Response {
        if req.method == "HEAD" {
            return method_not_allowed(&["GET", "POST", "PUT"]);
        }
        if req.method != "POST" && req.method != "PUT" {
            return Response::text(405, "Only POST or PUT requests allowed\n");
        }
        if !self.config().flags.enable_lifecycle {
            return Response::text(403, "Lifecycle API is not enabled.\n");
        }
        if handler == "quit" {
            return Response::text(200, "Requesting termination... Goodbye!\n");
        }
        match self.reload_config() {
            Ok(()) => Response::text(200, ""),
            Err(e) => Response::text(500, format!("failed to reload config: {e}\n")),
        }
    }

    /// Reloads the config through the runtime's hook (for `/-/reload` and SIGHUP), keeping the
    /// status API's record of the attempt.
    pub fn reload_config(&self) -> Result<(), String> {
        let result = match &*self.reload.borrow() {
            Some(f) => f(),
            None => Err("reloading is not available".into()),
        };
        self.reload_success.set(result.is_ok());
        if result.is_ok() {
            self.last_config_ms.set(now_ms());
        }
        result
    }

    /// Prometheus's `SetCORS`: only for requests with an `Origin`.
    fn set_cors(&self, req: &Request, resp: &mut Response) {
        let Some(origin) = req.header("origin") else {
            return;
        };
        resp.headers.extend([
            (
                "Access-Control-Allow-Headers",
                "Accept, Authorization, Content-Type, Origin".to_owned(),
            ),
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()),
            ("Access-Control-Expose-Headers", "Date".into()),
            ("Vary", "Origin".into()),
        ]);
        if self.config().flags.cors_origin == ".*" {
            resp.headers
                .push(("Access-Control-Allow-Origin", "*".into()));
        } else if self.cors_origin.is_match(origin) {
            resp.headers
                .push(("Access-Control-Allow-Origin", origin.to_owned()));
        }
    }

    async fn route_api(
        &self,
        rest: &str,
        req: &Request,
        gone: ClientGone<'_>,
    ) -> (&'static str, Response) {
        let m = req.method.as_str();
        let label_name = rest
            .strip_prefix("label/")
            .and_then(|r| r.strip_suffix("/values"))
            .filter(|n| !n.contains('/'));
        let (name, handler, allowed) = match API_ROUTES.iter().find(|(p, _, _)| *p == rest) {
            Some(&(p, h, a)) => (p, h, a),
            None if label_name.is_some() => ("label_values", "label_values", GET_POST),
            None if m == "OPTIONS" => return ("options", Response::no_content()),
            None => return ("other", not_found()),
        };
        if m == "OPTIONS" {
            return ("options", Response::no_content());
        }
        if !allowed.contains(&m) {
            return (handler, method_not_allowed(allowed));
        }
        // The ingest bodies are not forms: answer before reading parameters.
        match name {
            "write" => return (handler, self.remote_write(req).await),
            "import/prometheus" => return (handler, self.import_prometheus(req, now_ms()).await),
            "read" => return (handler, self.remote_read(req).await),
            _ => {}
        }
        let p = Params::new(req.params());
        let now = now_ms();
        let r = match name {
            "query" => self.api_query(&p, now, gone).await,
            "query_range" => self.api_query_range(&p, gone).await,
            "query_exemplars" => self.api_query_exemplars(&p),
            "format_query" => self.api_format_query(&p),
            "labels" => self.api_labels(&p).await,
            "label_values" => self.api_label_values(label_name.unwrap_or(""), &p).await,
            "series" if m == "DELETE" => Err(ApiError::Internal("not implemented".into())),
            "series" => self.api_series(&p).await,
            "metadata" => self.api_metadata(&p),
            "targets" => self.api_targets(&p),
            "targets/metadata" => self.api_targets_metadata(&p),
            "alertmanagers" => Ok(api::success(
                "{\"activeAlertmanagers\":[],\"droppedAlertmanagers\":[]}",
                &[],
            )),
            "rules" => self.api_rules(&p),
            "alerts" => Ok(api::success("{\"alerts\":[]}", &[])),
            "status/config" => self.api_status_config(),
            "status/flags" => self.api_status_flags(),
            "status/runtimeinfo" => self.api_status_runtimeinfo(),
            "status/buildinfo" => self.api_buildinfo(),
            "status/tsdb" => self.api_status_tsdb(&p).await,
            "export" => self.api_export(&p).await,
            "status/storage" => self.api_status_storage(),
            "status/remote" => self.api_status_remote(),
            "status/walreplay" => Ok(api::success("{\"min\":0,\"max\":0,\"current\":0}", &[])),
            _ => self.api_admin(rest),
        };
        (handler, r.unwrap_or_else(|e| e.response()))
    }
}

/// Accepts connections forever, one task each, at most `limits.max_connections` at once.
pub async fn serve(
    listener: Async<TcpListener>,
    state: Rc<WebState>,
    ex: Rc<async_executor::LocalExecutor<'static>>,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("accepting a connection: {e}");
                crate::runtime::timer::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let active = state.connections.get();
        if active >= state.limits.max_connections {
            log::warn!("refusing a connection: {active} connections are open");
            drop(stream);
            continue;
        }
        state.connections.set(active + 1);
        // Each response goes out in one write (see `http::write_response`); without Nagle's
        // algorithm the last segment of a large one is not held back waiting for an ACK.
        if let Err(e) = stream.get_ref().set_nodelay(true) {
            log::debug!("setting TCP_NODELAY: {e}");
        }
        let state = state.clone();
        ex.spawn(async move {
            connection(stream, &state).await;
            state
                .connections
                .set(state.connections.get().saturating_sub(1));
        })
        .detach();
    }
}

/// Serves requests on one connection until it closes, errs or idles out.
async fn connection(mut stream: Async<std::net::TcpStream>, state: &WebState) {
    let mut buf = Vec::new();
    loop {
        let req = match http::read_request(&mut stream, &mut buf, &state.limits).await {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(code, msg)) => {
                state.telemetry.http_request("invalid", code);
                let mut resp = Response::text(code, format!("{msg}\n"));
                http::write_response(&mut stream, &mut resp, false, &state.limits).await;
                return;
            }
        };
        let started = Instant::now();
        // While the request is served, the connection is watched: pipelined bytes go to `buf`,
        // and end of file or an error cancels a running query.
        let gone = http::client_gone(&stream, &mut buf, state.limits.max_head_bytes);
        let (handler, mut resp) = state.route(&req, gone).await;
        state.telemetry.http_request(handler, resp.status);
        resp.head_only = req.method == "HEAD";
        let quit = handler == "quit" && resp.status == 200;
        // A canceled query's client has gone (or half-closed): answer as Prometheus does, then
        // close.
        let canceled = resp.status == api::STATUS_CLIENT_CLOSED;
        let sent = http::write_response(
            &mut stream,
            &mut resp,
            req.keep_alive && !quit && !canceled,
            &state.limits,
        )
        .await;
        // As Prometheus's handler instrumentation: the time until the response was written,
        // and the body's size as sent (a streamed one counted as it goes).
        state
            .telemetry
            .http_observe(handler, started.elapsed().as_secs_f64(), sent.body_bytes);
        let written = sent.ok;
        if quit {
            state.quit.request();
            return;
        }
        if !written || !req.keep_alive || canceled {
            return;
        }
    }
}
