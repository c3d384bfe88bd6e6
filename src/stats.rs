//! Counters of what the verifier did, per configured issuer: `kinde_rls_stats()`.
//!
//! One table of [`MAX_ROWS`] rows, in shared memory when the library is preloaded (one table
//! for the server) and in this backend's memory otherwise (one table per session, and the view
//! says so). Row 0 is the row whose issuer is NULL: tokens no configured issuer accepts (or that
//! do not parse), anonymous requests, and issuers beyond the table's size. Rows are keyed by the
//! *configured* issuer a token was judged under ([`kinde_rls_core::audit::issuer_of`]), never
//! by a claimed `iss`, so a flood of made-up issuers cannot grow the table.
//!
//! Every counter is an atomic added to without a lock. The per-row fast path does not touch
//! them: its hits are counted in the backend's last answer and added here when that answer
//! changes, when a transaction ends, and before this backend reads the table.

use pgrx::pg_sys;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use kinde_rls_core::Check;

/// Rows in the table, the NULL-issuer row included.
pub const MAX_ROWS: usize = 64;
/// Bytes of an issuer kept; a longer issuer is cut (and shares a row with any other it matches
/// that far).
const LABEL_BYTES: usize = 256;

/// What is counted. `Refused(c)` is one counter per check.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    Verified,
    CacheHit,
    Anonymous,
    Trusted,
    Refused(Check),
    FetchOk,
    FetchFailed,
    FetchRateLimited,
    LogSuppressed,
}

const NCOUNTERS: usize = 8 + Check::ALL.len();

impl Event {
    fn index(self) -> usize {
        match self {
            Event::Verified => 0,
            Event::CacheHit => 1,
            Event::Anonymous => 2,
            Event::Trusted => 3,
            Event::FetchOk => 4,
            Event::FetchFailed => 5,
            Event::FetchRateLimited => 6,
            Event::LogSuppressed => 7,
            Event::Refused(c) => 8 + Check::ALL.iter().position(|x| *x == c).unwrap_or(0),
        }
    }
}

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

#[repr(C)]
struct Row {
    state: AtomicU32,
    label_len: AtomicU32,
    /// Written once, by the backend that moved `state` from FREE to WRITING; read only READY.
    label: std::cell::UnsafeCell<[u8; LABEL_BYTES]>,
    counts: [AtomicU64; NCOUNTERS],
    fast_path: AtomicU64,
    verify_us_total: AtomicU64,
    verify_us_max: AtomicU64,
    /// Unix µs; 0 when none.
    last_refusal_us: AtomicI64,
    /// The server clock minus the issuer's `Date` at the last fetch (seconds), and when (unix
    /// µs; 0 when no fetch brought a `Date`). Not reset by `kinde_rls_stats_reset()`.
    skew_s: AtomicI64,
    skew_at_us: AtomicI64,
}

#[repr(C)]
struct Table {
    /// Unix µs of the last reset (or of the table's creation).
    reset_us: AtomicI64,
    /// The audit log's rate limit: the second being counted (high bits) and the lines written in
    /// it (low [`WINDOW_BITS`] bits), in one word so that both change together; and the refusals
    /// not logged since the last line that was.
    log_window: AtomicU64,
    log_unreported: AtomicU64,
    rows: [Row; MAX_ROWS],
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());
static SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

const SHMEM_NAME: &std::ffi::CStr = c"kinde_rls_stats";

pub fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Ask for the table's shared memory (from the shmem request hook, while preloading).
///
/// # Safety
/// Only while shared memory is being sized.
pub unsafe fn request_shmem() {
    pg_sys::RequestAddinShmemSpace(size_of::<Table>());
}

/// Attach the shared table (from the shmem startup hook, holding `AddinShmemInitLock`).
///
/// # Safety
/// Only from the shmem startup hook, with `AddinShmemInitLock` held.
pub unsafe fn attach_shmem() {
    let mut found = false;
    let t = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), size_of::<Table>(), &mut found)
        .cast::<Table>();
    if !found {
        // SAFETY: the bytes were just allocated for us; all-zero is a valid value of every field
        // (atomic zeros, an empty label).
        std::ptr::write_bytes(t.cast::<u8>(), 0, size_of::<Table>());
        init_table(&*t);
    }
    TABLE.store(t, Ordering::Release);
    SHARED.store(true, Ordering::Release);
}

