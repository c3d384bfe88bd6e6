//! Keys fetched from issuers, cached.
//!
//! Two homes for the cache, chosen once in `_PG_init`:
//! - **shared memory**, when the library is in `shared_preload_libraries`: one cluster-wide
//!   cache of [`SLOTS`] key sets; one backend fetches while the others use what is there (or
//!   wait, at most the fetch timeout, when nothing is); each backend parses a set once per
//!   change and keeps the parsed keys;
//! - **per backend** otherwise (or for a source too long for a slot): each backend fetches and
//!   caches on its own.
//!
//! When to fetch is decided by [`kinde_rls_core::keycache::decide`]; this module only keeps the
//! state and acts. Fetching happens outside any lock, bounded by `kinde_rls.jwks_timeout_ms`.

use kinde_rls_core::fetch::{fetch_jwks, MAX_BODY_BYTES};
use kinde_rls_core::keycache::{decide, wall_clock, Action, Need, Times};
use kinde_rls_core::{parse_jwks, Key, KeySource, RemoteSource};
use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgAtomic, PgLwLock};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::gucs;

/// Key sets the shared cache holds; the least recently used is evicted for a new source.
pub const SLOTS: usize = 8;
const LABEL_BYTES: usize = 512;
const ERROR_BYTES: usize = 256;

/// Bumped whenever a key set this backend uses changes, so cached verifications made with
/// keys that were rotated away are dropped.
pub static KEYS_EPOCH: AtomicU64 = AtomicU64::new(1);
/// Set in `_PG_init` when loading from `shared_preload_libraries`.
static SHARED_MODE: AtomicBool = AtomicBool::new(false);

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slot {
    used: bool,
    discovery: bool,
    label_len: u16,
    label: [u8; LABEL_BYTES],
    url_len: u16,
    url: [u8; LABEL_BYTES],
    err_len: u16,
    err: [u8; ERROR_BYTES],
    body_len: u32,
    body: [u8; MAX_BODY_BYTES],
    /// Bumped when the body changes.
    gen: u64,
    fetched_at: f64,
    expires_at: f64,
    last_attempt: f64,
    fetching_since: f64,
    last_used: f64,
    fetches: u64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct SharedCache {
    slots: [Slot; SLOTS],
    /// Source of slot generations: one counter for all slots, so a generation never repeats
    /// even when a source moves to another slot.
    next_gen: u64,
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for SharedCache {}

impl Default for SharedCache {
    fn default() -> Self {
        // SAFETY: all-zero is a valid value of every field (false, 0, 0.0).
        unsafe { std::mem::zeroed() }
    }
}

pub static SHARED: PgLwLock<SharedCache> = unsafe { PgLwLock::new(c"kinde_rls_jwks") };
/// Bumped (without a lock) whenever a shared key set changes, so that every backend drops
/// verifications made with keys another backend saw rotated away, on its next lookup.
static SHARED_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"kinde_rls_jwks_epoch") };

/// Called from `_PG_init`.
pub fn init() {
    // SAFETY: read once at load time, by the postmaster or a backend.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        pgrx::pg_shmem_init!(SHARED);
        pgrx::pg_shmem_init!(SHARED_EPOCH);
        SHARED_MODE.store(true, Ordering::Relaxed);
    }
}

pub fn shared_mode() -> bool {
    SHARED_MODE.load(Ordering::Relaxed)
}

/// Changes whenever a key set this backend may rely on changes: its own fetches, and in shared
/// mode any backend's. One relaxed atomic load or two; called on every identity lookup.
pub fn keys_epoch() -> u64 {
    let local = KEYS_EPOCH.load(Ordering::Relaxed);
    if shared_mode() {
        local.wrapping_add(SHARED_EPOCH.get().load(Ordering::Relaxed) << 32)
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
            fetching_since: self.fetching_since,
        }
    }

    fn claim(&mut self, src: &RemoteSource, gen: u64) {
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
        self.fetching_since = 0.0;
        self.fetches = 0;
    }
}

/// What one backend knows about one source.
#[derive(Default)]
struct Local {
    keys: Rc<Vec<Key>>,
    body: String,
    url: String,
    /// Shared mode: the slot generation `keys` were parsed from.
    gen: u64,
    fetched_at: f64,
    expires_at: f64,
    last_attempt: f64,
    last_error: Option<String>,
}

