"""Webhooks: tell a client's endpoint about its job (started, progress, completed).

``signing`` (Standard Webhooks headers), ``guard`` (SSRF defence), ``sender`` (one HTTP attempt,
under the overall deadline of ``deadline``), ``outbox`` (the durable delivery state's seam, with
``outbox_sqlite`` and ``outbox_blob``), ``fairness`` (which due deliveries go out now),
``notifier`` (tails job versions and delivers with retries), ``intake`` (the submit side),
``setup`` (builds them from settings). See docs/architecture/0003-identity-and-limits.md, 0009
and 0012.
"""
