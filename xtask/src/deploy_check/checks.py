"""The checks of `cargo xtask deploy-check` that need a YAML parser and the Kubernetes schemas.

Run by xtask (xtask/src/deploy_check.rs) with the Python of its virtualenv, where the pinned
kubernetes-validate and yamllint (and PyYAML, which they bring) are installed. xtask renders the
overlays with a real kustomize when there is one and passes the results with --rendered; this
script then checks, printing one line per check and every problem as `FAIL <file>: <problem>`:

1. each overlay renders with the built-in renderer (kustomize_lite.py), and gives the same objects
   as the real kustomize when there was one;
2. every rendered object of every overlay, and every standalone manifest (`*.example.yaml`),
   validates against the pinned Kubernetes version's schemas with unknown fields refused; an object
   of a kind the schemas do not know fails too;
3. the references the schemas cannot see hold: mounts have volumes, ConfigMaps, claims and Secrets
   exist (an expected Secret has an example manifest with the key), Services and budgets and
   autoscalers select a Deployment, probes and Services name the containers' ports, the
   termination grace exceeds the services' drain, a Deployment on a claim runs one replica with the
   Recreate strategy; every container is non-root on a read-only root with no capabilities and
   has resource requests and limits;
4. every YAML file under deploy/kubernetes is used by an overlay or is an example;
5. the TOML files of the ConfigMaps parse;
6. the OpenTelemetry Collector configuration is YAML whose pipelines use only defined components;
7. the Grafana dashboard is JSON whose queries all use the `${datasource}` variable and only metric
   names the services export (read from proto/src/measure.rs).

Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

if sys.version_info < (3, 11):
    sys.exit(f"deploy-check needs Python 3.11 or later (tomllib), not {sys.version.split()[0]}")

import tomllib  # noqa: E402

import yaml  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_lite  # noqa: E402

# kubernetes-validate raises its own exception types; imported lazily so that --help works anywhere.
kv = None


class Report:
    def __init__(self, root: str):
        self.root = root
        self.failures = 0

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def ok(self, what: str) -> None:
        print(f"  ok    {what}")

    def fail(self, where: str, problem: str) -> None:
        self.failures += 1
        print(f"  FAIL  {where}: {problem}")


def describe(obj: dict) -> str:
    return f"{obj.get('kind', '?')} {(obj.get('metadata') or {}).get('name', '?')}"


# --- 1. rendering -------------------------------------------------------------------------------


def first_difference(a, b, path: str = "") -> str:
    """Where two parsed objects first differ, as a dotted path with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b or a[key] != b[key]:
                if key in a and key in b:
                    return first_difference(a[key], b[key], f"{path}.{key}")
                return f"{path}.{key}: {a.get(key)!r} vs {b.get(key)!r}"
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}.{i}")
    return f"{path or '.'}: {a!r} vs {b!r}"


def render_overlay(report: Report, overlay: str, rendered: str | None, renderer: str):
    """The overlay's objects (from the real kustomize if given, else the built-in renderer), the
    files the built-in renderer read, and which object came from which file."""
    name = report.rel(overlay)
    used: set[str] = set()
    try:
        builtin = kustomize_lite.render(overlay, used)
    except kustomize_lite.RenderError as e:
        report.fail(name, f"the built-in renderer cannot render it: {e}")
        builtin = None
    origins = origins_of(overlay)
    if rendered is None:
        if builtin is not None:
            report.ok(f"{name}: rendered by the built-in renderer ({len(builtin)} objects)")
        return builtin or [], used, origins
    with open(rendered, encoding="utf-8") as f:
        objects = [d for d in yaml.safe_load_all(f) if d is not None]
    report.ok(f"{name}: rendered by {renderer} ({len(objects)} objects)")
    if builtin is not None:
        real = {(o.get("kind"), o["metadata"].get("name")): o for o in objects}
        lite = {(o.get("kind"), o["metadata"].get("name")): o for o in builtin}
        problems = []
        for ident in sorted(set(real) | set(lite)):
            if ident not in lite:
                problems.append(f"{ident[0]} {ident[1]} only from {renderer}")
            elif ident not in real:
                problems.append(f"{ident[0]} {ident[1]} only from the built-in renderer")
            elif real[ident] != lite[ident]:
                problems.append(
                    f"{ident[0]} {ident[1]} differs at {first_difference(real[ident], lite[ident])}"
                )
        if problems:
            for p in problems:
                report.fail(name, f"the built-in renderer disagrees with {renderer}: {p}")
        else:
            report.ok(f"{name}: the built-in renderer gives the same {len(objects)} objects")
    return objects, used, origins


