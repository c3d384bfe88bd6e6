//! Who is asking: find the request's token, verify it (or reuse a cached verification), and
//! remember the answer so that a policy calling `get_user_id()` once per row costs a few
//! comparisons per row after the first.
//!
//! Where the token comes from, in order:
//! 1. `kinde_rls.token` (apps on direct or pooled connections, `SET LOCAL`);
//! 2. `request.headers` → `authorization: Bearer …` (PostgREST, Storage over HTTP);
//! 3. `request.jwt`, a compact JWT (Storage, including S3 requests with a session token);
//! 4. `request.jwt.claims` when it holds a compact JWT;
//! 5. `request.jwt.claims` as a JSON object, only when `kinde_rls.trust_request_claims` is on,
//!    and only if it passes every claim rule (Realtime).
//!
//! A token with no `sub` whose `role` is in `kinde_rls.anonymous_roles` (a Supabase anon or
//! service key) is no identity, with no error, whether or not it verifies.
//!
//! Caches are per backend (`thread_local!`: a backend is one thread, so no lock is needed) and
//! keyed so that they cannot serve a stale answer: any change of a verification setting clears
//! them (via [`CONFIG_GEN`]); an entry is used only while `exp + leeway` lies ahead of the
//! statement's start time; the token cache holds at most `kinde_rls.cache_size` entries and
//! evicts the oldest first. Three caches, each with one owner and one `invalidate()`:
//! [`ConfigCache`] (the parsed settings, and the secret file they were read with),
//! [`TokenCache`] (verified tokens, and the key epoch they were verified in) and [`LastAnswer`]
//! (the per-row fast path); [`State::sync`] says which change invalidates which.

use kinde_rls_core::{claims, config, token, Config, ConfigError, Error, Refusal, Settings};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::audit;
use crate::errors::guarded;
use crate::gucs::{self, Request, CONFIG_GEN, TOKEN_GEN};
use crate::jwks;
use crate::stats::{self, Event};

/// A verified (or, by a superuser's choice, trusted) set of claims. `sub` is extracted at
/// verification; the full claim map is built only when a function asks for it, once.
#[derive(Debug)]
pub struct Identity {
    /// The payload as validated JSON text.
    payload: String,
    claims: once_cell::unsync::OnceCell<Map<String, Value>>,
    /// Where each claim sits in `payload`, built once when a function first asks for one claim.
    spans: once_cell::unsync::OnceCell<HashMap<String, (usize, usize)>>,
    pub sub: Option<String>,
    /// Last second (exclusive) at which this identity may be used: `exp + leeway`.
    pub valid_until: i64,
    /// Its row in the statistics ([`stats::row_of`] its configured issuer).
    pub row: u16,
}

impl Identity {
    fn from_verified(v: kinde_rls_core::Verified, valid_until: i64, row: u16) -> Self {
        let sub = claims::subject(&v.registered).map(String::from);
        Identity {
            payload: v.payload,
            claims: once_cell::unsync::OnceCell::new(),
            spans: once_cell::unsync::OnceCell::new(),
            sub,
            valid_until,
            row,
        }
    }

    pub(crate) fn from_claims(
        map: Map<String, Value>,
        text: &str,
        valid_until: i64,
        row: u16,
    ) -> Self {
        let sub = claims::subject(&map).map(String::from);
        Identity {
            payload: text.to_owned(),
            claims: once_cell::unsync::OnceCell::from(map),
            spans: once_cell::unsync::OnceCell::new(),
            sub,
            valid_until,
            row,
        }
    }

    /// All claims. Verification refused every payload whose claim map cannot be built, so this
    /// does not fail; if it ever did, the token is refused rather than read as having no claims.
    pub fn claims(&self) -> &Map<String, Value> {
        self.claims.get_or_init(|| {
            token::full_claims(&self.payload).unwrap_or_else(|r| crate::errors::refuse(&r))
        })
    }

    /// The claims as JSON text (what `verify_jwt` returns, without a round trip through a map).
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// One claim as the JSON text it was signed as: what `get_claim()` returns, so that a big
    /// integer or a long decimal reads exactly as in `get_claims()`.
    pub fn claim_json(&self, name: &str) -> Option<&str> {
        let spans = self
            .spans
            .get_or_init(|| token::member_spans(&self.payload));
        spans.get(name).map(|&(a, b)| &self.payload[a..b])
    }
}

/// What the last lookup was keyed on.
#[derive(PartialEq)]
enum Key {
    /// `kinde_rls.token`, by its generation.
    Token(u64),
    /// The request settings, by their generation (when kinde_rls watches them), with
    /// `kinde_rls.token` unset at generation `token`.
    Watched { token: u64, request: u64 },
    /// The request settings by their text (when another library defined one of them).
    Texts {
        token: u64,
        texts: [Option<String>; 3],
    },
}

