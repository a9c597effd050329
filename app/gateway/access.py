"""Who may call what: the static keys of the deployment file (digest -> scope) and the
tenant keys of the registry's database (app/gateway/tenant_keys.py). Keys are compared by
their SHA-256 digests, and no key ever appears in an answer or a log line."""

import hashlib

from starlette.requests import Request

from app.gateway.errors import GatewayError
from app.gateway.tenant_keys import TenantKeys
from app.tenants.keys import allows
from app.tenants.records import TenantKey

_MISSING = "invalid or missing API key (Authorization: Bearer ...)"


class Access:
    def __init__(self, scopes: dict[str, str], tenants: TenantKeys | None) -> None:
        self.scopes = scopes
        self.tenants = tenants

    @property
    def open(self) -> bool:
        return not self.scopes and self.tenants is None

    def check(self, request: Request, needed: str = "api") -> TenantKey | None:
        """The caller's tenant key (None for a static key or an open gateway); 401, 403 or
        503 in OpenAI's format otherwise. `needed`: api (completions, models), operator
        (the compare view) or metrics; a static `api` key opens all three."""
        if self.open:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, _MISSING)
        # Looked up by digest: timing can tell at most how a digest compares, not the key.
        digest = hashlib.sha256(token.encode()).hexdigest()
        scope = self.scopes.get(digest)
        if scope is not None:
            if not allows(scope, needed):
                raise GatewayError(403, f"this key opens the {scope} routes only")
            return None
        tenant = self.tenants.find(digest) if self.tenants else None
        if tenant is None:
            raise GatewayError(401, _MISSING)
        refusal = tenant.refusal()
        if refusal:
            raise GatewayError(401, refusal)
        if needed != "api":  # the figures of every tenant and variant are the operator's
            raise GatewayError(403, f"API key {tenant.name!r} opens the API routes only")
        return tenant

    @staticmethod
    def check_model(tenant: TenantKey | None, model: str, pinned: str | None) -> None:
        """403 for a model (or a pinned variant) outside the tenant key's list."""
        if tenant is None:
            return
        for name in (model, pinned):
            if name and not tenant.allows(name):
                raise GatewayError(
                    403, f"API key {tenant.name!r} may not use model {name!r}", param="model"
                )
