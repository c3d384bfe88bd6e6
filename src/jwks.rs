//! Keys fetched from issuers, cached.
//!
//! Two homes for the cache, chosen once in `_PG_init`:
//! - **shared memory**, when the library is in `shared_preload_libraries`: one cluster-wide
//!   cache of `kinde_rls.jwks_cache_slots` key sets; one backend fetches while the others use
//!   what is there (or wait, at most the fetch timeout, when nothing is); each backend parses a
//!   set once per change and keeps the parsed keys;
//! - **per backend** otherwise, and for a source that finds no slot (every slot holds fresh
//!   keys of other sources) or whose URL is too long for one: each backend fetches and caches
//!   on its own.
//!
//! A backend's own copy of a set is used whenever the shared slot is gone, so an evicted set is
//! not fetched again while this backend's copy is fresh. Only slots whose keys have expired or
//! that sat unused for a minute are evicted (least recently *used* first), so more sources in
//! use than slots degrade to per-backend caching for the overflow instead of thrashing. When each fetch was last tried and whether it
//! failed is kept in a small table of its own, which outlives eviction: rate limits hold for
//! every source, slotted or not.
//!
//! When to fetch is decided by [`kinde_rls_core::keycache::decide`]; this module only keeps the
//! state and acts. Fetching happens on a helper thread, outside any lock, bounded by
//! `kinde_rls.jwks_timeout_ms`, while the backend waits on its latch and answers cancels,
//! `statement_timeout` and shutdown (see [`fetch_interruptibly`]).

use kinde_rls_core::fetch::{fetch_jwks, Fetched, MAX_BODY_BYTES};
use kinde_rls_core::keycache::{decide, wall_clock, Action, Limits, Need, Times};
use kinde_rls_core::{parse_jwks, KeySet, KeySource, RemoteSource};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::gucs;

const LABEL_BYTES: usize = 512;
/// A slot whose keys are still fresh is given to another source only after it has not been
/// used for this long: sources that are in use keep their slots (more sources than slots then
/// means the overflow is cached per backend, not that every source is fetched again in turn),
/// and sources that were configured away stop holding slots a minute later.
const IDLE_EVICT_SECS: f64 = 60.0;
const ERROR_BYTES: usize = 256;

/// Bumped whenever a key set this backend uses changes, so cached verifications made with
/// keys that were rotated away are dropped.
pub static KEYS_EPOCH: AtomicU64 = AtomicU64::new(1);
/// Set in `_PG_init` when loading from `shared_preload_libraries`.
static SHARED_MODE: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------------
// Shared memory: a header, `nslots` slots, `nrecent` fetch records. Sized from
// `kinde_rls.jwks_cache_slots` at server start.

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    /// Bumped (without the lock) whenever a shared key set changes, so that every backend drops
    /// verifications made with keys another backend saw rotated away, on its next lookup.
    epoch: AtomicU64,
    /// Source of slot generations: one counter for all slots, so a generation never repeats
    /// even when a source moves to another slot.
    next_gen: u64,
    /// When a source last found no slot was logged (ms since the epoch): at most once a minute.
    overflow_logged_ms: AtomicU64,
}

#[repr(C)]
struct Slot {
    used: bool,
    discovery: bool,
    /// The last fetch attempt failed.
    last_failed: bool,
    fetcher_pid: i32,
    label_len: u16,
    url_len: u16,
    err_len: u16,
    label: [u8; LABEL_BYTES],
    url: [u8; LABEL_BYTES],
    err: [u8; ERROR_BYTES],
    body_len: u32,
    body: [u8; MAX_BODY_BYTES],
    /// Bumped when the body changes.
    gen: u64,
    fetched_at: f64,
    expires_at: f64,
    last_attempt: f64,
    fetching_since: f64,
    /// Last use, in milliseconds since the epoch: updated under the shared lock, hence atomic.
    last_used_ms: AtomicU64,
    fetches: u64,
}

/// When a source's keys were last fetched and how it went: kept for every source, slotted or
/// not, so that eviction does not reset a rate limit.
#[repr(C)]
struct Recent {
    key: u64,
    last_attempt: f64,
    last_failed: bool,
    err_len: u16,
    err: [u8; ERROR_BYTES],
}

static HEADER: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static RECENT: AtomicPtr<Recent> = AtomicPtr::new(std::ptr::null_mut());
static NSLOTS: AtomicUsize = AtomicUsize::new(0);
static NRECENT: AtomicUsize = AtomicUsize::new(0);

const SHMEM_NAME: &std::ffi::CStr = c"kinde_rls_jwks";

fn sizes(nslots: usize) -> (usize, usize, usize, usize) {
    let nrecent = (4 * nslots).max(64);
    let align = |n: usize| n.div_ceil(16) * 16;
    let slots_at = align(size_of::<Header>());
    let recent_at = align(slots_at + nslots * size_of::<Slot>());
    let total = recent_at + nrecent * size_of::<Recent>();
    (nrecent, slots_at, recent_at, total)
}

