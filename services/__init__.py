"""mixerless: an open policy layer for Envoy gateways."""

__version__ = "0.1.0"
