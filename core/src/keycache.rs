//! When to fetch an issuer's keys, when to use what is cached, and when to wait: the policy of
//! the JWKS caches, as a pure function of times so that it is tested without a clock or a
//! network. The extension holds the state (per backend, or in shared memory) and acts on the
//! answer.
//!
//! The rules:
//! - fresh keys (fetched less than `ttl` ago) are used as they are;
//! - expired keys are refetched, but a failed or recent attempt is not repeated for
//!   `min_refresh` seconds, and meanwhile the expired keys keep working (fail-safe for an
//!   issuer outage; the caller logs a WARNING when a refetch fails);
//! - a token naming an unknown `kid` triggers one refetch, at most every `min_refresh` seconds,
//!   so a flood of made-up `kid`s costs at most one request per interval;
//! - while another backend fetches (shared cache), a backend that has keys uses them and one
//!   that has none waits, never longer than the fetch timeout.

/// What is known about one source's cache entry. Times are Unix seconds; 0 means never.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Times {
    /// The entry holds a usable key set (possibly expired).
    pub has_keys: bool,
    /// The key set is fresh until this time.
    pub expires_at: f64,
    /// When a fetch was last started, successful or not.
    pub last_attempt: f64,
    /// When a fetch in progress elsewhere started (shared cache only); 0 when none.
    pub fetching_since: f64,
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

/// Decide what to do. `timeout` is the fetch timeout in seconds: a fetch started elsewhere
/// more than `timeout + 1` seconds ago is presumed dead (its backend was killed mid-fetch).
pub fn decide(t: &Times, need: Need, now: f64, min_refresh: f64, timeout: f64) -> Action {
    let fetching = t.fetching_since > 0.0 && now - t.fetching_since < timeout + 1.0;
    let recently_tried = t.last_attempt > 0.0 && now - t.last_attempt < min_refresh;
    match need {
        Need::Force if fetching => Action::Wait,
        Need::Force => Action::Fetch,
        Need::Keys if t.has_keys && now < t.expires_at => Action::Use,
        Need::Keys if fetching && t.has_keys => Action::Use,
        Need::Keys if fetching => Action::Wait,
        Need::Keys if recently_tried && t.has_keys => Action::Use,
        Need::Keys if recently_tried => Action::Refuse,
        Need::Keys => Action::Fetch,
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
            fetching_since: fetching_for.map_or(0.0, |a| NOW - a),
        }
    }

    fn d(times: Times, need: Need) -> Action {
        decide(&times, need, NOW, 30.0, 2.0)
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
        assert_eq!(d(t(true, -1.0, Some(5.0), None), Need::Keys), Action::Use);
    }

    #[test]
    fn failed_first_fetch_is_not_retried_within_min_refresh() {
        assert_eq!(
            d(t(false, -1.0, Some(5.0), None), Need::Keys),
            Action::Refuse
        );
        assert_eq!(
            d(t(false, -1.0, Some(31.0), None), Need::Keys),
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
