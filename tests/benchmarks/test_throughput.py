"""The throughput benchmark's ratios: only services that ran are compared, round by round."""

from benchmarks.throughput import RATIOS, ratios_at, median_of


def test_ratios_compare_only_services_that_ran_and_keep_each_round():
    """With (c), (c') and (d) run, the regions' and the noise's ratios come out (medians, per
    round, CPU added); ratios needing (a), (b) or (e) are absent rather than invented."""
    c, again, d = RATIOS["c_over_c2"][0], RATIOS["c_over_c2"][1], RATIOS["c_over_d"][1]
    runs = {c: {"8": [{"requests_per_s": 100.0, "cpu_us_per_request": 2000.0},
                      {"requests_per_s": 90.0, "cpu_us_per_request": 2100.0}]},
            again: {"8": [{"requests_per_s": 100.0, "cpu_us_per_request": 2000.0},
                          {"requests_per_s": 100.0, "cpu_us_per_request": 2000.0}]},
            d: {"8": [{"requests_per_s": 125.0, "cpu_us_per_request": 1800.0},
                      {"requests_per_s": 75.0, "cpu_us_per_request": 1800.0}]}}
    results = {name: {"8": median_of(per["8"])} for name, per in runs.items()}
    got = ratios_at(runs, results, "8")
    assert set(got) == {"c_over_d", "c_over_d_per_round", "c_over_d_cpu_us",
                        "c_over_c2", "c_over_c2_per_round", "c_over_c2_cpu_us"}
    assert got["c_over_d_per_round"] == [0.8, 1.2]
    assert got["c_over_d"] == 0.95 and got["c_over_c2"] == 0.95
    assert got["c_over_d_cpu_us"] == 250.0
