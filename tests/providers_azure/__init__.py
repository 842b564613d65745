"""Tests of the Azure compute provider (through the Azure SDK pipeline with a checking transport)."""
