"""`bentoml build` packs the service's code and both models, and nothing from the model store
as source, for both images: the CPU Bento (bentofile.yaml) and the CUDA one (bentofile.cuda.yaml).

It builds from a copy of the checkout in a plain temporary folder (the copy `make build` makes
under a dot-folder): BentoML refuses a bentofile.yaml whose path has a component starting with
'.', so building in place fails for a clone under ~/.cache/... The copy holds the whole source
tree, tests included, plus a decoy model store, so the bentofiles' include lists are what keep
them out of the Bento.

No container is built (no base image can be pulled here): the tests read what `docker build`
would be handed. A Bento in the store holds no models, so each is exported (`bentoml export`
adds them) and the archive unpacked. Its env/docker/Dockerfile is written at build time; the
one `bentoml containerize` builds is regenerated from bento.yaml (bentoml.container
.get_containerfile returns it), so both are read."""

import os
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.build_check import hidden_component, stage
from tests.conftest import REPO

SERVICE = "service.service:Classguard"
ENTRYPOINT = 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]'
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Variant:
    bentofile: str
    name: str
    base_image: str
    installs: str  # the Dockerfile's step that installs env/python/requirements.txt


VARIANTS = {
    "cpu": Variant("bentofile.yaml", "classguard", "python:3.11-slim",
                   "uv --directory $INSTALL_ROOT pip install -r $BENTO_PATH/env/python/requirements.txt"),
    # spec 1 Bentos install through env/python/install.sh: `uv pip install -r requirements.txt`
    "cuda": Variant("bentofile.cuda.yaml", "classguard-cuda", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04",
                    "bash -euxo pipefail /home/bentoml/bento/env/python/install.sh"),
}


@dataclass(frozen=True)
class Built:
    variant: Variant
    tag: str
    names: list[str]  # the exported archive's members
    root: Path  # the archive unpacked

    def read(self, path: str) -> str:
        return (self.root / path).read_text()


def store_env(home: Path) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}


def requirements(text: str) -> tuple[list[str], set[str]]:
    """A requirements file's option lines (in order) and its requirements."""
    lines = [" ".join(line.split("#", 1)[0].split()) for line in text.splitlines()]
    return [ln for ln in lines if ln.startswith("-")], {ln for ln in lines if ln and not ln.startswith("-")}


def from_line(dockerfile: str) -> str:
    (line,) = [ln for ln in dockerfile.splitlines() if ln.startswith("FROM ")]
    return line


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """One staged copy of the checkout, with a decoy model store, that every variant builds from."""
    ctx = stage(REPO, tmp_path_factory.mktemp("build") / "checkout")
    assert hidden_component(ctx) is None, f"the build copy {ctx} is under a dot-folder; point TMPDIR elsewhere"
    assert (ctx / "tests" / "conftest.py").is_file() and (ctx / "service" / "service.py").is_file()
    decoy = ctx / ".bentoml" / "models" / "decoy" / "latest"
    decoy.mkdir(parents=True)
    (decoy / "model.ts").write_bytes(b"not a model")
    (decoy / "decoy.py").write_text("")
    return ctx


@pytest.fixture(scope="module")
def build(checkout, model_home, tmp_path_factory):
    """Builds, exports and unpacks a variant's Bento on first use; later uses get the same one."""
    done: dict[str, Built] = {}
    bentoml = str(Path(sys.executable).with_name("bentoml"))

    def get(key: str) -> Built:
        if key not in done:
            variant = VARIANTS[key]
            # the CPU Bento is built as `make build` builds it, from the default bentofile.yaml
            named = [] if variant.bentofile == "bentofile.yaml" else ["-f", variant.bentofile]
            built = subprocess.run([bentoml, "build", *named, "--output", "tag"], cwd=checkout,
                                   env=store_env(model_home), capture_output=True, text=True, timeout=120)
            assert built.returncode == 0, built.stderr
            (tag,) = [ln.removeprefix("__tag__:") for ln in built.stdout.splitlines() if ln.startswith("__tag__:")]
            assert tag.startswith(f"{variant.name}:"), tag
            out = tmp_path_factory.mktemp(f"bento-{key}")
            exported = subprocess.run([bentoml, "export", tag, str(out / "cg.bento")], cwd=checkout,
                                      env=store_env(model_home), capture_output=True, text=True, timeout=120)
            assert exported.returncode == 0, exported.stderr
            with tarfile.open(out / "cg.bento") as archive:
                names = archive.getnames()
                archive.extractall(out / "bento", filter="data")
            done[key] = Built(variant, tag, names, out / "bento")
        return done[key]

    return get


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def bento(request, build) -> Built:
    return build(request.param)