fn configured_slots() -> usize {
    usize::try_from(gucs::JWKS_CACHE_SLOTS.get().max(1)).unwrap_or(1)
}

static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

unsafe fn request_shmem() {
    pg_sys::RequestAddinShmemSpace(sizes(configured_slots()).3);
    pg_sys::RequestNamedLWLockTranche(SHMEM_NAME.as_ptr(), 1);
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
        prev();
    }
    request_shmem();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
        prev();
    }
    let nslots = configured_slots();
    let (nrecent, slots_at, recent_at, total) = sizes(nslots);
    // AddinShmemInitLock, as pgrx's own shared-memory initialisation takes it.
    let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
    pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
    let mut found = false;
    let base = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), total, &mut found).cast::<u8>();
    if !found {
        // SAFETY: `total` bytes were just allocated for us; all-zero is a valid value of every
        // field (false, 0, 0.0, a null pointer, an atomic 0).
        std::ptr::write_bytes(base, 0, total);
        (*base.cast::<Header>()).lock =
            &raw mut (*pg_sys::GetNamedLWLockTranche(SHMEM_NAME.as_ptr())).lock;
    }
    HEADER.store(base.cast(), Ordering::Release);
    SLOTS.store(base.add(slots_at).cast(), Ordering::Release);
    RECENT.store(base.add(recent_at).cast(), Ordering::Release);
    NSLOTS.store(nslots, Ordering::Release);
    NRECENT.store(nrecent, Ordering::Release);
    pg_sys::LWLockRelease(init_lock);
}

/// Called from `_PG_init`.
pub fn init() {
    // SAFETY: read once at load time, by the postmaster or a backend; the hooks are chained
    // the way PostgreSQL expects, before any backend exists.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(on_shmem_request);
        }
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        request_shmem();
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_shmem_startup);
    }
    SHARED_MODE.store(true, Ordering::Relaxed);
}

pub fn shared_mode() -> bool {
    SHARED_MODE.load(Ordering::Relaxed) && !HEADER.load(Ordering::Acquire).is_null()
}

fn header() -> &'static Header {
    // SAFETY: only called in shared mode, after the startup hook stored the pointer; the
    // header lives as long as the server.
    unsafe { &*HEADER.load(Ordering::Acquire) }
}

/// The shared lock, held; released when dropped (unless a PostgreSQL error is unwinding, whose
/// abort releases every LWLock, as pgrx's own lock guards do).
struct Locked {
    exclusive: bool,
}

impl Locked {
    fn share() -> Locked {
        // SAFETY: the lock lives in shared memory for the server's lifetime.
        unsafe { pg_sys::LWLockAcquire(header().lock, pg_sys::LWLockMode::LW_SHARED) };
        Locked { exclusive: false }
    }

    fn exclusive() -> Locked {
        // SAFETY: as above.
        unsafe { pg_sys::LWLockAcquire(header().lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Locked { exclusive: true }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: held under at least the shared lock.
        unsafe { shared_slice(&SLOTS, &NSLOTS) }
    }

    fn slots_mut(&mut self) -> &mut [Slot] {
        assert!(self.exclusive, "slots are written under the exclusive lock");
        // SAFETY: held exclusively: no other process reads them meanwhile.
        unsafe { shared_slice_mut(&SLOTS, &NSLOTS) }
    }

    fn recent(&self) -> &[Recent] {
        // SAFETY: as for slots.
        unsafe { shared_slice(&RECENT, &NRECENT) }
    }

    fn recent_mut(&mut self) -> &mut [Recent] {
        assert!(
            self.exclusive,
            "fetch records are written under the exclusive lock"
        );
        // SAFETY: as for slots_mut.
        unsafe { shared_slice_mut(&RECENT, &NRECENT) }
    }

    fn next_gen(&mut self) -> u64 {
        assert!(self.exclusive);
        // SAFETY: written only under the exclusive lock.
        unsafe {
            let h = HEADER.load(Ordering::Acquire);
            (*h).next_gen += 1;
            (*h).next_gen
        }
    }
}

/// An array in shared memory, sized at startup.
///
/// # Safety
/// The caller holds the lock in at least shared mode.
unsafe fn shared_slice<'a, T>(p: &AtomicPtr<T>, n: &AtomicUsize) -> &'a [T] {
    std::slice::from_raw_parts(p.load(Ordering::Acquire), n.load(Ordering::Acquire))
}

/// [`shared_slice`], writable.
///
/// # Safety
/// The caller holds the lock exclusively, and holds no other reference into the array.
unsafe fn shared_slice_mut<'a, T>(p: &AtomicPtr<T>, n: &AtomicUsize) -> &'a mut [T] {
    std::slice::from_raw_parts_mut(p.load(Ordering::Acquire), n.load(Ordering::Acquire))
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we hold the lock; InterruptHoldoffCount is 0 only while a PostgreSQL error
        // unwinds, and then the transaction abort releases it.
        unsafe {
            if pg_sys::InterruptHoldoffCount > 0 {
                pg_sys::LWLockRelease(header().lock);
            }
        }
    }
}

/// Changes whenever a key set this backend may rely on changes: its own fetches, and in shared
/// mode any backend's. One relaxed atomic load or two; called on every identity lookup.
pub fn keys_epoch() -> u64 {
    let local = KEYS_EPOCH.load(Ordering::Relaxed);
    if shared_mode() {
        local.wrapping_add(header().epoch.load(Ordering::Relaxed) << 32)
    } else {
        local
    }
}

fn copy_in(dst: &mut [u8], src: &str) -> usize {
    // Cut at a char boundary so that what is read back is valid UTF-8.
    let mut n = src.len().min(dst.len());
    while !src.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&src.as_bytes()[..n]);
    n
}

