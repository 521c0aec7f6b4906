"""Leadline: one asyncio process that connects brokers' chat channels to their leads."""

__version__ = "0.1.0"