/// The answer of the last lookup.
struct Last {
    key: Key,
    identity: Option<Rc<Identity>>,
    /// First second (statement clock) at which the answer must be worked out again: the
    /// identity's `exp + leeway`, or the next statement for trusted claims that were refused
    /// (a `nbf` may have been reached).
    until: i64,
    /// Times this answer was given by the per-row fast path and not yet counted in the
    /// statistics (added when the answer is replaced, and when a transaction ends).
    hits: u64,
    /// `until` is judged by the wall clock too: the session's login identity, which no request
    /// renews, must end at its `exp` also inside one long statement or a procedure's loop of
    /// transactions (whose statement clock stands still).
    wall: bool,
}

impl Last {
    fn new(key: Key, identity: Option<Rc<Identity>>, until: i64) -> Self {
        Last {
            key,
            identity,
            until,
            hits: 0,
            wall: false,
        }
    }

    /// Whether the answer may still be given at `now` (the statement clock).
    fn fresh(&self, now: i64) -> bool {
        now < self.until && (!self.wall || coarse_clock() < self.until)
    }

    fn row(&self) -> u16 {
        self.identity.as_ref().map_or(0, |i| i.row)
    }
}

/// What one backend remembers between lookups.
#[derive(Default)]
struct State {
    config: ConfigCache,
    tokens: TokenCache,
    last: LastAnswer,
    /// The token generation last warned about as session-level.
    warned_token_gen: u64,
    /// The refusal being raised was counted (and logged) where it was made.
    refusal_counted: bool,
    /// The audit log said this session trusts `request.jwt.claims`.
    trust_logged: bool,
    /// Token-cache answers not yet counted in the statistics, per row: `verify_jwt(token)` per
    /// row of a query answers from the cache each time, and one shared counter written per row
    /// by every backend would be a contended cache line. Added at the end of the transaction.
    cache_hits: CacheHits,
}

/// Token-cache answers per statistics row, not yet counted.
struct CacheHits([u64; stats::MAX_ROWS]);

impl Default for CacheHits {
    fn default() -> Self {
        CacheHits([0; stats::MAX_ROWS])
    }
}

impl CacheHits {
    fn add(&mut self, row: u16) {
        if let Some(n) = self.0.get_mut(usize::from(row)) {
            *n += 1;
        }
    }

    fn flush(&mut self) {
        for (row, n) in self.0.iter_mut().enumerate() {
            if *n > 0 {
                stats::count_many(row as u16, Event::CacheHit, std::mem::take(n));
            }
        }
    }
}

/// The verification settings, parsed once per change of them ([`CONFIG_GEN`]) or of the secret
/// file's content.
#[derive(Default)]
struct ConfigCache {
    config: Option<Rc<Config>>,
    /// [`CONFIG_GEN`] as last seen.
    gen: u64,
    /// The secret file as it was when `config` was built.
    secret_file_stamp: Option<FileStamp>,
    /// Statement start (µs) at which the secret file was last looked at: once per statement,
    /// on every path (the per-row fast path and cache hits included).
    stamp_checked_at: i64,
}

/// The last lookup's answer: `get_user_id()` once per row costs a comparison of generations.
#[derive(Default)]
struct LastAnswer(Option<Last>);

impl LastAnswer {
    fn get(&self) -> Option<&Last> {
        self.0.as_ref()
    }

    /// The last answer, to be given again: counted as a fast-path hit.
    fn hit(&mut self) -> Option<Rc<Identity>> {
        let last = self.0.as_mut()?;
        last.hits += 1;
        last.identity.clone()
    }

    fn set(&mut self, last: Last) {
        self.flush();
        self.0 = Some(last);
    }

    fn invalidate(&mut self) {
        self.flush();
        self.0 = None;
    }

    /// Add the fast-path hits not yet counted to the statistics.
    fn flush(&mut self) {
        if let Some(last) = self.0.as_mut() {
            stats::fast_path(last.row(), std::mem::take(&mut last.hits));
        }
    }
}

/// Verified tokens, compared on the whole token but hashed on its length and last 32 bytes
/// (the signature): hashing a whole 1 KiB token would cost more than the rest of a lookup.
/// Only verified tokens are inserted, and nobody can make many valid tokens sharing a
/// signature tail, so buckets stay at one entry.
#[derive(Default)]
struct TokenCache {
    map: HashMap<[u8; 40], Bucket>,
    order: VecDeque<Rc<str>>,
    /// [`jwks::keys_epoch`] as last seen: fetched keys that changed (rotation) drop what was
    /// verified with the old ones.
    keys_epoch: u64,
}