fn text(b: &[u8], len: usize) -> String {
    String::from_utf8_lossy(&b[..len.min(b.len())]).into_owned()
}

/// FNV-1a of a source's kind and label: the key of its fetch record.
fn source_key(src: &RemoteSource) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kind: &[u8] = match src {
        RemoteSource::Discovery(_) => b"d",
        RemoteSource::Jwks(_) => b"j",
    };
    for b in kind.iter().chain(src.label().as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

fn now_ms(now: f64) -> u64 {
    (now * 1000.0) as u64
}

impl Slot {
    fn holds(&self, src: &RemoteSource) -> bool {
        let label = src.label().as_bytes();
        self.used
            && self.discovery == matches!(src, RemoteSource::Discovery(_))
            && &self.label[..self.label_len as usize] == label
    }

    fn times(&self) -> Times {
        Times {
            has_keys: self.body_len > 0,
            expires_at: self.expires_at,
            last_attempt: self.last_attempt,
            last_failed: self.last_failed,
            fetching_since: self.fetching_since,
        }
    }

    fn fetching(&self, now: f64, lim: &Limits) -> bool {
        self.fetching_since > 0.0 && now - self.fetching_since < lim.timeout + 1.0
    }

    fn claim(&mut self, src: &RemoteSource, gen: u64, now: f64) {
        // Zero the small fields; the body is overwritten by the next successful fetch.
        self.used = true;
        self.discovery = matches!(src, RemoteSource::Discovery(_));
        self.label_len = copy_in(&mut self.label, src.label()) as u16;
        self.url_len = 0;
        self.err_len = 0;
        self.body_len = 0;
        self.gen = gen;
        self.fetched_at = 0.0;
        self.expires_at = 0.0;
        self.last_attempt = 0.0;
        self.last_failed = false;
        self.fetching_since = 0.0;
        self.fetcher_pid = 0;
        self.last_used_ms.store(now_ms(now), Ordering::Relaxed);
        self.fetches = 0;
    }

    /// Give up this backend's claim on a fetch (cancelled, or the backend is exiting): nobody
    /// waits for it any more. The attempt still counts against the rate limit — otherwise
    /// cancelling one's own queries (`statement_timeout` is anyone's to set) would be a way to
    /// make the server fetch as often as one likes — but it is not recorded as a failure.
    fn release_claim(&mut self) {
        self.fetching_since = 0.0;
        self.fetcher_pid = 0;
    }
}

/// A fetch record, read out of shared memory.
#[derive(Clone, Debug)]
struct Record {
    last_attempt: f64,
    last_failed: bool,
    err: String,
}

fn find_recent(l: &Locked, key: u64) -> Option<Record> {
    l.recent().iter().find(|r| r.key == key).map(|r| Record {
        last_attempt: r.last_attempt,
        last_failed: r.last_failed,
        err: text(&r.err, r.err_len as usize),
    })
}

/// How a fetch went, for its record.
enum Outcome<'a> {
    /// Started; not known yet (an interrupted fetch stays here).
    Started,
    Done(&'a Result<Fetched, String>),
}

/// Record a fetch of `src` started `at`, and how it went, for every backend's rate limit.
fn record_recent(l: &mut Locked, src: &RemoteSource, at: f64, outcome: Outcome) {
    let key = source_key(src);
    let recent = l.recent_mut();
    let i = recent.iter().position(|r| r.key == key).unwrap_or_else(|| {
        // The oldest record makes room (a zeroed record is the oldest of all).
        recent
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.last_attempt.total_cmp(&b.1.last_attempt))
            .map_or(0, |(i, _)| i)
    });
    let r = &mut recent[i];
    if r.key != key {
        r.key = key;
        r.last_failed = false;
        r.err_len = 0;
    }
    r.last_attempt = at;
    if let Outcome::Done(result) = outcome {
        let error = result.as_ref().err();
        r.last_failed = error.is_some();
        r.err_len = copy_in(&mut r.err, error.map_or("", String::as_str)) as u16;
    }
}

fn my_pid() -> i32 {
    // SAFETY: set at backend start, never changed.
    unsafe { pg_sys::MyProcPid }
}

