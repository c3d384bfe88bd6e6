//! When to fetch an issuer's keys, when to use what is cached, and when to wait: the policy of
//! the JWKS caches, as a pure function of times so that it is tested without a clock or a
//! network. The extension holds the state (per backend, or in shared memory) and acts on the
//! answer.
//!
//! The rules:
//! - fresh keys (fetched less than `ttl` ago) are used as they are;
//! - expired keys are refetched, but a failed or recent attempt is not repeated for
//!   `min_refresh` seconds, and meanwhile the expired keys keep working (fail-safe for an
//!   issuer outage; the caller logs a WARNING when a refetch fails) — for at most `max_stale`
//!   seconds past their expiry: a key the issuer retired because it leaked must not verify
//!   forever just because the issuer cannot be reached;
//! - a token naming an unknown `kid` triggers one refetch, at most every `min_refresh` seconds,
//!   so a flood of made-up `kid`s costs at most one request per interval;
//! - no keys because the last attempt failed: refuse until `min_refresh` has passed; no keys
//!   because they were never fetched here, or were evicted, or are too old: fetch;
//! - while another backend fetches (shared cache), a backend that has keys uses them and one
//!   that has none waits, never longer than the fetch timeout.

/// What is known about one source's cache entry. Times are Unix seconds; 0 means never.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Times {
    /// The entry holds a key set (possibly expired).
    pub has_keys: bool,
    /// The key set is fresh until this time.
    pub expires_at: f64,
    /// When a fetch was last started, successful or not.
    pub last_attempt: f64,
    /// Whether that attempt failed.
    pub last_failed: bool,
    /// When a fetch in progress elsewhere started (shared cache only); 0 when none.
    pub fetching_since: f64,
}

/// The cache settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// `kinde_rls.jwks_cache_ttl`: how long fetched keys are fresh.
    pub ttl: f64,
    /// `kinde_rls.jwks_min_refresh`.
    pub min_refresh: f64,
    /// `kinde_rls.jwks_timeout_ms`, in seconds.
    pub timeout: f64,
    /// `kinde_rls.jwks_max_stale`: how long past their expiry keys may still verify while the
    /// issuer cannot be reached.
    pub max_stale: f64,
}

impl Times {
    /// Keys that may still verify at `now`: fresh, or stale by less than `max_stale`.
    pub fn usable(&self, now: f64, lim: &Limits) -> bool {
        self.has_keys && now < self.expires_at + lim.max_stale
    }

    /// Until when keys handed out now may be relied on: their expiry when fresh; when stale,
    /// until the next refetch may be tried, and never past `max_stale`.
    pub fn until(&self, now: f64, lim: &Limits) -> f64 {
        if now < self.expires_at {
            self.expires_at
        } else {
            (now + lim.min_refresh.max(1.0)).min(self.expires_at + lim.max_stale)
        }
    }
}

/// Why keys are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To verify a token.
    Keys,
    /// The token's `kid` is not in the cached set.
    UnknownKid,
    /// `refresh_jwks()`: fetch now.
    Force,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Use the cached keys (fresh, or stale while refetching is rate-limited or in progress).
    Use,
    /// Fetch now.
    Fetch,
    /// Another backend is fetching and there is nothing to use yet: poll again shortly.
    Wait,
    /// Nothing usable and no fetch allowed yet: refuse with the last error.
    Refuse,
}

/// Decide what to do. A fetch started elsewhere more than `timeout + 1` seconds ago is presumed
/// dead (its backend was killed mid-fetch).
pub fn decide(t: &Times, need: Need, now: f64, lim: &Limits) -> Action {
    let fetching = t.fetching_since > 0.0 && now - t.fetching_since < lim.timeout + 1.0;
    let recently_tried = t.last_attempt > 0.0 && now - t.last_attempt < lim.min_refresh;
    let usable = t.usable(now, lim);
    let fresh = usable && now < t.expires_at;
    match need {
        Need::Force if fetching => Action::Wait,
        Need::Force => Action::Fetch,
        Need::Keys if fresh => Action::Use,
        Need::Keys if fetching && usable => Action::Use,
        Need::Keys if fetching => Action::Wait,
        Need::Keys if recently_tried && usable => Action::Use,
        Need::Keys if recently_tried && t.last_failed => Action::Refuse,
        Need::Keys => Action::Fetch,
        Need::UnknownKid if !usable => decide(t, Need::Keys, now, lim),
        Need::UnknownKid if fetching => Action::Wait,
        Need::UnknownKid if recently_tried => Action::Use,
        Need::UnknownKid => Action::Fetch,
    }
}

