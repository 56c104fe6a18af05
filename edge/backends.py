"""The radio backend and the wired bus a configuration names, built from its settings.

``[radio] backend`` picks one of three radios behind the same
:class:`~owlgate.edge.radio.RadioBackend` interface:

- ``serial``: a concentrator MCU speaking concentrator protocol v1
  (:class:`~owlgate.edge.serial_backend.SerialConcentrator`);
- ``rak3172``: a RAK3172 module in LoRa P2P receive mode, one channel and one spreading
  factor (:class:`~owlgate.edge.rak3172_backend.Rak3172Backend`);
- ``semtech-udp``: a Semtech UDP packet forwarder (GWMP v2) on any SX130x gateway
  (:class:`~owlgate.edge.semtech_udp.SemtechUdpBackend`).

A ``[wired]`` section adds a :class:`~owlgate.edge.wired.WiredBus` beside the radio.

Each radio backend is imported only when a configuration names it: the agent on a Raspberry
Pi keeps in memory just the code it runs (``edge.rss_mb`` in docs/bench.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import EdgeConfig
from .errors import ConfigError
from .radio import RadioBackend
from .wired import WiredBus, WiredBusError, WiredNodeSpec

__all__ = ["make_radio", "make_wired_bus"]


def make_radio(config: EdgeConfig) -> RadioBackend:
    """The radio backend ``[radio]`` describes (not yet started)."""
    radio = config.radio
    if radio.backend == "semtech-udp":
        from .semtech_udp import SemtechUdpBackend

        return SemtechUdpBackend(
            radio.listen_host, radio.listen_port, gateway_eui=radio.gateway_eui
        )
    if radio.backend == "rak3172":
        from .rak3172_backend import Rak3172Backend

        (channel,) = radio.channels
        try:
            return Rak3172Backend(
                radio.port,
                baudrate=radio.baudrate,
                frequency_hz=channel.frequency_hz,
                spreading_factor=channel.spreading_factors[0],
                bandwidth_hz=channel.bandwidth_hz,
                tx_power_dbm=radio.tx_power_dbm,
            )
        except ValueError as err:
            raise ConfigError(str(config.path), "radio", None, str(err)) from err
    from .serial_backend import SerialConcentrator

    return SerialConcentrator(
        port=radio.port,
        radio_config=radio.radio_config(config.radio_config_id()),
        baudrate=radio.baudrate,
    )


def make_wired_bus(config: EdgeConfig, committed: Mapping[bytes, int]) -> WiredBus | None:
    """The wired bus ``[wired]`` describes (None without that section); ``committed`` is the
    last stored sequence number of each node, so re-sent readings are dropped."""
    wired = config.wired
    if wired is None:
        return None
    try:
        specs = [
            WiredNodeSpec(
                node.address, node.dev_eui, None if node.settings is None else dict(node.settings)
            )
            for node in wired.nodes
        ]
        return WiredBus(
            wired.port,
            specs,
            baudrate=wired.baudrate,
            poll_interval_s=wired.poll_interval_s,
            response_timeout_s=wired.response_timeout_s,
            silent_after_polls=wired.silent_after_polls,
            committed=committed,
        )
    except WiredBusError as err:
        raise ConfigError(str(config.path), "wired", "nodes", err.message) from err