/// Registered once per backend that claims a fetch: if it exits mid-fetch (FATAL, shutdown),
/// its claims are released so that no other backend waits for a fetch nobody will finish.
#[pg_guard]
unsafe extern "C-unwind" fn release_claims_at_exit(_code: i32, _arg: pg_sys::Datum) {
    if !shared_mode() {
        return;
    }
    let pid = my_pid();
    let mut l = Locked::exclusive();
    for s in l.slots_mut().iter_mut() {
        if s.fetcher_pid == pid && s.fetching_since > 0.0 {
            s.release_claim();
        }
    }
}

fn register_exit_callback() {
    thread_local!(static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: a plain callback registration in this backend.
        unsafe { pg_sys::before_shmem_exit(Some(release_claims_at_exit), pg_sys::Datum::from(0)) };
    }
}

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
fn pause(ms: i64) {
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
fn fetch_interruptibly(
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
/// (interruptibly) for one to end, until `deadline` at the most. Called before any claim on the
/// shared cache is made, and not a failure of the issuer: nothing is recorded against it.
fn fetch_capacity(deadline: f64) -> Result<(), String> {
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
fn with_cleanup<T>(f: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            cleanup();
            std::panic::resume_unwind(payload)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The per-backend copies.

/// What one backend knows about one source.
#[derive(Default)]
struct Local {
    keys: Rc<KeySet>,
    body: String,
    url: String,
    /// Shared mode: the slot generation `keys` were parsed from (0: fetched by this backend
    /// without a slot).
    gen: u64,
    fetched_at: f64,
    expires_at: f64,
    last_attempt: f64,
    last_failed: bool,
    last_error: Option<String>,
}

impl Local {
    fn times(&self) -> Times {
        Times {
            has_keys: !self.body.is_empty(),
            expires_at: self.expires_at,
            last_attempt: self.last_attempt,
            last_failed: self.last_failed,
            fetching_since: 0.0,
        }
    }

    /// Adopt a new body; bump the epoch when the keys changed.
    fn adopt(&mut self, body: String) -> Result<(), String> {
        if body != self.body {
            let set = parse_jwks(&body, false)?;
            self.keys = Rc::new(set);
            self.body = body;
            KEYS_EPOCH.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

thread_local! {
    static LOCAL: RefCell<HashMap<RemoteSource, Local>> = RefCell::new(HashMap::new());
}

fn limits() -> Limits {
    Limits {
        ttl: f64::from(gucs::JWKS_CACHE_TTL.get()),
        min_refresh: f64::from(gucs::JWKS_MIN_REFRESH.get()),
        timeout: f64::from(gucs::JWKS_TIMEOUT_MS.get().max(1)) / 1000.0,
        max_stale: f64::from(gucs::JWKS_MAX_STALE.get()),
    }
}

fn timeout(lim: &Limits) -> Duration {
    Duration::from_secs_f64(lim.timeout)
}

/// Keys for one source and how long they may be relied on.
struct Got {
    keys: Rc<KeySet>,
    until: f64,
}

fn warn_stale(src: &RemoteSource, err: &str, fetched_at: f64) {
    pgrx::warning!(
        "kinde_rls: could not refresh the keys of {}: {err}; still using the keys fetched {:.0} s ago",
        src.label(),
        (wall_clock() - fetched_at).max(0.0)
    );
}

/// Why there are no keys to use: the last error, and when keys exist but are too old, their age.
fn unusable(err: &str, t: &Times, fetched_at: f64, now: f64, lim: &Limits) -> String {
    if t.has_keys && !t.usable(now, lim) {
        format!(
            "the keys fetched {:.0} s ago expired {:.0} s ago, longer than kinde_rls.jwks_max_stale ({:.0} s) allows while the issuer cannot be reached; the last fetch failed: {err}",
            (now - fetched_at).max(0.0),
            (now - t.expires_at).max(0.0),
            lim.max_stale
        )
    } else {
        err.to_string()
    }
}

/// This backend's times for a source (and when its keys were fetched, and the last error), with
/// the cluster-wide fetch record taken instead when it is newer.
fn local_times(src: &RemoteSource, record: Option<&Record>) -> (Times, f64, Option<String>) {
    let (mut t, fetched_at, mut last_error) = LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .map_or((Times::default(), 0.0, None), |e| {
                (e.times(), e.fetched_at, e.last_error.clone())
            })
    });
    if let Some(r) = record.filter(|r| r.last_attempt > t.last_attempt) {
        t.last_attempt = r.last_attempt;
        t.last_failed = r.last_failed;
        if r.last_failed {
            last_error = Some(r.err.clone());
        }
    }
    (t, fetched_at, last_error)
}

fn local_keys(src: &RemoteSource) -> Rc<KeySet> {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .map(|e| e.keys.clone())
            .unwrap_or_default()
    })
}

/// Per-backend cache (no slot): decide with this backend's copy and — in shared mode — the
/// cluster-wide fetch record, fetch if told to, remember.
fn obtain_local(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
    shared_record: Option<Record>,
) -> Result<Option<Got>, String> {
    let now = wall_clock();
    let (t, fetched_at, last_error) = local_times(src, shared_record.as_ref());
    match decide(&t, need, now, lim) {
        Action::Use if need == Need::UnknownKid => Ok(None),
        Action::Use => Ok(Some(Got {
            keys: local_keys(src),
            until: t.until(now, lim),
        })),
        Action::Refuse => Err(unusable(
            last_error.as_deref().unwrap_or("no keys yet"),
            &t,
            fetched_at,
            now,
            lim,
        )),
        Action::Fetch | Action::Wait => {
            fetch_capacity(now + lim.timeout)?;
            // The attempt counts from its start, also if it is interrupted (see release_claim).
            LOCAL.with(|l| l.borrow_mut().entry(src.clone()).or_default().last_attempt = now);
            if shared_mode() {
                record_recent(&mut Locked::exclusive(), src, now, Outcome::Started);
            }
            let (result, started) = fetch_interruptibly(src, timeout(lim), need != Need::Force);
            if shared_mode() {
                record_recent(&mut Locked::exclusive(), src, now, Outcome::Done(&result));
            }
            finish_local(src, need, lim, (now, started), result)
        }
    }
}

/// Record a fetch this backend made without a slot, and answer with what it brought (or what
/// is left when it failed).
fn finish_local(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
    (now, started): (f64, f64),
    result: Result<Fetched, String>,
) -> Result<Option<Got>, String> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.entry(src.clone()).or_default();
        e.last_attempt = now;
        match result.and_then(|f| e.adopt(f.jwks).map(|_| f.url)) {
            Ok(url) => {
                e.url = url;
                e.gen = 0;
                e.fetched_at = started;
                e.expires_at = started + lim.ttl;
                e.last_failed = false;
                e.last_error = None;
                Ok(Some(Got {
                    keys: e.keys.clone(),
                    until: e.expires_at,
                }))
            }
            Err(err) => {
                e.last_failed = true;
                e.last_error = Some(err.clone());
                let t = e.times();
                if need == Need::Force {
                    Err(err)
                } else if t.usable(now, lim) {
                    warn_stale(src, &err, e.fetched_at);
                    if need == Need::UnknownKid {
                        Ok(None)
                    } else {
                        Ok(Some(Got {
                            keys: e.keys.clone(),
                            until: t.until(now, lim),
                        }))
                    }
                } else {
                    Err(unusable(&err, &t, e.fetched_at, now, lim))
                }
            }
        }
    })
}

