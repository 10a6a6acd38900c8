"""Render deploy/k8s's kustomizations: with ``kubectl kustomize`` where a kubectl with
kustomize v4 or later is installed, else with the small renderer here.

The renderer covers the features deploy/k8s uses: resources (files and folders with a
kustomization), ``namespace``, ``labels`` (metadata only), ``images`` (``newName``/``newTag``)
and ``patches`` (strategic merge by file, list items merged by ``name``, other lists replaced).
Anything else in a kustomization is an error, so a feature added to the manifests cannot be
silently skipped here. Where kubectl is there, a test checks that both render the same objects.
(Debian's kubernetes-client is kubectl 1.20, whose kustomize v2 lacks ``labels``; PyPI has no
kubectl; so a machine without kubectl uses the renderer.)
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@functools.cache
def kubectl() -> str | None:
    """The kubectl to render with: one whose kustomize is v4 or later, else ``None``."""
    path = shutil.which("kubectl")
    if path is None:
        return None
    done = subprocess.run(
        [path, "version", "--client"], capture_output=True, text=True, timeout=60, check=False
    )
    found = re.search(r"Kustomize Version: v(\d+)", done.stdout)
    return path if found and int(found.group(1)) >= 4 else None


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k folder`` would create."""
    binary = kubectl()
    if binary is None:
        return render_locally(folder)
    done = subprocess.run(
        [binary, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise ValueError(f"kubectl kustomize {folder}: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def render_locally(folder: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"{folder}: kustomization fields this renderer lacks: {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs.extend(render_locally(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        body = yaml.safe_load((folder / patch["path"]).read_text())
        target = patch.get("target", {})
        kind = target.get("kind", body["kind"])
        name = target.get("name", body["metadata"]["name"])
        matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
        if len(matches) != 1:
            raise ValueError(f"patch {patch['path']} matches {len(matches)} resources")
        patched = merge(matches[0], {k: v for k, v in body.items() if k != "metadata"})
        docs[docs.index(matches[0])] = patched
    for image in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                repo = container["image"].split("@")[0].rsplit(":", 1)[0]
                if repo == image["name"]:
                    new = image.get("newName", repo)
                    container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    namespace = kustomization.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge, as far as these manifests need it."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in [*base, *patch])
    ):
        out = copy.deepcopy(base)
        for item in patch:
            index = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = merge(out[index], item)
        return out
    return copy.deepcopy(patch)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}/{name}"
    return found[0]
