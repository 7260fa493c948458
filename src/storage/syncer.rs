//! The fsync thread: a flush's `fdatasync` runs here, not on the executor.
//!
//! Contract:
//! - [`Syncer::submit`] hands files (duplicated descriptors) to one thread, started on first
//!   use, that calls `fdatasync` on each (`fsync` on a directory), in order, and nothing else; it returns a
//!   [`SyncTicket`] at once. The ticket resolves with the first error or the time the syncs took.
//!   Requests are served one after the other, in the order submitted.
//! - The ticket is polled without blocking ([`SyncTicket::try_take`]), awaited
//!   ([`SyncTicket::wait_future`], which wakes the waiting task from the thread), or waited for
//!   by blocking ([`SyncTicket::wait`], for the paths that flush in one go: shutdown, reload).
//! - The thread ends when the [`Syncer`] is dropped and its queue is empty.
//!
//! Why a thread (the brief allows one, "only if measured necessary"): an SD card can hold a
//! sync for a second or more, and a sync on the executor holds every scrape for as long. With the
//! block device throttled to 64 KiB/s (cgroup v1 `blkio.throttle.write_bps_device`, a slow
//! card), scrapes during flushes of 20k series started up to 1–2.5 s late; with the sync here,
//! at most 10 ms (`docs/architecture.md`, "Threads", has the commands and the runs). Appends
//! stay on the executor: they copy into the page cache and return.

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The thread's name, as `/proc/PID/task/*/comm` shows it.
pub const THREAD_NAME: &str = "perch-fsync";

/// The thread needs little stack: it calls `fdatasync` and closes descriptors.
const STACK_BYTES: usize = 64 << 10;

/// Starts the fsync thread on first use and hands it work.
#[derive(Default)]
pub struct Syncer {
    tx: Option<mpsc::Sender<Request>>,
}

struct Request {
    files: Vec<File>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    result: Option<io::Result<Duration>>,
    /// Taken by [`SyncTicket::try_take`]: the result is reported once.
    taken: bool,
    waker: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The thread never panics while holding the lock; a poisoned lock still holds a state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Syncer {
    /// Queues `fdatasync` of `files`, in order. Fails only when the thread cannot be started,
    /// and gives the files back (the caller then syncs in place).
    pub fn submit(&mut self, files: Vec<File>) -> Result<SyncTicket, (io::Error, Vec<File>)> {
        let shared = Arc::new(Shared::default());
        let mut req = Request {
            files,
            shared: shared.clone(),
        };
        if let Some(tx) = &self.tx {
            match tx.send(req) {
                Ok(()) => return Ok(SyncTicket(shared)),
                // The thread is gone (it cannot panic, but be safe): start another.
                Err(mpsc::SendError(r)) => req = r,
            }
        }
        let (tx, rx) = mpsc::channel::<Request>();
        if let Err(e) = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(STACK_BYTES)
            .spawn(move || serve(rx))
        {
            return Err((e, req.files));
        }
        // A fresh channel with a live receiver: the send cannot fail.
        let _ = tx.send(req);
        self.tx = Some(tx);
        Ok(SyncTicket(shared))
    }

    /// Whether the thread was started.
    pub fn started(&self) -> bool {
        self.tx.is_some()
    }
}

/// `fdatasync` of a file, `fsync` of a directory (its entries are what matters there).
pub fn sync_one(f: &File) -> io::Result<()> {
    if f.metadata()?.is_dir() {
        f.sync_all()
    } else {
        f.sync_data()
    }
}

/// The thread's loop: sync, report, wake.
fn serve(rx: mpsc::Receiver<Request>) {
    for req in rx {
        let started = Instant::now();
        let result = req
            .files
            .iter()
            .try_for_each(sync_one)
            .map(|()| started.elapsed());
        drop(req.files);
        let waker = {
            let mut st = req.shared.lock();
            st.result = Some(result);
            st.waker.take()
        };
        req.shared.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The outcome of one [`Syncer::submit`], to come.
pub struct SyncTicket(Arc<Shared>);

impl SyncTicket {
    /// The result once the syncs are done (once: later calls return None).
    pub fn try_take(&self) -> Option<io::Result<Duration>> {
        let mut st = self.0.lock();
        if st.taken {
            return None;
        }
        let r = st.result.take()?;
        st.taken = true;
        Some(r)
    }

    /// Blocks until the syncs are done and returns the result (an error if it was taken).
    pub fn wait(&self) -> io::Result<Duration> {
        let mut st = self.0.lock();
        loop {
            if st.taken {
                return Err(io::Error::other("sync result already taken"));
            }
            if let Some(r) = st.result.take() {
                st.taken = true;
                return r;
            }
            st = self.0.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A future that completes when the syncs are done (it leaves the result to
    /// [`SyncTicket::try_take`]).
    pub fn wait_future(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(Done(self.0.clone()))
    }
}

struct Done(Arc<Shared>);

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.result.is_some() || st.taken {
            return Poll::Ready(());
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("perch-syncer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"some bytes").unwrap();
        (dir, f)
    }

    #[test]
    fn syncs_on_one_named_thread_and_wakes_the_waiter() {
        let (dir, f) = temp_file("ok");
        let mut s = Syncer::default();
        assert!(!s.started());
        let t = s.submit(vec![f.try_clone().unwrap()]).ok().unwrap();
        futures_lite::future::block_on(t.wait_future());
        assert!(t.try_take().unwrap().is_ok());
        assert!(t.try_take().is_none(), "reported once");
        // A second request goes to the same thread.
        let t2 = s.submit(vec![f.try_clone().unwrap(), f]).ok().unwrap();
        assert!(t2.wait().is_ok());
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .map(|s| s.trim().to_owned())
            .filter(|n| n == THREAD_NAME)
            .collect();
        // Tests run in parallel threads of one process: at least ours is there.
        assert!(!names.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_sync_is_reported() {
        // fsync on a socket fails (EINVAL): the error reaches the ticket.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let f = File::from(OwnedFd::from(a));
        let mut s = Syncer::default();
        let t = s.submit(vec![f]).ok().unwrap();
        assert!(t.wait().is_err());
    }
}
