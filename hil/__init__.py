"""Emulated hardware for engineers: serial devices, radio world, faults, scenarios.

Imports only ``owlgate.codecs``; drives edge and fleet as a user would.
"""