impl Local {
    fn times(&self) -> Times {
        Times {
            has_keys: !self.body.is_empty(),
            expires_at: self.expires_at,
            last_attempt: self.last_attempt,
            fetching_since: 0.0,
        }
    }

    /// Adopt a new body; bump the epoch when the keys changed.
    fn adopt(&mut self, body: String) -> Result<(), String> {
        if body != self.body {
            let set = parse_jwks(&body, false)?;
            self.keys = Rc::new(set.keys);
            self.body = body;
            KEYS_EPOCH.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

thread_local! {
    static LOCAL: RefCell<HashMap<RemoteSource, Local>> = RefCell::new(HashMap::new());
}

struct Limits {
    timeout: Duration,
    ttl: f64,
    min_refresh: f64,
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_millis(gucs::JWKS_TIMEOUT_MS.get().max(1) as u64),
        ttl: f64::from(gucs::JWKS_CACHE_TTL.get()),
        min_refresh: f64::from(gucs::JWKS_MIN_REFRESH.get()),
    }
}

/// Keys for one source and how long they may be relied on.
struct Got {
    keys: Rc<Vec<Key>>,
    until: f64,
}

fn warn_stale(src: &RemoteSource, err: &str, fetched_at: f64) {
    pgrx::warning!(
        "kinde_rls: could not refresh the keys of {}: {err}; still using the keys fetched {:.0} s ago",
        src.label(),
        (wall_clock() - fetched_at).max(0.0)
    );
}

/// Per-backend cache: decide, fetch if told to, remember.
fn obtain_local(src: &RemoteSource, need: Need, lim: &Limits) -> Result<Option<Got>, String> {
    let now = wall_clock();
    let action = LOCAL.with(|l| {
        let l = l.borrow();
        let t = l.get(src).map(Local::times).unwrap_or_default();
        decide(&t, need, now, lim.min_refresh, lim.timeout.as_secs_f64())
    });
    match action {
        Action::Use | Action::Refuse => LOCAL.with(|l| {
            let l = l.borrow();
            let e = l.get(src);
            match (e, action) {
                (Some(_), Action::Use) if need == Need::UnknownKid => Ok(None),
                (Some(e), Action::Use) => Ok(Some(Got {
                    keys: e.keys.clone(),
                    until: if now < e.expires_at {
                        e.expires_at
                    } else {
                        now + lim.min_refresh
                    },
                })),
                (Some(e), _) => Err(e.last_error.clone().unwrap_or_else(|| "no keys yet".into())),
                (None, _) => Err("no keys yet".into()),
            }
        }),
        Action::Fetch | Action::Wait => {
            LOCAL.with(|l| l.borrow_mut().entry(src.clone()).or_default().last_attempt = now);
            let result = fetch_jwks(src, lim.timeout);
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                let e = l.entry(src.clone()).or_default();
                match result.and_then(|f| e.adopt(f.jwks).map(|_| f.url)) {
                    Ok(url) => {
                        e.url = url;
                        e.fetched_at = now;
                        e.expires_at = now + lim.ttl;
                        e.last_error = None;
                        Ok(Some(Got {
                            keys: e.keys.clone(),
                            until: e.expires_at,
                        }))
                    }
                    Err(err) => {
                        e.last_error = Some(err.clone());
                        if e.body.is_empty() || need == Need::Force {
                            Err(err)
                        } else {
                            warn_stale(src, &err, e.fetched_at);
                            if need == Need::UnknownKid {
                                Ok(None)
                            } else {
                                Ok(Some(Got {
                                    keys: e.keys.clone(),
                                    until: now + lim.min_refresh,
                                }))
                            }
                        }
                    }
                }
            })
        }
    }
}

/// Parse (once per generation) the body of a shared slot into this backend's keys.
fn adopt_shared(
    src: &RemoteSource,
    gen: u64,
    body: Option<String>,
    url: String,
    fetched_at: f64,
    expires_at: f64,
) -> Result<Rc<Vec<Key>>, String> {
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

fn local_gen(src: &RemoteSource) -> Option<u64> {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .filter(|e| !e.body.is_empty())
            .map(|e| e.gen)
    })
}

