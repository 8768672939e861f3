"""A small renderer for the kustomizations under deploy/kubernetes, for machines without kustomize.

`cargo xtask deploy-check` renders the overlays with a real kustomize when there is one (`kustomize`
on the PATH, or `kubectl kustomize` with kustomize v5 inside); then it also renders them with this
module and requires both to give the same objects, so that this renderer stays faithful. Without a
real kustomize, this module's rendering is the one that is validated.

It understands only what the project's kustomizations use, and refuses anything else by name:

- `resources`: YAML files (one or several documents) and directories holding a kustomization.yaml,
  relative to the kustomization;
- `patches`: entries with only a `path`, to a strategic-merge patch of one object, which names its
  target by `kind` and `metadata.name`;
- `configMapGenerator`: entries with `name`, `files` (the key is the file's name) and
  `options.disableNameSuffixHash: true` (no hash suffix, so no name references to rewrite).

The strategic merge follows Kubernetes' rules for the fields patched here: maps merge key by key, a
null deletes the key, lists of objects with a patch merge key (containers and env by `name`,
volumes by `name`, volumeMounts by `mountPath`, ports by `containerPort`…) merge element by element,
with elements only in the patch placed first, as kustomize does; any other list is replaced.

Usage: python kustomize_lite.py DIR  (prints the rendered objects as a YAML stream)
"""

from __future__ import annotations

import copy
import os
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "configMapGenerator"}

# Patch merge keys of the lists a patch may merge, by field name (from the Kubernetes API's
# `x-kubernetes-patch-merge-key`). Patches are only accepted for Deployments, whose pod template is
# where all of these live.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
    "resourceClaims": "name",
}
PATCHABLE_KINDS = {"Deployment"}


class RenderError(Exception):
    """A kustomization this renderer cannot render, with the file at fault."""


def _load_documents(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise RenderError(f"{path}: not valid YAML: {e}") from e
    for d in docs:
        if not isinstance(d, dict):
            raise RenderError(f"{path}: a document is not a mapping")
    return docs


def _kustomization_file(directory: str) -> str:
    for name in KUSTOMIZATION_FILES:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise RenderError(f"{directory}: no kustomization.yaml")


def _identity(obj: dict) -> tuple[str, str]:
    return (obj.get("kind", ""), (obj.get("metadata") or {}).get("name", ""))


def render(directory: str, files_used: set[str] | None = None) -> list[dict]:
    """The objects the kustomization in `directory` produces, in the order they are declared.

    Every file read (kustomizations, resources, patches, generator inputs) is added to `files_used`,
    as an absolute path, when given.
    """
    used = files_used if files_used is not None else set()
    kfile = _kustomization_file(directory)
    used.add(os.path.abspath(kfile))
    docs = _load_documents(kfile)
    if len(docs) != 1:
        raise RenderError(f"{kfile}: expected one document")
    k = docs[0]
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(
            f"{kfile}: {', '.join(sorted(unknown))} not supported by the built-in renderer "
            "(xtask/src/deploy_check/kustomize_lite.py); extend it or do without"
        )
    if k.get("kind") != "Kustomization":
        raise RenderError(f"{kfile}: kind must be Kustomization")

    objects: list[dict] = []
    for entry in k.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(path):
            objects.extend(render(path, used))
        elif os.path.isfile(path):
            used.add(os.path.abspath(path))
            objects.extend(_load_documents(path))
        else:
            raise RenderError(f"{kfile}: resource {entry} does not exist")

    for gen in k.get("configMapGenerator") or []:
        objects.append(_config_map(kfile, directory, gen, used))

    seen: set[tuple[str, str]] = set()
    for obj in objects:
        ident = _identity(obj)
        if ident in seen:
            raise RenderError(f"{kfile}: {ident[0]} {ident[1]} is declared twice")
        seen.add(ident)

    for entry in k.get("patches") or []:
        if not isinstance(entry, dict) or set(entry) != {"path"}:
            raise RenderError(f"{kfile}: a patch must have only a `path` (got {entry!r})")
        ppath = os.path.normpath(os.path.join(directory, entry["path"]))
        if not os.path.isfile(ppath):
            raise RenderError(f"{kfile}: patch {entry['path']} does not exist")
        used.add(os.path.abspath(ppath))
        patch_docs = _load_documents(ppath)
        if len(patch_docs) != 1:
            raise RenderError(f"{ppath}: a patch holds one object")
        patch = patch_docs[0]
        kind, name = _identity(patch)
        if kind not in PATCHABLE_KINDS:
            raise RenderError(f"{ppath}: patches of {kind or 'unknown kinds'} are not supported")
        targets = [i for i, o in enumerate(objects) if _identity(o) == (kind, name)]
        if not targets:
            raise RenderError(f"{ppath}: no {kind} named {name} to patch")
        i = targets[0]
        objects[i] = strategic_merge(objects[i], patch, ppath)
    return objects


def _config_map(kfile: str, directory: str, gen: dict, used: set[str]) -> dict:
    allowed = {"name", "files", "options"}
    if set(gen) - allowed:
        raise RenderError(
            f"{kfile}: configMapGenerator fields {sorted(set(gen) - allowed)} not supported"
        )
    if gen.get("options") != {"disableNameSuffixHash": True}:
        raise RenderError(
            f"{kfile}: configMapGenerator {gen.get('name')} must set only "
            "options.disableNameSuffixHash: true"
        )
    data = {}
    for entry in gen.get("files") or []:
        if "=" in entry:
            raise RenderError(f"{kfile}: `key=file` in configMapGenerator is not supported")
        path = os.path.normpath(os.path.join(directory, entry))
        if not os.path.isfile(path):
            raise RenderError(f"{kfile}: configMapGenerator file {entry} does not exist")
        used.add(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            data[os.path.basename(path)] = f.read()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}


def strategic_merge(base, patch, where: str):
    """`patch` applied to `base` (neither is modified)."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise RenderError(f"{where}: patch directive {key} is not supported")
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, where)
        elif isinstance(value, list) and isinstance(out.get(key), list) and key in MERGE_KEYS:
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key], where)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(base: list, patch: list, merge_key: str, where: str) -> list:
    for item in base + patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"{where}: a list element has no merge key {merge_key}: {item!r}")
    by_key = {item[merge_key]: item for item in patch}
    merged = [
        strategic_merge(item, by_key[item[merge_key]], where) if item[merge_key] in by_key else item
        for item in base
    ]
    present = {item[merge_key] for item in base}
    added = [copy.deepcopy(item) for item in patch if item[merge_key] not in present]
    return added + merged


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objects = render(argv[1])
    except RenderError as e:
        print(f"kustomize_lite: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=True, default_flow_style=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
