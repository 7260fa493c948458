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
//! socket; setting it is one syscall on this thread and wakes nobody. When it fires, the
//! reactor's thread wakes the sleeps due at that deadline itself ([`Fire`]), and the driver
//! task wakes any others that are due and sets the next deadline.
//!
//! The wheel exists from [`Driver::install`] until the [`Driver`] is dropped, and is served
//! while [`Driver::run`] runs as a task on the thread's executor (the runtime starts it
//! first). Without one (unit tests, `perch import`, tools), a sleep is an `async_io::Timer`;
//! so is every sleep after the timerfd failed.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
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
        _not_send: std::marker::PhantomData,
    }
}

/// A sleep; see [`sleep`].
pub struct Sleep {
    when: Instant,
    state: State,
    /// Not `Send`: a sleep belongs to the wheel of the thread that made it.
    _not_send: std::marker::PhantomData<*const ()>,
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
                    Some(k) => with_wheel(|w| w.update(when, *k, cx.waker())).unwrap_or(false),
                    None => {
                        *key = with_wheel(|w| w.insert(when, cx.waker().clone())).flatten();
                        key.is_some()
                    }
                };
                if !on_wheel {
                    // No wheel (the runtime stopped) or its timerfd failed: fall back.
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

/// Keys of the sleeps on the wheels, unique in the process.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on this thread's wheel; `None` without one (or once its timerfd failed). If `f`
/// finds the timerfd failing, every sleep on the wheel is woken (after the borrow), to fall
/// back to async-io's timers.
fn with_wheel<R>(f: impl FnOnce(&mut Wheel) -> R) -> Option<R> {
    let (r, orphans) = WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        let Some(wheel) = w.as_mut().filter(|w| !w.broken) else {
            return (None, Vec::new());
        };
        let r = f(wheel);
        let mut orphans = Vec::new();
        if wheel.broken {
            wheel.fire.list().first.clear();
            orphans.extend(std::mem::take(&mut wheel.waiting).into_values());
        }
        (Some(r), orphans)
    });
    for o in orphans {
        o.wake();
    }
    r
}

/// The pending deadlines of this thread, and the `timerfd` set to the earliest.
struct Wheel {
    /// (deadline, key) → the waker to call then. Keys are unique, so equal deadlines coexist.
    waiting: BTreeMap<(Instant, u64), Waker>,
    /// The deadline the timerfd is set to, if any.
    armed: Option<Instant>,
    fd: Rc<Async<OwnedFd>>,
    /// What the reactor's thread wakes when the timerfd fires; see [`Fire`].
    fire: Arc<Fire>,
    /// The timerfd could not be set: every sleep falls back to async-io's timers.
    broken: bool,
}

/// The waker the timerfd's readiness calls, on the reactor's thread: it wakes the sleeps due
/// at the armed deadline directly, then the driver. Waking the sleeps through the driver would
/// queue each of them behind whatever the executor runs meanwhile twice (the driver's turn,
/// then theirs): under query load that doubled a scrape's lateness (p50 3.1 → 7.8 ms in
/// `cargo bench --bench lateness`). The only lock of the executor's thread: held for a swap
/// of a short list, by the two threads in turn.
struct Fire(Mutex<FireList>);

#[derive(Default)]
struct FireList {
    /// The sleeps whose deadline is the armed one (key, waker).
    first: Vec<(u64, Waker)>,
    /// The driver task.
    driver: Option<Waker>,
}

impl Fire {
    fn list(&self) -> std::sync::MutexGuard<'_, FireList> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Wake for Fire {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (first, driver) = {
            let mut l = self.list();
            (std::mem::take(&mut l.first), l.driver.clone())
        };
        for (_, w) in first {
            w.wake();
        }
        if let Some(d) = driver {
            d.wake();
        }
    }
}

impl Wheel {
    /// Registers a deadline; `None` if the timerfd could not be set for it.
    fn insert(&mut self, when: Instant, waker: Waker) -> Option<u64> {
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        self.place(when, key, waker).then_some(key)
    }

    /// Registers `key`'s deadline, setting the timerfd if it is the earliest; `false` if the
    /// timerfd could not be set.
    fn place(&mut self, when: Instant, key: u64, waker: Waker) -> bool {
        if self.armed.is_none_or(|a| when < a) {
            if !self.arm(when) {
                return false;
            }
            self.fire.list().first = vec![(key, waker.clone())];
        } else if self.armed == Some(when) {
            self.fire.list().first.push((key, waker.clone()));
        }
        self.waiting.insert((when, key), waker);
        true
    }