/// Shared cache. `Ok(None)` from an unknown-kid request means "no refetch was made".
fn obtain_shared(src: &RemoteSource, need: Need, lim: &Limits) -> Result<Option<Got>, String> {
    let timeout = lim.timeout.as_secs_f64();
    let deadline = wall_clock() + timeout;
    let mut waited = false;
    loop {
        let now = wall_clock();
        // Look under the shared lock; copy out the body only when it changed.
        let seen = {
            let cache = SHARED.share();
            cache.slots.iter().find(|s| s.holds(src)).map(|s| {
                let mine = local_gen(src);
                let body = (mine != Some(s.gen) && s.body_len > 0)
                    .then(|| text(&s.body, s.body_len as usize));
                (
                    s.times(),
                    s.gen,
                    body,
                    text(&s.url, s.url_len as usize),
                    s.fetched_at,
                    text(&s.err, s.err_len as usize),
                )
            })
        };
        let times = seen.as_ref().map(|s| s.0).unwrap_or_default();
        // After waiting for another backend's fetch, take its result as this request's fetch.
        let need_now = if waited && need == Need::UnknownKid {
            Need::Keys
        } else {
            need
        };
        match decide(&times, need_now, now, lim.min_refresh, timeout) {
            Action::Use if need == Need::UnknownKid && !waited => return Ok(None),
            Action::Use => {
                let (t, gen, body, url, fetched_at, _) = seen.expect("Use implies a slot");
                let keys = adopt_shared(src, gen, body, url, fetched_at, t.expires_at)?;
                let until = if now < t.expires_at {
                    t.expires_at
                } else {
                    now + lim.min_refresh
                };
                return Ok(Some(Got { keys, until }));
            }
            Action::Refuse => {
                let err = seen
                    .map(|s| s.5)
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "no keys yet".into());
                return Err(err);
            }
            Action::Wait => {
                if now >= deadline {
                    return Err("timed out waiting for another session's fetch".into());
                }
                waited = true;
                std::thread::sleep(Duration::from_millis(10));
                pgrx::check_for_interrupts!();
                continue;
            }
            Action::Fetch => {}
        }
        // Claim the fetch under the exclusive lock, re-deciding: another backend may have won.
        let claimed = {
            let mut cache = SHARED.exclusive();
            let idx = match cache.slots.iter().position(|s| s.holds(src)) {
                Some(i) => Some(i),
                None => {
                    let free = cache.slots.iter().position(|s| !s.used).or_else(|| {
                        cache
                            .slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| {
                                s.fetching_since == 0.0 || now - s.fetching_since > timeout + 1.0
                            })
                            .min_by(|a, b| a.1.last_used.total_cmp(&b.1.last_used))
                            .map(|(i, _)| i)
                    });
                    if let Some(i) = free {
                        cache.next_gen += 1;
                        let gen = cache.next_gen;
                        cache.slots[i].claim(src, gen);
                    }
                    free
                }
            };
            match idx {
                None => None,
                Some(i) => {
                    let slot = &mut cache.slots[i];
                    if decide(&slot.times(), need_now, now, lim.min_refresh, timeout)
                        == Action::Fetch
                    {
                        slot.fetching_since = now;
                        slot.last_attempt = now;
                        slot.last_used = now;
                        Some(true)
                    } else {
                        Some(false)
                    }
                }
            }
        };
        match claimed {
            None => return obtain_local(src, need, lim), // every slot busy: fetch on our own
            Some(false) => continue,                     // someone else got there first
            Some(true) => {}
        }
        let result = fetch_jwks(src, lim.timeout);
        let outcome = {
            let mut guard = SHARED.exclusive();
            let SharedCache { slots, next_gen } = &mut *guard;
            match slots.iter_mut().find(|s| s.holds(src)) {
                None => None, // evicted while we fetched; keep the result for ourselves below
                Some(slot) => {
                    slot.fetching_since = 0.0;
                    slot.fetches += 1;
                    match &result {
                        Ok(f) => {
                            // fetch_jwks never returns more than MAX_BODY_BYTES.
                            if text(&slot.body, slot.body_len as usize) != f.jwks {
                                slot.body_len = copy_in(&mut slot.body, &f.jwks) as u32;
                                *next_gen += 1;
                                slot.gen = *next_gen;
                                SHARED_EPOCH.get().fetch_add(1, Ordering::Relaxed);
                            }
                            slot.url_len = copy_in(&mut slot.url, &f.url) as u16;
                            slot.err_len = 0;
                            slot.fetched_at = now;
                            slot.expires_at = now + lim.ttl;
                        }
                        Err(e) => slot.err_len = copy_in(&mut slot.err, e) as u16,
                    }
                    Some((
                        slot.gen,
                        slot.body_len > 0,
                        slot.fetched_at,
                        slot.expires_at,
                    ))
                }
            }
        };
        return match (result, outcome) {
            (Ok(f), Some((gen, _, fetched_at, expires_at))) => {
                let keys = adopt_shared(src, gen, Some(f.jwks), f.url, fetched_at, expires_at)?;
                Ok(Some(Got {
                    keys,
                    until: expires_at,
                }))
            }
            (Ok(f), None) => {
                let keys = adopt_shared(src, 0, Some(f.jwks), f.url, now, now + lim.ttl)?;
                Ok(Some(Got {
                    keys,
                    until: now + lim.ttl,
                }))
            }
            (Err(e), Some((_, true, fetched_at, _))) if need != Need::Force => {
                warn_stale(src, &e, fetched_at);
                if need == Need::UnknownKid {
                    return Ok(None);
                }
                // Use what the slot holds (possibly parsed already).
                continue_with_stale(src, lim, now)
            }
            (Err(e), _) => Err(e),
        };
    }
}

