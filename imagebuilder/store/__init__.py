"""Templates, runs, run outputs, triggers and logs on Azure Storage (Azurite locally)."""
