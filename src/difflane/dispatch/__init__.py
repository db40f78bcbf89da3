"""Dispatch: getting an accepted job to a worker (API side) and work to workers (worker side)."""
