"""Pydantic models of the AIB image template schema (API 2025-10-01 and the older versions templates use)."""
