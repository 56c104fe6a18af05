"""Emulated LoRaWAN 1.0.x end devices: real frames, real counters, plausible sensor values.

An :class:`EmulatedDevice` plays one sensor of a built-in profile (``parking-v1``,
``waste-bin-v1``, ``environment-v1``):

* ABP (:meth:`EmulatedDevice.abp`): DevAddr and session keys given, counting from 0;
* OTAA (:meth:`EmulatedDevice.otaa`): :meth:`~EmulatedDevice.join_request` builds a join
  request with a fresh DevNonce (a counter, never reused, as LoRaWAN 1.0.4 section 6.2.5
  asks), :meth:`~EmulatedDevice.accept_join` decrypts and checks a join accept and derives
  the session (LoRaWAN 1.0.3 section 6.2.5).

:meth:`~EmulatedDevice.uplink` returns the PHYPayload *and* the values it carries (as the
payload carries them, i.e. rounded to the payload's steps), so a test knows exactly which
reading the gateway must produce. Values drift from a seeded :class:`random.Random`, so a
scenario is repeatable. :meth:`~EmulatedDevice.rx_frame` wraps a PHYPayload with the
device's radio metadata as the concentrator would report it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame
from owlgate.codecs.errors import LorawanError, OwlgateError
from owlgate.codecs.lorawan import (
    AesKey,
    DataFrame,
    EncryptedJoinAccept,
    JoinRequest,
    MType,
    SessionKeys,
)
from owlgate.codecs.payloads import PROFILES, encode_uplink

__all__ = ["DeviceError", "EmulatedDevice", "Radio"]

_U32: Final = 0xFFFFFFFF


class DeviceError(OwlgateError):
    """An emulated device used in a way the real one could not be (uplink before joining,
    a join accept that does not verify, an exhausted counter)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Radio:
    """How the concentrator hears a device: the metadata it reports with the device's frames.
    RSSI and SNR wander a little from frame to frame around these values."""

    rssi_dbm: int = -95
    snr_db: float = 7.5
    frequency_hz: int = 868_100_000
    sf: int = 7
    bandwidth_hz: int = 125_000


class EmulatedDevice:
    """One emulated end device; build it with :meth:`abp` or :meth:`otaa`.

    ``report_interval_s`` spaces :meth:`due` uplinks; ``radio`` is how the gateway hears
    the device (see :class:`Radio`).
    """

    def __init__(
        self,
        profile_id: str,
        dev_eui: bytes,
        *,
        seed: int = 0,
        report_interval_s: float = 300.0,
        radio: Radio | None = None,
        confirmed: bool = False,
    ) -> None:
        if profile_id not in PROFILES:
            raise DeviceError(f"unknown device profile {profile_id!r}")
        if not isinstance(dev_eui, bytes) or len(dev_eui) != 8:
            raise DeviceError(f"a DevEUI is 8 bytes, got {dev_eui!r}")
        self.profile_id = profile_id
        self.dev_eui = dev_eui
        self.rng = random.Random(seed)
        self.report_interval_s = report_interval_s
        self.radio = Radio() if radio is None else radio
        self.confirmed = confirmed
        self.dev_addr: int | None = None
        self.keys: SessionKeys | None = None
        self.f_cnt = 0
        """The counter the next uplink carries (32 bits; its low 16 go on air)."""
        self.join_eui: int | None = None
        self.app_key: AesKey | None = None
        self._dev_nonce = 0
        self._pending_nonce: int | None = None
        self._next_at: float | None = None
        self.last_phy: bytes | None = None
        self._state = _initial_state(profile_id, self.rng)

    @classmethod
    def abp(
        cls,
        profile_id: str,
        dev_eui: bytes,
        *,
        dev_addr: int,
        nwk_s_key: bytes,
        app_s_key: bytes,
        f_cnt: int = 0,
        seed: int = 0,
        report_interval_s: float = 300.0,
        radio: Radio | None = None,
        confirmed: bool = False,
    ) -> EmulatedDevice:
        """An ABP device: session fixed at manufacture, counting from ``f_cnt``."""
        device = cls(
            profile_id,
            dev_eui,
            seed=seed,
            report_interval_s=report_interval_s,
            radio=radio,
            confirmed=confirmed,
        )
        device.dev_addr = dev_addr
        device.keys = SessionKeys(nwk_s_key, app_s_key)
        device.f_cnt = f_cnt
        return device

    @classmethod
    def otaa(
        cls,
        profile_id: str,
        dev_eui: bytes,
        *,
        join_eui: int,
        app_key: bytes,
        seed: int = 0,
        report_interval_s: float = 300.0,
        radio: Radio | None = None,
        confirmed: bool = False,
    ) -> EmulatedDevice:
        """An OTAA device: no session until :meth:`accept_join`."""
        device = cls(
            profile_id,
            dev_eui,
            seed=seed,
            report_interval_s=report_interval_s,
            radio=radio,
            confirmed=confirmed,
        )
        device.join_eui = join_eui
        device.app_key = AesKey(app_key)
        return device

    @property
    def dev_eui_int(self) -> int:
        """The DevEUI as the LoRaWAN codec's integer (the 8 bytes read big-endian)."""
        return int.from_bytes(self.dev_eui, "big")

    @property
    def joined(self) -> bool:
        return self.keys is not None

    # --- OTAA ---------------------------------------------------------------------------------

    def join_request(self) -> bytes:
        """A join request PHYPayload with the next DevNonce; the session is dropped until the
        accept arrives (a real device stops sending data when it rejoins)."""
        if self.app_key is None or self.join_eui is None:
            raise DeviceError(f"device {self.dev_eui.hex()} is ABP: it does not join")
        if self._dev_nonce > 0xFFFF:
            raise DeviceError("every DevNonce has been used: the device cannot join again")
        nonce = self._dev_nonce
        self._dev_nonce += 1
        self._pending_nonce = nonce
        request = JoinRequest.build(
            self.app_key, join_eui=self.join_eui, dev_eui=self.dev_eui_int, dev_nonce=nonce
        )
        return request.to_bytes()

    def accept_join(self, phy: bytes) -> int:
        """Take a join accept PHYPayload (as received, encrypted): check its MIC, derive the
        session keys, reset the counter; returns the DevAddr assigned."""
        if self.app_key is None or self._pending_nonce is None:
            raise DeviceError(f"device {self.dev_eui.hex()} sent no join request to accept")
        try:
            accept = EncryptedJoinAccept.from_bytes(phy).decrypt(self.app_key)
            accept.verify_mic(self.app_key)
        except LorawanError as err:
            raise DeviceError(f"join accept refused: {err.message}") from err
        self.keys = accept.session_keys(self.app_key, self._pending_nonce)
        self.dev_addr = accept.dev_addr
        self.f_cnt = 0
        self._pending_nonce = None
        return accept.dev_addr

    # --- uplinks ------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """True when a report is due (the first at once)."""
        return self._next_at is None or now >= self._next_at

    def uplink(self, now: float) -> tuple[bytes, dict[str, object]]:
        """The next measurement uplink: ``(phy_payload, values)``, ``values`` exactly as the
        payload carries them. Advances the counter and the next report time."""
        if self.keys is None or self.dev_addr is None:
            raise DeviceError(f"device {self.dev_eui.hex()} has no session: join first")
        if self.f_cnt > _U32:
            raise DeviceError("the 32-bit frame counter is used up: the device must rejoin")
        values = _step(self.profile_id, self._state, self.rng)
        f_port, payload = encode_uplink(self.profile_id, values, quantise=True)
        frame = DataFrame.build(
            self.keys,
            mtype=MType.CONFIRMED_DATA_UP if self.confirmed else MType.UNCONFIRMED_DATA_UP,
            dev_addr=self.dev_addr,
            f_cnt=self.f_cnt,
            payload=payload,
            f_port=f_port,
        )
        self.f_cnt += 1
        self._next_at = now + self.report_interval_s
        self.last_phy = frame.to_bytes()
        quantise = PROFILES[self.profile_id].quantise
        return self.last_phy, values if quantise is None else quantise(values)

    def rx_frame(self, phy: bytes, *, timestamp_us: int, crc_ok: bool = True) -> RxFrame:
        """``phy`` as the concentrator reports it from this device, RSSI and SNR jittered."""
        radio = self.radio
        rssi = max(-139, min(-30, radio.rssi_dbm + self.rng.randint(-3, 3)))
        snr = round((radio.snr_db + self.rng.uniform(-1.5, 1.5)) * 4) / 4
        return RxFrame(
            frequency_hz=radio.frequency_hz,
            sf=radio.sf,
            bandwidth_hz=radio.bandwidth_hz,
            coding_rate=CodingRate.CR_4_5,
            rssi_dbm=rssi,
            snr_db=snr,
            timestamp_us=timestamp_us & _U32,
            crc_status=CrcStatus.OK if crc_ok else CrcStatus.BAD,
            payload=phy,
        )


