"""`bentoml build` packs the service's code and both models, and nothing from the model store
as source.

It builds from a copy of the checkout in a plain temporary folder (the copy `make build` makes
under a dot-folder): BentoML refuses a bentofile.yaml whose path has a component starting with
'.', so building in place fails for a clone under ~/.cache/... The copy holds the whole source
tree, tests included, plus a decoy model store, so bentofile.yaml's include list is what keeps
them out of the Bento."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from harness.build_check import hidden_component, stage
from tests.conftest import REPO


def test_build_packs_both_models(model_home, tmp_path):
    """The Bento exports with both models' files and the service code, and no tests or .bentoml files."""
    ctx = stage(REPO, tmp_path / "checkout")
    assert hidden_component(ctx) is None, f"the build copy {ctx} is under a dot-folder; point TMPDIR elsewhere"
    assert (ctx / "tests" / "conftest.py").is_file() and (ctx / "service" / "service.py").is_file()
    decoy = ctx / ".bentoml" / "models" / "decoy" / "latest"
    decoy.mkdir(parents=True)
    (decoy / "model.ts").write_bytes(b"not a model")
    (decoy / "decoy.py").write_text("")

    env = {**os.environ, "BENTOML_HOME": str(model_home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    built = subprocess.run([bentoml, "build"], cwd=ctx, env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    exported = subprocess.run([bentoml, "export", "classguard:latest", str(tmp_path / "cg.bento")], cwd=ctx,
                              env=env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    names = tarfile.open(tmp_path / "cg.bento").getnames()
    for model in ("classguard-baseline", "classguard-retrained"):
        assert any(n.startswith(f"./models/{model}/") and n.endswith("model.ts") for n in names), model
    assert any(n.endswith("src/service/service.py") for n in names)
    assert not any(".bentoml" in n or "decoy" in n or n.startswith("./src/tests") for n in names)
