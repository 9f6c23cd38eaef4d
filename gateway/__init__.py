"""Playback token gateway: mints Mux playback tokens under entitlement policies."""

__version__ = "0.1.0"
