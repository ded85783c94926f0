"""Writes the Grafana dashboards (classic JSON, schemaVersion 39) from the panel lists below.

    python dashboards/build_dashboards.py

Panels are data here, so tests can check every expression against a real Prometheus and the
metric names the service exports.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "grafana" / "dashboards"
# Every panel reads the dashboard's `datasource` variable (default: Grafana's default Prometheus),
# so the same JSON works with the provisioned datasource here and with a cluster's own
# (deploy/kubernetes/ ships these files unchanged in ConfigMaps).
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DATASOURCE_VARIABLE = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                       "refresh": 1, "hide": 0, "includeAll": False, "multi": False}
R = "$__rate_interval"

# Fleet-wide: Prometheus scrapes every replica as its own target (labels `instance`, `pod`), so a
# bare series would draw one line per replica. Counters are summed over replicas (`sum by`).
# Monitor gauges go through fleet(): the worst replica, as the alerts see it (max for statistics
# where higher is worse, min for mean confidence); references are the same on every replica.
# Info gauges are counted per distinct value (how many replicas run it: a split shows). Only the
# scrape panels (Targets up, Scrape duration) stay per instance, as ClassguardTargetDown does.
FLEET = "without (instance, pod)"


def fleet(expr: str, how: str = "max") -> str:
    """A per-replica gauge reduced to one series per fleet (job, subgroup, model, pair...)."""
    return f"{how} {FLEET} ({expr})"


OVERVIEW = [
    ("Traffic per subgroup", "timeseries", "reqps", [
        ("{{subgroup}} ({{model}})", f"sum by (model, subgroup) (rate(classguard_predictions_total[{R}]))")]),
    ("Errors and rejections", "timeseries", "reqps", [
        ("5xx {{endpoint}}", f"sum by (endpoint) (rate(classguard_internal_errors_total[{R}]))"),
        ("4xx {{reason}}", f"sum by (reason) (rate(classguard_rejected_requests_total[{R}]))")]),
    ("Latency p50/p99", "timeseries", "s", [
        ("p50 {{endpoint}}", f"histogram_quantile(0.5, sum by (le, endpoint) (rate(classguard_request_duration_seconds_bucket[{R}])))"),
        ("p99 {{endpoint}}", f"histogram_quantile(0.99, sum by (le, endpoint) (rate(classguard_request_duration_seconds_bucket[{R}])))")]),
    ("Subgroup share vs training share", "timeseries", "percentunit", [
        ("live {{subgroup}}", fleet('classguard_monitor_score{monitor="representation", statistic="share"}')),
        ("training {{subgroup}}", fleet('classguard_monitor_reference{monitor="representation", statistic="share"}'))]),
    ("Drift scores", "timeseries", "none", [
        ("{{monitor}} {{statistic}} {{model}} {{subgroup}}", fleet('classguard_monitor_score{statistic=~"js_distance|psi"}'))]),
    ("Monitor alarms", "stat", "none", [
        ("{{monitor}} {{subgroup}} {{pair}}", "max by (monitor, subgroup, pair) (classguard_monitor_alarm)")]),
    ("Mean confidence per subgroup", "timeseries", "percentunit", [
        ("{{subgroup}} ({{model}})", fleet('classguard_monitor_score{monitor="confidence", statistic="mean_confidence"}', "min"))]),
    # label-free (ClassguardEstimatedAccuracyLow), beside the realized accuracy of labelled answers
    ("Estimated and realized accuracy per subgroup", "timeseries", "percentunit", [
        ("estimated {{subgroup}} ({{model}})", fleet('classguard_monitor_score{monitor="confidence", statistic="estimated_accuracy"}', "min")),
        ("realized {{subgroup}} ({{model}}, labelled 1h)", "model_subgroup:classguard_realized_accuracy:ratio1h")]),
    # regions of the primary model's embedding: groups no subgroup attribute names
    ("Embedding regions: live share vs validation", "timeseries", "percentunit", [
        ("live {{subgroup}}", fleet('classguard_monitor_score{monitor="regions", statistic="share"}')),
        ("validation {{subgroup}}", fleet('classguard_monitor_reference{monitor="regions", statistic="share"}'))]),
    ("Embedding regions alarming", "stat", "none", [
        ("{{subgroup}} {{statistic}}", 'max by (subgroup, statistic) (classguard_monitor_alarm{monitor="regions"})')]),
    ("Known confusions per pair", "timeseries", "reqps", [
        ("{{pair}} {{subgroup}}", f"sum by (pair, subgroup) (rate(classguard_known_confusion_detections_total[{R}]))")]),
    ("Guardrail actions", "timeseries", "reqps", [
        ("{{guardrail}} {{action}} {{subgroup}}", f"sum by (guardrail, action, subgroup) (rate(classguard_guardrail_actions_total[{R}]))")]),
    ("Abstention rate", "timeseries", "percentunit", [
        ("{{subgroup}}", f'sum by (subgroup) (rate(classguard_predictions_total{{predicted_class="abstained"}}[{R}])) / sum by (subgroup) (rate(classguard_predictions_total[{R}]))')]),
    ("Routed share and fallbacks", "timeseries", "reqps", [
        ("routed to {{target}} {{subgroup}}", f"sum by (target, subgroup) (rate(classguard_routed_total[{R}]))"),
        ("fallback {{target}} {{reason}}", f"sum by (target, reason) (rate(classguard_route_fallbacks_total[{R}]))")]),
    ("Shadow agreement", "timeseries", "percentunit", [
        ("{{model}} {{subgroup}}", f'sum by (model, subgroup) (rate(classguard_shadow_comparisons_total{{outcome="agree"}}[{R}])) / sum by (model, subgroup) (rate(classguard_shadow_comparisons_total[{R}]))')]),
    ("Active guardrail config", "table", "none", [
        ("{{profile}} {{hash}}", "count by (profile, hash) (classguard_guardrail_config_info == 1)")]),
    # a fleet serves one chain (ClassguardGuardrailConfigDrift) and publishes one view of its windows
    ("Fleet: chains served, replicas degraded", "timeseries", "none", [
        ("distinct chains served", "count(count by (hash) (classguard_guardrail_config_info == 1))"),
        ("replicas on their own view", "sum(classguard_fleet_view_degraded)"),
        ("store errors/s {{component}}", f"sum by (component) (rate(classguard_fleet_store_errors_total[{R}]))"),
        ("held labels/s {{outcome}}", f"sum by (outcome) (rate(classguard_feedback_held_total[{R}]))"),
        # one host's wrong clock (ClassguardFleetClockSkew): the replica furthest off, signed
        ("largest clock skew (s)", "max(classguard_fleet_clock_skew_seconds) > -min(classguard_fleet_clock_skew_seconds) "
                                   "or min(classguard_fleet_clock_skew_seconds)")]),
    ("Monitor pipeline", "timeseries", "none", [
        ("events/s", f"sum(rate(classguard_monitor_events_total[{R}]))"),
        ("dropped/s", f"sum(rate(classguard_monitor_events_dropped_total[{R}]))"),
        ("seconds since last run (stalest replica)", "time() - min(classguard_monitor_last_run_timestamp_seconds)")]),
    ("Inference batch size", "timeseries", "none", [
        ("{{model}}", f"sum by (model) (rate(classguard_inference_batch_size_sum[{R}])) / sum by (model) (rate(classguard_inference_batch_size_count[{R}]))")]),
    ("Models", "table", "none", [("{{model}} {{version}} {{role}} {{device}}",
                                   "count by (model, version, role, device, precision) (classguard_model_info == 1)")]),
    # Prometheus's own series about the scrape (ClassguardTargetDown): 0 means every panel above is blind.
    ("Targets up", "stat", "none", [("{{instance}}", 'up{job="classguard"}')]),
    ("Scrape duration", "timeseries", "s", [("{{instance}}", 'scrape_duration_seconds{job="classguard"}')]),
]

SEL = 'model="$model", subgroup="$subgroup"'


def live_and_reference(monitor: str, statistic: str, legend: str = "", how: str = "max") -> list[tuple[str, str]]:
    """A monitor statistic of the selected model and subgroup (its worst replica, by `how`)
    beside its reference value."""
    match = f'monitor="{monitor}", statistic="{statistic}", {SEL}'
    return [(f"{legend}live", fleet(f"classguard_monitor_score{{{match}}}", how)),
            (f"{legend}reference", fleet(f"classguard_monitor_reference{{{match}}}"))]


INCIDENT = [
    ("Answered per subgroup", "timeseries", "reqps", [
        ("{{predicted_class}}", f"sum by (predicted_class) (rate(classguard_predictions_total{{{SEL}}}[{R}]))")]),
    ("Mean confidence per subgroup", "timeseries", "percentunit", live_and_reference("confidence", "mean_confidence", how="min")),
    ("Low-confidence rate vs reference", "timeseries", "percentunit",
     live_and_reference("confidence", "low_confidence_rate")),
    # the estimate where no labels are needed, and how it fared where labels arrived: both
    # ratios over the same labelled answers (ClassguardAccuracyEstimateOff)
    ("Estimated vs realized accuracy", "timeseries", "percentunit", [
        *live_and_reference("confidence", "estimated_accuracy", "estimated ", how="min"),
        ("estimated, labelled answers (1h)", f"model_subgroup:classguard_estimated_accuracy_labelled:ratio1h{{{SEL}}}"),
        ("realized, labelled answers (1h)", f"model_subgroup:classguard_realized_accuracy:ratio1h{{{SEL}}}")]),
    ("Estimate minus realized (labelled answers, 1h)", "timeseries", "percentunit", [
        ("gap", f"model_subgroup:classguard_accuracy_estimate_gap:1h{{{SEL}}}")]),
    ("Confidence distribution", "heatmap", "none", [
        ("{{le}}", f"sum by (le) (rate(classguard_prediction_confidence_bucket{{{SEL}}}[{R}]))")]),
    ("Predicted-class drift (JS)", "timeseries", "none", [
        ("js distance", fleet(f'classguard_monitor_score{{monitor="class_drift", statistic="js_distance", {SEL}}}'))]),
    ("Known-confusion rate vs reference", "timeseries", "percentunit",
     live_and_reference("known_confusion", "fire_rate", "{{pair}} ")),
    ("Anomalies by kind", "timeseries", "reqps", [
        ("{{kind}}", f"sum by (kind) (rate(classguard_anomalies_total{{{SEL}}}[{R}]))")]),
    # the alerts gate each replica on its own window: the smallest and largest replica window
    ("Window sample sizes", "timeseries", "none", [
        ("{{monitor}} min over replicas", f"min by (monitor) (classguard_monitor_window_samples{{{SEL}}})"),
        ("{{monitor}} max over replicas", f"max by (monitor) (classguard_monitor_window_samples{{{SEL}}})")]),
    ("Guardrail actions in this subgroup", "timeseries", "reqps", [
        ("{{guardrail}} {{action}}", f'sum by (guardrail, action) (rate(classguard_guardrail_actions_total{{subgroup="$subgroup"}}[{R}]))')]),
]


def panel(pid: int, title: str, kind: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": pid, "type": kind, "title": title, "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * ((pid - 1) % 2), "y": 8 * ((pid - 1) // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (legend, expr) in enumerate(targets)],
    }


def dashboard(uid: str, title: str, panels: list, variables: list[dict]) -> dict:
    return {
        "uid": uid, "title": title, "tags": ["classguard"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]}, "annotations": {"list": []},
        "panels": [panel(i + 1, *p) for i, p in enumerate(panels)],
    }


def variable(name: str, query: str) -> dict:
    return {"name": name, "type": "query", "datasource": DATASOURCE, "query": query, "refresh": 2,
            "definition": query, "includeAll": False, "multi": False}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    boards = {
        "classguard-overview.json": dashboard("classguard-overview", "classguard overview", OVERVIEW, []),
        "classguard-incident.json": dashboard("classguard-incident", "classguard incident", INCIDENT, [
            variable("model", "label_values(classguard_predictions_total, model)"),
            variable("subgroup", "label_values(classguard_predictions_total, subgroup)")]),
    }
    for name, board in boards.items():
        (OUT / name).write_text(json.dumps(board, indent=2) + "\n")


if __name__ == "__main__":
    main()
