//! `kinde_rls_check()`: what is unsafe or unhealthy about this server's setup, one finding per
//! row. Nothing on a healthy setup. Read-only: it never fetches keys or changes a setting.

use kinde_rls_core::keycache::wall_clock;
use pgrx::prelude::*;

use crate::{gucs, identity, jwks, stats};

/// Clock difference from an issuer's `Date` header above which the check warns (seconds).
pub const MAX_SKEW_S: i64 = 30;
/// Leeway above which the check warns (seconds).
pub const MAX_LEEWAY_S: i32 = 300;

pub struct Finding {
    pub level: &'static str,
    pub setting: Option<String>,
    pub message: String,
    pub hint: String,
}

fn finding(level: &'static str, setting: &str, message: String, hint: &str) -> Finding {
    Finding {
        level,
        setting: (!setting.is_empty()).then(|| setting.to_string()),
        message,
        hint: hint.to_string(),
    }
}

/// Every query here names its catalogs, functions and operators with `pg_catalog.`: the check
/// runs with the caller's `search_path`, which whoever owns a schema on it could use to answer
/// in the catalogs' place (and, when a superuser runs the check, to run code as one).
///
/// Where a setting's current value comes from (`pg_settings.source`).
///
/// Read with `Spi::connect` and `select`, never `Spi::get_one`, which runs its query as an
/// update and so takes a transaction id: an error on a hot standby, and an id burnt per poll.
fn source_of(name: &str) -> Option<String> {
    const QUERY: &str =
        "SELECT s.source FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) $1";
    Spi::connect(|client| {
        client
            .select(QUERY, Some(1), &[name.into()])
            .ok()?
            .first()
            .get::<String>(1)
            .ok()
            .flatten()
    })
}

/// A setting's values stored in the catalogs — `ALTER DATABASE/ROLE … SET` and functions'
/// `SET` clauses — wherever they apply: `(database oid, role oid, value)`, the oids 0 for "all",
/// and `(-1, -1, value)` for a function's `SET` clause (which applies only while it runs). Setting names are matched case-insensitively, as
/// PostgreSQL matches them.
fn stored(name: &str) -> Vec<(i64, i64, String)> {
    const QUERY: &str = "
        SELECT s.setdatabase::pg_catalog.int8, s.setrole::pg_catalog.int8, c
          FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c
         WHERE pg_catalog.lower(c) OPERATOR(pg_catalog.^@) $1
        UNION ALL
        SELECT -1, -1, c
          FROM pg_catalog.pg_proc p, pg_catalog.unnest(p.proconfig) c
         WHERE pg_catalog.lower(c) OPERATOR(pg_catalog.^@) $1";
    let prefix = format!("{name}=");
    Spi::connect(|client| {
        let mut out = Vec::new();
        if let Ok(rows) = client.select(QUERY, None, &[prefix.as_str().into()]) {
            for row in rows {
                let db = row.get::<i64>(1).ok().flatten().unwrap_or(0);
                let role = row.get::<i64>(2).ok().flatten().unwrap_or(0);
                let text = row.get::<String>(3).ok().flatten().unwrap_or_default();
                let value = text.split_once('=').map_or("", |(_, v)| v).to_string();
                out.push((db, role, value));
            }
        }
        out
    })
}

/// Sources that apply to every database and role of the server.
fn server_wide(source: &str) -> bool {
    matches!(
        source,
        "configuration file" | "command line" | "environment variable" | "global" | "override"
    )
}

