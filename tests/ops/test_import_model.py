"""Bring your own model: the documented CLI imports a user's classifier, profiles it, and
the service serves it."""

import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from harness.example_model import build_model
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


def colour_folder(root, n: int = 6):
    """A validation folder per class of 16 x 16 RGB PNGs, each mostly its class's colour."""
    rng = np.random.default_rng(3)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
            img[..., c] = 200 + rng.integers(0, 50, (16, 16))
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_the_documented_import_line_reads_size_and_channels_from_the_images(tmp_path):
    """`classguard import-model my-colors --torchscript model.ts --val-dir val/ --labels red,green,blue`,
    as the docs write it, imports a 16 x 16 RGB model: the input is read from the images (not the
    digits' 8 x 8 grey) and recorded in the profile."""
    build_model().save(str(tmp_path / "model.ts"))
    colour_folder(tmp_path / "val")
    home = {"BENTOML_HOME": str(tmp_path / "home")}
    done = run_module("ops.cli", "import-model", "my-colors", "--torchscript", str(tmp_path / "model.ts"),
                      "--val-dir", str(tmp_path / "val"), "--labels", "red,green,blue", env=home)
    assert done.returncode == 0, done.stderr
    assert "input 3 x 16 x 16 (read from the validation images)" in done.stderr
    profile = json.loads(run_module("ops.cli", "profile", "my-colors:latest", env=home).stdout)
    assert profile["input_spec"] == {"height": 16, "width": 16, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}
    assert profile["labels"] == ["red", "green", "blue"] and profile["subgroups"]["all"]["accuracy"] == 1.0


@pytest.mark.parametrize("flags, says", [
    (["--channels", "1"], "does not take 1 x 16 x 16 input"),
    (["--input-size", "8x8"], "does not take 3 x 8 x 8 input"),
    (["--labels", "red,green"], "the validation set names 2 classes"),
])
def test_a_model_input_mismatch_is_one_line_naming_the_flag(tmp_path, flags, says):
    """A model given input it does not take (or class names it does not answer) fails in one
    line that names what to set, with exit code 2 and no traceback; nothing is stored."""
    build_model().save(str(tmp_path / "model.ts"))
    colour_folder(tmp_path / "val", n=2)
    args = ["--labels", "red,green,blue", *flags] if "--labels" not in flags else flags
    done = run_module("ops.cli", "import-model", "bad", "--torchscript", str(tmp_path / "model.ts"),
                      "--val-dir", str(tmp_path / "val"), *args, env={"BENTOML_HOME": str(tmp_path / "home")})
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "models" / "bad").exists()


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
