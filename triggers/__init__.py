"""Timer, blob and queue trigger adapters (one blueprint per module)."""