def origins_of(overlay: str) -> dict[tuple[str, str], list[str]]:
    """For each object of an overlay, the files that declare or patch it (best effort)."""
    origins: dict[tuple[str, str], list[str]] = {}

    def walk(directory: str) -> None:
        try:
            kfile = kustomize_lite._kustomization_file(directory)
            with open(kfile, encoding="utf-8") as f:
                k = yaml.safe_load(f) or {}
        except (kustomize_lite.RenderError, OSError, yaml.YAMLError):
            return
        for entry in k.get("resources") or []:
            path = os.path.normpath(os.path.join(directory, entry))
            if os.path.isdir(path):
                walk(path)
            elif os.path.isfile(path):
                try:
                    for doc in kustomize_lite._load_documents(path):
                        origins.setdefault(kustomize_lite._identity(doc), []).append(path)
                except kustomize_lite.RenderError:
                    pass
        for gen in k.get("configMapGenerator") or []:
            origins.setdefault(("ConfigMap", gen.get("name", "")), []).append(kfile)
        for entry in k.get("patches") or []:
            path = os.path.normpath(os.path.join(directory, (entry or {}).get("path", "")))
            if os.path.isfile(path):
                try:
                    for doc in kustomize_lite._load_documents(path):
                        origins.setdefault(kustomize_lite._identity(doc), []).append(path)
                except kustomize_lite.RenderError:
                    pass

    walk(overlay)
    return origins


# --- 2. schemas ---------------------------------------------------------------------------------


def validate_objects(report: Report, where: str, objects: list[dict], version: str, origins) -> None:
    bad = 0
    for obj in objects:
        ident = kustomize_lite._identity(obj)
        files = ", ".join(report.rel(p) for p in origins.get(ident, [])) or where
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "."
            report.fail(f"{where} ({files})", f"{describe(obj)}: {path}: {e.message}")
            bad += 1
        except kv.SchemaNotFoundError as e:
            report.fail(f"{where} ({files})", f"{describe(obj)}: {e.message}")
            bad += 1
        except kv.VersionNotSupportedError as e:
            report.fail(where, e.message)
            return
        except (kv.InvalidSchemaError, KeyError) as e:
            report.fail(f"{where} ({files})", f"{describe(obj)}: cannot be validated: {e}")
            bad += 1
    if not bad:
        noun = "object" if len(objects) == 1 else "objects"
        report.ok(f"{where}: {len(objects)} {noun} valid against Kubernetes {version} (strict)")


# --- 3. references ------------------------------------------------------------------------------


def pod_spec(obj: dict) -> dict:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}


