"""The vocabulary every layer shares: configuration, metrics, error reasons, request ids. Imports no other package of the project."""
