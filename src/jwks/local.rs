//! The backend-local cache: what one backend knows about each source. It is the whole cache
//! when the library is not preloaded, and for a source that finds no slot in shared memory;
//! otherwise it holds the keys this backend parsed from a slot, once per generation. Decides
//! with [`decide`] on this backend's copy (and, in shared mode, the cluster-wide fetch record).
//!
//! `thread_local!`: a backend is one thread, so no lock. One entry per key source of the
//! configuration, kept for the backend's life.

use kinde_rls_core::fetch::Fetched;
use kinde_rls_core::keycache::{decide, wall_clock, Action, Limits, Need, Times};
use kinde_rls_core::{parse_jwks, KeySet, RemoteSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::fetch::{fetch_capacity, fetch_interruptibly};
use super::shmem::{record_recent, shared_mode, Locked, Outcome, Record, Snapshot};
use super::{status_of, timeout, unusable, warn_stale, Got, Status, KEYS_EPOCH};

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

/// What this backend knows about a source, to decide with.
#[derive(Default)]
pub(super) struct Known {
    pub(super) times: Times,
    /// When the keys `times` describes were fetched.
    pub(super) fetched_at: f64,
    pub(super) last_error: Option<String>,
}

/// This backend's times for a source (and when its keys were fetched, and the last error), with
/// the cluster-wide fetch record taken instead when it is newer.
pub(super) fn known(src: &RemoteSource, record: Option<&Record>) -> Known {
    let mut k = LOCAL.with(|l| {
        l.borrow().get(src).map_or_else(Known::default, |e| Known {
            times: e.times(),
            fetched_at: e.fetched_at,
            last_error: e.last_error.clone(),
        })
    });
    if let Some(r) = record.filter(|r| r.last_attempt > k.times.last_attempt) {
        k.times.last_attempt = r.last_attempt;
        k.times.last_failed = r.last_failed;
        if r.last_failed {
            k.last_error = Some(r.err.clone());
        }
    }
    k
}

pub(super) fn local_keys(src: &RemoteSource) -> Rc<KeySet> {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .map(|e| e.keys.clone())
            .unwrap_or_default()
    })
}

/// Per-backend cache (no slot): decide with this backend's copy and — in shared mode — the
/// cluster-wide fetch record, fetch if told to, remember.
pub(super) fn obtain(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
    shared_record: Option<Record>,
) -> Result<Option<Got>, String> {
    let now = wall_clock();
    let Known {
        times: t,
        fetched_at,
        last_error,
    } = known(src, shared_record.as_ref());
    match decide(&t, need, now, lim) {
        Action::Use if need == Need::UnknownKid => {
            super::note_rate_limited();
            Ok(None)
        }
        Action::Use => Ok(Some(Got {
            keys: local_keys(src),
            until: t.until(now, lim),
        })),
        Action::Refuse => Err({
            super::note_rate_limited();
            unusable(
                last_error.as_deref().unwrap_or("no keys yet"),
                &t,
                fetched_at,
                now,
                lim,
            )
        }),
        Action::Fetch | Action::Wait => {
            fetch_capacity(now + lim.timeout)?;
            // The attempt counts from its start, also if it is interrupted (see
            // `Slot::release_lease`).
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
pub(super) fn finish_local(
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

/// Parse (once per generation) the key set of a shared slot into this backend's keys.
pub(super) fn adopt(src: &RemoteSource, slot: Snapshot) -> Result<Rc<KeySet>, String> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.entry(src.clone()).or_default();
        if let Some(body) = slot.body {
            e.adopt(body)?;
            e.gen = slot.gen;
        }
        e.url = slot.url;
        e.fetched_at = slot.fetched_at;
        e.expires_at = slot.times.expires_at;
        Ok(e.keys.clone())
    })
}

/// Remember how this backend's fetch for a slot went (the slot holds the keys).
pub(super) fn record_attempt(src: &RemoteSource, at: f64, result: &Result<Fetched, String>) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.entry(src.clone()).or_default();
        e.last_attempt = at;
        e.last_failed = result.is_err();
        e.last_error = result.as_ref().err().cloned();
    });
}

/// Whether this backend fetched `src` without a slot (shared mode: it found none).
pub(super) fn fetched_without_slot(src: &RemoteSource) -> bool {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .is_some_and(|e| e.gen == 0 && e.last_attempt > 0.0)
    })
}

/// What this backend's copy of `src` shows in `jwks_status()`.
pub(super) fn status(src: &RemoteSource) -> Status {
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

pub(super) fn local_gen(src: &RemoteSource) -> Option<u64> {
    LOCAL.with(|l| {
        l.borrow()
            .get(src)
            .filter(|e| !e.body.is_empty())
            .map(|e| e.gen)
    })
}

/// A slot that holds no keys — leased by a backend whose fetch has not finished, was
/// abandoned, or failed — says nothing about the keys this backend fetched on its own before
/// the source had a slot: they count, as when there is no slot at all. Otherwise a leased but
/// empty slot would make every unknown `kid` a fetch ("no keys: fetch"), whatever the rate
/// limit. Returns the times to decide with, and when the keys they describe were fetched.
pub(super) fn with_own_keys(src: &RemoteSource, t: Times, fetched_at: f64) -> (Times, f64) {
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
