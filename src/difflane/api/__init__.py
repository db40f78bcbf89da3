"""The HTTP API (FastAPI). ``create_app`` is the entry point."""
