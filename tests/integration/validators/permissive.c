/*
 * A test-only OAuth validator that authorizes any token, with the token text as the identity:
 * "another validator" next to kinde_rls in oauth_validator_libraries (test_oauth.py). A session
 * it signed in has auth_method oauth but no kinde_rls login, and must have no identity.
 */
#include "postgres.h"
#include "fmgr.h"
#include "libpq/oauth.h"

PG_MODULE_MAGIC;

static bool
validate(const ValidatorModuleState *state, const char *token, const char *role,
		 ValidatorModuleResult *res)
{
	res->authn_id = pstrdup(token);
	res->authorized = true;
	return true;
}

static const OAuthValidatorCallbacks callbacks = {
	PG_OAUTH_VALIDATOR_MAGIC, NULL, NULL, validate
};

const OAuthValidatorCallbacks *
_PG_oauth_validator_module_init(void)
{
	return &callbacks;
}
