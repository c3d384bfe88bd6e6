-- kinde_rls 0.2.0 -> 0.3.0
--
-- jws_verify(jws, key[, algorithm]): verify a compact JWS's signature with an explicit key and
-- return its payload bytes, with no claim rules (signed webhooks and documents). ES512 (P-521)
-- keys are accepted everywhere keys are; that needs no change to the schema.
--
-- Operating: kinde_rls_stats() and its view, kinde_rls_stats_reset(), kinde_rls_check(); read
-- by pg_monitor, not by PUBLIC.

CREATE FUNCTION "jws_verify"(
	"jws" TEXT,
	"key" TEXT
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'jws_verify_wrapper';

CREATE FUNCTION "jws_verify"(
	"jws" TEXT,
	"key" TEXT,
	"algorithm" TEXT
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'jws_verify_with_algorithm_wrapper';

CREATE FUNCTION "kinde_rls_check"() RETURNS TABLE (
	"level" TEXT,
	"setting" TEXT,
	"message" TEXT,
	"hint" TEXT
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'kinde_rls_check_wrapper';

CREATE FUNCTION "kinde_rls_stats"() RETURNS TABLE (
	"issuer" TEXT,
	"verified" bigint,
	"cache_hits" bigint,
	"fast_path" bigint,
	"anonymous" bigint,
	"trusted_claims" bigint,
	"refused_format" bigint,
	"refused_algorithm" bigint,
	"refused_key" bigint,
	"refused_signature" bigint,
	"refused_exp" bigint,
	"refused_nbf" bigint,
	"refused_iss" bigint,
	"refused_aud" bigint,
	"refused_sub" bigint,
	"refused_scope" bigint,
	"fetches_ok" bigint,
	"fetches_failed" bigint,
	"fetches_rate_limited" bigint,
	"verify_time_us" bigint,
	"verify_time_max_us" bigint,
	"last_refusal" timestamp with time zone,
	"log_suppressed" bigint,
	"clock_skew_s" bigint,
	"clock_skew_at" timestamp with time zone,
	"scope" TEXT,
	"stats_reset" timestamp with time zone
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'kinde_rls_stats_wrapper';

CREATE FUNCTION "kinde_rls_stats_reset"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'kinde_rls_stats_reset_wrapper';

CREATE VIEW kinde_rls_stats AS SELECT * FROM kinde_rls_stats();
REVOKE ALL ON FUNCTION kinde_rls_stats() FROM PUBLIC;
REVOKE ALL ON kinde_rls_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION kinde_rls_stats_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION kinde_rls_check() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kinde_rls_stats() TO pg_monitor;
GRANT SELECT ON kinde_rls_stats TO pg_monitor;
GRANT EXECUTE ON FUNCTION kinde_rls_check() TO pg_monitor;
