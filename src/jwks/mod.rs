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
//! use than slots degrade to per-backend caching for the overflow instead of thrashing. When
//! each fetch was last tried and whether it failed is kept in a small table of its own, which
//! outlives eviction: rate limits hold for every source, slotted or not.
//!
//! When to fetch is decided by [`kinde_rls_core::keycache::decide`]; these modules only keep the
//! state and act. Fetching happens on a helper thread, outside any lock, bounded by
//! `kinde_rls.jwks_timeout_ms`, while the backend waits on its latch and answers cancels,
//! `statement_timeout` and shutdown (see [`fetch::fetch_interruptibly`]).
//!
//! - `mod.rs` (here): what the rest of the extension calls — [`Source`], [`refresh`],
//!   [`status`], [`keys_epoch`] — and the choice between the two caches;
//! - `shared.rs`: the shared-memory cache, deciding on what a slot holds;
//! - `local.rs`: the backend-local cache, deciding on this backend's copy;
//! - `shmem.rs`: the shared memory itself — layout, lock, slots, fetch records, and the fetch
//!   lease a backend holds on a slot while it fetches;
//! - `fetch.rs`: the helper thread and the interruptible wait.

mod fetch;
mod local;
mod shared;
mod shmem;

use kinde_rls_core::keycache::{wall_clock, Limits, Need, Times};
use kinde_rls_core::{parse_jwks, KeySet, KeySource, RemoteSource};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::gucs;
use shmem::{header, LABEL_BYTES, NSLOTS};
pub use shmem::{init, shared_mode};

/// Bumped whenever a key set this backend uses changes, so cached verifications made with
/// keys that were rotated away are dropped.
static KEYS_EPOCH: AtomicU64 = AtomicU64::new(1);

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

/// Key fetches this backend made (or was refused by the rate limit) since they were last
/// taken, for the statistics of the issuer they were made for ([`take_events`]).
#[derive(Default, Clone, Copy, Debug)]
pub struct FetchEvents {
    pub ok: u64,
    pub failed: u64,
    pub rate_limited: u64,
    /// The server clock minus the issuer's `Date` header at the last successful fetch (s).
    pub skew_s: Option<i64>,
}

thread_local! {
    static EVENTS: std::cell::Cell<FetchEvents> = const {
        std::cell::Cell::new(FetchEvents { ok: 0, failed: 0, rate_limited: 0, skew_s: None })
    };
}

/// The fetch events since the last call, cleared.
pub fn take_events() -> FetchEvents {
    EVENTS.with(|e| e.take())
}

fn note(f: impl FnOnce(&mut FetchEvents)) {
    EVENTS.with(|e| {
        let mut v = e.get();
        f(&mut v);
        e.set(v);
    });
}

/// A fetch's answer, for the statistics.
fn note_fetch(answer: &Result<kinde_rls_core::fetch::Fetched, String>) {
    note(|e| match answer {
        Ok(f) => {
            e.ok += 1;
            if let Some(date) = f.server_date {
                e.skew_s = Some(wall_clock().round() as i64 - date);
            }
        }
        Err(_) => e.failed += 1,
    });
}

/// A fetch that was wanted but not made: the issuer was asked too recently
/// (`kinde_rls.jwks_min_refresh`).
fn note_rate_limited() {
    note(|e| e.rate_limited += 1);
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
    let fetched_here = local::fetched_without_slot(src);
    let held = shared::has_slot(src);
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
        shared::obtain(src, need, &lim)
    } else {
        local::obtain(src, need, &lim, None)
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

/// A status row's values from a key set (if any) and its times.
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

/// What `jwks_status()` shows for `src`: the shared slot when it has one, else this backend's
/// copy.
pub fn status(src: &RemoteSource) -> Status {
    if shared_mode() && src.label().len() <= LABEL_BYTES {
        if let Some(slot) = shared::status_snapshot(src) {
            let set = slot
                .body
                .as_deref()
                .and_then(|body| parse_jwks(body, false).ok());
            return status_of(
                set.as_ref(),
                slot.fetched_at,
                slot.times.expires_at,
                Some(slot.err).filter(|e| !e.is_empty()),
            );
        }
    }
    local::status(src)
}