/// Parse (once per generation) the body of a shared slot into this backend's keys.
fn adopt_shared(
    src: &RemoteSource,
    gen: u64,
    body: Option<String>,
    url: String,
    fetched_at: f64,
    expires_at: f64,
) -> Result<Rc<KeySet>, String> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.entry(src.clone()).or_default();
        if let Some(body) = body {
            e.adopt(body)?;
            e.gen = gen;
        }
        e.url = url;
        e.fetched_at = fetched_at;
        e.expires_at = expires_at;
        Ok(e.keys.clone())
    })
}

/// [`adopt_shared`] what a look at the shared cache found.
fn adopt_seen(src: &RemoteSource, seen: Seen) -> Result<Rc<KeySet>, String> {
    adopt_shared(
        src,
        seen.gen,
        seen.body,
        seen.url,
        seen.fetched_at,
        seen.times.expires_at,
    )
}

fn local_gen(src: &RemoteSource) -> Option<u64> {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .filter(|e| !e.body.is_empty())
            .map(|e| e.gen)
    })
}

/// A slot that holds no keys — claimed by a backend whose fetch has not finished, was
/// abandoned, or failed — says nothing about the keys this backend fetched on its own before
/// the source had a slot: they count, as when there is no slot at all. Otherwise a claimed but
/// empty slot would make every unknown `kid` a fetch ("no keys: fetch"), whatever the rate
/// limit. Returns the times to decide with, and when the keys they describe were fetched.
fn with_own_keys(src: &RemoteSource, t: Times, fetched_at: f64) -> (Times, f64) {
    if t.has_keys {
        return (t, fetched_at);
    }
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .filter(|e| !e.body.is_empty())
            .map_or((t, fetched_at), |e| {
                let mut own = t;
                own.has_keys = true;
                own.expires_at = e.expires_at;
                (own, e.fetched_at)
            })
    })
}

/// What a look at the shared cache found for one source.
struct Seen {
    times: Times,
    gen: u64,
    /// The body, copied out only when this backend has not parsed this generation yet.
    body: Option<String>,
    url: String,
    fetched_at: f64,
    err: String,
}

