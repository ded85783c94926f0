"""The BentoML service and its edges (configuration, HTTP parsing, metrics, CLI)."""
