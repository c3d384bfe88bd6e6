-- kinde_rls 0.2.0 -> 0.3.0
--
-- jws_verify(jws, key[, algorithm]): verify a compact JWS's signature with an explicit key and
-- return its payload bytes, with no claim rules (signed webhooks and documents). ES512 (P-521)
-- keys are accepted everywhere keys are; that needs no change to the schema.

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
