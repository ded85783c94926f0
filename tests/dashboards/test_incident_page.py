"""The incident page: hostile strings stay text, nothing leaves the file, and the sample page
renders in real headless Chromium with every thumbnail decoded and a quiet console."""

from __future__ import annotations

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboards.incident_page import CONTENT_SECURITY_POLICY, MAX_SERIES, render
from harness import browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "artifacts" / "incident-page-sample.png"
T0 = 1_780_000_000.0
SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_SUBGROUP = 'capture="><img src=x onerror=alert(1)>'
STYLE_PROFILE = "night</style><b>shift"
UNSAFE_ID = "../../etc"
SAFE_ID = "01J0ABC-3"
CONFUSION = "known_confusion:6->0"
HOSTILE = (SCRIPT_LABEL, IMG_SUBGROUP, STYLE_PROFILE, UNSAFE_ID, CONFUSION)


def png(seed: int) -> bytes:
    """An 8 x 8 grayscale PNG: a seeded gradient with noise, so each thumbnail differs."""
    rng = np.random.default_rng(seed)
    pixels = np.add.outer(np.arange(8), np.arange(8)) * 16 + rng.integers(0, 30, (8, 8))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def group(name: str, answers: int, live, training, estimated, realized, labelled: int, **extra) -> dict:
    return {"name": name, "answers": answers, "live_share": live, "training_share": training,
            "estimated_accuracy": estimated, "realized_accuracy": realized, "labelled": labelled, **extra}


def sample_page() -> dict:
    """A page like the gatherer's, with hostile strings wherever a client or operator writes one."""
    buckets = 30
    wave = np.sin(np.linspace(0, 3, buckets))
    answers = (200 + 60 * wave).astype(int).tolist()
    flags = ["low_confidence", CONFUSION, SCRIPT_LABEL] + [f"known_confusion:{i}->{i + 1}" for i in range(7)]
    series = {flag: (np.arange(buckets) * (k + 1) % 17 + (40 if flag == CONFUSION else 0) * (np.arange(buckets) > 18))
              .astype(int).tolist() for k, flag in enumerate(flags)}
    ids = [SAFE_ID, UNSAFE_ID] + [f"0192f3a1b2c37abc8def0123456789{i:02x}" for i in range(10)]
    labels = [str(d) for d in range(10)] + [SCRIPT_LABEL]
    inputs = [{"request_id": rid, "thumbnail": png(i), "predicted": None if i == 3 else labels[i % 11],
               "truth": None if i == 4 else labels[(i + (i % 3 == 0)) % 11], "model": "classguard-baseline:3f2a",
               "subgroup": IMG_SUBGROUP if i % 2 else "capture=phone", "region": None if i == 5 else f"r{i % 6:02d}",
               "flags": [CONFUSION] if i % 4 == 0 else []} for i, rid in enumerate(ids)]
    return {
        "title": "classguard incident", "service": "classguard-baseline:3f2a",
        "generated_at": T0 + 1900, "since": T0, "until": T0 + 1800,
        "log_mode": "sampled", "capture_policy": "stratified",
        "alarms_now": [{"monitor": "known_confusion", "statistic": "rate 0.21 > 0.05", "where": CONFUSION},
                       {"monitor": "subgroup_share", "statistic": "share 41.0% vs 12.0%", "where": IMG_SUBGROUP}],
        "timeline": {"start": T0, "bucket_seconds": 60.0, "answers": answers, "series": series},
        "subgroups": [group("capture=phone", 4100, 0.59, 0.88, 0.91, 0.90, 120),
                      group(IMG_SUBGROUP, 2900, 0.41, 0.12, 0.86, 0.62, 80),
                      group("capture=unknown", 3, None, None, None, None, 0)],
        "regions": [group(f"r{i:02d}", 900 + 50 * i, 0.12 + 0.01 * i, 0.1, 0.9 - 0.03 * i, 0.9 - 0.06 * i, 20 + i,
                          score=1.5 + i) for i in range(6)],
        "sheets": [{"title": "region r05", "inputs": inputs[:6]},
                   {"title": f"subgroup {IMG_SUBGROUP}", "inputs": inputs[6:]},
                   {"title": f"flag {CONFUSION}", "inputs": []}],
        "traces": {i["request_id"]: {"request_id": i["request_id"], "label": i["predicted"], "probability": 0.51,
                                     "guardrails": [{"name": "low_confidence", "action": "pass", "why": SCRIPT_LABEL}],
                                     "subgroup": i["subgroup"]} for i in inputs},
        "confusion": {"model": "classguard-baseline:3f2a", "labels": labels,
                      "counts": [[label, label, 40 + 3 * k] for k, label in enumerate(labels)]
                      + [["6", "0", 31], ["1", "7", 6], ["5", "3", 2], [SCRIPT_LABEL, "3", 2], ["3", "abstained", 7]]},
        "guardrails": [{"ts": T0 + 60, "profile": "default", "hash": "9c1e4b7a", "source": "config", "replica": "r-0"},
                       {"ts": T0 + 900, "profile": STYLE_PROFILE, "hash": "e77f0a12", "source": "PUT /guardrails",
                        "replica": "r-1"}],
        "links": {"runbooks": "dashboards/runbooks/README.md"},
    }