def test_build_packs_both_models(bento):
    """The Bento exports with both models' files and the service code, and no tests or .bentoml files."""
    names = bento.names
    for model in ("classguard-baseline", "classguard-retrained"):
        assert any(n.startswith(f"./models/{model}/") and n.endswith("model.ts") for n in names), model
    assert any(n.endswith("src/service/service.py") for n in names)
    assert not any(".bentoml" in n or "decoy" in n or n.startswith("./src/tests") for n in names)


def test_dockerfile_base_install_and_entrypoint(bento):
    """The Bento's Dockerfile starts from the variant's base image, installs the packed requirements
    file and ends in BentoML's entrypoint, which serves the Bento's service."""
    dockerfile = bento.read("env/docker/Dockerfile")
    assert from_line(dockerfile).split()[:2] == ["FROM", bento.variant.base_image]
    assert bento.variant.installs in dockerfile
    if "install.sh" in bento.variant.installs:
        assert 'pip_install "${PIP_ARGS[@]}" -r "$REQUIREMENTS_TXT"' in bento.read("env/python/install.sh")
    assert dockerfile.rstrip().splitlines()[-1] == ENTRYPOINT
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in bento.read("env/docker/entrypoint.sh")
    assert yaml.safe_load(bento.read("bento.yaml"))["service"] == SERVICE


def test_containerize_builds_the_same_image(bento, model_home, tmp_path):
    """The Dockerfile `bentoml containerize` generates for the Bento has the same base image,
    requirements step and entrypoint as the one stored in it."""
    out = tmp_path / "Dockerfile"
    made = subprocess.run([sys.executable, "-c", "import sys, bentoml; "
                           "bentoml.container.get_containerfile(sys.argv[1], output_path=sys.argv[2])",
                           bento.tag, str(out)],
                          env=store_env(model_home), capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    dockerfile = out.read_text()
    assert from_line(dockerfile) == from_line(bento.read("env/docker/Dockerfile"))
    assert bento.variant.installs in dockerfile
    assert dockerfile.rstrip().splitlines()[-1] == ENTRYPOINT


def test_configs_are_the_repositorys(bento):
    """The Bento's config/classguard.yaml and config/guardrails.yaml are the repository's, byte for byte."""
    for name in ("classguard.yaml", "guardrails.yaml"):
        assert (bento.root / "src" / "config" / name).read_bytes() == (REPO / "config" / name).read_bytes(), name


def test_service_imports_from_the_bento_alone(bento):
    """The service class imports from the Bento's src folder with the Bento's own models as the store,
    and no module of the project is read from the repository checkout."""
    src = bento.root / "src"
    # -I ignores PYTHONPATH and -S skips site-packages' .pth files, among them the editable
    # install's finder that maps `service`, `ops`... to the checkout; site-packages itself is
    # put back by hand, behind the Bento's src
    probe = "\n".join([
        "import sys",
        "sys.path[:0] = [sys.argv[1]]",
        "sys.path.append(sys.argv[2])",
        "from service.service import Classguard",
        "print(Classguard.name)",
        "for module in list(sys.modules.values()):",
        "    print(getattr(module, '__file__', None) or '')",
    ])
    purelib = sysconfig.get_paths()["purelib"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(bento.root),
           "BENTOML_HOME": str(bento.root), "BENTOML_DO_NOT_TRACK": "true"}
    ran = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(src), purelib], cwd=src, env=env,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    name, *files = ran.stdout.splitlines()
    assert name == "classguard"
    assert str(src / "service" / "service.py") in files
    from_repo = [f for f in files if f.startswith(str(REPO)) and not f.startswith(purelib)]
    assert not from_repo, from_repo
    from_src = {Path(f).relative_to(src).parts[0] for f in files if f.startswith(str(src))}
    assert from_src == {"core", "service", "runtime", "monitors", "guardrails", "store"}, from_src


