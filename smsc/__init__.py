"""smsc: ESME-facing SMPP 3.4 server, composition root and command-line entry."""

__version__ = "0.1.0"
