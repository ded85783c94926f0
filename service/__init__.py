"""The BentoML service and its edges: HTTP parsing, endpoints, error rendering, admin."""
