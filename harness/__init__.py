"""Drive a real `bentoml serve` process: start it, send real images, read its metrics.
Shared by the demo, the integration tests and the benchmarks."""