/// The cached tokens sharing a hash key (in practice one).
type Bucket = Vec<(Rc<str>, Rc<Identity>)>;

fn bucket_key(token: &str) -> [u8; 40] {
    let b = token.as_bytes();
    let tail = &b[b.len().saturating_sub(32)..];
    let mut k = [0u8; 40];
    k[..tail.len()].copy_from_slice(tail);
    k[32..].copy_from_slice(&(b.len() as u64).to_le_bytes());
    k
}

impl TokenCache {
    fn get(&self, token: &str) -> Option<&Rc<Identity>> {
        self.map
            .get(&bucket_key(token))?
            .iter()
            .find(|(t, _)| &**t == token)
            .map(|(_, id)| id)
    }

    fn remove(&mut self, token: &str) {
        let k = bucket_key(token);
        if let Some(bucket) = self.map.get_mut(&k) {
            bucket.retain(|(t, _)| &**t != token);
            if bucket.is_empty() {
                self.map.remove(&k);
            }
        }
    }

    /// Insert, evicting the oldest entries to stay within `cap`. A token already cached (one
    /// verified again, say after its keys were refetched) is updated and becomes the newest: one
    /// entry per token in `order`, so eviction never drops a fresher entry early. That walk of
    /// `order` happens only on a re-verification, never on a lookup.
    fn insert(&mut self, token: &str, id: Rc<Identity>, cap: usize) {
        if cap == 0 {
            return;
        }
        if let Some(entry) = self
            .map
            .get_mut(&bucket_key(token))
            .and_then(|b| b.iter_mut().find(|(t, _)| &**t == token))
        {
            entry.1 = id;
            let t = entry.0.clone();
            self.order.retain(|o| !Rc::ptr_eq(o, &t));
            self.order.push_back(t);
            return;
        }
        while self.order.len() >= cap {
            match self.order.pop_front() {
                Some(old) => self.remove(&old),
                None => break,
            }
        }
        let t: Rc<str> = Rc::from(token);
        self.map
            .entry(bucket_key(token))
            .or_default()
            .push((t.clone(), id));
        self.order.push_back(t);
    }

    /// Whether the fetched keys changed since the last call (then the entries are stale).
    fn keys_changed(&mut self, epoch: u64) -> bool {
        let changed = self.keys_epoch != epoch;
        self.keys_epoch = epoch;
        changed
    }

    fn invalidate(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Seconds since the Unix epoch at the start of the current statement: one clock for a whole
/// statement (and its parallel workers), so a scan never changes its mind half way.
pub fn now() -> i64 {
    const PG_EPOCH_OFFSET: i64 = 946_684_800;
    // SAFETY: reads the current statement's start timestamp; callable in any backend state.
    let ts = unsafe { pgrx::pg_sys::GetCurrentStatementStartTimestamp() };
    ts.div_euclid(1_000_000) + PG_EPOCH_OFFSET
}

/// Seconds since the Unix epoch, now (not the statement's start), from the coarse clock (a few
/// milliseconds' resolution, read without a system call): the per-row fast path of a session
/// that signed in with a token reads it for every row.
pub fn coarse_clock() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the clock into `ts`, which lives across the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        ts.tv_sec
    } else {
        kinde_rls_core::keycache::wall_clock() as i64
    }
}

/// Identity of the secret file's content, to notice when it is replaced: written in place
/// (modification time, size) or swapped for another file (`mv`: device and inode, change time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    size: u64,
}

fn stamp(path: &str) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
        size: m.size(),
    })
}

