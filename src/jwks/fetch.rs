//! Fetching on a helper thread while the backend waits on its latch, answering cancels,
//! `statement_timeout` and shutdown.

use kinde_rls_core::fetch::{fetch_jwks, Fetched};
use kinde_rls_core::keycache::wall_clock;
use kinde_rls_core::RemoteSource;
use pgrx::pg_sys;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Fetching on a helper thread, interruptibly.

/// Fetch threads of this backend still running, including those whose wait was interrupted
/// (they finish on their own within their timeout). Bounded by [`MAX_LIVE_FETCHES`].
static LIVE_FETCHES: AtomicUsize = AtomicUsize::new(0);
/// A backend whose fetches keep being cancelled while an issuer hangs does not pile up threads.
const MAX_LIVE_FETCHES: usize = 4;

/// Start `f` on a new thread with every signal blocked. A backend is one thread, and
/// PostgreSQL's handlers (SIGALRM for timeouts, SIGINT for cancel, SIGTERM, SIGUSR1, …) must
/// only ever run on it: a thread inherits its creator's signal mask, so it — and any thread it
/// starts in turn, such as the HTTP client's name-resolution helper — never receives them.
fn spawn_signals_blocked(f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: plain POSIX calls on a local sigset; the old mask is restored on this thread
    // whatever spawn returns. A signal arriving in between stays pending and is delivered to
    // this thread when the mask is restored.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("kinde_rls fetch".into())
            .spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned.map(|_| ())
    }
}

/// Sleep on the backend's latch for at most `ms`, then answer interrupts: a cancel,
/// `statement_timeout` or shutdown raises its ERROR/FATAL here. The latch is set by those
/// signals' handlers, so the wake-up is immediate.
pub(super) fn pause(ms: i64) {
    // SAFETY: the standard latch wait of a backend.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    answer_interrupts();
}

/// `CHECK_FOR_INTERRUPTS()`. The ERROR it raises for a cancel or `statement_timeout` comes back
/// through pgrx as a caught PostgreSQL error, which pgrx would report with a Rust backtrace in
/// its DETAIL when the server runs with `RUST_BACKTRACE` set; it is raised again as a plain
/// report with the same SQLSTATE, message, detail and hint.
fn answer_interrupts() {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
    let caught = std::panic::catch_unwind(|| {
        pgrx::check_for_interrupts!();
    });
    let Err(payload) = caught else {
        return;
    };
    let plain = match payload.downcast_ref::<CaughtError>() {
        Some(CaughtError::PostgresError(r)) => Some((
            r.sql_error_code(),
            r.message().to_owned(),
            r.detail().map(str::to_owned),
            r.hint().map(str::to_owned),
            r.level(),
        )),
        _ => None,
    };
    if let Some((code, message, detail, hint, level)) = plain {
        drop(payload);
        let mut report = ErrorReport::new(code, message, "kinde_rls");
        if let Some(d) = detail {
            report = report.set_detail(d);
        }
        if let Some(h) = hint {
            report = report.set_hint(h);
        }
        report.report(level);
        unreachable!("an ERROR from an interrupt does not return");
    }
    std::panic::resume_unwind(payload)
}

/// Where a fetch thread's answer arrives.
type Answer = mpsc::Receiver<Result<Fetched, String>>;

/// A fetch whose wait was interrupted: its thread runs on (it touches nothing of PostgreSQL's).
struct InFlight {
    src: RemoteSource,
    answer: Answer,
    /// When its request started (wall clock).
    started: f64,
    /// After this its answer has long arrived, and is too old to count as a fetch made now.
    stale_after: f64,
}

/// Requests for one source one backend keeps in flight when its statements are cancelled: the
/// one a cancel abandoned, and a fresh one (the issuer may have recovered meanwhile).
const IN_FLIGHT_PER_SOURCE: usize = 2;

thread_local! {
    /// This backend's interrupted fetches, while they may still be running. When a source
    /// already has [`IN_FLIGHT_PER_SOURCE`] of them, its next fetch waits for the newest rather
    /// than start another, so cancelling statements cannot multiply requests to the issuer; the
    /// answer is then no older than the fetch timeout, like any answer. `refresh_jwks()` always
    /// asks afresh.
    static ABANDONED: RefCell<Vec<InFlight>> = const { RefCell::new(Vec::new()) };
}

