//! The shared-memory cache: what a slot holds decides, with [`decide`], whether to use it, wait
//! for the backend that holds its fetch lease, or take the lease and fetch for everyone.

use kinde_rls_core::keycache::{decide, wall_clock, Action, Limits, Need};
use kinde_rls_core::RemoteSource;
use std::sync::atomic::Ordering;

use super::fetch::{fetch_capacity, fetch_interruptibly, pause, with_cleanup};
use super::local::{self, adopt, finish_local, local_gen, local_keys, with_own_keys};
use super::shmem::{
    copy_in, find_recent, header, my_pid, now_ms, record_recent, register_exit_callback,
    source_key, text, Locked, Outcome, Record, Snapshot, NSLOTS,
};
use super::{timeout, unusable, warn_stale, Got};

/// A slot whose keys are still fresh is given to another source only after it has not been
/// used for this long: sources that are in use keep their slots (more sources than slots then
/// means the overflow is cached per backend, not that every source is fetched again in turn),
/// and sources that were configured away stop holding slots a minute later.
const IDLE_EVICT_SECS: f64 = 60.0;

/// The slot holding `src`, with the key set's JSON only when this backend has not parsed this
/// generation yet; without a slot, the source's fetch record.
fn look(src: &RemoteSource, now: f64) -> Result<Snapshot, Option<Record>> {
    let l = Locked::share();
    match l.slots().iter().find(|s| s.holds(src)) {
        Some(s) => {
            // Use counts: the least recently *used* expired slot is the one evicted.
            s.last_used_ms.store(now_ms(now), Ordering::Relaxed);
            Ok(s.snapshot(local_gen(src) != Some(s.gen)))
        }
        None => Err(find_recent(&l, source_key(src))),
    }
}

/// The slot holding `src`, for `jwks_status()`: with the key set's JSON.
pub(super) fn status_snapshot(src: &RemoteSource) -> Option<Snapshot> {
    let l = Locked::share();
    l.slots()
        .iter()
        .find(|s| s.holds(src))
        .map(|s| s.snapshot(true))
}

/// Whether a slot holds `src`.
pub(super) fn has_slot(src: &RemoteSource) -> bool {
    Locked::share().slots().iter().any(|s| s.holds(src))
}

/// Who fetches a source's keys, as [`lease_fetch`] answers.
enum Lease {
    /// This backend fetches; it took the lease at this time.
    Mine(f64),
    /// Another backend got there first, or the slot says not to fetch: look again.
    Taken,
    /// Every slot holds fresh keys of another source (or is being fetched): cache per backend.
    NoSlot(Option<Record>),
}

/// Take the fetch lease of `src` under the exclusive lock, re-deciding: another backend may
/// have taken it first.
/// A source without a slot takes a free one, or evicts the least recently used slot whose keys
/// have expired or which has been idle for [`IDLE_EVICT_SECS`] — never keys in use, so more
/// sources than slots cannot thrash the cache.
fn lease_fetch(src: &RemoteSource, need: Need, now: f64, lim: &Limits) -> Lease {
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
                return Lease::NoSlot(find_recent(&l, key));
            };
            let record = find_recent(&l, key);
            let gen = l.next_gen();
            let slot = &mut l.slots_mut()[i];
            slot.assign(src, gen, now);
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
        return Lease::Taken;
    }
    slot.lease_fetch(my_pid(), now);
    drop(l);
    register_exit_callback();
    Lease::Mine(now)
}

/// Give up the fetch lease this backend took at `leased_at` (the wait for the fetch was
/// interrupted).
fn abandon(src: &RemoteSource, leased_at: f64) {
    let pid = my_pid();
    let mut l = Locked::exclusive();
    if let Some(s) = l
        .slots_mut()
        .iter_mut()
        .find(|s| s.leased_by(src, pid, leased_at))
    {
        s.release_lease();
    }
    // The attempt counts for the rate limit, also after the slot is evicted.
    record_recent(&mut l, src, leased_at, Outcome::Started);
}

