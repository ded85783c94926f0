"""`bentoml build` packs the service's code and both models, and nothing from the model store
as source."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import REPO


def test_build_packs_both_models(model_home, tmp_path):
    """The built Bento exports with baseline and retrained model files and no .bentoml sources."""
    env = {**os.environ, "BENTOML_HOME": str(model_home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    built = subprocess.run([bentoml, "build"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    exported = subprocess.run([bentoml, "export", "classguard:latest", str(tmp_path / "cg.bento")], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    names = tarfile.open(tmp_path / "cg.bento").getnames()
    for model in ("classguard-baseline", "classguard-retrained"):
        assert any(n.startswith(f"./models/{model}/") and n.endswith("model.ts") for n in names), model
    assert any(n.endswith("src/service/service.py") for n in names)
    assert not any(".bentoml" in n or n.startswith("./src/tests") for n in names)
