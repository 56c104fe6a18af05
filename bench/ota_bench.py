"""The configuration-over-the-air figures.

``ota.verify_us``: what verifying one signed gateway configuration document costs (signature,
decode, schema and content-hash check), as the gateway does on every document it receives.
No goal: a gateway verifies a document once per configuration change (a few a day at most),
so no rate depends on it; the figure is reported so that a slow change shows. The document is
a typical one, built from fixed values: the eight EU868 channels of a full gateway and the
DevEUIs of 200 sensors.

``ota.rollout_s_100_gateways``: the wall time of one rollout to 100 gateways, from the
``POST /api/v1/rollouts`` to the fleet having recorded all 100 ``applied``. The fleet runs in
this process as ``owlgate fleet serve`` assembles it: the embedded broker, the config service
(:class:`~owlgate.fleet.rollouts.ConfigService`, its engine ticking every 0.25 s) and the
HTTP API, over a SQLite file seeded with 100 gateways (``owlgate fleet seed``). The gateways
are :mod:`owlgate.hil.config_gateways` emulations, each on its own MQTT connection with its
seeded identity key and pinned fleet key. The rollout is a canary of 5, then 100%. Goal: at
most 15 s (issue "Configuration over the air").
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from owlgate.codecs.concentrator import Channel
from owlgate.codecs.configdoc import ConfigDocument, GatewayConfig, sign_config, verify_config
from owlgate.fleet.api import create_app
from owlgate.fleet.auth import create_token
from owlgate.fleet.broker import EmbeddedBroker
from owlgate.fleet.cli import seed_fleet
from owlgate.fleet.configs import put_layer
from owlgate.fleet.rollouts import ConfigService, RolloutEngine, rollout_json
from owlgate.fleet.store import Store
from owlgate.fleet.vault import KeyVault
from owlgate.hil.config_gateways import ConfigGateways, gateways_from_manifest

from .figures import Figure
from .timing import per_call

GATEWAY = bytes.fromhex("b827ebfffe6c1a2b")
DEVICES = 200
#: The usual eight-channel EU868 plan of a full gateway (the three default channels and five).
EU868_EIGHT_CHANNELS_HZ = (
    867_100_000,
    867_300_000,
    867_500_000,
    867_700_000,
    867_900_000,
    868_100_000,
    868_300_000,
    868_500_000,
)


def typical_document() -> ConfigDocument:
    """A full gateway's configuration: eight channels, 200 devices, credentials named."""
    channels = tuple(Channel(frequency_hz=hz) for hz in EU868_EIGHT_CHANNELS_HZ)
    devices = tuple(
        bytes.fromhex("70b3d57ed0") + (0x1000 + index).to_bytes(3, "big")
        for index in range(DEVICES)
    )
    config = GatewayConfig(
        channels=channels,
        mqtt_url="mqtt://broker.city.example:1883",
        mqtt_credentials="file:/etc/owlgate/mqtt.pass",
        devices=devices,
    )
    return ConfigDocument(seq=4711, target=GATEWAY, issued_at=1_760_000_000, config=config)


ROLLOUT_GATEWAYS = 100
QUICK_ROLLOUT_GATEWAYS = 10
ROLLOUT_CANARY = 5
GOAL_ROLLOUT_S = 15.0
ROLLOUT_TIMEOUT_S = 120.0
SEED = 2026


class BenchFailed(RuntimeError):
    """The rollout did not reach every gateway: no figure rather than a wrong one."""


def _keys(
    folder: Path, signing_key: str, gateways: list[dict[str, object]]
) -> tuple[Ed25519PrivateKey, Path]:
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"gateways": gateways}))
    signing = load_pem_private_key(Path(signing_key).read_bytes(), None)
    if not isinstance(signing, Ed25519PrivateKey):
        raise BenchFailed("the seeded fleet signing key is not Ed25519")
    return signing, manifest


async def _rollout_seconds(folder: Path, gateways: int) -> float:
    vault = KeyVault.generate_file(folder / "kek.json", "bench")
    with Store(folder / "fleet.sqlite3", vault=vault) as store:
        seeded = seed_fleet(
            store, gateways=gateways, nodes=0, keys_dir=folder / "keys", seed=SEED, now=time.time()
        )
        signing, manifest = _keys(folder, seeded.signing_key, seeded.gateways)
        put_layer(
            store.sql,
            "defaults",
            None,
            {"mqtt": {"url": "mqtt://broker.city.example:1883"}, "log_level": "debug"},
            actor="bench",
        )
        app = create_app(store)
        token = create_token(store, role="operator", name="bench")
        emulated = gateways_from_manifest(manifest)
        async with EmbeddedBroker() as broker:
            service = ConfigService(
                RolloutEngine(store, signing),
                broker.host,
                broker.port,
                mqtt5=False,
                identifier="owlgate-bench-config",
            )
            async with service, ConfigGateways(emulated, broker.host, broker.port):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as http:
                    started = time.perf_counter()
                    response = await http.post(
                        "/api/v1/rollouts",
                        json={"target": "all", "canary": ROLLOUT_CANARY, "waves": [100]},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    if response.status_code != 201:
                        raise BenchFailed(f"POST /api/v1/rollouts: {response.text}")
                    rollout_id = response.json()["id"]
                    async with asyncio.timeout(ROLLOUT_TIMEOUT_S):
                        while True:
                            found = await asyncio.to_thread(rollout_json, store.sql, rollout_id)
                            if found["counts"]["applied"] == gateways:
                                break
                            if found["state"] not in ("running", "paused"):
                                raise BenchFailed(f"rollout {found['state']}: {found['reason']}")
                            await asyncio.sleep(0.01)
                    return time.perf_counter() - started


def rollout_figure(*, quick: bool = False) -> Figure:
    """``ota.rollout_s_100_gateways`` (``quick``: 10 gateways, a smoke run)."""
    gateways = QUICK_ROLLOUT_GATEWAYS if quick else ROLLOUT_GATEWAYS
    with tempfile.TemporaryDirectory(prefix="owlgate-ota-bench-") as folder:
        seconds = asyncio.run(_rollout_seconds(Path(folder), gateways))
    return Figure(
        "ota.rollout_s_100_gateways",
        seconds,
        "s",
        f"one rollout (canary {ROLLOUT_CANARY}, then 100%) to {gateways} emulated gateways over "
        "the embedded broker: from the POST to every gateway's applied recorded by the fleet",
        goal_max=GOAL_ROLLOUT_S,
    )


def run(*, quick: bool = False) -> list[Figure]:
    """The ``ota`` suite; ``quick`` runs few rounds (a smoke run, not a measurement)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pinned = key.public_key()
    message = sign_config(typical_document(), key)
    timing = per_call(
        lambda: verify_config(message, pinned, gateway_id=GATEWAY, last_seq=4710),
        number=20 if quick else 2_000,
    )
    return [
        Figure(
            "ota.verify_us",
            timing.best_us,
            "µs",
            f"verifying a signed gateway config document ({len(message)} bytes: 8 channels, "
            f"{DEVICES} devices): signature, decode, schema and hash check, per document",
            median=timing.median_us,
        ),
        rollout_figure(quick=quick),
    ]