fn look(src: &RemoteSource, now: f64) -> Result<Seen, Option<Record>> {
    let l = Locked::share();
    match l.slots().iter().find(|s| s.holds(src)) {
        Some(s) => {
            // Use counts: the least recently *used* expired slot is the one evicted.
            s.last_used_ms.store(now_ms(now), Ordering::Relaxed);
            let mine = local_gen(src);
            Ok(Seen {
                times: s.times(),
                gen: s.gen,
                body: (mine != Some(s.gen) && s.body_len > 0)
                    .then(|| text(&s.body, s.body_len as usize)),
                url: text(&s.url, s.url_len as usize),
                fetched_at: s.fetched_at,
                err: text(&s.err, s.err_len as usize),
            })
        }
        None => Err(find_recent(&l, source_key(src))),
    }
}

enum Claim {
    /// This backend fetches; the claim was made at this time.
    Mine(f64),
    /// Another backend got there first, or the slot says not to fetch: look again.
    Taken,
    /// Every slot holds fresh keys of another source (or is being fetched): cache per backend.
    NoSlot(Option<Record>),
}

/// Claim the fetch of `src` under the exclusive lock, re-deciding: another backend may have won.
/// A source without a slot takes a free one, or evicts the least recently used slot whose keys
/// have expired or which has been idle for [`IDLE_EVICT_SECS`] — never keys in use, so more
/// sources than slots cannot thrash the cache.
fn claim(src: &RemoteSource, need: Need, now: f64, lim: &Limits) -> Claim {
    let mut l = Locked::exclusive();
    let key = source_key(src);
    let idx = match l.slots().iter().position(|s| s.holds(src)) {
        Some(i) => i,
        None => {
            let victim = l.slots().iter().position(|s| !s.used).or_else(|| {
                l.slots()
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        let idle = now - s.last_used_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                        !s.fetching(now, lim)
                            && (s.body_len == 0 || now >= s.expires_at || idle >= IDLE_EVICT_SECS)
                    })
                    .min_by_key(|(_, s)| s.last_used_ms.load(Ordering::Relaxed))
                    .map(|(i, _)| i)
            });
            let Some(i) = victim else {
                return Claim::NoSlot(find_recent(&l, key));
            };
            let record = find_recent(&l, key);
            let gen = l.next_gen();
            let slot = &mut l.slots_mut()[i];
            slot.claim(src, gen, now);
            // The source's rate-limit state comes back with it.
            if let Some(r) = record {
                slot.last_attempt = r.last_attempt;
                slot.last_failed = r.last_failed;
                slot.err_len = copy_in(&mut slot.err, &r.err) as u16;
            }
            i
        }
    };
    let slot = &mut l.slots_mut()[idx];
    let (times, _) = with_own_keys(src, slot.times(), 0.0);
    if decide(&times, need, now, lim) != Action::Fetch {
        return Claim::Taken;
    }
    slot.fetching_since = now;
    slot.fetcher_pid = my_pid();
    slot.last_attempt = now;
    slot.last_used_ms.store(now_ms(now), Ordering::Relaxed);
    drop(l);
    register_exit_callback();
    Claim::Mine(now)
}

/// Give up a claim this backend made at `claimed_at` (the wait for the fetch was interrupted).
fn abandon(src: &RemoteSource, claimed_at: f64) {
    let pid = my_pid();
    let mut l = Locked::exclusive();
    if let Some(s) = l
        .slots_mut()
        .iter_mut()
        .find(|s| s.holds(src) && s.fetcher_pid == pid && s.fetching_since == claimed_at)
    {
        s.release_claim();
    }
    // The attempt counts for the rate limit, also after the slot is evicted.
    record_recent(&mut l, src, claimed_at, Outcome::Started);
}