def test_requirements_and_torch_index(bento):
    """The Bento installs requirements/serve.txt's packages, and only the CUDA one adds an index:
    PyTorch's, for the CUDA version its image is built on, searched beside PyPI for every package."""
    options, packed = requirements(bento.read("env/python/requirements.txt"))
    _, serve = requirements((REPO / "requirements" / "serve.txt").read_text())
    assert packed == serve
    if bento.variant.name == "classguard-cuda":
        assert options == [f"--extra-index-url {CUDA_INDEX}"]
        assert "PIP_ARGS=(--index-strategy unsafe-best-match)" in bento.read("env/python/install.sh")
        cuda = yaml.safe_load((REPO / bento.variant.bentofile).read_text())["docker"]["cuda_version"]
        assert CUDA_INDEX.endswith("/cu" + "".join(cuda.split(".")[:2])), (CUDA_INDEX, cuda)
        assert f"nvidia/cuda:{cuda}-" in bento.variant.base_image
    else:  # PyPI's Linux torch is the CUDA build: the CPU image takes PyTorch's CPU wheel
        assert options == [f"--extra-index-url {CPU_INDEX}"]
        dockerfile = bento.read("env/docker/Dockerfile")
        assert dockerfile.index("ENV UV_INDEX_STRATEGY=$UV_INDEX_STRATEGY") < dockerfile.index(bento.variant.installs)
        assert "ARG UV_INDEX_STRATEGY=unsafe-best-match" in dockerfile


def test_the_cuda_image_has_pip_for_bentomls_uv_step(build):
    """nvidia/cuda's Python (deadsnakes) has no pip, which BentoML's step uses to install uv: the
    CUDA Dockerfile installs Ubuntu's pip with the system packages, and lets it install into the
    system Python (PEP 668), before that step."""
    dockerfile = build("cuda").read("env/docker/Dockerfile")
    step = dockerfile.index("pip install --no-cache-dir --require-hashes -r /tmp/uv-requirements.txt")
    assert -1 < dockerfile.index("python3-pip") < step
    assert -1 < dockerfile.index("ENV PIP_BREAK_SYSTEM_PACKAGES=$PIP_BREAK_SYSTEM_PACKAGES") < step


def test_cuda_bentofile_differs_only_where_it_must():
    """bentofile.cuda.yaml is bentofile.yaml but for its name, variant label, requirements file, index
    strategy, CUDA version and pip for the uv step, so both Bentos pack the same code."""
    cpu, cuda = (yaml.safe_load((REPO / VARIANTS[k].bentofile).read_text()) for k in ("cpu", "cuda"))
    assert (cuda.pop("name"), cuda["labels"].pop("variant")) == ("classguard-cuda", "cuda")
    assert cuda["python"].pop("requirements_txt") == "requirements/serve-cuda.txt"
    assert cuda["python"].pop("pip_args") == "--index-strategy unsafe-best-match"
    assert cpu["python"].pop("requirements_txt") == "requirements/serve.txt"
    assert cuda["docker"].pop("cuda_version") == "12.8.1"
    assert cuda["docker"].pop("system_packages") == ["python3-pip"]
    assert cuda["docker"].pop("env") == {"PIP_BREAK_SYSTEM_PACKAGES": "1"}
    assert cpu.pop("envs") == [{"name": "UV_INDEX_STRATEGY", "value": "unsafe-best-match"}]  # spec 2's pip_args
    assert cuda == cpu