    /// A registered sleep polled again, maybe from another task; `false` if it must fall back.
    fn update(&mut self, when: Instant, key: u64, waker: &Waker) -> bool {
        let Some(w) = self.waiting.get_mut(&(when, key)) else {
            // Not on this wheel (the wheel was replaced): register anew.
            return self.place(when, key, waker.clone());
        };
        if !w.will_wake(waker) {
            w.clone_from(waker);
            if self.armed == Some(when) {
                if let Some(f) = self.fire.list().first.iter_mut().find(|f| f.0 == key) {
                    f.1.clone_from(waker);
                }
            }
        }
        true
    }

    /// Forgets a deadline. The timerfd stays set: if it was the earliest, the driver wakes
    /// for nothing once, which costs less than setting the timerfd on every cancel (a scrape
    /// timeout is cancelled at every scrape).
    fn remove(&mut self, when: Instant, key: u64) {
        if self.waiting.remove(&(when, key)).is_some() && self.armed == Some(when) {
            self.fire.list().first.retain(|f| f.0 != key);
        }
    }

    /// Sets the timerfd to fire at `when`; `false` if it could not be set.
    fn arm(&mut self, when: Instant) -> bool {
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
            Ok(_) => {
                self.armed = Some(when);
                true
            }
            Err(e) => {
                log::error!("setting the timers' timerfd: {e}; timers fall back to async-io's");
                self.broken = true;
                false
            }
        }
    }

    /// Takes the wakers of every deadline at or before `now`, and sets the timerfd to the
    /// next one (or, if it cannot be set, takes every waker: the sleeps fall back).
    fn expire(&mut self, now: Instant, due: &mut Vec<Waker>) {
        while let Some(e) = self.waiting.first_entry() {
            if e.key().0 > now {
                break;
            }
            due.push(e.remove());
        }
        self.armed = None;
        self.fire.list().first.clear();
        let Some(&(next, _)) = self.waiting.first_key_value().map(|(k, _)| k) else {
            return;
        };
        if self.arm(next) {
            let first = self
                .waiting
                .range((next, 0)..=(next, u64::MAX))
                .map(|(&(_, k), w)| (k, w.clone()))
                .collect();
            self.fire.list().first = first;
        } else {
            due.extend(std::mem::take(&mut self.waiting).into_values());
        }
    }
}

/// The task that serves this thread's wheel; see [`Driver::run`]. Dropping it (run or not)
/// removes the wheel.
pub struct Driver {
    fd: Rc<Async<OwnedFd>>,
    /// Its wheel's (which tells that wheel from one installed after it).
    fire: Arc<Fire>,
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
        let fire = Arc::new(Fire(Mutex::new(FireList::default())));
        let old = WHEEL.with(|w| {
            w.borrow_mut().replace(Wheel {
                waiting: BTreeMap::new(),
                armed: None,
                fd: fd.clone(),
                fire: fire.clone(),
                broken: false,
            })
        });
        // Sleeps on a wheel this one replaces register again when woken.
        wake_all(old);
        Ok(Driver { fd, fire })
    }

    /// Serves the wheel: each time the timerfd fires (its readiness wakes the due sleeps and
    /// this task, see [`Fire`]), wakes the sleeps whose deadlines passed and sets the timerfd
    /// to the next. Forever; the executor drops it at the end (after the runtime's shutdown
    /// has begun nothing polls it, and nothing sleeps then).
    pub async fn run(self) {
        let fire = Waker::from(self.fire.clone());
        let mut due = Vec::new();
        let mut count = [0u8; 8];
        futures_lite::future::poll_fn(|cx| {
            {
                let mut l = self.fire.list();
                if !l.driver.as_ref().is_some_and(|d| d.will_wake(cx.waker())) {
                    l.driver = Some(cx.waker().clone());
                }
            }
            loop {
                // The timerfd is read first and waited on only when it has nothing: its
                // readiness is not proof that it fired since the last read (async-io reports an
                // event of the tick the interest was set in as possibly old, and waiting first
                // could then go round without end while the timerfd stays readable).
                match rustix::io::read(self.fd.get_ref(), &mut count) {
                    Ok(_) => {
                        with_wheel(|w| w.expire(Instant::now(), &mut due));
                        for w in due.drain(..) {
                            w.wake();
                        }
                        continue;
                    }
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        log::error!("reading the timers' timerfd: {e}; timers fall back");
                        return Poll::Ready(());
                    }
                }
                match self.fd.poll_readable(&mut Context::from_waker(&fire)) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        log::error!("waiting on the timers' timerfd: {e}; timers fall back");
                        return Poll::Ready(());
                    }
                    Poll::Ready(Ok(())) => {}
                }
            }
        })
        .await
    }
}

