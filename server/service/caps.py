"""The caps on the three kinds of long call, watches, uploads and exports, in one table.

Each kind is capped per tenant and, but for watches, in all (the watch hub counts every
watcher itself, against ``max_watchers``). A refusal's reason and the setting it names
follow from the kind (``TOO_MANY_TENANT_UPLOADS`` and ``max_uploads_per_tenant``,
``TOO_MANY_UPLOADS`` and ``max_uploads``); only what it says differs, and is written
here once.
"""

from __future__ import annotations

from typing import Literal

from server.security.concurrency import CallCap, TenantCaps
from server.service.settings import ServerSettings

__all__ = ["LongCall", "settings_caps", "tenant_caps"]

LongCall = Literal["watchers", "uploads", "exports"]

# What a refusal says, per tenant and in all (``None``: counted elsewhere).
_MESSAGES: dict[LongCall, tuple[str, str | None]] = {
    "watchers": (
        "You have {limit} watches open, the most one tenant may have ({setting}); close "
        "one (or watch without follow), then try again.",
        None,
    ),
    "uploads": (
        "You have {limit} uploads in progress, the most one tenant may have ({setting}); "
        "wait for one to finish, then try again.",
        "The service has {limit} uploads in progress, the most it takes at once "
        "({setting}); try again shortly.",
    ),
    "exports": (
        "You have {limit} exports running, the most one tenant may have ({setting}); "
        "wait for one to finish, then try again.",
        "{limit} exports are running on this server, its limit ({setting}); try again shortly.",
    ),
}


def tenant_caps(kind: LongCall, *, per_tenant: int | None, total: int | None) -> TenantCaps:
    """The caps of ``kind``: ``per_tenant`` calls of each tenant, ``total`` of all
    (``None``: no cap; ignored for watchers, whose total the watch hub keeps)."""
    mine, everyone = _MESSAGES[kind]
    name = kind.upper()
    return TenantCaps(
        CallCap(per_tenant, f"TOO_MANY_TENANT_{name}", f"max_{kind}_per_tenant", mine),
        None if everyone is None else CallCap(total, f"TOO_MANY_{name}", f"max_{kind}", everyone),
    )


def settings_caps(settings: ServerSettings, kind: LongCall, *, tenants: bool) -> TenantCaps:
    """The caps of ``kind`` as ``settings`` set them (``tenants``: whether tenants are
    configured, without which no tenant has a cap of its own by default)."""
    limits = {
        "watchers": (settings.watchers_per_tenant(tenants=tenants), settings.max_watchers),
        "uploads": (settings.uploads_per_tenant(tenants=tenants), settings.max_uploads),
        "exports": (settings.exports_per_tenant(tenants=tenants), settings.max_exports),
    }
    per_tenant, total = limits[kind]
    return tenant_caps(kind, per_tenant=per_tenant, total=total)
