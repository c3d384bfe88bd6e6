//! The shared-memory half of the cache: where it lives, its lock, and its records. Sized from
//! `kinde_rls.jwks_cache_slots` at server start; present only when the library is preloaded.

use kinde_rls_core::fetch::{Fetched, MAX_BODY_BYTES};
use kinde_rls_core::keycache::{Limits, Times};
use kinde_rls_core::RemoteSource;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::gucs;

pub(super) const LABEL_BYTES: usize = 512;
const ERROR_BYTES: usize = 256;

/// Set in `_PG_init` when loading from `shared_preload_libraries`.
static SHARED_MODE: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------------
// Shared memory: a header, `nslots` slots, `nrecent` fetch records. Sized from
// `kinde_rls.jwks_cache_slots` at server start.

#[repr(C)]
pub(super) struct Header {
    pub(super) lock: *mut pg_sys::LWLock,
    /// Bumped (without the lock) whenever a shared key set changes, so that every backend drops
    /// verifications made with keys another backend saw rotated away, on its next lookup.
    pub(super) epoch: AtomicU64,
    /// Source of slot generations: one counter for all slots, so a generation never repeats
    /// even when a source moves to another slot.
    pub(super) next_gen: u64,
    /// When a source last found no slot was logged (ms since the epoch): at most once a minute.
    pub(super) overflow_logged_ms: AtomicU64,
}

#[repr(C)]
pub(super) struct Slot {
    pub(super) used: bool,
    pub(super) discovery: bool,
    /// The last fetch attempt failed.
    pub(super) last_failed: bool,
    /// The backend holding the slot's fetch lease (see [`Slot::lease_fetch`]); 0 when none.
    /// Named for the lease, not the token: a slot has no `sub` or owner in the JWT sense.
    pub(super) holder_pid: i32,
    pub(super) label_len: u16,
    pub(super) url_len: u16,
    pub(super) err_len: u16,
    pub(super) label: [u8; LABEL_BYTES],
    pub(super) url: [u8; LABEL_BYTES],
    pub(super) err: [u8; ERROR_BYTES],
    pub(super) body_len: u32,
    pub(super) body: [u8; MAX_BODY_BYTES],
    /// Bumped when the body changes.
    pub(super) gen: u64,
    pub(super) fetched_at: f64,
    pub(super) expires_at: f64,
    pub(super) last_attempt: f64,
    /// When the fetch lease was taken; 0 when none.
    pub(super) fetching_since: f64,
    /// Last use, in milliseconds since the epoch: updated under the shared lock, hence atomic.
    pub(super) last_used_ms: AtomicU64,
    pub(super) fetches: u64,
}

/// When a source's keys were last fetched and how it went: kept for every source, slotted or
/// not, so that eviction does not reset a rate limit.
#[repr(C)]
pub(super) struct Recent {
    pub(super) key: u64,
    pub(super) last_attempt: f64,
    pub(super) last_failed: bool,
    pub(super) err_len: u16,
    pub(super) err: [u8; ERROR_BYTES],
}

static HEADER: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static RECENT: AtomicPtr<Recent> = AtomicPtr::new(std::ptr::null_mut());
pub(super) static NSLOTS: AtomicUsize = AtomicUsize::new(0);
static NRECENT: AtomicUsize = AtomicUsize::new(0);

const SHMEM_NAME: &std::ffi::CStr = c"kinde_rls_jwks";

/// Where the parts sit in the shared segment, in bytes from its start.
struct Layout {
    nrecent: usize,
    slots_at: usize,
    recent_at: usize,
    total: usize,
}

fn layout(nslots: usize) -> Layout {
    let nrecent = (4 * nslots).max(64);
    let align = |n: usize| n.div_ceil(16) * 16;
    let slots_at = align(size_of::<Header>());
    let recent_at = align(slots_at + nslots * size_of::<Slot>());
    let total = recent_at + nrecent * size_of::<Recent>();
    Layout {
        nrecent,
        slots_at,
        recent_at,
        total,
    }
}

fn configured_slots() -> usize {
    usize::try_from(gucs::JWKS_CACHE_SLOTS.get().max(1)).unwrap_or(1)
}