def selects(selector: dict, labels: dict) -> bool:
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def check_references(report: Report, where: str, objects: list[dict], expected_secrets) -> None:
    problems_before = report.failures
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind"), {})[obj["metadata"]["name"]] = obj
    deployments = by_kind.get("Deployment", {})
    config_maps = by_kind.get("ConfigMap", {})
    claims = by_kind.get("PersistentVolumeClaim", {})
    secrets = by_kind.get("Secret", {})

    def secret_key_ok(name: str, key: str | None) -> bool:
        if name in secrets:
            s = secrets[name]
            return key is None or key in (s.get("data") or {}) or key in (s.get("stringData") or {})
        return name in expected_secrets and (key is None or key in expected_secrets[name])

    for name, d in deployments.items():
        what = f"{where}: Deployment {name}"
        spec = d.get("spec") or {}
        pod = pod_spec(d)
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selects((spec.get("selector") or {}).get("matchLabels") or {}, labels):
            report.fail(what, "its selector does not select its own pod template")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v and v["configMap"].get("name") not in config_maps:
                report.fail(what, f"volume {v['name']}: no ConfigMap {v['configMap'].get('name')}")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"].get("claimName")
                if claim not in claims:
                    report.fail(what, f"volume {v['name']}: no PersistentVolumeClaim {claim}")
            if "secret" in v and not secret_key_ok(v["secret"].get("secretName"), None):
                report.fail(what, f"volume {v['name']}: no Secret {v['secret'].get('secretName')}")
        uses_claim = any("persistentVolumeClaim" in v for v in volumes.values())
        if uses_claim:
            if spec.get("replicas", 1) != 1:
                report.fail(what, "a Deployment on a PersistentVolumeClaim (SQLite) runs one replica")
            if (spec.get("strategy") or {}).get("type") != "Recreate":
                report.fail(
                    what,
                    "a Deployment on a PersistentVolumeClaim (SQLite) uses the Recreate strategy, "
                    "so two writers never share the database",
                )
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod.get("containers") or []:
            cwhat = f"{what}, container {c.get('name')}"
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    report.fail(cwhat, f"mount {m.get('mountPath')}: no volume {m.get('name')}")
            env = {}
            for e in c.get("env") or []:
                env[e.get("name")] = e.get("value")
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not secret_key_ok(ref.get("name"), ref.get("key")):
                    report.fail(
                        cwhat,
                        f"env {e.get('name')}: Secret {ref.get('name')} with key {ref.get('key')} "
                        "is neither rendered nor described by an *.example.yaml",
                    )
                ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref.get("name") not in config_maps:
                    report.fail(cwhat, f"env {e.get('name')}: no ConfigMap {ref.get('name')}")
            drain_ms = env.get("IXN_SHUTDOWN_GRACE_MS")
            if drain_ms is not None and not int(grace) * 1000 > int(drain_ms):
                report.fail(
                    cwhat,
                    f"terminationGracePeriodSeconds ({grace}) must exceed IXN_SHUTDOWN_GRACE_MS "
                    f"({drain_ms} ms), or the drain is cut short",
                )
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_name)
                if probe is None:
                    report.fail(cwhat, f"no {probe_name}")
                    continue
                port = (probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket") or {}).get(
                    "port"
                )
                if port is not None and port not in ports and port not in ports.values():
                    report.fail(cwhat, f"{probe_name}: port {port} is none of the container's")
            sc = c.get("securityContext") or {}
            psc = pod.get("securityContext") or {}
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                report.fail(cwhat, "securityContext.runAsNonRoot must be true")
            if not sc.get("readOnlyRootFilesystem"):
                report.fail(cwhat, "securityContext.readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.fail(cwhat, "securityContext.allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                report.fail(cwhat, "securityContext.capabilities.drop must hold ALL")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                report.fail(cwhat, "seccompProfile.type must be RuntimeDefault")
            resources = c.get("resources") or {}
            for section in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(section) or {}):
                        report.fail(cwhat, f"resources.{section}.{resource} is not set")

    def deployment_selected(selector: dict) -> dict | None:
        for d in deployments.values():
            labels = ((d["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
            if selects(selector, labels):
                return d
        return None

    for name, svc in by_kind.get("Service", {}).items():
        d = deployment_selected((svc.get("spec") or {}).get("selector") or {})
        if d is None:
            report.fail(f"{where}: Service {name}", "selects no Deployment's pods")
            continue
        names = {
            p.get("name") for c in pod_spec(d).get("containers") or [] for p in c.get("ports") or []
        }
        numbers = {
            p.get("containerPort")
            for c in pod_spec(d).get("containers") or []
            for p in c.get("ports") or []
        }
        for p in svc["spec"].get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            if target not in names and target not in numbers:
                report.fail(f"{where}: Service {name}", f"targetPort {target} is none of the pods' ports")

    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        if deployment_selected(((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels")) is None:
            report.fail(f"{where}: PodDisruptionBudget {name}", "selects no Deployment's pods")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            report.fail(f"{where}: HorizontalPodAutoscaler {name}", f"no target {ref}")
    for name, np in by_kind.get("NetworkPolicy", {}).items():
        spec = np.get("spec") or {}
        d = deployment_selected((spec.get("podSelector") or {}).get("matchLabels"))
        if d is None:
            report.fail(f"{where}: NetworkPolicy {name}", "selects no Deployment's pods")
            continue
        names = {p.get("name") for c in pod_spec(d).get("containers") or [] for p in c.get("ports") or []}
        for rule in spec.get("ingress") or []:
            for p in rule.get("ports") or []:
                if isinstance(p.get("port"), str) and p["port"] not in names:
                    report.fail(f"{where}: NetworkPolicy {name}", f"port {p['port']} is none of the pods'")
    if report.failures == problems_before:
        report.ok(
            f"{where}: references, probes, security contexts, resources and drain times hold"
        )


# --- 4. every manifest is used ------------------------------------------------------------------


def check_unused(report: Report, directories: list[str], used: set[str]) -> None:
    unused = []
    for directory in directories:
        for dirpath, _, files in os.walk(directory):
            for f in files:
                path = os.path.abspath(os.path.join(dirpath, f))
                if f.endswith(".example.yaml") or path in used:
                    continue
                unused.append(path)
    for path in sorted(unused):
        report.fail(report.rel(path), "used by no overlay (name it *.example.yaml if it is an example)")
    if not unused:
        names = " and ".join(report.rel(d) for d in directories)
        report.ok(f"{names}: every file is used by an overlay or is an example")


# --- 5. configuration files ---------------------------------------------------------------------


def check_toml(report: Report, where: str, objects: list[dict]) -> None:
    for obj in objects:
        if obj.get("kind") != "ConfigMap":
            continue
        for key, text in (obj.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                report.fail(f"{where}: ConfigMap {obj['metadata']['name']} key {key}", f"not TOML: {e}")
            else:
                report.ok(f"{where}: ConfigMap {obj['metadata']['name']}: {key} is TOML")


# --- 6. the collector's configuration -----------------------------------------------------------


def check_collector(report: Report, path: str) -> None:
    where = report.rel(path)
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        report.fail(where, f"not readable YAML: {e}")
        return
    before = report.failures
    if not isinstance(config, dict):
        report.fail(where, "not a mapping")
        return
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        report.fail(where, "service.pipelines is empty")
    for section in ("receivers", "processors", "exporters", "extensions"):
        if config.get(section) is not None and not isinstance(config.get(section), dict):
            report.fail(where, f"{section} is not a mapping")
    for ext in service.get("extensions") or []:
        if ext not in (config.get("extensions") or {}):
            report.fail(where, f"service.extensions: {ext} is not defined under extensions")
    for name, pipeline in pipelines.items():
        if name.split("/")[0] not in ("traces", "metrics", "logs", "profiles"):
            report.fail(where, f"pipeline {name}: not a traces, metrics or logs pipeline")
        for section in ("receivers", "processors", "exporters"):
            ids = (pipeline or {}).get(section) or []
            if section != "processors" and not ids:
                report.fail(where, f"pipeline {name}: no {section}")
            for component in ids:
                if component not in (config.get(section) or {}):
                    report.fail(where, f"pipeline {name}: {component} is not defined under {section}")
        processors = (pipeline or {}).get("processors") or []
        if processors and processors[0].split("/")[0] != "memory_limiter":
            report.fail(where, f"pipeline {name}: memory_limiter must be the first processor")
    grpc = (((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("grpc") or {}
    if not str(grpc.get("endpoint", "")).endswith(":4317"):
        report.fail(where, "receivers.otlp.protocols.grpc.endpoint must listen on port 4317")
    if report.failures == before:
        report.ok(f"{where}: YAML; pipeline(s) {', '.join(pipelines)} use only defined components")


# --- 7. the dashboard ---------------------------------------------------------------------------


def exported_metrics(report: Report, measure_rs: str) -> dict[str, str] | None:
    """The metrics the services export, name -> kind, from the table in measure.rs's doc comment."""
    try:
        with open(measure_rs, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        report.fail(report.rel(measure_rs), f"cannot read the list of exported metrics: {e}")
        return None
    metrics = {}
    for line in text.splitlines():
        m = re.match(r"^//!\s*\|([^|]*)\|\s*(counter|gauge|histogram|summary)\s*\|", line)
        if m:
            for name in re.findall(r"`(\w+)`", m.group(1)):
                metrics[name] = m.group(2)
    if not metrics:
        report.fail(
            report.rel(measure_rs),
            "found no `| `name` | kind | labels |` table of metrics in the doc comment",
        )
        return None
    return metrics


def series_names(metrics: dict[str, str]) -> set[str]:
    names = set()
    for name, kind in metrics.items():
        names.add(name)
        if kind in ("histogram", "summary"):
            names.update({f"{name}_sum", f"{name}_count"})
        if kind == "histogram":
            names.add(f"{name}_bucket")
    return names


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def check_dashboard(report: Report, path: str, measure_rs: str) -> None:
    where = report.rel(path)
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        report.fail(where, f"not readable JSON: {e}")
        return
    before = report.failures
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        report.fail(where, "no `datasource` template variable of type datasource for prometheus")
    metrics = exported_metrics(report, measure_rs)
    known = series_names(metrics) if metrics else None
    ids = set()
    queries = [(f"variable {name}", v) for name, v in variables.items() if v.get("type") == "query"]
    for panel in walk_panels(dash.get("panels")):
        pid = panel.get("id")
        if pid in ids:
            report.fail(where, f"panel id {pid} is used twice")
        ids.add(pid)
        if panel.get("type") == "row":
            continue
        title = panel.get("title", f"panel {pid}")
        if not panel.get("targets"):
            report.fail(where, f"panel {title!r} has no queries")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            report.fail(where, f"panel {title!r}: datasource is not ${{datasource}}")
        for t in panel.get("targets") or []:
            queries.append((f"panel {title!r} query {t.get('refId')}", t))
    count = 0
    for what, q in queries:
        if (q.get("datasource") or {}).get("uid") != "${datasource}":
            report.fail(where, f"{what}: datasource is not ${{datasource}}")
        expr = q.get("expr") if "expr" in q else (q.get("query") or {}).get("query", q.get("definition"))
        if not expr:
            report.fail(where, f"{what}: no expression")
            continue
        count += 1
        # Label matchers and strings are not metric names.
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for name in sorted(set(re.findall(r"\bixn_\w+", bare))):
            if known is not None and name not in known:
                report.fail(where, f"{what}: {name} is no metric the services export ({report.rel(measure_rs)})")
    if report.failures == before:
        report.ok(
            f"{where}: JSON; {count} queries on ${{datasource}} use only the {len(metrics or {})} "
            f"exported metrics"
        )


# --- main ---------------------------------------------------------------------------------------


def expected_secrets_from(report: Report, examples: list[str]) -> dict[str, set[str]]:
    secrets: dict[str, set[str]] = {}
    for path in examples:
        try:
            docs = kustomize_lite._load_documents(path)
        except kustomize_lite.RenderError:
            continue
        for d in docs:
            if d.get("kind") == "Secret":
                keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
                secrets.setdefault(d["metadata"]["name"], set()).update(keys)
    return secrets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the repository")
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--overlay", action="append", default=[], help="an overlay directory")
    parser.add_argument(
        "--rendered", action="append", default=[], help="OVERLAY_DIR=FILE rendered by kustomize"
    )
    parser.add_argument("--renderer", default="kustomize", help="what rendered the --rendered files")
    args = parser.parse_args()

    global kv
    import kubernetes_validate.utils as kv_utils

    kv = kv_utils

    root = os.path.abspath(args.root)
    report = Report(root)
    deploy = os.path.join(root, "deploy")
    kubernetes_dir = os.path.join(deploy, "kubernetes")
    rendered = {}
    for item in args.rendered:
        overlay, _, path = item.partition("=")
        rendered[os.path.abspath(overlay)] = path

    examples = sorted(
        os.path.join(dirpath, f)
        for dirpath, _, files in os.walk(deploy)
        for f in files
        if f.endswith(".example.yaml")
    )
    expected_secrets = expected_secrets_from(report, examples)

    print("== overlays")
    all_used: set[str] = set()
    for overlay in args.overlay:
        overlay = os.path.abspath(overlay)
        where = report.rel(overlay)
        objects, used, origins = render_overlay(report, overlay, rendered.get(overlay), args.renderer)
        all_used |= used
        if not objects:
            continue
        validate_objects(report, where, objects, args.kubernetes_version, origins)
        check_references(report, where, objects, expected_secrets)
        check_toml(report, where, objects)

    print("== standalone manifests")
    for path in examples:
        try:
            docs = kustomize_lite._load_documents(path)
        except kustomize_lite.RenderError as e:
            report.fail(report.rel(path), str(e))
            continue
        validate_objects(report, report.rel(path), docs, args.kubernetes_version, {})
    check_unused(report, [kubernetes_dir, os.path.join(deploy, "otel-collector")], all_used)

    print("== OpenTelemetry Collector")
    check_collector(report, os.path.join(deploy, "otel-collector", "config.yaml"))

    print("== Grafana dashboard")
    for dirpath, _, files in os.walk(os.path.join(deploy, "grafana")):
        for f in sorted(files):
            if f.endswith(".json"):
                check_dashboard(
                    report, os.path.join(dirpath, f), os.path.join(root, "proto", "src", "measure.rs")
                )

    if report.failures:
        print(f"{report.failures} problem(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
