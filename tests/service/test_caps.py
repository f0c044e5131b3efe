"""The one table of the long calls' caps: each kind refused by its own cap, with the
reason, the setting and the words its refusal has always had."""

from __future__ import annotations

import grpc
import pytest

from server.security.concurrency import TenantCaps
from server.service.caps import LongCall, settings_caps, tenant_caps
from server.service.settings import ServerSettings
from server.wire.errors import WireError

SETTINGS = ServerSettings(max_watchers=64, max_uploads=12, max_exports=6)


def _refusal(caps: TenantCaps, tenant: str, taken: int) -> WireError:
    """The refusal of ``tenant``'s call after ``taken`` of its calls were let in."""
    for _ in range(taken):
        caps.take(tenant)
    with pytest.raises(WireError) as refused:
        caps.take(tenant)
    return refused.value


@pytest.mark.parametrize(
    ("kind", "limit", "reason", "setting", "message"),
    [
        (
            "watchers",
            16,
            "TOO_MANY_TENANT_WATCHERS",
            "maxWatchersPerTenant",
            "You have 16 watches open, the most one tenant may have (max_watchers_per_tenant); "
            "close one (or watch without follow), then try again.",
        ),
        (
            "uploads",
            3,
            "TOO_MANY_TENANT_UPLOADS",
            "maxUploadsPerTenant",
            "You have 3 uploads in progress, the most one tenant may have "
            "(max_uploads_per_tenant); wait for one to finish, then try again.",
        ),
        (
            "exports",
            1,
            "TOO_MANY_TENANT_EXPORTS",
            "maxExportsPerTenant",
            "You have 1 exports running, the most one tenant may have "
            "(max_exports_per_tenant); wait for one to finish, then try again.",
        ),
    ],
)
def test_a_tenant_over_its_share_is_refused_by_its_own_cap(
    kind: LongCall, limit: int, reason: str, setting: str, message: str
) -> None:
    refused = _refusal(settings_caps(SETTINGS, kind, tenants=True), "acme", limit)

    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
    assert refused.message == message
    assert refused.metadata == {setting: str(limit)}


@pytest.mark.parametrize(
    ("kind", "total", "reason", "message"),
    [
        (
            "uploads",
            12,
            "TOO_MANY_UPLOADS",
            "The service has 12 uploads in progress, the most it takes at once "
            "(max_uploads); try again shortly.",
        ),
        (
            "exports",
            6,
            "TOO_MANY_EXPORTS",
            "6 exports are running on this server, its limit (max_exports); try again shortly.",
        ),
    ],
)
def test_without_tenants_uploads_and_exports_are_capped_in_all(
    kind: LongCall, total: int, reason: str, message: str
) -> None:
    refused = _refusal(settings_caps(SETTINGS, kind, tenants=False), "", total)

    assert refused.reason == reason
    assert refused.message == message


def test_watchers_in_all_are_left_to_the_watch_hub() -> None:
    caps = tenant_caps("watchers", per_tenant=None, total=1)
    slots = [caps.take("") for _ in range(100)]

    assert caps.held() == len(slots)
