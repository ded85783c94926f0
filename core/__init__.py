"""The vocabulary every layer shares: configuration, metrics, error reasons, request ids, subgroup
keys and flags, fleet time. Imports no other package of the project (tests/test_layers.py)."""
