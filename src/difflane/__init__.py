"""difflane: serve diffusion image-generation workloads in production."""

__version__ = "0.1.0"
