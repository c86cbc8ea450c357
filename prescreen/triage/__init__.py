"""Placeholder: built by later issues (see README)."""
