"""The HTTP API fuzzed from its own OpenAPI document (schemathesis): whatever a client sends,
valid or not, the answer is never a server error, and every error is the API's JSON error
shape with a message (docs/fleet.md, "Errors"). The calls carry an admin token, so that they
reach every route's validation and handler rather than stopping at 401 (what each role may
call is test_openapi_roles.py's)."""

from __future__ import annotations

from typing import Any

import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, settings

from owlgate.fleet.api import create_app
from owlgate.fleet.auth import create_token
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from tests.fleet.conftest import ABP_ADDR, ABP_EUI, APP_S_KEY, GW1, NWK_S_KEY, T0, raw_public


def _app() -> tuple[Any, str]:
    store = Store(":memory:", vault=KeyVault("fuzz", bytes(range(32))))
    store.create_gateway(
        GW1,
        name="gw 1",
        sign_public_key=raw_public(Ed25519PrivateKey.generate()),
        seal_public_key=raw_public(X25519PrivateKey.generate()),
        created=T0,
    )
    store.create_device(
        ABP_EUI,
        profile_id="parking-v1",
        activation="abp",
        created=T0,
        dev_addr=ABP_ADDR,
        nwk_s_key=NWK_S_KEY,
        app_s_key=APP_S_KEY,
    )
    token = create_token(store, role="admin", name="fuzz", now=T0)
    return create_app(store, clock=lambda: T0 + 10), token


_APP, _TOKEN = _app()
#: Routes whose errors carry "detail" beside "error".
PROVISIONING_PATHS = ("/api/v1/claims", "/api/v1/provision/")
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_error_is_json_with_a_message(case: Any) -> None:
    response = case.call(headers={"Authorization": f"Bearer {_TOKEN}"})
    where = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (where, response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        if case.path.startswith(PROVISIONING_PATHS) and "detail" in body:
            # The provisioning routes' own answers carry "detail" for the tools
            # (docs/fleet-provisioning.md): the same message as the error's.
            assert set(body) == {"error", "detail"}, (where, response.text)
            assert body["detail"] == body["error"]["message"], (where, response.text)
        else:
            assert set(body) == {"error"}, (where, response.text)
        assert isinstance(body["error"]["code"], str), (where, response.text)
        assert body["error"]["message"], (where, response.text)
        for secret in (NWK_S_KEY, APP_S_KEY):
            assert secret.hex() not in response.text.lower(), where
