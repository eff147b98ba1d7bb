"""Keepers: a keeper network for an on-chain trading platform."""

__version__ = "0.1.0"
