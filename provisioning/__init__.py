"""Tools for field technicians: gateway claim, node provisioning over serial, labels.

Imports only ``owlgate.codecs``; talks to the fleet over HTTP only.
"""