static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// # Safety
/// Called only while shared memory is being sized: from the shmem request hook, or (before 15)
/// from `_PG_init` while preloading.
unsafe fn request_shmem() {
    pg_sys::RequestAddinShmemSpace(layout(configured_slots()).total);
    pg_sys::RequestNamedLWLockTranche(SHMEM_NAME.as_ptr(), 1);
    crate::stats::request_shmem();
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
    let Layout {
        nrecent,
        slots_at,
        recent_at,
        total,
    } = layout(nslots);
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
    crate::stats::attach_shmem();
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

pub(super) fn header() -> &'static Header {
    // SAFETY: only called in shared mode, after the startup hook stored the pointer; the
    // header lives as long as the server.
    unsafe { &*HEADER.load(Ordering::Acquire) }
}

/// The shared lock, held; released when dropped (unless a PostgreSQL error is unwinding, whose
/// abort releases every LWLock, as pgrx's own lock guards do).
pub(super) struct Locked {
    pub(super) exclusive: bool,
}

impl Locked {
    pub(super) fn share() -> Locked {
        // SAFETY: the lock lives in shared memory for the server's lifetime.
        unsafe { pg_sys::LWLockAcquire(header().lock, pg_sys::LWLockMode::LW_SHARED) };
        Locked { exclusive: false }
    }