/// Fetch a source's keys on a helper thread (bounded by `timeout`) while this backend waits on
/// its latch, waking every 20 ms to answer interrupts. Returns the answer and when its request
/// started (the keys are as fresh as that). With `attach`, when the source already has as many
/// interrupted fetches running as it may, the newest is waited for instead (see [`ABANDONED`]).
pub(super) fn fetch_interruptibly(
    src: &RemoteSource,
    timeout: Duration,
    attach: bool,
) -> (Result<Fetched, String>, f64) {
    let answer = fetch_or_attach(src, timeout, attach);
    super::note_fetch(&answer.0);
    answer
}

fn fetch_or_attach(
    src: &RemoteSource,
    timeout: Duration,
    attach: bool,
) -> (Result<Fetched, String>, f64) {
    let now = wall_clock();
    let earlier = ABANDONED.with(|a| {
        let mut a = a.borrow_mut();
        a.retain(|f| now < f.stale_after);
        let mine = a.iter().filter(|f| &f.src == src).count();
        if !attach || mine < IN_FLIGHT_PER_SOURCE {
            return None;
        }
        let newest = a
            .iter()
            .enumerate()
            .filter(|(_, f)| &f.src == src)
            .max_by(|x, y| x.1.started.total_cmp(&y.1.started))
            .map(|(i, _)| i)?;
        Some(a.remove(newest))
    });
    if let Some(f) = earlier {
        match wait_for(src, f.answer, f.started, timeout) {
            // The earlier request failed (it may have been made while the issuer was down):
            // one fresh request now, the issuer may have recovered.
            (Err(_), _) => {}
            done => return done,
        }
    }
    let (tx, rx) = mpsc::channel();
    let job = src.clone();
    LIVE_FETCHES.fetch_add(1, Ordering::Relaxed);
    let spawned = spawn_signals_blocked(move || {
        let r = std::panic::catch_unwind(|| fetch_jwks(&job, timeout))
            .unwrap_or_else(|_| Err("the fetch failed unexpectedly".into()));
        LIVE_FETCHES.fetch_sub(1, Ordering::Relaxed);
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        LIVE_FETCHES.fetch_sub(1, Ordering::Relaxed);
        return (Err(format!("could not start the fetch: {e}")), now);
    }
    wait_for(src, rx, wall_clock(), timeout)
}

/// Wait on the latch for a fetch's answer. If a cancel interrupts the wait, the fetch is kept in
/// [`ABANDONED`] while it may still run, and the error goes on.
fn wait_for(
    src: &RemoteSource,
    answer: Answer,
    started: f64,
    timeout: Duration,
) -> (Result<Fetched, String>, f64) {
    let wait = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
        match answer.try_recv() {
            Ok(r) => return r,
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err("the fetch ended without an answer".into())
            }
            Err(mpsc::TryRecvError::Empty) => pause(20),
        }
    }));
    match wait {
        Ok(r) => (r, started),
        Err(payload) => {
            ABANDONED.with(|a| {
                a.borrow_mut().push(InFlight {
                    src: src.clone(),
                    answer,
                    started,
                    stale_after: started + timeout.as_secs_f64() + 1.0,
                })
            });
            std::panic::resume_unwind(payload)
        }
    }
}

/// Interrupted fetches still running hold threads: before starting another, wait
/// (interruptibly) for one to end, until `deadline` at the most. Called before any lease on the
/// shared cache is made, and not a failure of the issuer: nothing is recorded against it.
pub(super) fn fetch_capacity(deadline: f64) -> Result<(), String> {
    while LIVE_FETCHES.load(Ordering::Relaxed) >= MAX_LIVE_FETCHES {
        if wall_clock() >= deadline {
            return Err(format!(
                "{MAX_LIVE_FETCHES} earlier key fetches of this session, interrupted, are still running"
            ));
        }
        pause(20);
    }
    Ok(())
}

/// Run `f`; if it unwinds (a PostgreSQL ERROR such as a cancel, raised while waiting), run
/// `cleanup` first — as ordinary code, not inside a destructor, so that a failure in it cannot
/// turn into a double panic — then let the error continue.
pub(super) fn with_cleanup<T>(f: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            cleanup();
            std::panic::resume_unwind(payload)
        }
    }
}
