"""Carrier simulator: an SMSC with behaviour profiles, standalone or embedded behind the router."""
