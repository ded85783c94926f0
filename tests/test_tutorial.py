"""The tutorial (docs/tutorial.md) runs as written: each `bash` block in order, in a fresh folder,
its output matching the `text` block after it; the served model shows its own subgroups, its
suggested known confusion, and the subgroup alert firing on `camera=phone` in a real Prometheus.

The one command not run as written is `bentoml serve`, which a reader starts in a second
terminal: it is started by the harness with exactly the environment the page gives it (its
`CLASSGUARD_CONFIG` and the page's exports, no other CLASSGUARD_ setting), on a free port that
replaces 3000 in the commands after it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness import promtext
from harness.server import REPO, Server
from tests.dashboards.conftest import need

pytestmark = pytest.mark.integration
PAGE = REPO / "docs" / "tutorial.md"
WILDCARD = "<…>"


def blocks(text: str) -> list[tuple[str, str]]:
    """The page's fenced blocks as (language, body), in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def steps(text: str) -> list[tuple[str, str | None]]:
    """Each bash block with the text block right after it (its expected output), if any."""
    found, listed = [], blocks(text)
    for i, (language, body) in enumerate(listed):
        if language == "bash":
            after = listed[i + 1] if i + 1 < len(listed) else None
            found.append((body, after[1] if after and after[0] == "text" else None))
    return found


def line_pattern(expected: str) -> re.Pattern:
    return re.compile(".*".join(re.escape(part) for part in expected.strip().split(WILDCARD)))


def matches_in_order(expected: str, output: str) -> str | None:
    """None when each non-empty expected line matches a line of `output`, in order (`<…>` matches
    anything); else the first expected line that did not."""
    lines = output.splitlines()
    at = 0
    for line in (e for e in expected.splitlines() if e.strip()):
        pattern = line_pattern(line)
        while at < len(lines) and not pattern.fullmatch(lines[at].strip()):
            at += 1
        if at == len(lines):
            return line
        at += 1
    return None


def test_matching_is_strict():
    """The matcher accepts an output with the expected lines in order and refuses a missing,
    changed or reordered line, so a stale page fails its test."""
    output = "a 1\nnoise\nb 22 c\n"
    assert matches_in_order("a <…>\nb <…> c", output) is None
    assert matches_in_order("b <…> c\na <…>", output) == "a <…>"
    assert matches_in_order("a 2", output) == "a 2"


def exported(lines: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment a shell has after the page's `export` lines."""
    done = subprocess.run(["bash", "-c", "set -e\n" + lines + "\nenv -0"], cwd=cwd, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)


def test_the_tutorial_runs_as_written(tmp_path):
    """Every command of the tutorial succeeds and prints what the page shows; afterwards the
    service's metrics carry the model's own subgroup and known-confusion pair."""
    need("prometheus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSGUARD_")}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the page runs from the repository root
    server, port = None, "3000"
    outputs = []
    try:
        for command, expected in steps(PAGE.read_text()):
            command = command.replace("127.0.0.1:3000", f"127.0.0.1:{port}")
            if "bentoml serve" in command:
                assignments = dict(a.split("=", 1) for a in shlex.split(command.split("bentoml serve")[0]))
                served = {**env, **{k: str((tmp_path / v).resolve()) if k == "CLASSGUARD_CONFIG" else v
                                    for k, v in assignments.items()}}
                assert sorted(k for k in served if k.startswith("CLASSGUARD_")) == ["CLASSGUARD_ADMIN_TOKEN",
                                                                                   "CLASSGUARD_CONFIG"]
                server = Server(env=served, own_files=False, log_path=tmp_path / "serve.log").__enter__()
                port = str(server.port)
                continue
            done = subprocess.run(["bash", "-c", f"set -e\n{command}"], cwd=tmp_path, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
            outputs.append(done.stdout)
            assert done.returncode == 0, f"{command}\n{done.stdout}"
            if expected is not None:
                missing = matches_in_order(expected.replace("127.0.0.1:3000", f"127.0.0.1:{port}"), done.stdout)
                assert missing is None, f"{command}\nprinted:\n{done.stdout}\nno line matches: {missing}"
            exports = [line for line in command.splitlines() if line.startswith(("export ", "source "))]
            if exports:  # what the reader's shell keeps for the next commands, evaluated once
                env = exported("\n".join(exports), tmp_path, env)
        assert server is not None, "the page starts no server"
        metrics = promtext.scrape(server.url)
        # its own subgroup, as the configuration it wrote names it, and its suggested confusion
        assert promtext.total(metrics, "classguard_predictions_total", model="my-colors", subgroup="camera=phone") >= 500
        assert "red->green" in promtext.label_values(metrics, "classguard_known_confusion_detections_total", "pair")
        assert "ClassguardSubgroupOverRepresented{subgroup='camera=phone'} firing" in "".join(outputs)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
