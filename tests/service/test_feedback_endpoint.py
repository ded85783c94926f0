"""POST /feedback in-process: a failure inside the service is a counted 500 with the JSON body,
and a service with the log off answers `feedback_disabled`."""

import asyncio
import json

from prometheus_client import REGISTRY
from pydantic import SecretStr
from starlette.requests import Request

from core.config import LimitsConfig
from service.feedback_endpoint import FeedbackEndpoint
from store.prediction_log import NoLog

TOKEN = "feedback-endpoint-token"


def post(endpoint: FeedbackEndpoint, body: dict):
    data = json.dumps(body).encode()

    async def receive():
        return {"type": "http.request", "body": data, "more_body": False}

    request = Request({"type": "http", "method": "POST", "path": "/feedback",
                       "headers": [(b"authorization", f"Bearer {TOKEN}".encode()),
                                   (b"content-length", str(len(data)).encode())]}, receive)
    return asyncio.run(endpoint(request))


class BrokenLog(NoLog):
    def read(self, fn, *args, **kwargs):
        raise RuntimeError("disk on fire")


def endpoint(log) -> FeedbackEndpoint:
    return FeedbackEndpoint(token=SecretStr(TOKEN), log=log, limits=LimitsConfig(), labels_of={"m": ["1"]}, pairs=[])


def test_a_failure_inside_is_a_counted_500():
    """A log that raises: the answer is a 500 with the service's error body, counted for `feedback`."""
    count = lambda: REGISTRY.get_sample_value("classguard_internal_errors_total", {"endpoint": "feedback"}) or 0.0  # noqa: E731
    before = count()
    response = post(endpoint(BrokenLog()), {"request_id": "r1", "label": "1"})
    assert response.status_code == 500 and json.loads(response.body)["error"] == "internal_error"
    assert count() == before + 1


def test_the_log_off_answers_feedback_disabled():
    """With the prediction log off there is nothing to join labels with: 404 feedback_disabled."""
    response = post(endpoint(NoLog()), {"request_id": "r1", "label": "1"})
    assert response.status_code == 404 and json.loads(response.body)["error"] == "feedback_disabled"


def test_more_items_than_the_limit_are_refused():
    """More items than limits.max_feedback_items: a 400 naming the limit, before anything is read."""
    ep = FeedbackEndpoint(token=SecretStr(TOKEN), log=BrokenLog(), limits=LimitsConfig(max_feedback_items=2),
                          labels_of={}, pairs=[])
    response = post(ep, {"items": [{"request_id": f"r{i}", "label": "1"} for i in range(3)]})
    assert response.status_code == 400 and "1 to 2 items" in json.loads(response.body)["detail"]


class AwayLog(NoLog):
    """A log whose store did not answer its last write: flushing or reading it would wait."""

    failing = True

    def flush(self, *args, **kwargs):
        raise AssertionError("a failing store is not flushed on the request path")

    def read(self, fn, *args, **kwargs):
        raise AssertionError("a failing store is not read on the request path")


def test_labels_are_refused_at_once_while_the_store_is_away():
    """With the store known to be away, a post answers 503 `store_unavailable` with Retry-After
    without touching the store (no connect timeout to wait out), counted for `feedback`."""
    before = REGISTRY.get_sample_value("classguard_rejected_requests_total",
                                       {"endpoint": "feedback", "reason": "store_unavailable"}) or 0.0
    response = post(endpoint(AwayLog()), {"request_id": "r1", "label": "1"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert json.loads(response.body)["error"] == "store_unavailable"
    assert REGISTRY.get_sample_value("classguard_rejected_requests_total",
                                     {"endpoint": "feedback", "reason": "store_unavailable"}) == before + 1
