"""Job stores: where job records live (the single source of truth)."""
