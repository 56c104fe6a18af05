"""The fleet manager: registry, key vault, join server, ingest, health, rollouts, API.

Imports only ``owlgate.codecs``; meets the gateways on the wire.
"""
