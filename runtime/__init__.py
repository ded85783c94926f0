"""The request path: models, micro-batching, monitors and the guardrail chain, without BentoML."""
