"""Webhooks: tell a client's endpoint about its job (started, progress, completed).

``signing`` (Standard Webhooks headers), ``guard`` (SSRF defence), ``sender`` (one HTTP attempt),
``outbox`` (durable delivery state), ``notifier`` (tails job versions and delivers with retries),
``setup`` (builds them from settings). See docs/architecture/0003-identity-and-limits.md.
"""