    pub(super) fn exclusive() -> Locked {
        // SAFETY: the lock lives in shared memory for the server's lifetime.
        unsafe { pg_sys::LWLockAcquire(header().lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Locked { exclusive: true }
    }

    pub(super) fn slots(&self) -> &[Slot] {
        // SAFETY: `self` holds the lock (shared or exclusive), and the slots were sized and
        // stored at startup. Their plain fields are written only under the exclusive lock; under
        // the shared one a reader may update only atomic fields (`last_used_ms`).
        unsafe { shared_slice(&SLOTS, &NSLOTS) }
    }

    pub(super) fn slots_mut(&mut self) -> &mut [Slot] {
        assert!(self.exclusive, "slots are written under the exclusive lock");
        // SAFETY: `self` holds the lock exclusively (asserted): no other process reads or writes
        // the slots meanwhile, and `&mut self` rules out another reference from this one.
        unsafe { shared_slice_mut(&SLOTS, &NSLOTS) }
    }

    pub(super) fn recent(&self) -> &[Recent] {
        // SAFETY: `self` holds the lock (shared or exclusive), and the records were sized and
        // stored at startup; they are written only under the exclusive lock.
        unsafe { shared_slice(&RECENT, &NRECENT) }
    }

    pub(super) fn recent_mut(&mut self) -> &mut [Recent] {
        assert!(
            self.exclusive,
            "fetch records are written under the exclusive lock"
        );
        // SAFETY: `self` holds the lock exclusively (asserted): no other process reads or writes
        // the records meanwhile, and `&mut self` rules out another reference from this one.
        unsafe { shared_slice_mut(&RECENT, &NRECENT) }
    }

    pub(super) fn next_gen(&mut self) -> u64 {
        assert!(self.exclusive);
        // SAFETY: `next_gen` is read and written only under the exclusive lock, which `self`
        // holds (asserted); the header lives as long as the server.
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

pub(super) fn copy_in(dst: &mut [u8], src: &str) -> usize {
    // Cut at a char boundary so that what is read back is valid UTF-8.
    let mut n = src.len().min(dst.len());
    while !src.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&src.as_bytes()[..n]);
    n
}

pub(super) fn text(b: &[u8], len: usize) -> String {
    String::from_utf8_lossy(&b[..len.min(b.len())]).into_owned()
}

/// FNV-1a of a source's kind and label: the key of its fetch record.
pub(super) fn source_key(src: &RemoteSource) -> u64 {
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

pub(super) fn now_ms(now: f64) -> u64 {
    (now * 1000.0) as u64
}

impl Slot {
    pub(super) fn holds(&self, src: &RemoteSource) -> bool {
        let label = src.label().as_bytes();
        self.used
            && self.discovery == matches!(src, RemoteSource::Discovery(_))
            && &self.label[..self.label_len as usize] == label
    }

    pub(super) fn times(&self) -> Times {
        Times {
            has_keys: self.body_len > 0,
            expires_at: self.expires_at,
            last_attempt: self.last_attempt,
            last_failed: self.last_failed,
            fetching_since: self.fetching_since,
        }
    }

    pub(super) fn fetching(&self, now: f64, lim: &Limits) -> bool {
        self.fetching_since > 0.0 && now - self.fetching_since < lim.timeout + 1.0
    }

    /// Give this slot to `src`, as a new generation `gen`.
    pub(super) fn assign(&mut self, src: &RemoteSource, gen: u64, now: f64) {
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
        self.holder_pid = 0;
        self.last_used_ms.store(now_ms(now), Ordering::Relaxed);
        self.fetches = 0;
    }

    /// Take the fetch lease for backend `pid` at `now`: this backend fetches, the others wait
    /// for it or use what the slot holds.
    pub(super) fn lease_fetch(&mut self, pid: i32, now: f64) {
        self.fetching_since = now;
        self.holder_pid = pid;
        self.last_attempt = now;
        self.last_used_ms.store(now_ms(now), Ordering::Relaxed);
    }

    /// Whether this slot still holds `src` with the fetch lease backend `pid` took at `at` (it
    /// may have been presumed dead after the timeout, and taken over, meanwhile).
    pub(super) fn leased_by(&self, src: &RemoteSource, pid: i32, at: f64) -> bool {
        self.holds(src) && self.holder_pid == pid && self.fetching_since == at
    }

    /// Give up this backend's fetch lease (cancelled, or the backend is exiting): nobody
    /// waits for it any more. The attempt still counts against the rate limit — otherwise
    /// cancelling one's own queries (`statement_timeout` is anyone's to set) would be a way to
    /// make the server fetch as often as one likes — but it is not recorded as a failure.
    pub(super) fn release_lease(&mut self) {
        self.fetching_since = 0.0;
        self.holder_pid = 0;
    }

    /// What the slot holds, copied out to act on once the lock is released; the key set's JSON
    /// only `with_body` and when there is one.
    pub(super) fn snapshot(&self, with_body: bool) -> Snapshot {
        Snapshot {
            times: self.times(),
            gen: self.gen,
            body: (with_body && self.body_len > 0)
                .then(|| text(&self.body, self.body_len as usize)),
            url: text(&self.url, self.url_len as usize),
            fetched_at: self.fetched_at,
            err: text(&self.err, self.err_len as usize),
        }
    }
}

/// A slot's state for one source, read out of shared memory.
pub(super) struct Snapshot {
    pub(super) times: Times,
    /// The slot generation: bumped whenever the key set changes.
    pub(super) gen: u64,
    /// The key set's JSON, copied out only when asked for (a backend that parsed this
    /// generation already does not need it again).
    pub(super) body: Option<String>,
    pub(super) url: String,
    pub(super) fetched_at: f64,
    /// The last fetch's error; empty when it succeeded.
    pub(super) err: String,
}

/// A fetch record, read out of shared memory.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub(super) last_attempt: f64,
    pub(super) last_failed: bool,
    pub(super) err: String,
}

pub(super) fn find_recent(l: &Locked, key: u64) -> Option<Record> {
    l.recent().iter().find(|r| r.key == key).map(|r| Record {
        last_attempt: r.last_attempt,
        last_failed: r.last_failed,
        err: text(&r.err, r.err_len as usize),
    })
}

/// How a fetch went, for its record.
pub(super) enum Outcome<'a> {
    /// Started; not known yet (an interrupted fetch stays here).
    Started,
    Done(&'a Result<Fetched, String>),
}

/// Record a fetch of `src` started `at`, and how it went, for every backend's rate limit.
pub(super) fn record_recent(l: &mut Locked, src: &RemoteSource, at: f64, outcome: Outcome) {
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

pub(super) fn my_pid() -> i32 {
    // SAFETY: a plain read of a backend global, set at backend start and never changed.
    unsafe { pg_sys::MyProcPid }
}

/// Registered once per backend that takes a fetch lease: if it exits mid-fetch (FATAL,
/// shutdown), its leases are released so that no other backend waits for a fetch nobody will
/// finish.
#[pg_guard]
unsafe extern "C-unwind" fn release_leases_at_exit(_code: i32, _arg: pg_sys::Datum) {
    if !shared_mode() {
        return;
    }
    let pid = my_pid();
    let mut l = Locked::exclusive();
    for s in l.slots_mut().iter_mut() {
        if s.holder_pid == pid && s.fetching_since > 0.0 {
            s.release_lease();
        }
    }
}

pub(super) fn register_exit_callback() {
    thread_local!(static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a function of the right signature, which lives as long as the
        // library; PostgreSQL calls it once, in this backend, at exit.
        unsafe { pg_sys::before_shmem_exit(Some(release_leases_at_exit), pg_sys::Datum::from(0)) };
    }
}