/// Fetch for a slot this backend claimed, store the result there for everyone, and answer.
fn fetch_for_slot(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
    claimed_at: f64,
) -> Result<Option<Got>, String> {
    let (result, started) = with_cleanup(
        || fetch_interruptibly(src, timeout(lim), need != Need::Force),
        || abandon(src, claimed_at),
    );
    let now = claimed_at;
    let pid = my_pid();
    let outcome = {
        let mut l = Locked::exclusive();
        record_recent(&mut l, src, now, Outcome::Done(&result));
        let mut bump = None;
        let snapshot = l
            .slots_mut()
            .iter_mut()
            .find(|s| s.holds(src) && s.fetcher_pid == pid && s.fetching_since == claimed_at)
            .map(|slot| {
                slot.fetching_since = 0.0;
                slot.fetcher_pid = 0;
                slot.fetches += 1;
                slot.last_failed = result.is_err();
                match &result {
                    Ok(f) => {
                        // fetch_jwks never returns more than MAX_BODY_BYTES.
                        if text(&slot.body, slot.body_len as usize) != f.jwks {
                            slot.body_len = copy_in(&mut slot.body, &f.jwks) as u32;
                            bump = Some(());
                        }
                        slot.url_len = copy_in(&mut slot.url, &f.url) as u16;
                        slot.err_len = 0;
                        slot.fetched_at = started;
                        slot.expires_at = started + lim.ttl;
                    }
                    Err(e) => slot.err_len = copy_in(&mut slot.err, e) as u16,
                }
                (slot.times(), slot.fetched_at)
            });
        if let Some(()) = bump {
            let gen = l.next_gen();
            if let Some(slot) = l.slots_mut().iter_mut().find(|s| s.holds(src)) {
                slot.gen = gen;
            }
            header().epoch.fetch_add(1, Ordering::Relaxed);
        }
        let gen = l.slots().iter().find(|s| s.holds(src)).map_or(0, |s| s.gen);
        snapshot.map(|(t, fetched_at)| (t, fetched_at, gen))
    };
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.entry(src.clone()).or_default();
        e.last_attempt = now;
        e.last_failed = result.is_err();
        e.last_error = result.as_ref().err().cloned();
    });
    match (result, outcome) {
        (Ok(f), Some((t, fetched_at, gen))) => {
            let keys = adopt_shared(src, gen, Some(f.jwks), f.url, fetched_at, t.expires_at)?;
            Ok(Some(Got {
                keys,
                until: t.expires_at,
            }))
        }
        // The claim was lost meanwhile (presumed dead after the timeout): keep the result here.
        (Ok(f), None) => finish_local(src, need, lim, (now, started), Ok(f)),
        (Err(e), _) if need == Need::Force => Err(e),
        (Err(e), Some((t, fetched_at, _))) if t.usable(now, lim) => {
            warn_stale(src, &e, fetched_at);
            if need == Need::UnknownKid {
                return Ok(None);
            }
            // Use what the slot holds (possibly parsed already).
            match look(src, now) {
                Ok(seen) => {
                    let keys = adopt_seen(src, seen)?;
                    Ok(Some(Got {
                        keys,
                        until: t.until(now, lim),
                    }))
                }
                Err(_) => Err("the cached keys were evicted".into()),
            }
        }
        (Err(e), Some((t, fetched_at, _))) => Err(unusable(&e, &t, fetched_at, now, lim)),
        (Err(e), None) => finish_local(src, need, lim, (now, started), Err(e)),
    }
}

/// Shared cache. `Ok(None)` from an unknown-kid request means "no refetch was made".
fn obtain_shared(src: &RemoteSource, need: Need, lim: &Limits) -> Result<Option<Got>, String> {
    let deadline = wall_clock() + lim.timeout;
    let mut waited = false;
    loop {
        let now = wall_clock();
        // After waiting for another backend's fetch, take its result as this request's fetch.
        let need_now = if waited && need == Need::UnknownKid {
            Need::Keys
        } else {
            need
        };
        let seen = match look(src, now) {
            Ok(seen) => seen,
            Err(record) => {
                // No slot: this backend's own copy counts, and the shared fetch record keeps
                // the rate limit. Fetching, take a slot if one can be had.
                let (t, _, _) = local_times(src, record.as_ref());
                if decide(&t, need_now, now, lim) != Action::Fetch {
                    return obtain_local(src, need_now, lim, record);
                }
                match claim_and_fetch(src, (need, need_now), lim, now, deadline) {
                    Some(answer) => return answer,
                    None => continue,
                }
            }
        };
        let (times, fetched_at) = with_own_keys(src, seen.times, seen.fetched_at);
        match decide(&times, need_now, now, lim) {
            Action::Use if need == Need::UnknownKid && !waited => return Ok(None),
            Action::Use => {
                let until = times.until(now, lim);
                let keys = if seen.times.has_keys {
                    adopt_seen(src, seen)?
                } else {
                    local_keys(src)
                };
                return Ok(Some(Got { keys, until }));
            }
            Action::Refuse => {
                let err = Some(seen.err)
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "no keys yet".into());
                return Err(unusable(&err, &times, fetched_at, now, lim));
            }
            Action::Wait => {
                if now >= deadline {
                    return Err("timed out waiting for another session's fetch".into());
                }
                waited = true;
                pause(10);
                continue;
            }
            Action::Fetch => {}
        }
        if let Some(answer) = claim_and_fetch(src, (need, need_now), lim, now, deadline) {
            return answer;
        }
    }
}

/// Claim the fetch of `src` and make it for the shared cache, or — no slot to be had — for this
/// backend. `None`: another backend got there first; look again.
fn claim_and_fetch(
    src: &RemoteSource,
    (need, need_now): (Need, Need),
    lim: &Limits,
    now: f64,
    deadline: f64,
) -> Option<Result<Option<Got>, String>> {
    if let Err(e) = fetch_capacity(deadline) {
        return Some(Err(e));
    }
    match claim(src, need_now, now, lim) {
        Claim::Mine(at) => Some(fetch_for_slot(src, need, lim, at)),
        Claim::Taken => None,
        Claim::NoSlot(record) => {
            log_overflow(src, now);
            Some(obtain_local(src, need_now, lim, record))
        }
    }
}

