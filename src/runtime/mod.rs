//! The runtime: one OS thread, one `smol` local executor, every task on it.
//!
//! [`run`] builds the store, starts the scrapers and the HTTP server as tasks on an
//! `async_executor::LocalExecutor` driven by `async-io`'s reactor, and runs until SIGINT or
//! SIGTERM or a `/-/quit` request (the web state's [`crate::web::QuitSignal`]); then it stops
//! scraping, flushes the store and returns. A `/-/reload` request (or SIGHUP) calls the hook
//! set here, which loads the config file again and applies it: jobs whose config is unchanged
//! keep scraping, changed and new ones start afresh, and the remote-write senders restart from
//! their checkpoints when their config changed. The remote-write senders, the flush task and
//! the start-up trim of code pages ([`residency`]) are wired here too.
//!
//! Threads: the executor's thread, plus async-io's "async-io" thread, which async-io starts
//! once and which waits in the reactor (epoll) and wakes the executor's thread when I/O or a
//! timer is ready. The tasks' timers are on one timerfd that the reactor watches like a socket
//! ([`timer`]), so setting one does not wake that thread as async-io's own timers do. (Under
//! `async_io::block_on` the two threads take turns at the reactor, as async-io's fallback
//! logic takes it back whenever the main thread lets go; side by side with 11 targets at 1 s,
//! that showed no fewer context switches and slightly more CPU than `futures_lite`'s
//! `block_on`, used here.) The store starts a third, "perch-fsync", at its
//! first flush in slices: it only runs `fdatasync` (`storage::syncer`; the flush task below
//! awaits it through [`Storage::flush_wait`]). Nothing else starts a thread: no `blocking` pool,
//! no signal thread (`async-signal` uses a self-pipe), no name lookups through `getaddrinfo`.

pub mod allocator;
pub mod import;
pub mod residency;
pub mod timer;

use crate::config::Config;
use crate::promql::{Engine, EngineOptions};
use crate::remote::RemoteWriters;
use crate::scrape::ScrapeManager;
use crate::storage::backend::FileBackend;
use crate::storage::flash::{FlashOptions, FlashStorage};
use crate::storage::Storage;
use crate::telemetry::Telemetry;
use crate::web::{self, http::Limits, WebState};
use async_executor::LocalExecutor;
use async_io::Async;
use futures_lite::StreamExt;
use std::cell::RefCell;
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The work a flush does before it lets other tasks run (`model::slice`). The reactor runs on
/// its own thread, so a scrape whose timer fires meanwhile runs before the flush's next slice.
const FLUSH_SLICE: Duration = crate::model::slice::SLICE;

