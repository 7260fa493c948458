//! Timers of the executor's thread, on one `timerfd`.
//!
//! [`sleep`] and [`sleep_until`] are what the agent's tasks wait on (a scraper's next slot, a
//! scrape's timeout, the HTTP server's timeouts). Contract: a sleep completes at or after its
//! deadline, never before; dropping it cancels it; it costs no syscall unless it becomes the
//! earliest deadline of the thread.
//!
//! Why not `async_io::Timer`: every timer it registers pushes an operation to the reactor and
//! wakes the reactor's thread through its eventfd, so that thread can recompute its `epoll`
//! timeout: two wake-ups of the "async-io" thread per scrape (the slot timer and the timeout),
//! each five syscalls on that thread. Here the deadlines live in a map on this thread
//! ([`Wheel`]) and only the earliest is set on a `timerfd` that the reactor watches like a
//! socket; setting it is one syscall on this thread and wakes nobody.
//!
//! The wheel runs while [`Driver::run`] runs as a task on the executor (the runtime starts it
//! first). Outside of it (unit tests, `perch import`, tools), a sleep is an `async_io::Timer`.

use async_io::Async;
use rustix::fd::OwnedFd;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Completes `d` from now.
pub fn sleep(d: Duration) -> Sleep {
    let now = Instant::now();
    sleep_until(
        now.checked_add(d)
            .unwrap_or(now + Duration::from_secs(1 << 32)),
    )
}

/// Completes at `when` (or at once if it has passed).
pub fn sleep_until(when: Instant) -> Sleep {
    let on_wheel = WHEEL.with(|w| w.borrow().is_some());
    Sleep {
        when,
        state: if on_wheel {
            State::Wheel(None)
        } else {
            State::Io(async_io::Timer::at(when))
        },
    }
}

/// A sleep; see [`sleep`].
pub struct Sleep {
    when: Instant,
    state: State,
}

enum State {
    /// On this thread's wheel, with its key once registered.
    Wheel(Option<u64>),
    /// No wheel on this thread.
    Io(async_io::Timer),
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let when = this.when;
        match &mut this.state {
            State::Io(t) => Pin::new(t).poll(cx).map(|_| ()),
            State::Wheel(key) => {
                if Instant::now() >= when {
                    if let Some(k) = key.take() {
                        with_wheel(|w| w.remove(when, k));
                    }
                    return Poll::Ready(());
                }
                let on_wheel = match key {
                    Some(k) => with_wheel(|w| w.update(when, *k, cx.waker())).is_some(),
                    None => {
                        *key = with_wheel(|w| w.insert(when, cx.waker().clone()));
                        key.is_some()
                    }
                };
                if !on_wheel {
                    // The wheel went away (the runtime stopped): fall back.
                    let mut t = async_io::Timer::at(when);
                    let ready = Pin::new(&mut t).poll(cx).is_ready();
                    this.state = State::Io(t);
                    if ready {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let State::Wheel(Some(k)) = self.state {
            let when = self.when;
            // A sleep dropped during the thread's teardown finds no wheel: nothing to undo.
            let _ = WHEEL.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    if let Some(w) = w.as_mut() {
                        w.remove(when, k);
                    }
                }
            });
        }
    }
}

thread_local! {
    static WHEEL: RefCell<Option<Wheel>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's wheel; `None` without one.
fn with_wheel<R>(f: impl FnOnce(&mut Wheel) -> R) -> Option<R> {
    WHEEL.with(|w| w.borrow_mut().as_mut().map(f))
}

/// The pending deadlines of this thread, and the `timerfd` set to the earliest.
struct Wheel {
    /// (deadline, key) → the waker to call then. Keys are unique, so equal deadlines coexist.
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_key: u64,
    /// The deadline the timerfd is set to, if any.
    armed: Option<Instant>,
    fd: Rc<Async<OwnedFd>>,
    /// Failures to set the timerfd (logged once; the wheel then keeps it set at least every
    /// [`FALLBACK_TICK`]).
    failed: bool,
}

/// How often the driver looks at the wheel when the timerfd cannot be set to a deadline.
const FALLBACK_TICK: Duration = Duration::from_millis(10);

impl Wheel {
    fn insert(&mut self, when: Instant, waker: Waker) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.waiting.insert((when, key), waker);
        if self.armed.is_none_or(|a| when < a) {
            self.arm(when);
        }
        key
    }

    fn update(&mut self, when: Instant, key: u64, waker: &Waker) {
        if let Some(w) = self.waiting.get_mut(&(when, key)) {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
        } else {
            // Fired while its task was not polled yet: wait again (the deadline passed only
            // if the clock says so, which `Sleep::poll` checked).
            self.waiting.insert((when, key), waker.clone());
            if self.armed.is_none_or(|a| when < a) {
                self.arm(when);
            }
        }
    }

    /// Forgets a deadline. The timerfd stays set: if it was the earliest, the driver wakes
    /// for nothing once, which costs less than setting the timerfd on every cancel (a scrape
    /// timeout is cancelled at every scrape).
    fn remove(&mut self, when: Instant, key: u64) {
        self.waiting.remove(&(when, key));
    }

    /// Sets the timerfd to fire at `when`.
    fn arm(&mut self, when: Instant) {
        let d = when.saturating_duration_since(Instant::now());
        // A zero value would disarm the timer: at least a nanosecond.
        let d = d.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        match timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec) {
            Ok(_) => self.armed = Some(when),
            Err(e) => {
                if !self.failed {
                    log::error!("setting the timers' timerfd: {e}");
                    self.failed = true;
                }
                self.armed = None;
            }
        }
    }

    /// Takes the wakers of every deadline at or before `now`, and sets the timerfd to the
    /// next one.
    fn expire(&mut self, now: Instant, due: &mut Vec<Waker>) {
        while let Some(e) = self.waiting.first_entry() {
            if e.key().0 > now {
                break;
            }
            due.push(e.remove());
        }
        self.armed = None;
        match self.waiting.first_key_value() {
            Some((&(when, _), _)) if !self.failed => self.arm(when),
            Some(_) => self.arm(now + FALLBACK_TICK),
            None => {}
        }
    }
}

