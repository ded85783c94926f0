"""Guardrails: callables that decide what the endpoint answers. Pure Python and numpy, no
BentoML or torch import anywhere in this package."""
