-- kinde_rls 0.1.0 -> 0.2.0
--
-- jwks_status() reports the keys of a set that are ignored (weak, malformed, off-curve,
-- private, another purpose), and what is unsafe about a provider's rules (no audience).
-- A function's result columns cannot be changed in place: drop and create it. No policy or
-- view depends on jwks_status(), so nothing else is touched.

DROP FUNCTION jwks_status();

CREATE FUNCTION "jwks_status"() RETURNS TABLE (
	"issuer" TEXT,
	"source" TEXT,
	"keys" INT,
	"fetched_at" timestamp with time zone,
	"expires_at" timestamp with time zone,
	"last_error" TEXT,
	"ignored_keys" TEXT[],
	"warning" TEXT
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'jwks_status_wrapper';
