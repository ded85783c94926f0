"""`classguard init` / `import-model --write-config`: a configuration of the model's own, read
from its profile, that the service starts with and that names nothing the model does not have."""

from __future__ import annotations

import io
import re
import shlex

import httpx
import numpy as np
import pytest
import yaml

from harness import promtext
from harness.example_model import make, png, samples
from harness.server import REPO, Server
from monitors.reference import InputSpec, build_profile
from ops.commands.init import suggest_confusions
from tests.conftest import run_module


def profile_of(labels, predicted, subgroups, names=("a", "b", "c")):
    logits = np.eye(len(names))[np.asarray(predicted)] * 5.0
    return build_profile(logits=logits, labels=np.asarray(labels), subgroups=list(subgroups), class_names=names,
                         input_spec=InputSpec(height=4, width=4, channels=1, mean=(0.0,), std=(1.0,)),
                         training_subgroup_shares={"x": 1.0})


def test_suggested_confusions_rank_pairs_by_their_worst_subgroups_rate():
    """A pair rare overall but frequent in one subgroup ranks first, with its rate per subgroup;
    a pair never confused is not suggested; without subgroups the whole set's rates rank."""
    # light=day: a->b 1 of 10; light=night: a->c 3 of 4; b->a 1 of 4 at night
    labels = [0] * 10 + [0] * 4 + [1] * 4
    predicted = [1] + [0] * 9 + [2, 2, 2, 0] + [0, 1, 1, 1]
    keys = ["light=day"] * 10 + ["light=night"] * 8
    suggested = suggest_confusions(profile_of(labels, predicted, keys))
    assert [(c.source, c.target, c.worst) for c in suggested] == [("a", "c", "light=night"), ("b", "a", "light=night"),
                                                                  ("a", "b", "light=day")]
    assert suggested[0].rate == 0.75 and suggested[0].counts["all"] == (3, 14)
    alone = suggest_confusions(profile_of([0, 0, 1, 1], [0, 1, 1, 1], ["all"] * 4))
    assert [(c.source, c.target, c.worst, c.rate) for c in alone] == [("a", "b", "all", 0.5)]


def readme_import_line() -> list[str]:
    """The README's `classguard import-model` command, its continuation joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"^classguard import-model .*?(?<!\\)\n", text, re.M | re.S).group(0)
    return shlex.split(re.sub(r"#[^\n]*", "", block.replace("\\\n", " ")))


def colour_set(root, per_class=40):
    """The README's inputs: model.ts (16 x 16 RGB, three classes) and val/ with subgroups.csv."""
    make(root, per_class)
    return root


def test_a_class_name_holding_a_newline_stays_inside_its_comment(tmp_path):
    """A class name is the operator's folder name: one holding a newline and YAML is quoted in
    the written comments, so the files parse to the same keys and name it only as a value."""
    from ops.commands.init import render_config, render_profiles

    names = ("a\nadmin_token: x", "b", "c")
    profile = profile_of([0, 0, 1, 1], [1, 1, 1, 1], ["light=day", "light=night"] * 2, names=names)
    confusions = suggest_confusions(profile)
    config = yaml.safe_load(render_config("m:latest", profile, tmp_path, {"light": ["day", "night"]}, {}, confusions))
    assert "admin_token" not in config and config["monitors"]["known_confusions"][0]["source"] == names[0]
    profiles = yaml.safe_load(render_profiles("m:latest", profile, confusions))
    assert set(profiles) == {"active", "profiles"}