pub fn findings() -> Vec<Finding> {
    let mut out = Vec::new();
    let preloaded = gucs::PRELOADED.load(std::sync::atomic::Ordering::Relaxed);

    // A secret other roles can read. The secret set where a session without the library could
    // read it (postgresql.conf without preloading) is refused by the configuration itself and
    // reported below as its error; but a value stored with ALTER DATABASE/ROLE by a session that
    // had not loaded the library is in the catalog for every role to read, used or not.
    let secrets_stored = stored("kinde_rls.secret").len();
    if secrets_stored > 0 {
        out.push(finding(
            "error",
            "kinde_rls.secret",
            format!("kinde_rls.secret is stored with ALTER DATABASE, ALTER ROLE or a function's SET clause ({secrets_stored} of them): every role can read it in pg_db_role_setting, pg_roles or pg_proc"),
            "Remove it there (ALTER DATABASE ... RESET kinde_rls.secret, ALTER ROLE ... RESET kinde_rls.secret, ALTER FUNCTION ... RESET kinde_rls.secret), rotate the secret, and set it in postgresql.conf with the library preloaded, or in kinde_rls.secret_file.",
        ));
    }
    // Trust that reaches further than one role: in this session from a server-wide source, or
    // stored for every role of a database (which a per-role value may hide from a check run as
    // that role).
    let mut everyone: Vec<String> = Vec::new();
    if gucs::TRUST_REQUEST_CLAIMS.get() {
        if let Some(src) = source_of("kinde_rls.trust_request_claims") {
            if server_wide(&src) {
                everyone.push(format!("the {src}"));
            }
        }
    }
    let wide_dbs = stored("kinde_rls.trust_request_claims")
        .into_iter()
        .filter(|(_, role, v)| *role == 0 && kinde_rls_core::config::truthy(v))
        .count();
    if wide_dbs > 0 {
        everyone.push(format!(
            "ALTER DATABASE ... SET or ALTER ROLE ALL SET ({wide_dbs} of them)"
        ));
    }
    if !everyone.is_empty() {
        out.push(finding(
            "warning",
            "kinde_rls.trust_request_claims",
            format!("kinde_rls.trust_request_claims is on for every role (set in {}): any role that can set request.jwt.claims can claim to be any user", everyone.join(" and ")),
            "Turn it off there and on only for the role of the service that verified the token: ALTER ROLE <service role> SET kinde_rls.trust_request_claims = on.",
        ));
    }

    let leeway = gucs::LEEWAY.get();
    if leeway > MAX_LEEWAY_S {
        out.push(finding(
            "warning",
            "kinde_rls.leeway",
            format!("kinde_rls.leeway is {leeway} s: expired tokens are accepted for that long, and not-yet-valid ones that early"),
            "Keep it at a few seconds to a minute (default 30); fix the clock instead.",
        ));
    }

    // The providers.
    match identity::current_config() {
        Err(e) => out.push(Finding {
            level: "error",
            setting: Some(e.setting.clone()),
            message: e.message.clone(),
            hint: e.hint.clone(),
        }),
        Ok(config) => {
            for p in &config.providers {
                if let Some(w) = p.audience_warning() {
                    out.push(finding(
                        "warning",
                        "kinde_rls.audience",
                        w,
                        "Set kinde_rls.audience to the audience your API's tokens carry (Kinde: the API's audience), or the provider's audience in kinde_rls.providers.",
                    ));
                }
                if p.policy.issuers.is_empty() {
                    out.push(finding(
                        "warning",
                        "kinde_rls.issuer",
                        "no issuer is configured: tokens signed by these keys are accepted whatever their iss says".into(),
                        "Set kinde_rls.issuer (or kinde_rls.domain) to the issuer's URL, exactly as tokens carry it.",
                    ));
                }
                if let Some(src) = &p.remote {
                    keys_findings(&mut out, src, preloaded);
                }
            }
        }
    }

    // The clocks of the issuers this configuration uses (the table also holds other
    // databases' issuers, and issuers no longer configured).
    let configured: Vec<String> = identity::current_config()
        .map(|c| c.providers.iter().map(|p| p.name()).collect())
        .unwrap_or_default();
    let (rows, _) = stats::snapshot();
    for r in rows {
        if let (Some(skew), Some(issuer)) = (r.skew_s, r.issuer.as_deref()) {
            if skew.abs() > MAX_SKEW_S && configured.iter().any(|c| c == issuer) {
                out.push(finding(
                    "warning",
                    "",
                    format!(
                        "this server's clock is {} s {} the clock of {} (its Date header at the last key fetch): exp and nbf are judged that far off",
                        skew.abs(),
                        if skew > 0 { "ahead of" } else { "behind" },
                        kinde_rls_core::error::quote(issuer)
                    ),
                    "Synchronise the server's clock (NTP).",
                ));
            }
        }
    }

    #[cfg(feature = "pg18")]
    if !preloaded && validating_logins() {
        out.push(finding(
            "error",
            "oauth_validator_libraries",
            "kinde_rls is an OAuth validator (oauth_validator_libraries) but not in shared_preload_libraries: every login it validates is refused".into(),
            "Add kinde_rls to shared_preload_libraries and restart.",
        ));
    }
    if !preloaded {
        out.push(finding(
            "notice",
            "shared_preload_libraries",
            "kinde_rls is not in shared_preload_libraries: statistics, fetched keys and the audit log's rate limit are kept per session".into(),
            "Add kinde_rls to shared_preload_libraries and restart.",
        ));
    }
    out
}

/// Whether `oauth_validator_libraries` names kinde_rls (PostgreSQL 18 sign-in).
#[cfg(feature = "pg18")]
fn validating_logins() -> bool {
    // SAFETY: reads a core setting by name (missing_ok); the string is PostgreSQL's.
    let value = unsafe {
        let p = pg_sys::GetConfigOption(c"oauth_validator_libraries".as_ptr(), true, false);
        if p.is_null() {
            return false;
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    value
        .split(',')
        .any(|l| l.trim().trim_matches('"') == "kinde_rls")
}

fn keys_findings(out: &mut Vec<Finding>, src: &kinde_rls_core::RemoteSource, preloaded: bool) {
    let st = jwks::status(src);
    let setting = match src {
        kinde_rls_core::RemoteSource::Discovery(_) => "kinde_rls.domain",
        kinde_rls_core::RemoteSource::Jwks(_) => "kinde_rls.jwks_url",
    };
    let whose = if preloaded { "" } else { " by this session" };
    let label = src.label();
    let now = wall_clock();
    let expired = st.expires_at.filter(|e| *e < now);
    let (level, message, hint) = match (&st.last_error, st.fetched_at, expired) {
        (Some(err), _, Some(exp)) => (
            "warning",
            format!(
                "the keys of {label} are stale: they expired {:.0} s ago and the last fetch failed: {err}",
                now - exp
            ),
            "Check that the URL is right and reachable from the database server; kinde_rls.jwks_max_stale bounds how long stale keys are used.",
        ),
        (Some(err), _, None) => (
            "warning",
            format!("the last fetch of the keys of {label} failed: {err}"),
            "Check that the URL is right and reachable from the database server; SELECT refresh_jwks() tries again now.",
        ),
        // Not a fault: right after a start, or in a session that has verified nothing, with
        // keys per session (not preloaded); the first token fetches them.
        (None, None, _) => (
            "notice",
            format!("the keys of {label} were never fetched{whose}"),
            "SELECT refresh_jwks() fetches them now; otherwise the first token waits for the fetch.",
        ),
        (None, Some(_), Some(exp)) => (
            "notice",
            format!(
                "the keys of {label} expired {:.0} s ago; they are fetched again when the next token needs them",
                now - exp
            ),
            "Nothing to do; SELECT refresh_jwks() fetches them now.",
        ),
        (None, Some(_), None) => return,
    };
    out.push(finding(level, setting, message, hint));
}