/// Read `kinde_rls.secret_file`: it must not be readable by other OS users, and its content
/// (less a trailing newline) is the secret. Errors name the path, never the content.
fn read_secret_file(path: &str) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    config::check_secret_path(path)?;
    let bad = |m: String| {
        ConfigError::new(
            "kinde_rls.secret_file",
            m,
            "Set kinde_rls.secret_file to a file owned by the server's OS user with mode 0600 or 0640.",
        )
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(format!(
            "kinde_rls.secret_file {path:?} cannot be read: {e}"
        ))
    })?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(bad(format!(
            "kinde_rls.secret_file {path:?} is readable by other OS users"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "kinde_rls.secret_file {path:?} cannot be read: {e}"
        ))
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// The verification settings as they are now.
pub fn settings_config() -> Result<Config, ConfigError> {
    let providers = gucs::str_setting(&gucs::PROVIDERS, "kinde_rls.providers")?;
    // With kinde_rls.providers set, it is the whole configuration: the secret settings are not
    // read (a missing or unreadable secret file must not stop verification it takes no part in).
    let (secret, secret_source) = if providers.is_some() {
        (None, None)
    } else {
        secret_setting()?
    };
    Config::from_settings(&Settings {
        domain: gucs::str_setting(&gucs::DOMAIN, "kinde_rls.domain")?,
        jwks_url: gucs::str_setting(&gucs::JWKS_URL, "kinde_rls.jwks_url")?,
        providers,
        issuer: gucs::str_setting(&gucs::ISSUER, "kinde_rls.issuer")?,
        audience: gucs::str_setting(&gucs::AUDIENCE, "kinde_rls.audience")?,
        jwks: gucs::str_setting(&gucs::JWKS, "kinde_rls.jwks")?,
        secret: secret.as_deref(),
        secret_source,
        leeway: i64::from(gucs::LEEWAY.get()),
        require_sub: gucs::REQUIRE_SUB.get(),
        anonymous_roles: gucs::str_setting(&gucs::ANONYMOUS_ROLES, "kinde_rls.anonymous_roles")?,
    })
}

/// The HMAC secret and the setting it came from: the file named by `kinde_rls.secret_file`,
/// or `kinde_rls.secret` — the latter only when the library is preloaded. Without preloading,
/// a backend that has not loaded the library holds the value as a plain placeholder that any
/// role can read with `SHOW`, so a secret set that way is not secret and is not used.
fn secret_setting() -> Result<(Option<String>, Option<&'static str>), ConfigError> {
    let secret = gucs::str_setting(&gucs::SECRET, "kinde_rls.secret")?;
    let file = gucs::str_setting(&gucs::SECRET_FILE, "kinde_rls.secret_file")?;
    match (secret, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "kinde_rls.secret_file",
            "both kinde_rls.secret and kinde_rls.secret_file are set",
            "Set only one of kinde_rls.secret and kinde_rls.secret_file.",
        )),
        (None, Some(path)) => Ok((
            Some(read_secret_file(path)?),
            Some("kinde_rls.secret_file"),
        )),
        (Some(_), None) if !gucs::PRELOADED.load(Ordering::Relaxed) => Err(ConfigError::new(
            "kinde_rls.secret",
            "kinde_rls.secret is not used: kinde_rls is not in shared_preload_libraries, so any role could read the secret (SHOW kinde_rls.secret) in a session that has not loaded the library",
            "Put the secret in a file only the server's OS user can read and set kinde_rls.secret_file to its path, or add kinde_rls to shared_preload_libraries and restart; then rotate the secret, which was readable.",
        )),
        (Some(s), None) => Ok((Some(s.to_owned()), Some("kinde_rls.secret"))),
        (None, None) => Ok((None, None)),
    }
}

impl ConfigCache {
    /// Notice a change of the settings or of the secret file, and forget the configuration;
    /// returns whether it was forgotten (then everything verified with it is stale too).
    fn sync(&mut self) -> bool {
        let mut changed = false;
        // A replaced secret file invalidates everything verified with the old secret. Looked at
        // once per statement, here, so that a cache hit or the per-row fast path cannot keep an
        // identity the new secret would refuse.
        // SAFETY: reads the current statement's start timestamp; callable in any backend state.
        let stmt = unsafe { pgrx::pg_sys::GetCurrentStatementStartTimestamp() };
        if stmt != self.stamp_checked_at {
            self.stamp_checked_at = stmt;
            if self.config.is_some() {
                let now_stamp = match gucs::str_setting(&gucs::SECRET_FILE, "kinde_rls.secret_file")
                {
                    Ok(Some(path)) => stamp(path),
                    _ => None,
                };
                if now_stamp != self.secret_file_stamp {
                    self.invalidate();
                    changed = true;
                }
            }
        }
        let gen = CONFIG_GEN.load(Ordering::Relaxed);
        if self.gen != gen {
            self.gen = gen;
            self.invalidate();
            changed = true;
        }
        changed
    }

    fn get(&mut self) -> Result<Rc<Config>, ConfigError> {
        if let Some(c) = &self.config {
            return Ok(c.clone());
        }
        // Stamp the file before reading it: a replacement racing with the read is then seen
        // at the next statement.
        let file_stamp = match gucs::str_setting(&gucs::SECRET_FILE, "kinde_rls.secret_file")? {
            Some(path) => stamp(path),
            None => None,
        };
        let c = Rc::new(settings_config()?);
        self.config = Some(c.clone());
        self.secret_file_stamp = file_stamp;
        Ok(c)
    }

    fn invalidate(&mut self) {
        self.config = None;
    }
}

