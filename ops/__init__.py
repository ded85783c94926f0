"""Operator tools: the `classguard` command line and model import, above the service and training."""