def test_the_readme_import_line_works_as_written(tmp_path, monkeypatch):
    """The README's line, run as written on a 16 x 16 RGB TorchScript model and its validation
    folder, imports it and writes a configuration the service's Settings accept, naming the
    model, the validation set's `camera` subgroup and the suggested red->green confusion."""
    colour_set(tmp_path)
    args = readme_import_line()
    assert args[:2] == ["classguard", "import-model"] and "--write-config" in args
    home = {"BENTOML_HOME": str(tmp_path / "home")}
    done = run_module("ops.cli", *args[1:], env=home, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = tmp_path / args[args.index("--write-config") + 1]
    config = yaml.safe_load((written / "classguard.yaml").read_text())
    assert config["models"] == {"primary": "my-colors:latest", "others": []}
    assert config["subgroups"]["attributes"] == {"camera": {"values": ["phone", "studio"], "prefer": "client"}}
    assert config["monitors"]["known_confusions"] == [{"source": "red", "target": "green", "margin": 0.3}]
    assert config["monitors"]["regions"] is True
    assert "# red answered as green: camera=phone: 33.3% (4 of 12)" in (written / "classguard.yaml").read_text()
    from core.config import Settings

    monkeypatch.setenv("CLASSGUARD_CONFIG", str(written / "classguard.yaml"))
    settings = Settings()
    assert settings.guardrails.profiles_path == (written / "guardrails.yaml").resolve()
    assert settings.log.path == (written / "var" / "predictions.sqlite").resolve()
    profiles = yaml.safe_load((written / "guardrails.yaml").read_text())
    assert profiles["active"] == "allow_all"
    assert profiles["profiles"]["suppress_green_camera_phone"][0] == {
        "type": "suppress_labels", "labels": ["green"], "subgroups": ["camera=phone"], "floor": 0.6}


def test_init_refuses_what_would_not_serve_and_writes_nothing(tmp_path):
    """A subgroup value no metric label may carry, a deriver for an attribute the set lacks or
    one that does not import, and existing files without --force: one line, status 2."""
    colour_set(tmp_path)
    home = {"BENTOML_HOME": str(tmp_path / "home")}
    csv = tmp_path / "val" / "subgroups.csv"
    good = csv.read_text()
    csv.write_text(good.replace(",phone\n", ",phone camera\n"))
    imported = run_module("ops.cli", "import-model", "spaced", "--torchscript", str(tmp_path / "model.ts"),
                          "--val-dir", str(tmp_path / "val"), "--labels", "red,green,blue", env=home)
    assert imported.returncode == 0, imported.stderr
    cases = [
        (["spaced", "-o", str(tmp_path / "a")], "phone camera"),
        (["spaced", "-o", str(tmp_path / "b"), "--derive", "light=runtime.derived:camera_maker"], "light"),
        (["spaced", "-o", str(tmp_path / "c"), "--derive", "camera=no.such.module:f"], "cannot be imported"),
    ]
    for args, says in cases:
        done = run_module("ops.cli", "init", *args, env=home)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / args[2]).exists()
    csv.write_text(good)
    run_module("ops.cli", "import-model", "plain", "--torchscript", str(tmp_path / "model.ts"),
               "--val-dir", str(tmp_path / "val"), "--labels", "red,green,blue", env=home)
    assert run_module("ops.cli", "init", "plain", "-o", str(tmp_path / "d"), env=home).returncode == 0
    again = run_module("ops.cli", "init", "plain", "-o", str(tmp_path / "d"), env=home)
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_module("ops.cli", "init", "plain", "-o", str(tmp_path / "d"), "--force", env=home).returncode == 0


def shaky_camera(pixels, facts):
    """A deriver with two bugs: it raises on mostly-blue images and answers an undeclared value
    (`tablet`) for mostly-green ones; red ones are `phone` when the upload is wider than tall."""
    channel = int(np.argmax(pixels.mean(axis=(1, 2))))
    if channel == 2:
        raise KeyError("no lens table for blue")
    if channel == 1:
        return "tablet"
    return "phone" if facts.width > facts.height else "studio"


@pytest.mark.integration
def test_a_served_deriver_that_raises_or_answers_unknown_is_counted_never_a_500(tmp_path):
    """Served with a configuration whose deriver raises for some images and answers an
    undeclared value for others: every request is answered 200 with `camera: other` for
    those, each counted by reason; the deriver's facts see the upload's own size."""
    colour_set(tmp_path, per_class=6)
    home = {"BENTOML_HOME": str(tmp_path / "home")}
    done = run_module("ops.cli", "import-model", "my-colors", "--torchscript", str(tmp_path / "model.ts"),
                      "--val-dir", str(tmp_path / "val"), "--labels", "red,green,blue", "--write-config",
                      str(tmp_path / "config"), "--derive", "camera=tests.ops.test_init:shaky_camera", env=home)
    assert done.returncode == 0, done.stderr
    assert 'derive: "tests.ops.test_init:shaky_camera"' in (tmp_path / "config" / "classguard.yaml").read_text()
    from PIL import Image

    images = [(image, label) for image, label, _ in samples(6, phone_share=0.0, seed=3)]
    wide = Image.fromarray(images[0][0]).resize((32, 16))
    env = {**home, "CLASSGUARD_CONFIG": str(tmp_path / "config" / "classguard.yaml")}
    with Server(env=env, own_files=False, log_path=tmp_path / "serve.log") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = {label: client.post("/classify", files={"image": ("x.png", png(image), "image/png")})
                       for image, label in images}
            out = io.BytesIO()
            wide.save(out, "PNG")
            wide_answer = client.post("/classify", files={"image": ("w.png", out.getvalue(), "image/png")})
            batch = client.post("/classify_batch", files=[("images", (f"{i}.png", png(im), "image/png"))
                                                          for i, (im, _) in enumerate(images)])
        metrics = promtext.scrape(server.url)
    assert all(r.status_code == 200 for r in answers.values()), {k: r.text for k, r in answers.items()}
    assert {label: r.json()["subgroup"]["camera"] for label, r in answers.items()} == {
        "red": "studio", "green": "other", "blue": "other"}
    assert wide_answer.status_code == 200 and wide_answer.json()["subgroup"] == {"camera": "phone"}
    assert batch.status_code == 200, batch.text
    assert [a["subgroup"]["camera"] for a in batch.json()["results"]] == ["studio", "other", "other"] * 2
    failures = {reason: promtext.total(metrics, "classguard_subgroup_derive_failures_total", attribute="camera",
                                       reason=reason) for reason in ("raised", "unknown")}
    assert failures == {"raised": 4.0, "unknown": 4.0}  # two sent alone and two in the batch, each
    assert promtext.total(metrics, "classguard_internal_errors_total") == 0