def empty_page() -> dict:
    return {"title": "classguard incident", "service": "classguard-baseline:3f2a", "generated_at": T0, "since": T0,
            "until": T0 + 600, "log_mode": "flagged", "capture_policy": "off", "alarms_now": [],
            "timeline": {"start": T0, "bucket_seconds": 60.0, "answers": [], "series": {}},
            "subgroups": [], "regions": [], "sheets": [], "traces": {}, "confusion": None, "guardrails": [],
            "links": {"runbooks": None}}


class Parsed(HTMLParser):
    """Tags, attributes and text of a document, as a browser's tokenizer would split them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def values(self, attribute: str) -> list[str]:
        return [attrs[attribute] for _, attrs in self.tags if attrs.get(attribute) is not None]


@pytest.fixture(scope="module")
def page() -> dict:
    return sample_page()


@pytest.fixture(scope="module")
def parsed(page) -> Parsed:
    return Parsed(render(page))


def test_no_script_or_event_handler_survives(page, parsed):
    """Neither `<script` nor `onerror=` appears anywhere in the file, and no element is a script or
    carries an event-handler attribute."""
    text = render(page).lower()
    assert "<script" not in text and "onerror=" not in text
    assert all(tag != "script" and not any(name.startswith("on") for name in attrs) for tag, attrs in parsed.tags)


def test_hostile_strings_are_shown_as_text(page, parsed):
    """Each hostile string reaches the reader verbatim as text, never as markup in the source."""
    text = "".join(parsed.text)
    source = render(page)
    for hostile in HOSTILE[:3]:
        assert hostile in text and hostile not in source
    assert UNSAFE_ID in text and CONFUSION.replace(">", "&gt;") in source


def test_the_policy_meta_is_the_first_element_of_head(parsed):
    """The Content-Security-Policy meta comes right after <head>, carrying the exported policy."""
    names = [tag for tag, _ in parsed.tags]
    first = parsed.tags[names.index("head") + 1]
    assert first == ("meta", {"http-equiv": "Content-Security-Policy", "content": CONTENT_SECURITY_POLICY})
    assert CONTENT_SECURITY_POLICY == ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                       "base-uri 'none'; form-action 'none'")


def test_every_image_is_one_of_the_given_pngs_inlined(page, parsed):
    """Every src is a PNG data URL, and together they are exactly the thumbnails given."""
    sources = parsed.values("src")
    prefix = "data:image/png;base64,"
    assert sources and all(src.startswith(prefix) for src in sources)
    given = {item["thumbnail"] for sheet in page["sheets"] for item in sheet["inputs"]}
    assert {base64.b64decode(src[len(prefix):]) for src in sources} == given


def test_nothing_points_off_the_page(page, parsed):
    """No src or href holds an http(s) or protocol-relative URL, every link is an in-page anchor,
    and no http(s) URL appears in the file at all."""
    for value in parsed.values("src") + parsed.values("href"):
        assert not re.match(r"\s*(https?:)?//", value, re.IGNORECASE), value
    assert all(href.startswith("#trace-") for href in parsed.values("href"))
    assert not re.search(r"https?://", render(page), re.IGNORECASE)


def test_link_safe_ids_link_to_their_trace_and_unsafe_ones_do_not(parsed):
    """A well-formed request id links to a trace anchor that exists; `../../etc` gets neither a link
    nor an anchor."""
    hrefs, ids = parsed.values("href"), parsed.values("id")
    assert f"#trace-{SAFE_ID}" in hrefs and f"trace-{SAFE_ID}" in ids
    assert all(href[1:] in ids for href in hrefs)
    assert not [v for v in hrefs + ids if UNSAFE_ID in v]
    assert [attrs for tag, attrs in parsed.tags if tag == "details" and "id" not in attrs]  # its trace is still shown


def test_an_empty_page_renders_and_says_none():
    """All lists empty, no confusion matrix and an empty timeline render, each section saying none."""
    parsed = Parsed(render(empty_page()))
    text = "".join(parsed.text)
    assert text.count("none") >= 8 and "no answers in the window" in text
    assert not parsed.values("src") and not parsed.values("href")


def test_missing_numbers_show_a_dash_and_shares_one_decimal(parsed):
    """Shares and accuracies are percentages with one decimal, and a None is shown as "-"."""
    rows = "".join(parsed.text)
    assert "59.0%" in rows and "41.0%" in rows and "62.0%" in rows
    row = render({"subgroups": [group("g", 3, 0.12345, None, None, 0.5, 0)]})
    assert "12.3%" in row and "<td>-</td>" in row and "50.0%" in row


def test_a_wide_accuracy_gap_is_highlighted(page):
    """Only a row whose estimated and realized accuracy are more than 5 points apart gets the gap mark."""
    html = render({"subgroups": page["subgroups"]})
    assert html.count("class=gap") == 1 and "+24.0 pts" in html and "+1.0 pts" in html


def test_flags_beyond_the_limit_are_summed_as_other(page):
    """With ten flag series the plot draws MAX_SERIES lines, the last the sum of the quietest three."""
    svg = render({"timeline": page["timeline"], "since": T0})
    assert svg.count("<polyline") == MAX_SERIES and "other (3 flags)" in svg


def test_the_truth_is_green_when_it_agrees_and_red_when_not():
    """A right answer's label is marked ok, a wrong one bad; no label and an abstention stay neutral."""
    def figure(predicted, truth):
        item = {"request_id": "a", "thumbnail": png(0), "predicted": predicted, "truth": truth, "model": "m",
                "subgroup": "s", "region": None, "flags": []}
        return render({"sheets": [{"title": "t", "inputs": [item]}]})

    assert 'class="ok">7<' in figure("7", "7") and 'class="bad">1<' in figure("7", "1")
    assert "no label yet" in figure("7", None) and "abstained" in figure(None, "1")
    assert 'class="ok"' not in figure(None, "1") and 'class="bad"' not in figure(None, "1")


