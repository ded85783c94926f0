"""A rendered Deployment's pod as a local `bentoml serve` process, as far as one machine can
stand in for a kubelet: what the pod would get is read from the manifest, never restated here.

- env: literal values, Secrets (`secretKeyRef`, from the dict given as the cluster's Secrets; a
  missing key fails as the kubelet's CreateContainerConfigError does) and the downward API
  (`metadata.name`, `metadata.namespace`);
- volumes: a ConfigMap becomes a folder holding its keys as files, an emptyDir an empty folder;
  env values naming a path under a mount point are moved to that folder;
- ports and probes: the container's named port is a free loopback port (each pod has its own
  address in a cluster); `probe("readinessProbe")` GETs the probe's path on it;
- termination: the pre-stop command runs (it is `sleep N`), then SIGTERM, and the pod has the
  manifest's terminationGracePeriodSeconds to exit before SIGKILL.

The image is this checkout (tests/service/test_build.py checks what the built Bento holds); the
model store stands for the image's: give each image version its own.

    pod = Pod(deployment, "classguard-7f9c-abcde", secrets={...}, config_maps={...},
              model_home=store, root=tmp)
    with pod:                     # started and ready, as the readiness probe sees it
        pod.probe("livenessProbe")  # -> 200
    pod.terminate()               # -> seconds from SIGTERM to exit
"""

from __future__ import annotations

import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.server import Server


class PodConfigError(RuntimeError):
    """What a kubelet would refuse to start: a Secret or key that does not exist, an unsupported field."""


class Pod:
    def __init__(self, deployment: dict, name: str, *, secrets: dict[str, dict[str, str]],
                 config_maps: dict[str, dict[str, str]], model_home: Path, root: Path,
                 log_path: Path | None = None) -> None:
        self.name = name
        self.namespace = deployment["metadata"].get("namespace", "default")
        self.spec = deployment["spec"]["template"]["spec"]
        [self.container] = self.spec["containers"]
        self.root = Path(root) / name
        self.mounts = self._volumes(config_maps)
        self.env = {"BENTOML_HOME": str(model_home), **self._env(secrets)}
        self.server = Server(env=self.env, log_path=log_path,
                             startup_timeout=self._startup_budget())

    @property
    def url(self) -> str:
        return self.server.url

    # -- what the kubelet would set up --------------------------------------------------------

    def _volumes(self, config_maps: dict[str, dict[str, str]]) -> dict[str, Path]:
        """mountPath -> local folder, for each volume the container mounts."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts = {}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            folder = self.root / "volumes" / mount["name"]
            folder.mkdir(parents=True)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                if name not in config_maps:
                    raise PodConfigError(f"configmap {name!r} not found")
                for key, text in config_maps[name].items():
                    (folder / key).write_text(text)
            elif "emptyDir" not in volume:
                raise PodConfigError(f"volume {mount['name']}: only configMap and emptyDir are run here")
            mounts[mount["mountPath"].rstrip("/")] = folder
        return mounts

    def _local(self, value: str) -> str:
        for mount, folder in self.mounts.items():
            if value == mount or value.startswith(mount + "/"):
                return str(folder) + value[len(mount):]
        return value

    def _env(self, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
        env = {}
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._local(str(item["value"]))
                continue
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if ref["key"] not in secrets.get(ref["name"], {}):
                    if ref.get("optional"):  # as the kubelet does: the variable is left unset
                        continue
                    raise PodConfigError(f"secret {ref['name']!r} has no key {ref['key']!r} ({item['name']})")
                env[item["name"]] = secrets[ref["name"]][ref["key"]]
            elif "fieldRef" in source:
                field = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": self.name, "metadata.namespace": self.namespace}[field]
            else:
                raise PodConfigError(f"env {item['name']}: {sorted(source)} is not run here")
        return env

    def _startup_budget(self) -> float:
        probe = self.container.get("startupProbe") or self.container["readinessProbe"]
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    # -- the pod's life -----------------------------------------------------------------------

    def __enter__(self) -> "Pod":
        self.server.__enter__()
        deadline = time.monotonic() + self._startup_budget()
        while self.probe("readinessProbe") != 200:  # the manifest's probe, not the harness's own
            if time.monotonic() > deadline:
                self.server.stop(grace=0)
                raise TimeoutError(f"{self.name}: readiness probe never passed")
            time.sleep(0.25)
        return self

    def probe(self, kind: str) -> int:
        """The status the probe's httpGet gets (0: no answer within its timeout)."""
        get = self.container[kind]["httpGet"]
        try:
            with urllib.request.urlopen(f"{self.url}{get['path']}", timeout=self.container[kind].get(
                    "timeoutSeconds", 1)) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def terminate(self) -> float | None:
        """Pre-stop, SIGTERM, grace period: seconds from SIGTERM to exit (None: killed at the end of grace)."""
        pre_stop = self.container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if pre_stop:
            if Path(pre_stop[0]).name != "sleep":
                raise PodConfigError(f"pre-stop {shlex.join(pre_stop)}: only `sleep` is run here")
            subprocess.run(pre_stop, check=True, timeout=120)
        return self.server.stop(grace=self.spec.get("terminationGracePeriodSeconds", 30))

    def __exit__(self, *exc: object) -> None:
        if self.server.process is not None and self.server.process.poll() is None:
            self.server.stop()
