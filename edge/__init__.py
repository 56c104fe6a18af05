"""The gateway agent: radios, LoRaWAN processing, durable outbox, MQTT uplink, health.

Imports only ``owlgate.codecs``; meets the fleet on the wire.
"""