impl State {
    /// Before each lookup: a change of the settings or the secret file invalidates the
    /// configuration, and it or a change of the fetched keys invalidates every verified token
    /// and the last answer.
    fn sync(&mut self) {
        let config_changed = self.config.sync();
        let keys_changed = self.tokens.keys_changed(jwks::keys_epoch());
        if config_changed || keys_changed {
            self.tokens.invalidate();
            self.last.invalidate();
        }
    }

    fn config(&mut self) -> Result<Rc<Config>, ConfigError> {
        self.config.get()
    }

    /// `verify_jwt(token)`: the token verified against the configuration, through the cache.
    fn verify(&mut self, token: &str, now: i64) -> Result<Rc<Identity>, Error> {
        match self.lookup(token, now, false)? {
            Some(id) => Ok(id),
            // Unreachable: without the anonymous rule every outcome is an identity or an error.
            None => Err(Refusal::new(kinde_rls_core::Check::Sub, "the token names nobody").into()),
        }
    }

    /// The identity a request's token stands for: `None` for an anonymous credential (a token
    /// with no `sub` whose `role` is in `kinde_rls.anonymous_roles`, signature unchecked), else
    /// the verified identity; a token that does not verify is an error.
    fn identify(&mut self, token: &str, now: i64) -> Result<Option<Rc<Identity>>, Error> {
        self.lookup(token, now, true)
    }

    fn lookup(
        &mut self,
        token: &str,
        now: i64,
        request: bool,
    ) -> Result<Option<Rc<Identity>>, Error> {
        if let Some(id) = self.tokens.get(token) {
            if now < id.valid_until {
                let id = id.clone();
                // A cached identity with a `sub` cannot be anonymous; one without (possible with
                // `require_sub = off`, and cached by `verify_jwt()` too) is held to the rule.
                if request && id.sub.is_none() {
                    let config = self.config()?;
                    if claims::is_anonymous(id.claims(), &config.anonymous_roles) {
                        return Ok(None);
                    }
                }
                self.cache_hits.add(id.row);
                return Ok(Some(id));
            }
        }
        let config = self.config()?;
        let (outcome, took, fetches) = {
            let config = std::panic::AssertUnwindSafe(&*config);
            timed(move || {
                let mut source = jwks::Source::default();
                let v = if request {
                    kinde_rls_core::identify_configured(token, &config, now, &mut source)?
                } else {
                    Some(kinde_rls_core::verify_configured(
                        token,
                        &config,
                        now,
                        &mut source,
                    )?)
                };
                Ok((v, source.until))
            })
        };
        let row = match &outcome {
            Ok((Some(v), _)) => {
                stats::row_of(kinde_rls_core::audit::issuer_of(&config, &v.registered).as_deref())
            }
            Ok((None, _)) | Err(Error::Config(_)) => 0,
            Err(Error::Refused(r)) => {
                let a = kinde_rls_core::audit::audit(token, Some(&config), r);
                let row = stats::row_of(a.issuer.as_deref());
                audit::refused(r, &a, row);
                self.refusal_counted = true;
                row
            }
        };
        count_fetches(row, fetches);
        if matches!(outcome, Ok((Some(_), _)) | Err(Error::Refused(_))) {
            stats::verify_time(row, took);
        }
        let (verified, keys_until) = outcome?;
        let Some(verified) = verified else {
            return Ok(None);
        };
        stats::count(row, Event::Verified);
        // A verification made with fetched keys is reused only while those keys are fresh.
        let keys_until = if keys_until.is_finite() {
            keys_until.ceil() as i64
        } else {
            i64::MAX
        };
        let valid_until = verified.exp.saturating_add(config.leeway()).min(keys_until);
        // Keys this verification fetched (or saw rotated) stale what was verified before it; the
        // new answer is verified with the new keys, so it is not stale at the next lookup.
        if self.tokens.keys_changed(jwks::keys_epoch()) {
            self.tokens.invalidate();
            self.last.invalidate();
        }
        let id = Rc::new(Identity::from_verified(verified, valid_until, row));
        let cap = usize::try_from(gucs::CACHE_SIZE.get()).unwrap_or(0);
        self.tokens.insert(token, id.clone(), cap);
        Ok(Some(id))
    }
}

/// Run a verification (guarded: a panic is a refusal) and say how long it took, in
/// microseconds, and which key fetches it made, for the statistics. Fetches noted by an earlier
/// verification that an error (a cancel) cut short were never taken: they are dropped first,
/// not counted for this token's issuer.
pub fn timed<T>(
    verify: impl FnOnce() -> Result<T, Error> + std::panic::UnwindSafe,
) -> (Result<T, Error>, u64, jwks::FetchEvents) {
    let _ = jwks::take_events();
    let started = std::time::Instant::now();
    let outcome = guarded(verify);
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    (outcome, took, jwks::take_events())
}

