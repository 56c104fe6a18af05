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

Downlinks (class A, LoRaWAN 1.0.3 section 3.3): after each uplink the host calls
:meth:`~EmulatedDevice.listen_rx1` with the uplink's concentrator timestamp, and the device
listens in RX1, RECEIVE_DELAY1 (1 s, EU868) later on the uplink's channel and data rate.
:meth:`~EmulatedDevice.receive` takes a transmission the concentrator was asked for: a data
down frame for the device's DevAddr, in that window, with a valid MIC and a new FCntDown
(section 4.3.1.5). A settings downlink (FPort 21, ``docs/formats/device-payloads.md``) is
applied as far as the profile has the settings (:data:`SETTINGS_TABLE`): ``report_interval_s``
becomes the device's :attr:`~EmulatedDevice.report_interval_s`, thresholds are kept in
:attr:`~EmulatedDevice.settings`, ``request_status`` and ``reboot`` queue a status or boot
message. The next uplinks carry, before measurements resume, the settings ack (FPort 20,
with the downlink's seq and ``applied``, or ``unsupported`` / ``invalid`` naming the setting),
then a status message with the report interval in use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from owlgate.codecs.concentrator import CodingRate, CrcStatus, RxFrame, TxRequest
from owlgate.codecs.errors import LorawanError, OwlgateError, PayloadError
from owlgate.codecs.lorawan import (
    AesKey,
    DataFrame,
    EncryptedJoinAccept,
    FCntVerdict,
    JoinRequest,
    MType,
    SessionKeys,
    widen_fcnt,
)
from owlgate.codecs.node import payloads as node_payloads
from owlgate.codecs.payloads import PROFILES, encode_uplink

__all__ = ["RECEIVE_DELAY1_US", "DeviceError", "Downlinked", "EmulatedDevice", "Radio"]

_U32: Final = 0xFFFFFFFF
#: RX1 opens this long after the end of an uplink (EU868 RECEIVE_DELAY1, 1 s).
RECEIVE_DELAY1_US: Final = 1_000_000
#: The range a status message carries report_interval_s in (device-payloads.md).
_STATUS_INTERVAL_RANGE: Final = (60, 604_800)
_FIRMWARE: Final = "1.0.0"


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


@dataclass(frozen=True, slots=True)
class Downlinked:
    """What a device did with a downlink it received: the settings downlink's ``seq``, the
    settings it applied, and the ack it will send (``result``, ``setting`` refused)."""

    f_cnt_down: int
    f_port: int
    seq: int | None
    applied: dict[str, object]
    result: str
    setting: str | None = None


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
        self._held: set[str] = set()
        self.f_cnt_down: int | None = None
        """The last downlink counter the device took (None: none since the session began)."""
        self.settings: dict[str, object] = {}
        """Every setting a downlink applied, by name (the latest value of each)."""
        self.downlinks: list[Downlinked] = []
        """Every downlink the device took, in order."""
        self._rx1: tuple[int, int, int] | None = None
        self._messages: list[dict[str, object]] = []
        self._first_uplink_at: float | None = None

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
        self.f_cnt_down = None
        self._pending_nonce = None
        return accept.dev_addr

    # --- uplinks ------------------------------------------------------------------------------

    def set_state(self, **values: float) -> None:
        """Set what the sensor measures from outside (``occupied``, ``fill_pct``,
        ``temperature_c``, ``humidity_pct``, ``co2_ppm``, ``battery_mv``): a simulation that
        drives the readings by a traffic pattern. A value set is held as given, the device's
        own drift leaves it alone, until it is set again; the next uplinks carry it."""
        settable = set(self._state) - {"tilt"}
        unknown = sorted(set(values) - settable)
        if unknown:
            known = ", ".join(sorted(settable))
            raise DeviceError(f"unknown sensor state {unknown[0]!r} (known: {known})")
        for name, value in values.items():
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number and not (name == "occupied" and isinstance(value, bool)):
                raise DeviceError(f"sensor state {name} must be a number, got {value!r}")
            self._state[name] = float(value)
        self._held.update(values)

    def due(self, now: float) -> bool:
        """True when a report is due (the first at once)."""
        return self._next_at is None or now >= self._next_at

    def uplink(self, now: float) -> tuple[bytes, dict[str, object]]:
        """The next uplink: ``(phy_payload, values)``, ``values`` exactly as the payload carries
        them. A measurement, unless a downlink left device messages to send (a settings ack,
        a status): those go first, one per uplink. Advances the counter and the next report
        time."""
        if self.keys is None or self.dev_addr is None:
            raise DeviceError(f"device {self.dev_eui.hex()} has no session: join first")
        if self.f_cnt > _U32:
            raise DeviceError("the 32-bit frame counter is used up: the device must rejoin")
        if self._first_uplink_at is None:
            self._first_uplink_at = now
        values = self._messages.pop(0) if self._messages else None
        if values is not None:
            values = self._device_message(values, now)
        else:
            values = _step(self.profile_id, self._state, self.rng, self._held)
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
        if "message" in values or quantise is None:
            return self.last_phy, values
        return self.last_phy, quantise(values)

    def _device_message(self, values: dict[str, object], now: float) -> dict[str, object]:
        # A status or boot message gets the device's figures at the time it is sent.
        message = dict(values)
        if message["message"] in ("status", "boot"):
            message["battery_mv"] = round(self._state["battery_mv"])
        if message["message"] == "status":
            started = self._first_uplink_at if self._first_uplink_at is not None else now
            message["uptime_s"] = max(0, int(now - started))
            low, high = _STATUS_INTERVAL_RANGE
            interval = round(self.report_interval_s)
            if low <= interval <= high:
                message["report_interval_s"] = interval
        return message

    # --- downlinks ----------------------------------------------------------------------------

    def listen_rx1(self, timestamp_us: int) -> None:
        """The uplink just sent ended at concentrator time ``timestamp_us``: listen in its RX1
        window (the previous window, if still open, is over)."""
        radio = self.radio
        self._rx1 = ((timestamp_us + RECEIVE_DELAY1_US) & _U32, radio.frequency_hz, radio.sf)

    def receive(self, request: TxRequest) -> Downlinked | None:
        """Hear a transmission: taken (and applied) when it is in the open RX1 window, a data
        down frame for this device, authentic and new; None otherwise (not for this device,
        outside the window, or refused)."""
        if self._rx1 is None or self.keys is None or self.dev_addr is None:
            return None
        if (request.timestamp_us, request.frequency_hz, request.sf) != self._rx1:
            return None
        try:
            frame = DataFrame.from_bytes(request.payload)
        except LorawanError:
            return None
        if frame.uplink or frame.fhdr.dev_addr != self.dev_addr:
            return None
        widened = widen_fcnt(self.f_cnt_down, frame.fhdr.f_cnt)
        if widened.verdict is not FCntVerdict.NEW:
            return None
        try:
            frame.verify_mic(self.keys, widened.f_cnt)
            payload = frame.decrypt(self.keys, widened.f_cnt)
        except LorawanError:
            return None
        # Taken: the window is used, the counter advances (section 4.3.1.5).
        self._rx1 = None
        self.f_cnt_down = widened.f_cnt
        f_port = frame.f_port if frame.f_port is not None else 0
        if f_port != node_payloads.PORT_SETTINGS:
            done = Downlinked(widened.f_cnt, f_port, None, {}, "ignored")
        else:
            done = self._apply_settings(widened.f_cnt, payload)
        self.downlinks.append(done)
        return done

    def _apply_settings(self, f_cnt_down: int, payload: bytes) -> Downlinked:
        seq = payload[1] if len(payload) >= 2 else 0
        try:
            seq, settings = node_payloads.decode_settings(payload)
        except PayloadError:
            self._messages.append(
                {"message": "settings_ack", "settings_seq": seq, "result": "invalid"}
            )
            return Downlinked(f_cnt_down, node_payloads.PORT_SETTINGS, seq, {}, "invalid")
        supported = node_payloads.PROFILES[self.profile_id][4]
        for name in settings:
            if name not in supported:
                # The device refuses the whole downlink and names the first setting it lacks.
                self._messages.append(
                    {
                        "message": "settings_ack",
                        "settings_seq": seq,
                        "result": "unsupported",
                        "setting": name,
                    }
                )
                return Downlinked(
                    f_cnt_down, node_payloads.PORT_SETTINGS, seq, {}, "unsupported", name
                )
        applied: dict[str, object] = {}
        follow: list[dict[str, object]] = [{"message": "status"}]
        for name, value in settings.items():
            if name == "request_status":
                continue  # the status follows the ack anyway
            if name == "reboot":
                follow = [{"message": "boot", "firmware": _FIRMWARE, "reset_reason": "command"}]
                continue
            if name == "report_interval_s" and isinstance(value, int):
                self.report_interval_s = float(value)
            applied[name] = value
        self.settings.update(applied)
        self._messages.append({"message": "settings_ack", "settings_seq": seq, "result": "applied"})
        self._messages.extend(follow)
        return Downlinked(f_cnt_down, node_payloads.PORT_SETTINGS, seq, applied, "applied")

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


def _drift(
    state: dict[str, float], held: set[str], name: str, delta: float, low: float, high: float
) -> None:
    # The draw is made whether or not the value is held, so that holding one value does not
    # change the others' sequence.
    if name not in held:
        state[name] = _clamp(state[name] + delta, low, high)


def _step(
    profile_id: str, state: dict[str, float], rng: random.Random, held: set[str]
) -> dict[str, object]:
    # ``held``: values set from outside (EmulatedDevice.set_state), which do not drift.
    _drift(state, held, "battery_mv", -rng.uniform(0, 0.5), 2500, 3700)
    _drift(state, held, "temperature_c", rng.gauss(0, 0.3), -20, 45)
    battery = round(state["battery_mv"])
    if profile_id == "parking-v1":
        if rng.random() < 0.2 and "occupied" not in held:
            state["occupied"] = 1.0 - state["occupied"]
        return {
            "occupied": state["occupied"] == 1.0,
            "battery_mv": battery,
            "temperature_c": state["temperature_c"],
        }
    if profile_id == "waste-bin-v1":
        # The bin fills between collections and is emptied when nearly full.
        if "fill_pct" not in held:
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
    _drift(state, held, "humidity_pct", rng.gauss(0, 1.0), 5, 99)
    _drift(state, held, "co2_ppm", rng.gauss(0, 25), 400, 5000)
    return {
        "temperature_c": state["temperature_c"],
        "humidity_pct": state["humidity_pct"],
        "co2_ppm": round(state["co2_ppm"]),
        "battery_mv": battery,
    }
