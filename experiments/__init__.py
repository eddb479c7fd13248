"""One-off experiments (offline probes); not part of the installed package."""