/// Fetch for a slot whose lease this backend took, store the result there for everyone, and
/// answer.
fn fetch_for_slot(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
    leased_at: f64,
) -> Result<Option<Got>, String> {
    let (result, started) = with_cleanup(
        || fetch_interruptibly(src, timeout(lim), need != Need::Force),
        || abandon(src, leased_at),
    );
    let now = leased_at;
    let pid = my_pid();
    // The slot as this fetch left it; `None` when the lease was lost meanwhile.
    let stored = {
        let mut l = Locked::exclusive();
        record_recent(&mut l, src, now, Outcome::Done(&result));
        match l
            .slots()
            .iter()
            .position(|s| s.leased_by(src, pid, leased_at))
        {
            Some(i) => {
                // A new key set is a new generation, and every backend's epoch moves.
                let changed = result.as_ref().is_ok_and(|f| {
                    let slot = &l.slots()[i];
                    text(&slot.body, slot.body_len as usize) != f.jwks
                });
                let gen = changed.then(|| l.next_gen());
                let slot = &mut l.slots_mut()[i];
                slot.release_lease();
                slot.fetches += 1;
                slot.last_failed = result.is_err();
                match &result {
                    Ok(f) => {
                        if let Some(gen) = gen {
                            // fetch_jwks never returns more than MAX_BODY_BYTES.
                            slot.body_len = copy_in(&mut slot.body, &f.jwks) as u32;
                            slot.gen = gen;
                        }
                        slot.url_len = copy_in(&mut slot.url, &f.url) as u16;
                        slot.err_len = 0;
                        slot.fetched_at = started;
                        slot.expires_at = started + lim.ttl;
                    }
                    Err(e) => slot.err_len = copy_in(&mut slot.err, e) as u16,
                }
                let snapshot = slot.snapshot(false);
                if changed {
                    header().epoch.fetch_add(1, Ordering::Relaxed);
                }
                Some(snapshot)
            }
            None => None,
        }
    };
    local::record_attempt(src, now, &result);
    match (result, stored) {
        (Ok(f), Some(stored)) => {
            let until = stored.times.expires_at;
            let keys = adopt(
                src,
                Snapshot {
                    body: Some(f.jwks),
                    url: f.url,
                    ..stored
                },
            )?;
            Ok(Some(Got { keys, until }))
        }
        // The lease was lost meanwhile (presumed dead after the timeout): keep the result here.
        (Ok(f), None) => finish_local(src, need, lim, (now, started), Ok(f)),
        (Err(e), _) if need == Need::Force => Err(e),
        (Err(e), Some(stored)) if stored.times.usable(now, lim) => {
            warn_stale(src, &e, stored.fetched_at);
            if need == Need::UnknownKid {
                return Ok(None);
            }
            // Use what the slot holds (possibly parsed already).
            match look(src, now) {
                Ok(seen) => {
                    let keys = adopt(src, seen)?;
                    Ok(Some(Got {
                        keys,
                        until: stored.times.until(now, lim),
                    }))
                }
                Err(_) => Err("the cached keys were evicted".into()),
            }
        }
        (Err(e), Some(stored)) => Err(unusable(&e, &stored.times, stored.fetched_at, now, lim)),
        (Err(e), None) => finish_local(src, need, lim, (now, started), Err(e)),
    }
}

/// Shared cache. `Ok(None)` from an unknown-kid request means "no refetch was made".
pub(super) fn obtain(src: &RemoteSource, need: Need, lim: &Limits) -> Result<Option<Got>, String> {
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
                let known = local::known(src, record.as_ref());
                if decide(&known.times, need_now, now, lim) != Action::Fetch {
                    return local::obtain(src, need_now, lim, record);
                }
                match lease_and_fetch(src, (need, need_now), lim, now, deadline) {
                    Some(answer) => return answer,
                    None => continue,
                }
            }
        };
        let (times, fetched_at) = with_own_keys(src, seen.times, seen.fetched_at);
        match decide(&times, need_now, now, lim) {
            Action::Use if need == Need::UnknownKid && !waited => {
                super::note_rate_limited();
                return Ok(None);
            }
            Action::Use => {
                let until = times.until(now, lim);
                let keys = if seen.times.has_keys {
                    adopt(src, seen)?
                } else {
                    local_keys(src)
                };
                return Ok(Some(Got { keys, until }));
            }
            Action::Refuse => {
                super::note_rate_limited();
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
        if let Some(answer) = lease_and_fetch(src, (need, need_now), lim, now, deadline) {
            return answer;
        }
    }
}

/// Take the fetch lease of `src` and fetch for the shared cache, or — no slot to be had — for
/// this backend. `None`: another backend got there first; look again.
fn lease_and_fetch(
    src: &RemoteSource,
    (need, need_now): (Need, Need),
    lim: &Limits,
    now: f64,
    deadline: f64,
) -> Option<Result<Option<Got>, String>> {
    if let Err(e) = fetch_capacity(deadline) {
        return Some(Err(e));
    }
    match lease_fetch(src, need_now, now, lim) {
        Lease::Mine(at) => Some(fetch_for_slot(src, need, lim, at)),
        Lease::Taken => None,
        Lease::NoSlot(record) => {
            log_overflow(src, now);
            Some(local::obtain(src, need_now, lim, record))
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