# --- plausible sensor values ------------------------------------------------------------------
# Each profile keeps a little state that drifts: batteries drain, bins fill and get emptied,
# temperatures wander. Values stay inside the payload's ranges (docs/formats/device-payloads.md).


def _initial_state(profile_id: str, rng: random.Random) -> dict[str, float]:
    return {
        "battery_mv": rng.uniform(3300, 3650),
        "temperature_c": rng.uniform(5.0, 25.0),
        "humidity_pct": rng.uniform(35.0, 70.0),
        "co2_ppm": rng.uniform(420, 800),
        "fill_pct": rng.uniform(0, 40),
        "occupied": float(rng.random() < 0.5),
        "tilt": 0.0,
    }


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _step(profile_id: str, state: dict[str, float], rng: random.Random) -> dict[str, object]:
    state["battery_mv"] = _clamp(state["battery_mv"] - rng.uniform(0, 0.5), 2500, 3700)
    state["temperature_c"] = _clamp(state["temperature_c"] + rng.gauss(0, 0.3), -20, 45)
    battery = round(state["battery_mv"])
    if profile_id == "parking-v1":
        if rng.random() < 0.2:
            state["occupied"] = 1.0 - state["occupied"]
        return {
            "occupied": state["occupied"] == 1.0,
            "battery_mv": battery,
            "temperature_c": state["temperature_c"],
        }
    if profile_id == "waste-bin-v1":
        # The bin fills between collections and is emptied when nearly full.
        fill = state["fill_pct"] + rng.uniform(0, 3)
        state["fill_pct"] = rng.uniform(0, 5) if fill > 95 else fill
        state["tilt"] = float(rng.random() < 0.02)
        fill_pct = round(state["fill_pct"])
        depth_mm = 1200
        return {
            "tilt_alarm": state["tilt"] == 1.0,
            "fill_pct": fill_pct,
            "distance_mm": depth_mm - depth_mm * fill_pct // 100,
            "temperature_c": state["temperature_c"],
            "battery_mv": battery,
        }
    state["humidity_pct"] = _clamp(state["humidity_pct"] + rng.gauss(0, 1.0), 5, 99)
    state["co2_ppm"] = _clamp(state["co2_ppm"] + rng.gauss(0, 25), 400, 5000)
    return {
        "temperature_c": state["temperature_c"],
        "humidity_pct": state["humidity_pct"],
        "co2_ppm": round(state["co2_ppm"]),
        "battery_mv": battery,
    }
