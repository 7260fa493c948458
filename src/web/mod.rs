//! The HTTP server: the Prometheus API, Perch's own `/metrics`, health and readiness.
//!
//! Runs on the same executor as the scrapers: an accept loop spawns one task per connection
//! ([`http`] reads requests and writes responses with bounds and timeouts), a router maps the
//! path to a handler ([`api`]), and every request is counted by handler and status code.
//! Queries are evaluated by the cooperative PromQL engine and raced against their timeout, so a
//! heavy query yields to scrapes and a slow client holds up nothing but its own connection.

pub mod api;
pub mod http;
pub mod json;
pub mod time;

use crate::config::Config;
use crate::promql::Engine;
use crate::scrape::TargetStatus;
use crate::storage::Storage;
use crate::telemetry::Telemetry;
use api::{ApiError, Params};
use async_io::Async;
use http::{Limits, ReadError, Request, Response};
use std::cell::{Cell, RefCell};
use std::net::TcpListener;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the handlers share.
pub struct WebState {
    pub config: Rc<Config>,
    pub storage: Rc<dyn Storage>,
    pub engine: Engine,
    pub telemetry: Rc<Telemetry>,
    /// The scrapers' target states, replaced when scraping is (re)started.
    pub targets: RefCell<Vec<Rc<RefCell<TargetStatus>>>>,
    pub limits: Limits,
}

impl WebState {
    fn scrape_status(&self) -> Vec<Rc<RefCell<TargetStatus>>> {
        self.targets.borrow().clone()
    }

    /// Routes one request; returns the handler name (for telemetry) and the response.
    pub async fn route(&self, req: &Request) -> (&'static str, Response) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let get_post = req.method == "GET" || req.method == "POST";
        let get = req.method == "GET" || req.method == "HEAD";
        let path = req.path.as_str();
        let params = || Params::new(req.params());
        let api = |r: Result<Response, ApiError>| r.unwrap_or_else(|e| e.response());
        let not_allowed = || Response::text(405, "Method Not Allowed\n");
        match path {
            "/metrics" if get => {
                let mut out = String::with_capacity(8192);
                self.telemetry.render(&self.storage.stats(), &mut out);
                (
                    "metrics",
                    Response::new(200, "text/plain; version=0.0.4; charset=utf-8", out),
                )
            }
            "/-/healthy" if get => ("healthy", Response::text(200, "Perch is Healthy.\n")),
            "/-/ready" if get => ("ready", Response::text(200, "Perch is Ready.\n")),
            "/api/v1/query" if get_post => ("query", api(self.api_query(&params(), now).await)),
            "/api/v1/query_range" if get_post => {
                ("query_range", api(self.api_query_range(&params()).await))
            }
            "/api/v1/labels" if get_post => ("labels", api(self.api_labels(&params()))),
            "/api/v1/series" if get_post => ("series", api(self.api_series(&params()))),
            "/api/v1/targets" if get => ("targets", api(self.api_targets(&params()))),
            "/api/v1/status/buildinfo" if get => ("buildinfo", api(self.api_buildinfo())),
            "/metrics"
            | "/-/healthy"
            | "/-/ready"
            | "/api/v1/query"
            | "/api/v1/query_range"
            | "/api/v1/labels"
            | "/api/v1/series"
            | "/api/v1/targets"
            | "/api/v1/status/buildinfo" => ("other", not_allowed()),
            _ => {
                if let Some(name) = path
                    .strip_prefix("/api/v1/label/")
                    .and_then(|r| r.strip_suffix("/values"))
                {
                    if !get {
                        return ("label_values", not_allowed());
                    }
                    return ("label_values", api(self.api_label_values(name, &params())));
                }
                ("other", Response::text(404, "404 page not found\n"))
            }
        }
    }
}

/// Accepts connections forever, one task each, at most `limits.max_connections` at once.
pub async fn serve(
    listener: Async<TcpListener>,
    state: Rc<WebState>,
    ex: Rc<async_executor::LocalExecutor<'static>>,
) {
    let active = Rc::new(Cell::new(0usize));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("accepting a connection: {e}");
                async_io::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.get() >= state.limits.max_connections {
            log::warn!(
                "refusing a connection: {} connections are open",
                active.get()
            );
            drop(stream);
            continue;
        }
        active.set(active.get() + 1);
        let state = state.clone();
        let active = active.clone();
        ex.spawn(async move {
            connection(stream, &state).await;
            active.set(active.get() - 1);
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
                let resp = Response::text(code, format!("{msg}\n"));
                http::write_response(&mut stream, &resp, false, &state.limits).await;
                return;
            }
        };
        let (handler, mut resp) = state.route(&req).await;
        state.telemetry.http_request(handler, resp.status);
        if req.method == "HEAD" {
            resp.body.clear();
        }
        if !http::write_response(&mut stream, &resp, req.keep_alive, &state.limits).await
            || !req.keep_alive
        {
            return;
        }
    }
}