fn init_table(t: &Table) {
    t.reset_us.store(unix_us(), Ordering::Relaxed);
    t.rows[0].state.store(READY, Ordering::Release);
}

/// The table: shared, or this backend's own (made on first use).
fn table() -> &'static Table {
    let p = TABLE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: set once to shared memory that lives as long as the server, or to a leaked
        // allocation that lives as long as the backend.
        return unsafe { &*p };
    }
    // SAFETY: all-zero is a valid Table (see `attach_shmem`); the allocation is leaked, so it
    // lives as long as the backend. A backend is one thread: nobody races this store.
    let t: &'static Table = unsafe {
        let layout = std::alloc::Layout::new::<Table>();
        let p = std::alloc::alloc_zeroed(layout).cast::<Table>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        &*p
    };
    init_table(t);
    TABLE.store(std::ptr::from_ref(t).cast_mut(), Ordering::Release);
    t
}

/// Whether the counters are the server's (preloaded) or this session's.
pub fn shared() -> bool {
    SHARED.load(Ordering::Acquire)
}

fn label_of(r: &Row) -> &[u8] {
    let len = (r.label_len.load(Ordering::Relaxed) as usize).min(LABEL_BYTES);
    // SAFETY: called only on READY rows, whose label is never written again (see `row_of`).
    unsafe { &(&*r.label.get())[..len] }
}

/// The row of a configured issuer (`None`: row 0), found or made. Called once per verification
/// or refusal, never per row of a query.
pub fn row_of(issuer: Option<&str>) -> u16 {
    let Some(issuer) = issuer else { return 0 };
    let mut want = &issuer.as_bytes()[..issuer.len().min(LABEL_BYTES)];
    // Cut on a character boundary, so the label stays text.
    while std::str::from_utf8(want).is_err() {
        want = &want[..want.len() - 1];
    }
    let t = table();
    for (i, r) in t.rows.iter().enumerate().skip(1) {
        loop {
            match r.state.load(Ordering::Acquire) {
                READY if label_of(r) == want => return i as u16,
                READY => break,
                // Another backend is writing this row's label: a few stores, never an error.
                WRITING => std::hint::spin_loop(),
                _ => {
                    if r.state
                        .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Acquire)
                        .is_err()
                    {
                        continue;
                    }
                    // SAFETY: this backend won the row (FREE → WRITING): nobody reads the label
                    // until the state is READY, stored below with Release.
                    unsafe { (&mut *r.label.get())[..want.len()].copy_from_slice(want) };
                    r.label_len.store(want.len() as u32, Ordering::Relaxed);
                    r.state.store(READY, Ordering::Release);
                    return i as u16;
                }
            }
        }
    }
    0
}

fn row(i: u16) -> &'static Row {
    let t = table();
    &t.rows[usize::from(i).min(MAX_ROWS - 1)]
}

