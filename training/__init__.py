"""Training and packaging of the incident's two models (baseline and retrained)."""