/// Why the agent could not start.
#[derive(Debug)]
pub enum RunError {
    /// The listen address is not valid.
    BadAddress(String),
    /// Binding the listen address failed.
    Listen(String, std::io::Error),
    /// Installing the signal handlers failed.
    Signals(std::io::Error),
    /// The store could not be opened.
    Storage(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::BadAddress(a) => write!(
                f,
                "--web.listen-address {a:?} is not a valid HOST:PORT (e.g. 0.0.0.0:9090)"
            ),
            RunError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            RunError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            RunError::Storage(m) => write!(f, "cannot open the store: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Resolves the listen address without DNS: an IP literal, `localhost`, or an empty host
/// (`:9090`, all interfaces, as Prometheus accepts).
pub fn listen_addr(a: &str) -> Result<SocketAddr, RunError> {
    let bad = || RunError::BadAddress(a.to_owned());
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    if host == "localhost" {
        return format!("127.0.0.1:{port}").parse().map_err(|_| bad());
    }
    // Only literals reach `to_socket_addrs`, which then does no lookup.
    let literal = format!("{host}:{port}");
    literal
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            host.trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .ok()
                .and_then(|ip| {
                    (ip, port.parse::<u16>().ok()?)
                        .to_socket_addrs()
                        .ok()?
                        .next()
                })
        })
        .ok_or_else(bad)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The store options the flags ask for.
pub fn store_options(flags: &crate::config::Flags) -> FlashOptions {
    FlashOptions {
        retention_ms: flags.retention_time.as_millis().min(i64::MAX as u128) as i64,
        budget_bytes: flags.retention_size,
        ..FlashOptions::default()
    }
}

/// Opens (or creates) the flash store under `--storage.tsdb.path`.
pub fn open_store(flags: &crate::config::Flags) -> Result<Rc<dyn Storage>, RunError> {
    let backend = FileBackend::new(&flags.storage_path)
        .map_err(|e| RunError::Storage(format!("{}: {e}", flags.storage_path.display())))?;
    let started = std::time::Instant::now();
    let (store, report) = FlashStorage::open(Box::new(backend), store_options(flags))
        .map_err(|e| RunError::Storage(format!("{}: {e}", flags.storage_path.display())))?;
    log::info!(
        "opened the store in {:?}: {} segments, {} blocks, {} series, {} bytes{}",
        started.elapsed(),
        report.segments,
        report.blocks,
        report.series,
        store.disk_bytes(),
        if report.corrupt_records > 0 {
            format!(", {} corrupt records skipped", report.corrupt_records)
        } else {
            String::new()
        }
    );
    Ok(Rc::new(store))
}

/// Runs the agent until SIGINT, SIGTERM or `/-/quit`.
pub fn run(config: Config) -> Result<(), RunError> {
    let config = Rc::new(config);
    let flags = &config.flags;
    let addr = listen_addr(&flags.listen_address)?;
    let listener = Async::<TcpListener>::bind(addr)
        .map_err(|e| RunError::Listen(flags.listen_address.clone(), e))?;
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(RunError::Signals)?;
    for section in &config.file.ignored_sections {
        log::warn!("config section {section:?} is accepted but not used by Perch yet");
    }

    let storage = open_store(flags)?;
    let telemetry = Rc::new(Telemetry::new(now_secs()));
    let ex: Rc<LocalExecutor<'static>> = Rc::new(LocalExecutor::new());
    // The tasks' sleeps wait on one timerfd of this thread ([`timer`]); without it (it cannot
    // be created) they are async-io's timers.
    match timer::Driver::install() {
        Ok(driver) => ex.spawn(driver.run()).detach(),
        Err(e) => log::warn!("creating the timers' timerfd: {e}; using async-io's timers"),
    }
    let state = Rc::new(WebState::new(
        config.clone(),
        storage.clone(),
        Engine::new(EngineOptions {
            lookback_delta_ms: flags.lookback_delta.as_millis() as i64,
            max_samples: flags.query_max_samples,
            delayed_name_removal: flags.promql_delayed_name_removal,
        }),
        telemetry.clone(),
        Limits::default(),
    ));
    log::info!(
        "Perch {} listening on {} (storage: {}, retention {} / {} bytes)",
        env!("CARGO_PKG_VERSION"),
        listener
            .get_ref()
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        flags.storage_path.display(),
        crate::config::format_duration(flags.retention_time),
        flags.retention_size
    );

    // The scrape manager tells the API of every change to its targets (file discovery). The
    // web state is held weakly: it owns the reload hook, which owns the manager.
    let publish: crate::scrape::Publish = {
        let web = Rc::downgrade(&state);
        Rc::new(move |targets, dropped| {
            if let Some(web) = web.upgrade() {
                *web.targets.borrow_mut() = targets;
                *web.dropped_targets.borrow_mut() = dropped;
            }
        })
    };
    let scrapers = Rc::new(RefCell::new(ScrapeManager::start(
        &ex,
        &config.file,
        storage.clone(),
        telemetry.clone(),
        publish.clone(),
    )));
    let remote = Rc::new(RefCell::new(RemoteWriters::start(
        &ex,
        &config.file.remote_write,
        &config.file.global.external_labels,
        storage.clone(),
    )));
    *state.remote.borrow_mut() = Some(remote.borrow().clone());
    // `/-/reload`: load the config file again with the same flags; on success apply it to
    // scraping (unchanged jobs keep running) and to remote write. The web state is held weakly: it owns this hook.
    {
        let (ex, storage, scrapers) = (ex.clone(), storage.clone(), scrapers.clone());
        let remote = remote.clone();
        let web = Rc::downgrade(&state);
        *state.reload.borrow_mut() = Some(Box::new(move || {
            let web = web.upgrade().ok_or("shutting down")?;
            let new = Config::load(web.config().flags.clone()).map_err(|e| e.to_string())?;
            // Unchanged jobs scrape on without a gap; changed and new ones start afresh.
            scrapers.borrow_mut().reload(&new.file);
            if new.file.remote_write != web.config().file.remote_write
                || new.file.global.external_labels != web.config().file.global.external_labels
            {
                // Stop the old writers after their checkpoints are current, then start anew
                // from those checkpoints.
                remote.borrow().flushed(&*storage);
                remote.borrow().stop();
                if let Err(e) = storage.flush() {
                    log::error!("flushing before restarting remote write: {e}");
                }
                let r = RemoteWriters::start(
                    &ex,
                    &new.file.remote_write,
                    &new.file.global.external_labels,
                    storage.clone(),
                );
                *web.remote.borrow_mut() = Some(r.clone());
                *remote.borrow_mut() = r;
            }
            *web.config.borrow_mut() = Rc::new(new);
            log::info!("configuration reloaded");
            Ok(())
        }));
    }
    // Start-up is done: let go of the code pages only it used (and again after each flush).
    residency::trim_code_pages();
    let quit = state.quit.clone();
    let web_state = state.clone();
    ex.spawn(web::serve(listener, state, ex.clone())).detach();
    let hk_storage = storage.clone();
    let flush_every = flags.flush_interval;
    let hk_remote = remote.clone();
    ex.spawn(async move {
        loop {
            timer::sleep(flush_every).await;
            // In slices, so scrapes and queries run between them (a flush of 100k series is
            // hundreds of milliseconds of work).
            loop {
                match hk_storage.flush_step(FLUSH_SLICE) {
                    Ok(true) => break,
                    // Its sync runs on the fsync thread: wait for it without holding anyone.
                    Ok(false) => match hk_storage.flush_wait() {
                        Some(sync) => sync.await,
                        None => futures_lite::future::yield_now().await,
                    },
                    Err(e) => {
                        log::error!("flushing the store (the samples stay in memory): {e}");
                        break;
                    }
                }
            }
            hk_remote.borrow().flushed(&*hk_storage);
            hk_storage.housekeeping();
            // Code that ran once since (the first scrapes, where every series is new, relabeled
            // and indexed; the first flush's series records; a reload) gives its pages back too.
            // The steady state's pages fault back in at once, a 64 KiB window at a time.
            residency::trim_code_pages();
        }
    })
    .detach();

    // The signals are a task of their own: the future `block_on` polls at every wake-up of
    // the thread is then only the quit flag, not a read of the signal pipe.
    let signalled: Rc<RefCell<Option<String>>> = Rc::default();
    let mut signals = signals;
    let (sig_state, sig_quit, sig_why) = (web_state, quit.clone(), signalled.clone());
    ex.spawn(async move {
        let why = loop {
            match signals.next().await {
                // SIGHUP reloads the config, as in Prometheus; the others stop.
                Some(Ok(async_signal::Signal::Hup)) => {
                    if let Err(e) = sig_state.reload_config() {
                        log::error!("reloading the config on SIGHUP: {e}");
                    }
                }
                Some(Ok(async_signal::Signal::Term)) => break "SIGTERM".to_owned(),
                Some(Ok(async_signal::Signal::Int)) => break "SIGINT".to_owned(),
                other => break format!("{other:?}"),
            }
        };
        *sig_why.borrow_mut() = Some(why);
        sig_quit.request();
    })
    .detach();
    futures_lite::future::block_on(ex.run(quit.wait()));
    let why = signalled
        .borrow_mut()
        .take()
        .unwrap_or_else(|| "a /-/quit request".to_owned());
    log::info!("received {why}: stopping scrapes and flushing");
    scrapers.borrow_mut().stop();
    remote.borrow().stop();
    // Twice: the first writes the samples, the second the writers' position after them.
    for _ in 0..2 {
        if let Err(e) = storage.flush() {
            log::error!("flushing the store on shutdown: {e}");
        }
        remote.borrow().flushed(&*storage);
    }
    log::info!("stopped");
    Ok(())
}