/// Key fetches made for a verification, counted under its issuer's row.
pub fn count_fetches(row: u16, f: jwks::FetchEvents) {
    stats::count_n(row, Event::FetchOk, f.ok);
    stats::count_n(row, Event::FetchFailed, f.failed);
    stats::count_n(row, Event::FetchRateLimited, f.rate_limited);
    if let Some(skew) = f.skew_s {
        stats::clock_skew(row, skew);
    }
}

/// Verify a token against the configured keys and rules, through the cache.
pub fn verify_configured(token: &str) -> Result<Rc<Identity>, Error> {
    let now = now();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.sync();
        s.verify(token, now)
    })
}

/// Count the fast-path hits not yet counted (at the end of a transaction, and before this
/// backend reads the statistics).
pub fn flush_stats() {
    // `try_with`: a transaction callback may run while the process exits, and `try_borrow_mut`:
    // it never runs inside a lookup, but if it did, counting can wait for the next one.
    let _ = STATE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.last.flush();
            s.cache_hits.flush();
        }
    });
}

/// The configuration, for `jwt_explain()`.
pub fn current_config() -> Result<Rc<Config>, ConfigError> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.sync();
        s.config()
    })
}

/// The bearer token in a `request.headers` JSON document, if any. Header names are matched
/// case-insensitively (HTTP's rule: PostgREST lower-cases them, a hand-written
/// `{"Authorization": …}` is the same header); two members that both name it — whatever their
/// case or escapes, even the very same name twice — are ambiguous and refused rather than one
/// of them chosen.
fn bearer_from_headers(headers: &str) -> Result<Option<String>, Refusal> {
    let Ok(AuthorizationMembers(values)) = serde_json::from_str::<AuthorizationMembers>(headers)
    else {
        return Ok(None);
    };
    let value = match values.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => {
            return Err(Refusal::new(
                kinde_rls_core::Check::Format,
                "request.headers names the authorization header more than once",
            )
            .because("ambiguous request headers"))
        }
    };
    let Some((scheme, rest)) = value
        .as_deref()
        .map(str::trim)
        .and_then(|a| a.split_once(char::is_whitespace))
    else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    Ok(Some(rest.trim().to_owned()))
}

/// The values of every top-level member of a JSON object whose name is `authorization` in any
/// case: `Some` for a string, `None` for anything else. Read member by member, so a name given
/// twice is seen twice (a map would keep one), and values are never built as `serde_json::Value`
/// (whose magic member names could turn an object into a string).
struct AuthorizationMembers(Vec<Option<String>>);

