"""The batch size at which the request path turns from item-by-item Python to numpy."""

# From this many items a batch is worked in numpy: the chain decides it on columns
# (runtime/serving.py), the monitors flag and queue it per model (runtime/monitor_pipeline.py),
# and a histogram takes its values as one increment per bucket (core/metrics.py's
# observe_many). Fewer go item by item: numpy's fixed cost per call is more than the loop, and
# with the monitors' flags and the histograms in numpy a single request was about 0.25 ms
# dearer in-process. One threshold, so a batch crosses to numpy in all three at once.
NUMPY_FROM = 8
