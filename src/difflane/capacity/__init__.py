"""Capacity: a discrete-event simulator of the platform and the cost model it shares with the
API's queue position, ETA and admission by prediction (see docs/capacity.md).

Nothing here imports torch, the API or a cloud SDK: ``difflane simulate`` runs anywhere.
"""
