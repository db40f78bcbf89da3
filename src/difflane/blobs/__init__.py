"""Blob stores: where result images live."""