impl<'de> serde::Deserialize<'de> for AuthorizationMembers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = AuthorizationMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k.eq_ignore_ascii_case("authorization") {
                        out.push(m.next_value::<StringOrOther>()?.0);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(AuthorizationMembers(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A JSON string, or `None` for any other value (read and dropped).
struct StringOrOther(Option<String>);

impl<'de> serde::Deserialize<'de> for StringOrOther {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringOrOther;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrOther, E> {
                Ok(StringOrOther(Some(v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<StringOrOther, E> {
                Ok(StringOrOther(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<StringOrOther, E> {
                Ok(StringOrOther(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<StringOrOther, E> {
                Ok(StringOrOther(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<StringOrOther, E> {
                Ok(StringOrOther(None))
            }
            fn visit_unit<E>(self) -> Result<StringOrOther, E> {
                Ok(StringOrOther(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<StringOrOther, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(StringOrOther(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<StringOrOther, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(StringOrOther(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The identity of the current request: `Ok(None)` when there is no token (anonymous), an error
/// when there is a token that does not verify. Never falls back to anonymous on failure.
pub fn current() -> Result<Option<Rc<Identity>>, Error> {
    let now = now();
    let result = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.sync();
        s.refusal_counted = false;
        let r = resolve(&mut s, now);
        if let Err(Error::Refused(refusal)) = &r {
            // Refused before any token was verified (ambiguous request headers, unreadable
            // trusted claims): counted here, under no issuer.
            if !s.refusal_counted {
                audit::refused(refusal, &kinde_rls_core::audit::Audit::default(), 0);
            }
        }
        r
    });
    result
}

fn until(id: &Option<Rc<Identity>>) -> i64 {
    id.as_ref().map_or(i64::MAX, |i| i.valid_until)
}

/// A token used in a later transaction than the one that set it was set for the whole session
/// (`SET`, `set_config(…, false)`): behind a transaction-mode pooler the next client on this
/// server connection would inherit it. Say so, once per value.
fn warn_if_session_token(s: &mut State, gen: u64) {
    // A parallel worker restores the leader's settings in a transaction of its own, so its
    // count of ended transactions says nothing about the leader's; the leader warns.
    // SAFETY: a plain read of a backend global.
    if unsafe { pgrx::pg_sys::ParallelWorkerNumber } >= 0 {
        return;
    }
    if s.warned_token_gen == gen
        || gucs::TOKEN_SET_AT.load(Ordering::Relaxed) == gucs::XACT_COUNT.load(Ordering::Relaxed)
    {
        return;
    }
    s.warned_token_gen = gen;
    pgrx::pg_sys::panic::ErrorReport::new(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING,
        "kinde_rls.token outlived the transaction that set it",
        "kinde_rls",
    )
    .set_detail(
        "It was set for the whole session (SET, or set_config with is_local false); behind a transaction-mode connection pooler the next client on this server connection would run as this user.",
    )
    .set_hint("Set the token per transaction: SET LOCAL kinde_rls.token = ..., or set_config('kinde_rls.token', $1, true).")
    .report(pgrx::PgLogLevel::WARNING);
}

fn resolve(s: &mut State, now: i64) -> Result<Option<Rc<Identity>>, Error> {
    // The per-row fast path: nothing the answer depends on has changed since the last lookup
    // (every change, including the end of a SET LOCAL, bumps a generation), so neither read nor
    // hash a setting.
    let token_gen = TOKEN_GEN.load(Ordering::Relaxed);
    let watching = gucs::WATCHING_REQUEST.load(Ordering::Relaxed);
    let request_gen = gucs::REQUEST_GEN.load(Ordering::Relaxed);
    if let Some(last) = s.last.get() {
        if last.fresh(now) {
            match last.key {
                Key::Token(g) if g == token_gen => {
                    let id = s.last.hit();
                    warn_if_session_token(s, token_gen);
                    return Ok(id);
                }
                Key::Watched { token, request } if token == token_gen && request == request_gen => {
                    return Ok(s.last.hit());
                }
                _ => {}
            }
        }
    }
    if let Some(token) = gucs::token()? {
        warn_if_session_token(s, token_gen);
        s.last.invalidate();
        let identity = s.identify(token.trim(), now)?;
        if identity.is_none() {
            stats::count(0, Event::Anonymous);
        }
        s.last.set(Last::new(
            Key::Token(token_gen),
            identity.clone(),
            until(&identity),
        ));
        return Ok(identity);
    }
    let key = if watching {
        Key::Watched {
            token: token_gen,
            request: request_gen,
        }
    } else {
        // Unreadable bytes key as absent; they are refused below if their source is consulted.
        Key::Texts {
            token: token_gen,
            texts: Request::ALL.map(|r| gucs::request_setting(r).ok().flatten().map(String::from)),
        }
    };
    if let Some(last) = s.last.get() {
        if last.key == key && last.fresh(now) {
            return Ok(s.last.hit());
        }
    }
    s.last.invalidate();
    // Each source is read only if the ones before it gave no token, and only when it was set in
    // the session: a value the session inherited (a role or database default) is not this
    // request's (see gucs::set_in_session).
    let mut wall = false;
    let (identity, until) = if let Some(token) = match gucs::request_value(Request::Headers)? {
        Some(h) => bearer_from_headers(h)?,
        None => None,
    } {
        let id = s.identify(&token, now)?;
        (id.clone(), until(&id))
    } else if let Some(token) = gucs::request_value(Request::Jwt)? {
        let id = s.identify(token.trim(), now)?;
        (id.clone(), until(&id))
    } else if let Some(text) = gucs::request_value(Request::Claims)? {
        if token::looks_like_compact(text) {
            let id = s.identify(text.trim(), now)?;
            (id.clone(), until(&id))
        } else if gucs::TRUST_REQUEST_CLAIMS.get() {
            trusted_claims(s, text, now)?
        } else {
            wall = true;
            login_or_nobody(s, now)?
        }
    } else {
        wall = true;
        login_or_nobody(s, now)?
    };
    if identity.is_none() {
        stats::count(0, Event::Anonymous);
    }
    let mut last = Last::new(key, identity.clone(), until);
    last.wall = wall && identity.is_some();
    s.last.set(last);
    Ok(identity)
}

/// A request with no token of its own, in a session that signed in with a token (PostgreSQL 18
/// `oauth` with kinde_rls as the validator, [`crate::oauth`]): the login's identity. Its claims
/// are judged again by the session's rules — the login was judged by the server-wide settings,
/// and a database or role may set its own issuer, audience or leeway — and once `exp + leeway`
/// has passed the session has no identity left: every lookup is refused (28000) until a request
/// sets a token of its own or the client signs in again. Without a login, nobody.
fn login_or_nobody(s: &mut State, now: i64) -> Result<(Option<Rc<Identity>>, i64), Error> {
    let Some(id) = login_identity() else {
        return Ok((None, i64::MAX));
    };
    let config = s.config()?;
    // The later of the statement clock and the wall clock: a statement (or a procedure's loop of
    // transactions) that began before `exp` does not keep the identity past it.
    let now = now.max(coarse_clock());
    match kinde_rls_core::check_trusted_claims(id.claims(), &config, now) {
        Ok(exp) => {
            let until = exp.saturating_add(config.leeway());
            Ok((Some(id), until))
        }
        Err(mut r) => {
            if r.check == kinde_rls_core::Check::Exp {
                r.reason = Some("the login token expired; sign in again");
            }
            r.detail = format!("the token this session signed in with: {}", r.detail);
            let a = kinde_rls_core::audit::Audit {
                issuer: kinde_rls_core::audit::issuer_of(&config, id.claims()),
                sub: id.sub.as_deref().map(kinde_rls_core::error::quote),
                ..Default::default()
            };
            audit::refused(&r, &a, id.row);
            s.refusal_counted = true;
            Err(r.into())
        }
    }
}

#[cfg(feature = "pg18")]
fn login_identity() -> Option<Rc<Identity>> {
    crate::oauth::login_identity()
}

#[cfg(not(feature = "pg18"))]
fn login_identity() -> Option<Rc<Identity>> {
    None
}

/// `request.jwt.claims` taken as verified because a superuser said so
/// (`kinde_rls.trust_request_claims`), for a service that verified the token and passes on only
/// its claims (Realtime). The claims must pass every claim rule a token passes; claims that do
/// not (expired, another issuer or audience, no `sub`) are no identity — anonymous, not an
/// error, because one query may evaluate many subscribers' claims in turn (Realtime's
/// `apply_rls`) and one subscriber's stale claims must not stop the others' change feed. Why is
/// reported at DEBUG1. Text that is not a JSON object is refused (28000): that is not a
/// verified token's claims at all. Returns the identity and when to look again.
fn trusted_claims(
    s: &mut State,
    text: &str,
    now: i64,
) -> Result<(Option<Rc<Identity>>, i64), Error> {
    let map =
        token::parse_object(text.as_bytes(), "request.jwt.claims").map_err(|mut r: Refusal| {
            r.detail = format!("{} (kinde_rls.trust_request_claims is on)", r.detail);
            r
        })?;
    if map.is_empty() {
        return Ok((None, i64::MAX));
    }
    let config = s.config()?;
    if claims::is_anonymous(&map, &config.anonymous_roles) {
        return Ok((None, i64::MAX));
    }
    let issuer = kinde_rls_core::audit::issuer_of(&config, &map);
    let row = stats::row_of(issuer.as_deref());
    if !s.trust_logged {
        s.trust_logged = audit::trusting_claims();
    }
    match kinde_rls_core::check_trusted_claims(&map, &config, now) {
        Ok(exp) => {
            stats::count(row, Event::Trusted);
            let id = Identity::from_claims(map, text, exp.saturating_add(config.leeway()), row);
            let until = id.valid_until;
            Ok((Some(Rc::new(id)), until))
        }
        Err(r) => {
            let a = kinde_rls_core::audit::Audit {
                issuer,
                ..Default::default()
            };
            audit::refused(&r, &a, row);
            pgrx::pg_sys::panic::ErrorReport::new(
                pgrx::PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "kinde_rls: trusted request.jwt.claims read as anonymous: {} check failed",
                    r.check
                ),
                "kinde_rls",
            )
            .set_detail(r.detail)
            .report(pgrx::PgLogLevel::DEBUG1);
            Ok((None, now.saturating_add(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_from_headers;

    #[test]
    fn bearer_parsing() {
        let b = |h: &str| bearer_from_headers(h).unwrap();
        assert_eq!(
            b(r#"{"authorization":"Bearer a.b.c"}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            b(r#"{"authorization":"bearer   a.b.c "}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            b(r#"{"Authorization":"Bearer a.b.c","Accept":"*/*"}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            b(r#"{"AUTHORIZATION":"Bearer a.b.c"}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(b(r#"{"authorization":"Basic abc"}"#), None);
        assert_eq!(b(r#"{"authorization":7}"#), None);
        assert_eq!(b(r#"{"accept":"*/*"}"#), None);
        assert_eq!(b("not json"), None);
        assert_eq!(b("[]"), None);
        let e = bearer_from_headers(
            r#"{"authorization":"Bearer a.b.c","Authorization":"Bearer x.y.z"}"#,
        )
        .unwrap_err();
        assert_eq!(e.check, kinde_rls_core::Check::Format);
    }
}
