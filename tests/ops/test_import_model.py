"""Bring your own model: the documented CLI imports a user's classifier, profiles it, and
the service serves it."""

import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from harness.server import Server
from runtime.preprocess import encode_png
from tests.conftest import run_module
from tests.ops.brightness_net import BrightnessNet


def validation_arrays(n=40):
    rng = np.random.default_rng(5)
    bright = rng.random(n) < 0.5
    images = np.where(bright[:, None, None, None], 200, 40).astype(np.uint8) + rng.integers(0, 20, (n, 16, 16, 3)).astype(np.uint8)
    return images, bright.astype(np.int64)


@pytest.fixture(scope="module")
def byom_home(tmp_path_factory):
    return tmp_path_factory.mktemp("byom-home")


def test_import_state_dict_with_npz(tmp_path, byom_home):
    """state_dict + module path + .npz (with a subgroup column) imports into the store with a
    profile whose accuracy, subgroups and input spec reflect the user's data."""
    torch.save(BrightnessNet().state_dict(), tmp_path / "weights.pt")
    images, labels = validation_arrays()
    capture = np.where(np.arange(len(labels)) % 4 == 0, "phone", "scanner")
    np.savez(tmp_path / "val.npz", images=images, labels=labels, subgroup_capture=capture,
             class_names=np.array(["dark", "bright"]))
    done = run_module(
        "ops.cli", "import-model", "my-brightness", "--state-dict", str(tmp_path / "weights.pt"),
        "--module", "tests.ops.brightness_net:BrightnessNet", "--module-kwargs", '{"gain": 10.0}',
        "--val-npz", str(tmp_path / "val.npz"), "--input-size", "12x12", "--channels", "3",
        "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
        "--training-shares", "capture=scanner:0.9,capture=phone:0.1",
        env={"BENTOML_HOME": str(byom_home)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("my-brightness:")
    profile = json.loads(run_module("ops.cli", "profile", "my-brightness:latest",
                                    env={"BENTOML_HOME": str(byom_home)}).stdout)
    assert profile["labels"] == ["dark", "bright"]
    assert profile["input_spec"] == {"height": 12, "width": 12, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert profile["training_subgroup_shares"] == {"capture=scanner": 0.9, "capture=phone": 0.1}
    assert profile["subgroups"]["all"]["accuracy"] == 1.0
    assert profile["subgroups"]["capture=phone"]["count"] == 10


def test_import_torchscript_with_image_folder(tmp_path):
    """A TorchScript file plus a folder of images per class imports too."""
    home = tmp_path / "home"
    torch.jit.script(BrightnessNet()).save(str(tmp_path / "model.ts"))
    images, labels = validation_arrays(12)
    for i, (img, y) in enumerate(zip(images, labels)):
        folder = tmp_path / "val" / ("bright" if y else "dark")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    done = run_module("ops.cli", "import-model", "folder-model", "--torchscript", str(tmp_path / "model.ts"),
                      "--val-dir", str(tmp_path / "val"), "--labels", "dark,bright", "--input-size", "12x12",
                      "--channels", "3", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", env={"BENTOML_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    profile = json.loads(run_module("ops.cli", "profile", "folder-model:latest", env={"BENTOML_HOME": str(home)}).stdout)
    assert profile["subgroups"]["all"]["count"] == 12 and profile["subgroups"]["all"]["accuracy"] == 1.0
    assert profile["notes"]["training_shares_source"] == "validation mix"


def test_bad_import_fails_with_a_message(tmp_path):
    """A missing validation array is reported as a one-line error with exit code 2."""
    torch.jit.script(BrightnessNet()).save(str(tmp_path / "model.ts"))
    np.savez(tmp_path / "val.npz", pictures=np.zeros((2, 4, 4)))
    done = run_module("ops.cli", "import-model", "x", "--torchscript", str(tmp_path / "model.ts"),
                      "--val-npz", str(tmp_path / "val.npz"), env={"BENTOML_HOME": str(tmp_path / "h")})
    assert done.returncode == 2 and "no `images` array" in done.stderr


@pytest.mark.integration
def test_imported_model_is_served(byom_home, tmp_path):
    """`bentoml serve` with the imported model as primary classifies a bright image as bright."""
    env = {"BENTOML_HOME": str(byom_home), "CLASSGUARD_MODELS__PRIMARY": "my-brightness:latest",
           "CLASSGUARD_MODELS__OTHERS": "[]"}
    with Server(env=env, log_path=tmp_path / "serve.log") as server:
        png = encode_png(np.full((30, 30, 3), 230, np.uint8))
        r = httpx.post(f"{server.url}/classify", files={"image": ("b.png", png)}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "bright" and r.json()["model"].startswith("my-brightness:")