def need_browser() -> None:
    """Skip without Chromium, chromedriver or selenium; in CI, where they must be, fail instead."""
    reason = browser.missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must have a browser for the page tests")
    pytest.skip(reason)


def test_the_sample_page_renders_cleanly_in_chromium(page, tmp_path):
    """In real headless Chromium every thumbnail decodes, no image is broken and the console (CSP
    violations included) is silent; the full-page screenshot lands in artifacts/."""
    need_browser()
    path = tmp_path / "incident.html"
    path.write_text(render(page), encoding="utf-8")
    report = browser.inspect_page(path, SCREENSHOT)
    assert len(report.images) == sum(len(sheet["inputs"]) for sheet in page["sheets"])
    assert all(width == 8 for _, width in report.images), report.images
    assert report.broken == [] and report.console_errors == []
    assert report.title == "classguard incident"
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_browser_check_catches_a_broken_image_and_a_blocked_script(tmp_path):
    """A page with an undecodable image and an inline script under the same policy is reported:
    the image as broken, the refused script as a console error."""
    need_browser()
    path = tmp_path / "bad.html"
    path.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                    f'content="{CONTENT_SECURITY_POLICY}"><title>bad</title></head><body>'
                    f'<img alt="broken" src="data:image/png;base64,AAAA"><script>document.title="ran"</script>'
                    f"</body></html>")
    report = browser.inspect_page(path, tmp_path / "bad.png")
    assert report.broken == ["broken"] and report.title == "bad"
    assert any("Content Security Policy" in error for error in report.console_errors), report.console_errors
