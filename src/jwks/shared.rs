//! The shared-memory cache at work: look, lease a fetch, fetch, publish.

use kinde_rls_core::keycache::{decide, wall_clock, Action, Limits, Need, Times};
use kinde_rls_core::RemoteSource;
use std::sync::atomic::Ordering;

use super::fetch::{fetch_capacity, fetch_interruptibly, pause, with_cleanup};
use super::local::{
    adopt_seen, adopt_shared, finish_local, local_gen, local_keys, local_times, obtain_local,
    with_own_keys, LOCAL,
};
use super::shmem::{
    copy_in, find_recent, header, my_pid, now_ms, record_recent, register_exit_callback,
    source_key, text, Locked, Outcome, Record, NSLOTS,
};
use super::{timeout, unusable, warn_stale, Got};

/// A slot whose keys are still fresh is given to another source only after it has not been
/// used for this long: sources that are in use keep their slots (more sources than slots then
/// means the overflow is cached per backend, not that every source is fetched again in turn),
/// and sources that were configured away stop holding slots a minute later.
pub(super) const IDLE_EVICT_SECS: f64 = 60.0;

/// What a look at the shared cache found for one source.
pub(super) struct Seen {
    pub(super) times: Times,
    pub(super) gen: u64,
    /// The body, copied out only when this backend has not parsed this generation yet.
    pub(super) body: Option<String>,
    pub(super) url: String,
    pub(super) fetched_at: f64,
    pub(super) err: String,
}

pub(super) fn look(src: &RemoteSource, now: f64) -> Result<Seen, Option<Record>> {
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

pub(super) enum Claim {
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
pub(super) fn claim(src: &RemoteSource, need: Need, now: f64, lim: &Limits) -> Claim {
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
pub(super) fn abandon(src: &RemoteSource, claimed_at: f64) {
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
pub(super) fn fetch_for_slot(
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
pub(super) fn obtain_shared(
    src: &RemoteSource,
    need: Need,
    lim: &Limits,
) -> Result<Option<Got>, String> {
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
pub(super) fn claim_and_fetch(
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
pub(super) fn log_overflow(src: &RemoteSource, now: f64) {
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
