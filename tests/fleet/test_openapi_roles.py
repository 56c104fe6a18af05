"""Every operation of the API, walked from its own OpenAPI document: it states its roles
(``x-owlgate-roles``, the bearer scheme), an unauthenticated call gets 401, a call with each
role it does not admit 403, and a call with each role it admits neither. A route added
without :func:`owlgate.fleet.auth.requires` fails here.

The two provisioning routes a gateway calls take no bearer token: the claim token in the
body is their credential, stated as ``x-owlgate-credential: claim-token`` with an empty
``security``. They are exactly those two, and an unknown claim token gets 401 whatever bearer
token comes with it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI

from owlgate.fleet.api import create_app
from owlgate.fleet.auth import OPENAPI_ROLES_KEY, ROLES, Role, create_token, token_id_of
from owlgate.fleet.provisioning import CLAIM_CREDENTIAL, OPENAPI_CREDENTIAL_KEY
from owlgate.fleet.store import Store
from tests.fleet.conftest import ABP_EUI, GW1, T0
from tests.fleet.test_api import ApiClient, Clock

#: The operations a claim token, not a bearer token, authorises.
CLAIM_OPERATIONS = {
    "POST /api/v1/provision/gateway",
    "POST /api/v1/provision/gateway/{gateway_id}/check",
}
UNKNOWN_CLAIM = "owl-claim-" + "u" * 43

#: Plausible values for path parameters, by name; an unknown name gets a 16-digit hex id.
PATH_VALUES = {"gateway_id": GW1, "dev_eui": ABP_EUI}
DEFAULT_ID = "00000000000000a0"


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def plausible(document: dict[str, Any], schema: dict[str, Any], name: str = "") -> Any:
    """A value that satisfies ``schema`` as far as a request body needs (patterns of hex ids
    and keys, enums, bounds)."""
    schema = resolve(document, schema)
    for alternatives in ("anyOf", "oneOf"):
        if alternatives in schema:
            choices = [
                s for s in schema[alternatives] if resolve(document, s).get("type") != "null"
            ]
            return plausible(document, choices[0], name)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            key: plausible(document, properties[key], key) for key in schema.get("required", [])
        }
    if kind == "array":
        return []
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return low + 1 if "exclusiveMinimum" in schema else max(low, 1)
    pattern = schema.get("pattern", "")
    digits = re.search(r"\{(\d+)\}", pattern)
    if digits and "0-9a-f" in pattern.lower():
        return "0" * (int(digits.group(1)) - 1) + "1"
    return (name or "x")[: schema.get("maxLength", 64)].ljust(schema.get("minLength", 1), "x")


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def by_claim(operation: dict[str, Any]) -> bool:
    """Whether the operation states the claim token as its credential (and no bearer)."""
    return (
        operation.get(OPENAPI_CREDENTIAL_KEY) == CLAIM_CREDENTIAL
        and operation.get("security") == []
        and OPENAPI_ROLES_KEY not in operation
    )


def unprotected(app: FastAPI) -> list[str]:
    """Operations of ``app``'s document that state no roles or no bearer scheme, other than
    those a claim token authorises."""
    document = app.openapi()
    return [
        f"{method} {path}"
        for method, path, operation in operations(document)
        if not by_claim(operation)
        and (
            not operation.get(OPENAPI_ROLES_KEY)
            or not any("bearerAuth" in requirement for requirement in operation.get("security", []))
        )
    ]


def request_for(
    document: dict[str, Any], path: str, operation: dict[str, Any], values: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    url = path
    params: dict[str, Any] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            url = url.replace(f"{{{parameter['name']}}}", values.get(parameter["name"], DEFAULT_ID))
        elif parameter["in"] == "query" and parameter.get("required"):
            params[parameter["name"]] = plausible(document, parameter["schema"], parameter["name"])
    kwargs: dict[str, Any] = {"params": params}
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None:
        kwargs["json"] = plausible(document, body["schema"])
    return url, kwargs


@pytest.fixture
def app(registry: Store) -> FastAPI:
    return create_app(registry, clock=Clock(T0 + 10))


def test_every_operation_states_its_roles_and_the_bearer_scheme(app: FastAPI) -> None:
    document = app.openapi()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token: `owlgate fleet token create --role R`.",
    }
    assert unprotected(app) == []
    claimed = {f"{m} {p}" for m, p, operation in operations(document) if by_claim(operation)}
    assert claimed == CLAIM_OPERATIONS
    for method, path, operation in operations(document):
        if f"{method} {path}" in CLAIM_OPERATIONS:
            continue
        roles = operation[OPENAPI_ROLES_KEY]
        assert roles[0] == "admin", (method, path)
        assert set(roles) <= set(ROLES), (method, path)
    assert len(operations(document)) >= 14


def test_a_route_without_requires_is_caught(app: FastAPI) -> None:
    @app.get("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    app.openapi_schema = None
    assert unprotected(app) == ["GET /api/v1/forgotten"]


def test_every_operation_refuses_the_unauthenticated_and_the_too_weak(
    app: FastAPI, registry: Store
) -> None:
    document = app.openapi()
    clients = {role: ApiClient(app, role=role) for role in ROLES}
    anonymous = ApiClient(app, role=None)
    spare = create_token(registry, role="operator", name="spare, revoked by the walk")
    values = {**PATH_VALUES, "token_id": token_id_of(spare)}
    checked = 0
    for method, path, operation in operations(document):
        url, kwargs = request_for(document, path, operation, values)
        where = f"{method} {url}"
        if f"{method} {path}" in CLAIM_OPERATIONS:
            kwargs["json"] = {**kwargs["json"], "claim": UNKNOWN_CLAIM}
            for client in (anonymous, *clients.values()):
                response = client.request(method, url, **kwargs)
                assert response.status_code == 401, (where, response.text)
                assert "not" in response.json()["detail"], where
            checked += 1
            continue
        admitted: list[Role] = operation[OPENAPI_ROLES_KEY]
        refused = anonymous.request(method, url, **kwargs)
        assert refused.status_code == 401, (where, refused.text)
        assert refused.headers["www-authenticate"].startswith("Bearer"), where
        for role in ROLES:
            response = clients[role].request(method, url, **kwargs)
            if role in admitted:
                assert response.status_code not in (401, 403), (where, role, response.text)
            else:
                assert response.status_code == 403, (where, role, response.text)
                assert response.json()["error"]["code"] == "forbidden", where
        checked += 1
    assert checked == len(operations(document))