fn continue_with_stale(src: &RemoteSource, lim: &Limits, now: f64) -> Result<Option<Got>, String> {
    let seen = {
        let cache = SHARED.share();
        cache.slots.iter().find(|s| s.holds(src)).map(|s| {
            let body = (local_gen(src) != Some(s.gen)).then(|| text(&s.body, s.body_len as usize));
            (
                s.gen,
                body,
                text(&s.url, s.url_len as usize),
                s.fetched_at,
                s.expires_at,
            )
        })
    };
    match seen {
        Some((gen, body, url, fetched_at, expires_at)) => {
            let keys = adopt_shared(src, gen, body, url, fetched_at, expires_at)?;
            Ok(Some(Got {
                keys,
                until: now + lim.min_refresh,
            }))
        }
        None => Err("the cached keys were evicted".into()),
    }
}

fn obtain(src: &RemoteSource, need: Need) -> Result<Option<Got>, String> {
    let lim = limits();
    if shared_mode() && src.label().len() <= LABEL_BYTES {
        obtain_shared(src, need, &lim)
    } else {
        obtain_local(src, need, &lim)
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
    fn keys(&mut self, src: &RemoteSource) -> Result<Rc<Vec<Key>>, String> {
        match obtain(src, Need::Keys)? {
            Some(g) => {
                self.until = self.until.min(g.until);
                Ok(g.keys)
            }
            None => Err("no keys yet".into()),
        }
    }

    fn refresh_for_unknown_kid(&mut self, src: &RemoteSource) -> Option<Rc<Vec<Key>>> {
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
        Some(g) => Ok(g.keys.len()),
        None => Err("no keys".into()),
    }
}

/// What `jwks_status()` shows for one source.
pub struct Status {
    pub keys: i32,
    pub fetched_at: Option<f64>,
    pub expires_at: Option<f64>,
    pub last_error: Option<String>,
}

pub fn status(src: &RemoteSource) -> Status {
    let local = LOCAL.with(|l| {
        l.borrow().get(src).map(|e| Status {
            keys: e.keys.len() as i32,
            fetched_at: (e.fetched_at > 0.0).then_some(e.fetched_at),
            expires_at: (e.expires_at > 0.0).then_some(e.expires_at),
            last_error: e.last_error.clone(),
        })
    });
    if shared_mode() && src.label().len() <= LABEL_BYTES {
        let seen = {
            let cache = SHARED.share();
            cache.slots.iter().find(|s| s.holds(src)).map(|s| {
                (
                    s.gen,
                    text(&s.body, s.body_len as usize),
                    s.fetched_at,
                    s.expires_at,
                    (s.err_len > 0).then(|| text(&s.err, s.err_len as usize)),
                )
            })
        };
        if let Some((_, body, fetched_at, expires_at, last_error)) = seen {
            let keys = if body.is_empty() {
                0
            } else {
                parse_jwks(&body, false)
                    .map(|s| s.keys.len() as i32)
                    .unwrap_or(0)
            };
            return Status {
                keys,
                fetched_at: (fetched_at > 0.0).then_some(fetched_at),
                expires_at: (expires_at > 0.0).then_some(expires_at),
                last_error,
            };
        }
    }
    local.unwrap_or(Status {
        keys: 0,
        fetched_at: None,
        expires_at: None,
        last_error: None,
    })
}
