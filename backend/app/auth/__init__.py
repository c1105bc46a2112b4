"""Bearer-token authentication: OIDC token verification, the JWKS cache and the dev issuer.

Only verification lives here (no database): the verified identity is turned into a tenant
and a user by `app.services.callers` inside the request's transaction (`app.api.deps`).
"""