/// A parallel worker answers rows of its leader's request: the request is the leader's to count
/// (and to log), so a worker counts its own lookups as fast-path answers and nothing else, except
/// the key fetches it really made.
pub fn in_parallel_worker() -> bool {
    // SAFETY: a plain read of a backend global.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

pub fn count(r: u16, e: Event) {
    count_many(r, e, 1);
}

/// `n` events at once.
pub fn count_many(r: u16, e: Event, n: u64) {
    if in_parallel_worker() {
        if matches!(
            e,
            Event::Verified | Event::CacheHit | Event::Anonymous | Event::Trusted
        ) {
            row(r).fast_path.fetch_add(n, Ordering::Relaxed);
        }
        return;
    }
    row(r).counts[e.index()].fetch_add(n, Ordering::Relaxed);
    if let Event::Refused(_) = e {
        row(r)
            .last_refusal_us
            .fetch_max(unix_us(), Ordering::Relaxed);
    }
}

/// `n` key fetches (counted in parallel workers too: they are real requests to the issuer).
pub fn count_n(r: u16, e: Event, n: u64) {
    if n > 0 {
        row(r).counts[e.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// Hits of the per-row fast path, added in bulk.
pub fn fast_path(r: u16, n: u64) {
    if n > 0 {
        row(r).fast_path.fetch_add(n, Ordering::Relaxed);
    }
}

/// Time spent on one verification (or refusal), in µs.
pub fn verify_time(r: u16, us: u64) {
    if in_parallel_worker() {
        return;
    }
    let r = row(r);
    r.verify_us_total.fetch_add(us, Ordering::Relaxed);
    r.verify_us_max.fetch_max(us, Ordering::Relaxed);
}

/// The server clock minus the issuer's `Date` header at a fetch.
pub fn clock_skew(r: u16, skew_s: i64) {
    let r = row(r);
    r.skew_s.store(skew_s, Ordering::Relaxed);
    r.skew_at_us.store(unix_us(), Ordering::Release);
}

const WINDOW_BITS: u32 = 20;

/// The audit log's rate limit: whether a refusal line may be written now. At most `limit` lines
/// per second of the wall clock for the whole table (the server, when preloaded), exactly: the
/// second and its count move together in one compare-and-swap. A refusal over the limit is
/// counted as not reported, for the next line written to say ([`take_unreported`]).
pub fn may_log(limit: u32) -> bool {
    let t = table();
    let second = u64::try_from(unix_us() / 1_000_000).unwrap_or(0);
    let mask = (1u64 << WINDOW_BITS) - 1;
    let limit = u64::from(limit).min(mask);
    let mut cur = t.log_window.load(Ordering::Relaxed);
    loop {
        let lines = if cur >> WINDOW_BITS == second {
            cur & mask
        } else {
            0
        };
        if lines >= limit {
            t.log_unreported.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let next = (second << WINDOW_BITS) | (lines + 1);
        match t
            .log_window
            .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// The refusals not logged since the last line that was, cleared: called by the line that
/// says so, just before it is written.
pub fn take_unreported() -> u64 {
    table().log_unreported.swap(0, Ordering::Relaxed)
}

/// One row of `kinde_rls_stats()`.
pub struct Snapshot {
    pub issuer: Option<String>,
    pub counts: [i64; NCOUNTERS],
    pub fast_path: i64,
    pub verify_us_total: i64,
    pub verify_us_max: i64,
    pub last_refusal_us: Option<i64>,
    pub skew_s: Option<i64>,
    pub skew_at_us: Option<i64>,
}

impl Snapshot {
    pub fn get(&self, e: Event) -> i64 {
        self.counts[e.index()]
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Every row in use, row 0 first, and when the counters were last reset.
pub fn snapshot() -> (Vec<Snapshot>, i64) {
    let t = table();
    let mut out = Vec::new();
    for (i, r) in t.rows.iter().enumerate() {
        if r.state.load(Ordering::Acquire) != READY {
            continue;
        }
        let skew_at = r.skew_at_us.load(Ordering::Acquire);
        out.push(Snapshot {
            issuer: (i > 0).then(|| String::from_utf8_lossy(label_of(r)).into_owned()),
            counts: std::array::from_fn(|k| to_i64(r.counts[k].load(Ordering::Relaxed))),
            fast_path: to_i64(r.fast_path.load(Ordering::Relaxed)),
            verify_us_total: to_i64(r.verify_us_total.load(Ordering::Relaxed)),
            verify_us_max: to_i64(r.verify_us_max.load(Ordering::Relaxed)),
            last_refusal_us: Some(r.last_refusal_us.load(Ordering::Relaxed)).filter(|v| *v > 0),
            skew_s: (skew_at > 0).then(|| r.skew_s.load(Ordering::Relaxed)),
            skew_at_us: (skew_at > 0).then_some(skew_at),
        });
    }
    (out, t.reset_us.load(Ordering::Relaxed))
}

/// `kinde_rls_stats_reset()`: every counter to zero (issuers and clock readings stay).
pub fn reset() {
    let t = table();
    for r in &t.rows {
        for c in &r.counts {
            c.store(0, Ordering::Relaxed);
        }
        r.fast_path.store(0, Ordering::Relaxed);
        r.verify_us_total.store(0, Ordering::Relaxed);
        r.verify_us_max.store(0, Ordering::Relaxed);
        r.last_refusal_us.store(0, Ordering::Relaxed);
    }
    t.log_unreported.store(0, Ordering::Relaxed);
    t.reset_us.store(unix_us(), Ordering::Relaxed);
}
