"""POST /feedback: true labels for answered requests, read with limits and recorded in the log.

The token is its own (CLASSGUARD_FEEDBACK_TOKEN); items are judged one by one in one
transaction (store.feedback). With the prediction log off there is nothing to join with:
the route answers 404 `feedback_disabled`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse

from core import metrics
from core.config import LimitsConfig
from core.errors import InputError
from service.http_errors import error_response, internal_error
from service.http_input import read_body, require_bearer
from store import feedback
from store.database import StoreUnavailable, off_loop
from store.prediction_log import LogDisabled, NoLog, PredictionLog

class FeedbackEndpoint:
    def __init__(self, *, token: SecretStr | None, log: PredictionLog | NoLog, limits: LimitsConfig,
                 labels_of: Mapping[str, Sequence[str]], pairs: Sequence[tuple[str, str]],
                 hold: feedback.Hold = feedback.Hold(), estimates: Mapping[str, Any] | None = None) -> None:
        self.token, self.log, self.limits, self.labels_of, self.pairs = token, log, limits, labels_of, list(pairs)
        self.hold, self.estimates = hold, estimates

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            items = await self._items(request)
            results = await off_loop(self._record, items)
        except InputError as exc:
            metrics.REJECTED.labels("feedback", exc.reason).inc()
            return error_response(exc)
        except Exception:
            return JSONResponse(internal_error("feedback"), status_code=500)
        status = results[0]["status"] if len(results) == 1 else 200
        return JSONResponse({"recorded": sum(r["result"] == "recorded" for r in results), "results": results},
                            status_code=status)

    async def _items(self, request: Request) -> list[tuple[str, str]]:
        require_bearer(request, self.token, off_reason="feedback_disabled", variable="CLASSGUARD_FEEDBACK_TOKEN")
        try:
            body = json.loads(await read_body(request, self.limits.max_feedback_body_bytes))
        except (ValueError, RecursionError):
            raise InputError("malformed_feedback", "send JSON: {request_id, label} or {items: [...]}") from None
        raw = body.get("items", [body]) if isinstance(body, dict) else None
        most = self.limits.max_feedback_items
        if not isinstance(raw, list) or not 1 <= len(raw) <= most:
            raise InputError("malformed_feedback", f"send {{request_id, label}} or {{items: [...]}} with 1 to {most} items")
        items = []
        for item in raw:
            if not (isinstance(item, dict) and isinstance(item.get("request_id"), str) and isinstance(item.get("label"), str)):
                raise InputError("malformed_feedback", "each item needs string `request_id` and `label`")
            items.append((item["request_id"], item["label"]))  # ids and labels are judged per item
        return items

    def _record(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if self.log.failing:  # known away: say so now, not after a connect timeout
            raise InputError("store_unavailable", "labels not recorded: the store did not answer this replica's "
                                                  "last write; send them again shortly")
        self.log.flush(retention=False)  # this worker's newest answers are findable at once
        try:
            return self.log.read(feedback.record, items, self.labels_of, self.pairs, self.hold,
                                 estimates=self.estimates)
        except LogDisabled:
            raise InputError("feedback_disabled", "feedback needs the prediction log (log.enabled: true)") from None
        except StoreUnavailable as exc:  # a 404 would say the answer does not exist: it may
            raise InputError("store_unavailable", f"labels not recorded: {exc}") from None
