"""Admin authentication: `Authorization: Bearer <QSIM_ADMIN_TOKEN>`, compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from app.core.errors import Forbidden, Unauthorized


class AdminDisabled(Forbidden):
    """No admin token is configured, so the admin API is off (403)."""


class AdminUnauthorized(Unauthorized):
    """Missing or wrong bearer token (401, asking for a bearer token)."""


def check_admin(authorization: str | None, configured: SecretStr | None) -> None:
    if configured is None or not configured.get_secret_value():
        raise AdminDisabled("the admin API is disabled: set QSIM_ADMIN_TOKEN to enable it")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AdminUnauthorized("admin routes need the header 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token.strip().encode(), configured.get_secret_value().encode()):
        raise AdminUnauthorized("wrong admin token")
