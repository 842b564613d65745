"""Durable orchestrations: deterministic generators, no I/O, no clock, no providers or store."""
