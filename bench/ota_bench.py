"""The configuration-over-the-air figures: what verifying one signed gateway configuration
document costs (signature, decode, schema and content-hash check), as the gateway does on
every document it receives.

No goal: a gateway verifies a document once per configuration change (a few a day at most),
so no rate depends on it; the figure is reported so that a slow change shows. The document is
a typical one, built from fixed values: the eight EU868 channels of a full gateway and the
DevEUIs of 200 sensors.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from owlgate.codecs.concentrator import Channel
from owlgate.codecs.configdoc import ConfigDocument, GatewayConfig, sign_config, verify_config

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
        )
    ]