/// Wakes every sleep on `wheel` (taken out of the thread-local first, so a waker that polls
/// at once finds no borrow held).
fn wake_all(wheel: Option<Wheel>) {
    if let Some(mut wheel) = wheel {
        for (_, waker) in std::mem::take(&mut wheel.waiting) {
            waker.wake();
        }
    }
}

/// Removes this thread's wheel when the driver goes (its own: the one whose [`Fire`] it
/// holds); the sleeps on it are woken, to fall back to async-io's timers.
impl Drop for Driver {
    fn drop(&mut self) {
        let wheel = WHEEL
            .try_with(|w| {
                let mut w = w.try_borrow_mut().ok()?;
                let ours = w.as_ref().is_some_and(|w| Arc::ptr_eq(&w.fire, &self.fire));
                if ours {
                    w.take()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        wake_all(wheel);
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
    fn a_due_sleep_is_woken_by_the_reactor_not_through_the_driver() {
        use futures_lite::FutureExt;
        let driver_ex = LocalExecutor::new();
        driver_ex.spawn(Driver::install().unwrap().run()).detach();
        // The driver's first poll registers the timerfd with the reactor; it is not run again.
        assert!(driver_ex.try_tick());
        // The guard first: a wake-up by it must not let the sleep see its deadline passed.
        let woken = futures_lite::future::block_on(
            async {
                async_io::Timer::after(Duration::from_secs(5)).await;
                false
            }
            .or(async {
                sleep(Duration::from_millis(5)).await;
                true
            }),
        );
        assert!(woken, "the sleep waited for the driver");
        drop(driver_ex);
        assert!(
            WHEEL.with(|w| w.borrow().is_none()),
            "the wheel goes with the driver"
        );
    }

    /// Sleepers in loops beside busy tasks that yield all the time (queries in slices), and a
    /// long timeout raced at every round, as a scraper does: every round ends, by its own
    /// deadline (a first version of the driver went round without end here, the timerfd
    /// readable and never read).
    #[test]
    fn loops_of_sleeps_beside_busy_tasks_keep_their_pace() {
        use futures_lite::FutureExt;
        // One executor for all, as in the runtime.
        let ex = LocalExecutor::new();
        ex.spawn(Driver::install().unwrap().run()).detach();
        let stop = Rc::new(Cell::new(false));
        for _ in 0..2 {
            let stop = stop.clone();
            ex.spawn(async move {
                while !stop.get() {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(500) {}
                    futures_lite::future::yield_now().await;
                }
            })
            .detach();
        }
        let start = Instant::now();
        let loops: Vec<_> = (0..3u64)
            .map(|i| {
                ex.spawn(async move {
                    for _ in 0..40 {
                        let slot = Instant::now() + Duration::from_millis(5 + i);
                        async { sleep_until(slot).await }
                            .or(async {
                                sleep(Duration::from_secs(10)).await;
                                panic!("the timeout won");
                            })
                            .await;
                    }
                })
            })
            .collect();
        // A guard outside the wheel: a wheel that stops serving fails the test, not hangs it.
        let done = futures_lite::future::block_on(
            ex.run(
                async {
                    async_io::Timer::after(Duration::from_secs(30)).await;
                    false
                }
                .or(async {
                    for l in loops {
                        l.await;
                    }
                    true
                }),
            ),
        );
        stop.set(true);
        assert!(done, "the sleeps stopped after {:?}", start.elapsed());
        drop(ex);
        assert!(WHEEL.with(|w| w.borrow().is_none()));
    }

    #[test]
    fn a_driver_removes_only_its_own_wheel() {
        let a = Driver::install().unwrap();
        let b = Driver::install().unwrap();
        drop(a);
        let fire = WHEEL.with(|w| w.borrow().as_ref().map(|w| w.fire.clone()));
        assert!(fire.is_some_and(|f| Arc::ptr_eq(&f, &b.fire)));
        drop(b);
        assert!(WHEEL.with(|w| w.borrow().is_none()));
    }

    #[test]
    fn without_a_driver_sleeps_are_async_io_timers() {
        let start = Instant::now();
        futures_lite::future::block_on(sleep(Duration::from_millis(3)));
        assert!(start.elapsed() >= Duration::from_millis(3));
    }
}
