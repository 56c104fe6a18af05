"""Positions on a small patch of the Earth: metres east and north of a centre as WGS 84
degrees, and back.

A district is a few kilometres across, so a local equirectangular projection (a degree of
longitude shrinks with the cosine of the centre's latitude) is within centimetres of a
geodesic over it; the seeded demo fleet (:func:`owlgate.fleet.cli.seed_fleet`) and the HIL
scenario runner (:mod:`owlgate.hil.run`) both place things with :func:`to_lat_lon`, so a
scenario's metres and the fleet's degrees agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from .store import InvalidError

#: The mean Earth radius (IUGG, metres).
EARTH_RADIUS_M: Final = 6_371_008.8
#: Further from the centre than this the projection is no longer good to a metre.
MAX_OFFSET_M: Final = 50_000.0


@dataclass(frozen=True, slots=True)
class LatLon:
    """A WGS 84 position in degrees."""

    lat: float
    lon: float


#: The demo fleet's default centre: Bielefeld, Altstadt.
DEFAULT_CENTRE: Final = LatLon(52.0219, 8.5325)


def check_centre(lat: float, lon: float) -> LatLon:
    """The centre as a :class:`LatLon`; InvalidError outside -85..85 degrees of latitude
    (nearer a pole a degree of longitude has no useful length) or -180..180 of longitude."""
    if not math.isfinite(lat) or not -85.0 <= lat <= 85.0:
        raise InvalidError(f"centre latitude must be -85 .. 85 degrees, got {lat}")
    if not math.isfinite(lon) or not -180.0 <= lon <= 180.0:
        raise InvalidError(f"centre longitude must be -180 .. 180 degrees, got {lon}")
    return LatLon(lat, lon)


def parse_centre(text: str) -> LatLon:
    """``"52.0219,8.5325"`` -> its :class:`LatLon`; InvalidError saying the form otherwise."""
    parts = text.split(",")
    try:
        lat, lon = (float(part.strip()) for part in parts)
    except ValueError as err:
        raise InvalidError(f"{text!r} is not LAT,LON in degrees (e.g. 52.0219,8.5325)") from err
    return check_centre(lat, lon)


def to_lat_lon(centre: LatLon, east_m: float, north_m: float) -> LatLon:
    """The position ``east_m`` east and ``north_m`` north of ``centre``."""
    if not (math.isfinite(east_m) and math.isfinite(north_m)):
        raise InvalidError(f"offset must be finite metres, got ({east_m}, {north_m})")
    if max(abs(east_m), abs(north_m)) > MAX_OFFSET_M:
        raise InvalidError(
            f"offset ({east_m:g}, {north_m:g}) m is more than {MAX_OFFSET_M:g} m from the "
            "centre: choose a centre nearer the site"
        )
    lat = centre.lat + math.degrees(north_m / EARTH_RADIUS_M)
    lon = centre.lon + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(centre.lat))))
    if not -180.0 <= lon < 180.0:
        # Across the antimeridian the longitude wraps back into -180 .. 180.
        lon = (lon + 180.0) % 360.0 - 180.0
    return LatLon(lat, lon)


def to_metres(centre: LatLon, point: LatLon) -> tuple[float, float]:
    """``(east_m, north_m)`` of ``point`` from ``centre``: the inverse of :func:`to_lat_lon`."""
    dlon = (point.lon - centre.lon + 180.0) % 360.0 - 180.0
    east = math.radians(dlon) * EARTH_RADIUS_M * math.cos(math.radians(centre.lat))
    north = math.radians(point.lat - centre.lat) * EARTH_RADIUS_M
    return east, north


def distance_m(a: LatLon, b: LatLon) -> float:
    """The great-circle distance between two positions (haversine), metres."""
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlam = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))