/// A source that finds no slot is fetched by every new session: say so in the server log, at
/// most once a minute for the whole cluster, so that the operator raises the slot count.
fn log_overflow(src: &RemoteSource, now: f64) {
    let last = &header().overflow_logged_ms;
    let prev = last.load(Ordering::Relaxed);
    if now_ms(now).saturating_sub(prev) < 60_000
        || last
            .compare_exchange(prev, now_ms(now), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    pgrx::log!(
        "kinde_rls: the shared key cache is full (kinde_rls.jwks_cache_slots = {}): the keys of {} are cached per session, and every new session fetches them; raise kinde_rls.jwks_cache_slots to at least the number of key sources in use",
        NSLOTS.load(Ordering::Relaxed),
        src.label()
    );
}

/// In shared mode, a source that holds no slot: why it is fetched per session (for
/// `jwks_status()`).
pub fn slot_warning(src: &RemoteSource) -> Option<String> {
    if !shared_mode() {
        return None;
    }
    if src.label().len() > LABEL_BYTES {
        return Some(format!(
            "the key URL is longer than {LABEL_BYTES} bytes: its keys are cached per session, not in shared memory"
        ));
    }
    // Fetched by this session without a slot, and still without one.
    let fetched_here = LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .is_some_and(|e| e.gen == 0 && e.last_attempt > 0.0)
    });
    let held = Locked::share().slots().iter().any(|s| s.holds(src));
    (fetched_here && !held).then(|| {
        format!(
            "no slot in the shared key cache (kinde_rls.jwks_cache_slots = {}): these keys are cached per session, and each new session fetches them",
            NSLOTS.load(Ordering::Relaxed)
        )
    })
}

fn obtain(src: &RemoteSource, need: Need) -> Result<Option<Got>, String> {
    let lim = limits();
    if shared_mode() && src.label().len() <= LABEL_BYTES {
        obtain_shared(src, need, &lim)
    } else {
        obtain_local(src, need, &lim, None)
    }
}

/// The extension's [`KeySource`]: remembers until when the keys it handed out may be relied
/// on, which bounds how long a verification made with them is cached.
pub struct Source {
    pub until: f64,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            until: f64::INFINITY,
        }
    }
}

impl KeySource for Source {
    fn keys(&mut self, src: &RemoteSource) -> Result<Rc<KeySet>, String> {
        match obtain(src, Need::Keys)? {
            Some(g) => {
                self.until = self.until.min(g.until);
                Ok(g.keys)
            }
            None => Err("no keys yet".into()),
        }
    }

    fn refresh_for_unknown_kid(&mut self, src: &RemoteSource) -> Option<Rc<KeySet>> {
        match obtain(src, Need::UnknownKid) {
            Ok(Some(g)) => {
                self.until = self.until.min(g.until);
                Some(g.keys)
            }
            _ => None,
        }
    }
}

/// `refresh_jwks()`: fetch now. Returns the number of keys loaded, or the fetch error.
pub fn refresh(src: &RemoteSource) -> Result<usize, String> {
    match obtain(src, Need::Force)? {
        Some(g) => Ok(g.keys.keys.len()),
        None => Err("no keys".into()),
    }
}

/// What `jwks_status()` shows for one source.
pub struct Status {
    pub keys: i32,
    pub ignored: Vec<String>,
    pub fetched_at: Option<f64>,
    pub expires_at: Option<f64>,
    pub last_error: Option<String>,
}

fn status_of(
    set: Option<&KeySet>,
    fetched_at: f64,
    expires_at: f64,
    err: Option<String>,
) -> Status {
    Status {
        keys: set.map_or(0, |s| i32::try_from(s.keys.len()).unwrap_or(i32::MAX)),
        ignored: set.map_or_else(Vec::new, |s| {
            s.ignored.iter().map(ToString::to_string).collect()
        }),
        fetched_at: (fetched_at > 0.0).then_some(fetched_at),
        expires_at: (expires_at > 0.0).then_some(expires_at),
        last_error: err,
    }
}

pub fn status(src: &RemoteSource) -> Status {
    if shared_mode() && src.label().len() <= LABEL_BYTES {
        let seen = {
            let l = Locked::share();
            l.slots().iter().find(|s| s.holds(src)).map(|s| {
                (
                    text(&s.body, s.body_len as usize),
                    s.fetched_at,
                    s.expires_at,
                    (s.err_len > 0).then(|| text(&s.err, s.err_len as usize)),
                )
            })
        };
        if let Some((body, fetched_at, expires_at, last_error)) = seen {
            let set = (!body.is_empty())
                .then(|| parse_jwks(&body, false).ok())
                .flatten();
            return status_of(set.as_ref(), fetched_at, expires_at, last_error);
        }
    }
    LOCAL.with(|l| {
        l.borrow().get(src).map_or_else(
            || status_of(None, 0.0, 0.0, None),
            |e| {
                status_of(
                    (!e.body.is_empty()).then_some(&*e.keys),
                    e.fetched_at,
                    e.expires_at,
                    e.last_error.clone(),
                )
            },
        )
    })
}