/// The task that serves this thread's wheel; see [`Driver::run`].
pub struct Driver {
    fd: Rc<Async<OwnedFd>>,
}

impl Driver {
    /// Creates this thread's wheel and its timerfd. Sleeps made from now on use it, once
    /// [`Driver::run`] runs on the thread's executor.
    pub fn install() -> std::io::Result<Driver> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let fd = Rc::new(Async::new(fd)?);
        WHEEL.with(|w| {
            *w.borrow_mut() = Some(Wheel {
                waiting: BTreeMap::new(),
                next_key: 0,
                armed: None,
                fd: fd.clone(),
                failed: false,
            })
        });
        Ok(Driver { fd })
    }

    /// Wakes the sleeps whose deadlines passed, each time the timerfd fires; forever. When
    /// it is dropped (the executor stops), the wheel goes with it, and the sleeps still on
    /// it wait as `async_io::Timer`s from their next poll.
    pub async fn run(self) {
        let _uninstall = Uninstall;
        let mut due = Vec::new();
        let mut count = [0u8; 8];
        loop {
            if self.fd.readable().await.is_err() {
                log::error!("waiting on the timers' timerfd failed; timers fall back to async-io");
                return;
            }
            // The expiry count; nothing to read after a spurious readiness.
            let _ = rustix::io::read(self.fd.get_ref(), &mut count);
            with_wheel(|w| w.expire(Instant::now(), &mut due));
            for w in due.drain(..) {
                w.wake();
            }
        }
    }
}

/// Removes this thread's wheel when the driver stops.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = WHEEL.try_with(|w| {
            if let Ok(mut w) = w.try_borrow_mut() {
                // The sleeps on it are woken, to fall back to async-io's timers.
                if let Some(mut wheel) = w.take() {
                    for (_, waker) in std::mem::take(&mut wheel.waiting) {
                        waker.wake();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_executor::LocalExecutor;
    use std::cell::Cell;

    /// Runs `f` on an executor with the wheel's driver, as the runtime does.
    fn with_driver<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
        let ex = LocalExecutor::new();
        let driver = Driver::install().unwrap();
        ex.spawn(driver.run()).detach();
        futures_lite::future::block_on(ex.run(f()));
        drop(ex);
        assert!(
            WHEEL.with(|w| w.borrow().is_none()),
            "the wheel goes with the driver"
        );
    }

    #[test]
    fn sleeps_end_in_deadline_order_and_never_early() {
        with_driver(|| async {
            let ex = LocalExecutor::new();
            let order = Rc::new(RefCell::new(Vec::new()));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for ms in [30u64, 5, 20, 5, 1, 0] {
                let order = order.clone();
                tasks.push(ex.spawn(async move {
                    let when = start + Duration::from_millis(ms);
                    sleep_until(when).await;
                    assert!(Instant::now() >= when, "woke before its deadline");
                    order.borrow_mut().push(ms);
                }));
            }
            ex.run(async {
                for t in tasks {
                    t.await;
                }
            })
            .await;
            let got = order.borrow().clone();
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(got, sorted);
            assert!(WHEEL.with(|w| w.borrow().as_ref().unwrap().waiting.is_empty()));
        });
    }

    #[test]
    fn a_dropped_sleep_is_forgotten_and_others_still_fire() {
        with_driver(|| async {
            let fired = Rc::new(Cell::new(false));
            // A long sleep, registered and then cancelled, was the earliest deadline.
            let mut long = Box::pin(sleep(Duration::from_millis(5)));
            assert!(futures_lite::future::poll_once(long.as_mut())
                .await
                .is_none());
            assert_eq!(
                WHEEL.with(|w| w.borrow().as_ref().unwrap().waiting.len()),
                1
            );
            drop(long);
            assert!(WHEEL.with(|w| w.borrow().as_ref().unwrap().waiting.is_empty()));
            let f = fired.clone();
            async move {
                sleep(Duration::from_millis(20)).await;
                f.set(true);
            }
            .await;
            assert!(fired.get());
        });
    }

    #[test]
    fn a_timeout_race_cancels_the_loser() {
        use futures_lite::FutureExt;
        with_driver(|| async {
            for _ in 0..100 {
                let won = async {
                    sleep(Duration::from_millis(1)).await;
                    "short"
                }
                .or(async {
                    sleep(Duration::from_secs(10)).await;
                    "timeout"
                })
                .await;
                assert_eq!(won, "short");
            }
            assert!(WHEEL.with(|w| w.borrow().as_ref().unwrap().waiting.is_empty()));
        });
    }

    #[test]
    fn without_a_driver_sleeps_are_async_io_timers() {
        let start = Instant::now();
        futures_lite::future::block_on(sleep(Duration::from_millis(3)));
        assert!(start.elapsed() >= Duration::from_millis(3));
    }
}
