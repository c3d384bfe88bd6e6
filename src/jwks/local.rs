//! The backend-local half of the cache: what one backend knows about each source.

use kinde_rls_core::fetch::Fetched;
use kinde_rls_core::keycache::{decide, wall_clock, Action, Limits, Need, Times};
use kinde_rls_core::{parse_jwks, KeySet, RemoteSource};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::fetch::{fetch_capacity, fetch_interruptibly};
use super::shared::Seen;
use super::shmem::{record_recent, shared_mode, Locked, Outcome, Record};
use super::{timeout, unusable, warn_stale, Got, KEYS_EPOCH};

// ---------------------------------------------------------------------------------------------
// The per-backend copies.

/// What one backend knows about one source.
#[derive(Default)]
pub(super) struct Local {
    pub(super) keys: Rc<KeySet>,
    pub(super) body: String,
    pub(super) url: String,
    /// Shared mode: the slot generation `keys` were parsed from (0: fetched by this backend
    /// without a slot).
    pub(super) gen: u64,
    pub(super) fetched_at: f64,
    pub(super) expires_at: f64,
    pub(super) last_attempt: f64,
    pub(super) last_failed: bool,
    pub(super) last_error: Option<String>,
}

impl Local {
    pub(super) fn times(&self) -> Times {
        Times {
            has_keys: !self.body.is_empty(),
            expires_at: self.expires_at,
            last_attempt: self.last_attempt,
            last_failed: self.last_failed,
            fetching_since: 0.0,
        }
    }

    /// Adopt a new body; bump the epoch when the keys changed.
    pub(super) fn adopt(&mut self, body: String) -> Result<(), String> {
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
    pub(super) static LOCAL: RefCell<HashMap<RemoteSource, Local>> = RefCell::new(HashMap::new());
}

/// This backend's times for a source (and when its keys were fetched, and the last error), with
/// the cluster-wide fetch record taken instead when it is newer.
pub(super) fn local_times(
    src: &RemoteSource,
    record: Option<&Record>,
) -> (Times, f64, Option<String>) {
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
pub(super) fn obtain_local(
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

/// Parse (once per generation) the body of a shared slot into this backend's keys.
pub(super) fn adopt_shared(
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
pub(super) fn adopt_seen(src: &RemoteSource, seen: Seen) -> Result<Rc<KeySet>, String> {
    adopt_shared(
        src,
        seen.gen,
        seen.body,
        seen.url,
        seen.fetched_at,
        seen.times.expires_at,
    )
}

pub(super) fn local_gen(src: &RemoteSource) -> Option<u64> {
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
