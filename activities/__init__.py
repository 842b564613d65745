"""Durable activities: one module per build phase, thin calls into imagebuilder."""