/// Unix seconds now, from the wall clock.
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_000_000.0;
    const LIM: Limits = Limits {
        ttl: 600.0,
        min_refresh: 30.0,
        timeout: 2.0,
        max_stale: 3600.0,
    };

    fn t(
        has_keys: bool,
        expires_in: f64,
        tried_ago: Option<f64>,
        fetching_for: Option<f64>,
    ) -> Times {
        Times {
            has_keys,
            expires_at: NOW + expires_in,
            last_attempt: tried_ago.map_or(0.0, |a| NOW - a),
            last_failed: false,
            fetching_since: fetching_for.map_or(0.0, |a| NOW - a),
        }
    }

    fn failed(mut t: Times) -> Times {
        t.last_failed = true;
        t
    }

    fn d(times: Times, need: Need) -> Action {
        decide(&times, need, NOW, &LIM)
    }

    #[test]
    fn first_use_fetches() {
        assert_eq!(d(Times::default(), Need::Keys), Action::Fetch);
    }

    #[test]
    fn fresh_keys_are_used() {
        assert_eq!(
            d(t(true, 100.0, Some(500.0), None), Need::Keys),
            Action::Use
        );
    }

    #[test]
    fn expired_keys_are_refetched_unless_tried_recently() {
        assert_eq!(
            d(t(true, -1.0, Some(601.0), None), Need::Keys),
            Action::Fetch
        );
        // A refetch failed 5 s ago: keep using the stale keys, do not hammer the issuer.
        assert_eq!(
            d(failed(t(true, -1.0, Some(5.0), None)), Need::Keys),
            Action::Use
        );
    }

    #[test]
    fn stale_keys_stop_verifying_after_max_stale() {
        // Stale by less than max_stale: still used while the issuer is down.
        assert_eq!(
            d(failed(t(true, -3599.0, Some(5.0), None)), Need::Keys),
            Action::Use
        );
        // Stale by more: as if there were no keys; the failure is not retried yet.
        assert_eq!(
            d(failed(t(true, -3601.0, Some(5.0), None)), Need::Keys),
            Action::Refuse
        );
        assert_eq!(
            d(failed(t(true, -3601.0, Some(31.0), None)), Need::Keys),
            Action::Fetch
        );
        assert_eq!(
            d(failed(t(true, -3601.0, Some(5.0), None)), Need::UnknownKid),
            Action::Refuse
        );
        let stale = t(true, -10.0, Some(5.0), None);
        assert!(stale.usable(NOW, &LIM));
        assert_eq!(stale.until(NOW, &LIM), NOW + 30.0);
        let nearly = t(true, -3590.0, Some(5.0), None);
        assert_eq!(nearly.until(NOW, &LIM), NOW + 10.0);
        let zero = Limits {
            max_stale: 0.0,
            ..LIM
        };
        assert!(!t(true, -1.0, None, None).usable(NOW, &zero));
    }

    #[test]
    fn failed_first_fetch_is_not_retried_within_min_refresh() {
        assert_eq!(
            d(failed(t(false, -1.0, Some(5.0), None)), Need::Keys),
            Action::Refuse
        );
        assert_eq!(
            d(failed(t(false, -1.0, Some(31.0), None)), Need::Keys),
            Action::Fetch
        );
    }

    #[test]
    fn evicted_keys_are_fetched_again_despite_a_recent_success() {
        // The last attempt succeeded 5 s ago (the rate-limit state outlived the eviction), but
        // there are no keys here: fetching is not hammering a failing issuer.
        assert_eq!(
            d(t(false, -1.0, Some(5.0), None), Need::Keys),
            Action::Fetch
        );
    }

    #[test]
    fn unknown_kid_refetches_at_most_every_min_refresh() {
        assert_eq!(
            d(t(true, 500.0, Some(100.0), None), Need::UnknownKid),
            Action::Fetch
        );
        assert_eq!(
            d(t(true, 500.0, Some(10.0), None), Need::UnknownKid),
            Action::Use
        );
    }

    #[test]
    fn another_backend_fetching() {
        // Nothing cached: wait for it. Stale keys: use them meanwhile.
        assert_eq!(
            d(t(false, -1.0, Some(40.0), Some(0.5)), Need::Keys),
            Action::Wait
        );
        assert_eq!(
            d(t(true, -1.0, Some(40.0), Some(0.5)), Need::Keys),
            Action::Use
        );
        assert_eq!(
            d(t(true, 100.0, Some(40.0), Some(0.5)), Need::UnknownKid),
            Action::Wait
        );
        // A fetch that started long ago died with its backend: fetch again.
        assert_eq!(
            d(t(false, -1.0, Some(40.0), Some(10.0)), Need::Keys),
            Action::Fetch
        );
    }

    #[test]
    fn force_fetches_unless_in_progress() {
        assert_eq!(
            d(t(true, 500.0, Some(1.0), None), Need::Force),
            Action::Fetch
        );
        assert_eq!(
            d(t(true, 500.0, Some(1.0), Some(0.1)), Need::Force),
            Action::Wait
        );
    }
}
