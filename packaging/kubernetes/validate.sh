#!/usr/bin/env bash
# Validates the Kubernetes manifests in packaging/kubernetes/ (runnable from
# any directory):
#
#   * every resource against the Kubernetes 1.31 OpenAPI schemas, strict
#     (unknown fields are errors), with the PyPI package kubernetes-validate,
#     installed into the venv target/kubernetes-validate-venv on first use;
#     a kind with no bundled schema is an error (kubernetes-validate itself
#     only warns and passes), except the ServiceMonitor CRD, whose structure
#     is checked here instead;
#   * YAML without duplicate keys, every resource in namespace rigwatch,
#     kustomization.yaml listing exactly the manifests (not *.example.yaml);
#   * cross-references: workload selectors and Service selectors match pod
#     labels, named ports exist, every volumeMount names a declared volume and
#     every volume is mounted, ConfigMaps/PVCs/Secrets referred to are defined,
#     the TOML config files in the ConfigMaps parse and point at mounted paths
#     and defined Services;
#   * HTTPS: the collector serves with tls_cert/tls_key from a mounted Secret
#     (its probes and the ServiceMonitor use https), and the agent ships to an
#     https:// collector.url with a ca_file on a mounted ConfigMap or Secret
#     that holds that key (the agent refuses plain http:// to another host);
#   * the agent DaemonSet: hostPID, hostNetwork, readOnlyRootFilesystem, no
#     privilege escalation, capabilities drop ALL and add exactly the
#     AmbientCapabilities= of packaging/systemd/rigwatch.service;
#   * the ServiceMonitors: apiVersion/kind, known fields only, selector
#     matching a Service's labels, endpoints naming ports that Service has.
#
# Prints one line per file checked; exits 1 listing every problem found.
set -euo pipefail

cd "$(dirname "$0")/../.."

VENV=target/kubernetes-validate-venv
KV_VERSION=1.31.0
K8S_VERSION=1.31

fail() {
    echo "validate.sh: $*" >&2
    exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
    echo "validate.sh: creating $VENV" >&2
    python3 -m venv "$VENV" ||
        fail "cannot create the venv $VENV (Debian/Ubuntu: apt-get install python3-venv)"
fi
if ! "$VENV/bin/python" -c "import sys, kubernetes_validate as k; sys.exit(k.__version__ != '$KV_VERSION')" 2>/dev/null; then
    echo "validate.sh: installing kubernetes-validate==$KV_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION" ||
        fail "cannot install kubernetes-validate==$KV_VERSION from PyPI into $VENV"
fi

exec "$VENV/bin/python" - "$K8S_VERSION" <<'PY'
import glob
import os
import re
import sys
import tomllib
import urllib.parse

import kubernetes_validate as kv
import yaml

K8S_VERSION = sys.argv[1]
DIR = "packaging/kubernetes"
UNIT = "packaging/systemd/rigwatch.service"
NAMESPACE = "rigwatch"
AGENT_DAEMONSET = "rigwatch-agent"

problems = {}  # file -> [message]
notes = {}  # file -> [what was checked]


def problem(f, msg):
    problems.setdefault(f, []).append(msg)


def note(f, msg):
    if msg not in notes.setdefault(f, []):
        notes[f].append(msg)


# ---------------------------------------------------------------- YAML loading
class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def name_of(r):
    return f"{r.get('kind')}/{(r.get('metadata') or {}).get('name')}"


files = sorted(glob.glob(f"{DIR}/*.yaml") + glob.glob(f"{DIR}/*.yml"))
if not files:
    sys.exit(f"validate.sh: no manifests in {DIR}")

resources = []  # (file, resource)
for f in files:
    notes[f] = []
    try:
        with open(f) as fh:
            docs = [d for d in yaml.load_all(fh, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        problem(f, f"YAML: {' '.join(str(e).split())}")
        continue
    if not docs:
        problem(f, "no YAML document")
    for d in docs:
        if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or not isinstance(d.get("apiVersion"), str):
            problem(f, "a document is not a resource (needs apiVersion and kind)")
            continue
        if not isinstance(d.get("metadata"), dict) or not d["metadata"].get("name"):
            if d["kind"] != "Kustomization":
                problem(f, f"{d['kind']}: metadata.name is missing")
                continue
        resources.append((f, d))


def of_kind(kind):
    return [(f, r) for f, r in resources if r["kind"] == kind]


def find_in(kind, name, namespace=NAMESPACE):
    """(file, resource) of the named resource, or (None, None)."""
    for f, r in of_kind(kind):
        m = r["metadata"]
        if m.get("name") == name and m.get("namespace", NAMESPACE) == namespace:
            return f, r
    return None, None


def find(kind, name, namespace=NAMESPACE):
    return find_in(kind, name, namespace)[1]


# The config files are read with serde's deny_unknown_fields: a key the binary
# does not know stops it at start. The known keys come from the Rust structs.
def struct_fields(src):
    """{struct name: {field: type}} of the `pub struct` blocks of a Rust file."""
    with open(src) as fh:
        text = fh.read()
    out = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        out[m.group(1)] = dict(re.findall(r"^\s*pub (\w+): ([\w<>:]+)", m.group(2), re.M))
    return out


def known_keys(src, root):
    """Allowed TOML keys: {section or "": {keys}} from the struct `root` in src."""
    structs = struct_fields(src)
    if root not in structs or not structs[root]:
        return None
    keys = {"": set()}
    for field, ty in structs[root].items():
        if ty in structs:
            keys[field] = set(structs[ty])
        else:
            keys[""].add(field)
    return keys


CONFIG_SCHEMAS = {  # ConfigMap key -> (Rust source, root struct)
    "agent.toml": ("agent/src/daemon/config.rs", "Config"),
    "collector.toml": ("collector/src/config.rs", "FileConfig"),
}


def check_config_keys(f, what, key, cfg):
    if key not in CONFIG_SCHEMAS:
        return
    src, root = CONFIG_SCHEMAS[key]
    try:
        known = known_keys(src, root)
    except OSError as e:
        problem(f, f"{what}: cannot read {src} for the known keys: {e}")
        return
    if known is None:
        problem(f, f"{what}: found no `pub struct {root}` fields in {src}")
        return
    for k, v in cfg.items():
        if isinstance(v, dict) and k in known:
            unknown = sorted(set(v) - known[k])
            if unknown:
                problem(f, f"{what}: [{k}] has keys the binary rejects (deny_unknown_fields in {src}): {unknown}")
        elif k not in known[""]:
            problem(f, f"{what}: key {k!r} is unknown to the binary (deny_unknown_fields in {src})")
    note(f, f"{key} keys known to {src.split('/')[0]}/")


# ------------------------------------------------ schemas (kubernetes-validate)
for f, r in resources:
    kind, n = r["kind"], name_of(r)
    if kind == "Kustomization":
        continue  # checked below: a kustomize file, not an API object
    if kind == "ServiceMonitor":
        continue  # a CRD: kubernetes-validate has no schema, checked below
    try:
        v = kv.validate(r, K8S_VERSION, strict=True)
        note(f, f"schema {v} strict")
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top)"
        msg = " ".join(e.message.split())
        problem(f, f"{n}: schema {e.version} strict: {path}: {msg[:400]}")
    except kv.SchemaNotFoundError:
        problem(f, f"{n}: no Kubernetes {K8S_VERSION} schema for kind {kind!r} with apiVersion "
                   f"{r['apiVersion']!r} (a typo? only ServiceMonitor is expected to be a CRD)")
    except kv.VersionNotSupportedError:
        sys.exit(f"validate.sh: kubernetes-validate {kv.__version__} has no schemas for Kubernetes {K8S_VERSION}")
    except Exception as e:  # a malformed resource (e.g. kind not a string)
        problem(f, f"{n}: could not be validated: {e}")

# ------------------------------------------------------------ namespaces
for f, r in resources:
    kind, m = r["kind"], r.get("metadata") or {}
    if kind == "Kustomization":
        continue
    if kind == "Namespace":
        if m.get("name") != NAMESPACE:
            problem(f, f"{name_of(r)}: expected the namespace {NAMESPACE!r}")
    elif m.get("namespace") != NAMESPACE:
        problem(f, f"{name_of(r)}: metadata.namespace is {m.get('namespace')!r}, not {NAMESPACE!r}")

# ------------------------------------------------------------ kustomization
kust = f"{DIR}/kustomization.yaml"
if kust in files:
    ks = [r for f, r in resources if f == kust]
    if len(ks) != 1 or ks[0].get("kind") != "Kustomization" or ks[0].get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        problem(kust, "expected one kustomize.config.k8s.io/v1beta1 Kustomization")
    else:
        k = ks[0]
        unknown = set(k) - {"apiVersion", "kind", "metadata", "namespace", "resources", "commonLabels",
                            "labels", "images", "patches", "configMapGenerator", "secretGenerator"}
        if unknown:
            problem(kust, f"unknown fields {sorted(unknown)}")
        if k.get("namespace") != NAMESPACE:
            problem(kust, f"namespace should be {NAMESPACE!r}")
        listed = k.get("resources") or []
        expected = sorted(os.path.basename(x) for x in files
                          if x != kust and not x.endswith((".example.yaml", ".example.yml")))
        if len(listed) != len(set(listed)):
            problem(kust, "resources lists a file twice")
        for x in listed:
            if not os.path.isfile(os.path.join(DIR, x)):
                problem(kust, f"resources: {x} does not exist")
            elif ".example." in x:
                problem(kust, f"resources: {x} is an example and must not be applied")
        missing = sorted(set(expected) - set(listed))
        if missing:
            problem(kust, f"resources does not list {missing}")
        note(kust, f"Kustomization lists all {len(expected)} manifests")
else:
    problem(f"{DIR}/kustomization.yaml", "missing")

# ------------------------------------------------------------ workloads
WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet")


def containers(pod):
    return (pod.get("initContainers") or []) + (pod.get("containers") or [])


def named_ports(pod):
    return {p["name"]: p.get("containerPort") for c in containers(pod) for p in (c.get("ports") or []) if p.get("name")}


def mount_for(pod, c, path):
    """The volumeMount of container c whose mountPath holds path, and its volume."""
    best = None
    for vm in c.get("volumeMounts") or []:
        mp = vm.get("mountPath", "").rstrip("/") or "/"
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best[0].get("mountPath", "")):
                best = (vm, next((v for v in pod.get("volumes") or [] if v.get("name") == vm.get("name")), None))
    return best


def config_file(f, r, pod, c):
    """The TOML text of the --config FILE argument of container c, from its ConfigMap."""
    args = (c.get("command") or []) + (c.get("args") or [])
    if "--config" not in args:
        return None
    i = args.index("--config")
    if i + 1 >= len(args):
        problem(f, f"{name_of(r)}: --config without a value")
        return None
    path = args[i + 1]
    found = mount_for(pod, c, path)
    if not found or not found[1] or "configMap" not in found[1]:
        problem(f, f"{name_of(r)}: --config {path} is not on a mounted ConfigMap")
        return None
    vm, vol = found
    cm_name = vol["configMap"].get("name")
    cm_file, cm = find_in("ConfigMap", cm_name)
    key = path[len(vm["mountPath"].rstrip("/")) + 1:]
    if cm is None:
        return None  # reported by the volume check
    text = (cm.get("data") or {}).get(key)
    if text is None:
        problem(f, f"{name_of(r)}: --config {path}: ConfigMap {cm_name} has no key {key!r}")
        return None
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(cm_file, f"ConfigMap/{cm_name}: {key} (read by {name_of(r)} as {path}) is not valid TOML: {e}")
        return None
    check_config_keys(cm_file, f"ConfigMap/{cm_name}", key, cfg)
    return path, cfg


def check_service_url(f, r, what, url):
    u = urllib.parse.urlsplit(url)
    parts = (u.hostname or "").split(".")
    if len(parts) < 3 or parts[2] != "svc":
        return  # not NAME.NAMESPACE.svc[.cluster.local]: outside the cluster
    port = u.port or (443 if u.scheme == "https" else 80)
    svc = find("Service", parts[0], parts[1])
    if svc is None:
        problem(f, f"{name_of(r)}: {what} {url}: no Service {parts[1]}/{parts[0]} in the manifests")
    elif port not in [p.get("port") for p in svc["spec"].get("ports") or []]:
        problem(f, f"{name_of(r)}: {what} {url}: Service {parts[0]} has no port {port}")
    else:
        note(f, f"{what} -> Service {parts[0]}:{port}")


def file_on_volume(f, r, pod, c, what, path, kinds):
    """Checks that `path` is a key of a mounted ConfigMap or Secret (of `kinds`) that defines it."""
    found = mount_for(pod, c, path)
    vol = found and found[1]
    kind = vol and ("ConfigMap" if "configMap" in vol else "Secret" if "secret" in vol else None)
    if not kind or kind not in kinds:
        problem(f, f"{name_of(r)}: {what} {path} is on no mounted {' or '.join(kinds)}")
        return
    src = vol["configMap"] if kind == "ConfigMap" else vol["secret"]
    ref = src.get("name") if kind == "ConfigMap" else src.get("secretName")
    key = path[len(found[0]["mountPath"].rstrip("/")) + 1:]
    items = src.get("items")
    if items is not None:
        key = next((i.get("key") for i in items if i.get("path") == key), None)
        if key is None:
            problem(f, f"{name_of(r)}: {what} {path}: the volume's items do not project it")
            return
    res = find(kind, ref)
    if res is not None and key not in {**(res.get("data") or {}), **(res.get("stringData") or {})}:
        problem(f, f"{name_of(r)}: {what} {path}: {kind} {ref} has no key {key!r}")
    else:
        note(f, f"{what} from {kind} {ref}")


def listen_port(f, r, pod, what, listen, port_name):
    port = int(str(listen).rsplit(":", 1)[-1])
    if named_ports(pod).get(port_name) != port:
        problem(f, f"{name_of(r)}: {what} {listen} is not the container port named {port_name!r}")


for f, r in resources:
    if r["kind"] not in WORKLOADS:
        continue
    n = name_of(r)
    spec = r.get("spec") or {}
    tmpl = spec.get("template") or {}
    pod = tmpl.get("spec") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        problem(f, f"{n}: spec.selector.matchLabels {sel} does not match the pod labels {labels}")
    for k, v in {"app.kubernetes.io/name": r["metadata"]["name"], "app.kubernetes.io/part-of": "rigwatch"}.items():
        if labels.get(k) != v:
            problem(f, f"{n}: pod label {k} should be {v!r}")

    volumes = {}
    for v in pod.get("volumes") or []:
        if v["name"] in volumes:
            problem(f, f"{n}: volume {v['name']!r} declared twice")
        volumes[v["name"]] = v
    mounted = set()
    ports = named_ports(pod)
    for c in containers(pod):
        cn = f"{n} container {c.get('name')}"
        for vm in c.get("volumeMounts") or []:
            mounted.add(vm.get("name"))
            if vm.get("name") not in volumes:
                problem(f, f"{cn}: volumeMount {vm.get('name')!r} ({vm.get('mountPath')}) names no declared volume")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            p = (c.get(probe) or {}).get("httpGet") or {}
            if isinstance(p.get("port"), str) and p["port"] not in ports:
                problem(f, f"{cn}: {probe} port {p['port']!r} is not a named container port")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                sec = find("Secret", ref.get("name"))
                if sec is None:
                    problem(f, f"{cn}: env {e['name']}: Secret {ref.get('name')} is defined in no manifest (not even an example)")
                elif ref.get("key") not in {**(sec.get("data") or {}), **(sec.get("stringData") or {})}:
                    problem(f, f"{cn}: env {e['name']}: Secret {ref.get('name')} has no key {ref.get('key')!r}")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f, f"{cn}: securityContext.allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f, f"{cn}: securityContext.readOnlyRootFilesystem must be true")
        if sc.get("privileged"):
            problem(f, f"{cn}: must not be privileged")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            problem(f, f"{cn}: securityContext.capabilities.drop must be [ALL]")
        seccomp = (sc.get("seccompProfile") or (pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problem(f, f"{cn}: seccompProfile should be RuntimeDefault, is {seccomp!r}")
    for name, v in volumes.items():
        if name not in mounted:
            problem(f, f"{n}: volume {name!r} is mounted by no container")
        if "configMap" in v and find("ConfigMap", v["configMap"].get("name")) is None:
            problem(f, f"{n}: volume {name!r}: ConfigMap {v['configMap'].get('name')} is defined in no manifest")
        if "secret" in v and find("Secret", v["secret"].get("secretName")) is None:
            problem(f, f"{n}: volume {name!r}: Secret {v['secret'].get('secretName')} is defined in no manifest (not even an example)")
        if "persistentVolumeClaim" in v and find("PersistentVolumeClaim", v["persistentVolumeClaim"].get("claimName")) is None:
            problem(f, f"{n}: volume {name!r}: PersistentVolumeClaim {v['persistentVolumeClaim'].get('claimName')} is defined in no manifest")
    note(f, "volumes, ports, probes, securityContext")

    # the configuration file each container reads, and where it points
    for c in pod.get("containers") or []:
        got = config_file(f, r, pod, c)
        if not got:
            continue
        path, cfg = got
        note(f, f"{path} parses")
        if r["kind"] == "DaemonSet":
            proc = (cfg.get("scan") or {}).get("proc_root", "/proc")
            m = mount_for(pod, c, proc)
            if proc != "/proc" and not (m and m[1] and (m[1].get("hostPath") or {}).get("path") == "/proc"):
                problem(f, f"{n}: scan.proc_root {proc} is not the host's /proc mounted from a hostPath")
            col = cfg.get("collector") or {}
            spool = col.get("spool_dir", "/var/lib/rigwatch/spool")
            m = mount_for(pod, c, spool)
            if not m or m[0].get("readOnly"):
                problem(f, f"{n}: collector.spool_dir {spool} is on no writable volume (the root file system is read-only)")
            if col.get("url"):
                check_service_url(f, r, "collector.url", col["url"])
                if urllib.parse.urlsplit(col["url"]).scheme != "https":
                    problem(f, f"{n}: collector.url {col['url']} is not https:// (the agent refuses plain http:// "
                               "to another host, and the token would cross the network readable)")
                if col.get("ca_file"):
                    file_on_volume(f, r, pod, c, "collector.ca_file", col["ca_file"], ("ConfigMap", "Secret"))
            listen_port(f, r, pod, "metrics.listen", (cfg.get("metrics") or {}).get("listen", "127.0.0.1:9861"), "metrics")
        else:
            data = cfg.get("data_dir", "/var/lib/rigwatch-collector")
            m = mount_for(pod, c, data)
            if not cfg.get("database", "").startswith(("postgres://", "postgresql://")):
                if not m or not m[1] or "persistentVolumeClaim" not in m[1] or m[0].get("readOnly"):
                    problem(f, f"{n}: data_dir {data} (the SQLite database) is on no writable PersistentVolumeClaim")
                if r["kind"] == "Deployment" and (spec.get("replicas", 1) != 1 or (spec.get("strategy") or {}).get("type") != "Recreate"):
                    problem(f, f"{n}: SQLite needs replicas: 1 and strategy Recreate (several replicas need PostgreSQL)")
            tls = cfg.get("tls_cert") and cfg.get("tls_key")
            if not tls:
                problem(f, f"{n}: the collector serves plain HTTP: set tls_cert and tls_key (a mounted Secret)")
            else:
                file_on_volume(f, r, pod, c, "tls_cert", cfg["tls_cert"], ("Secret",))
                file_on_volume(f, r, pod, c, "tls_key", cfg["tls_key"], ("Secret",))
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    g = (c.get(probe) or {}).get("httpGet")
                    if g is not None and g.get("scheme") != "HTTPS":
                        problem(f, f"{n}: {probe} must use scheme HTTPS (the collector serves HTTPS only)")
            listen_port(f, r, pod, "listen", cfg.get("listen", "127.0.0.1:9860"), "https" if tls else "http")

# ---------------------------------------------- the agent DaemonSet vs systemd
def ambient_capabilities(unit):
    caps = []
    with open(unit) as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("AmbientCapabilities="):
                continue
            value = line.split("=", 1)[1].split()
            if not value:
                caps = []  # an empty assignment resets the list
                continue
            if value[0].startswith("~"):
                sys.exit(f"validate.sh: {unit}: an inverted AmbientCapabilities=~ list is not supported here")
            caps += value
    return caps


try:
    unit_caps = ambient_capabilities(UNIT)
except OSError as e:
    unit_caps = None
    problem(UNIT, f"cannot read: {e}")
if unit_caps is not None:
    if not unit_caps or any(not c.startswith("CAP_") for c in unit_caps):
        problem(UNIT, f"AmbientCapabilities= should list CAP_* names, got {unit_caps}")
    unit_caps = sorted({c[4:] if c.startswith("CAP_") else c for c in unit_caps})
    note(UNIT, f"AmbientCapabilities = {' '.join(unit_caps)}")

agents = [(f, r) for f, r in of_kind("DaemonSet") if r["metadata"]["name"] == AGENT_DAEMONSET]
if not agents:
    problem(f"{DIR}/agent-daemonset.yaml", f"no DaemonSet {AGENT_DAEMONSET}")
for f, r in agents:
    n = name_of(r)
    pod = r["spec"]["template"]["spec"]
    for key in ("hostPID", "hostNetwork"):
        if pod.get(key) is not True:
            problem(f, f"{n}: spec.template.spec.{key} must be true")
    if pod.get("hostNetwork") and pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        problem(f, f"{n}: hostNetwork needs dnsPolicy ClusterFirstWithHostNet to resolve the collector Service")
    for c in pod.get("containers") or []:
        sc = c.get("securityContext") or {}
        add = (sc.get("capabilities") or {}).get("add") or []
        norm = [a[4:] if a.startswith("CAP_") else a for a in add]
        if len(norm) != len(set(norm)):
            problem(f, f"{n} container {c['name']}: capabilities.add lists a capability twice: {add}")
        if unit_caps is not None and sorted(set(norm)) != unit_caps:
            extra, missing = sorted(set(norm) - set(unit_caps)), sorted(set(unit_caps) - set(norm))
            problem(f, f"{n} container {c['name']}: capabilities.add {add} differs from AmbientCapabilities= of "
                       f"{UNIT}" + (f"; not in the unit: {extra}" if extra else "") + (f"; missing: {missing}" if missing else ""))
        if sc.get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser")) != 0:
            problem(f, f"{n} container {c['name']}: added capabilities only take effect for runAsUser 0 "
                       "(Kubernetes grants no ambient capabilities)")
    note(f, "hostPID, hostNetwork, capabilities = " + os.path.basename(UNIT))

# ------------------------------------------------------------ Services
for f, r in of_kind("Service"):
    n, spec = name_of(r), r.get("spec") or {}
    sel = spec.get("selector") or {}
    targets = [(wf, w) for wf, w in resources if w["kind"] in WORKLOADS
               and w["metadata"].get("namespace") == r["metadata"].get("namespace") and sel
               and all(((w["spec"].get("template") or {}).get("metadata") or {}).get("labels", {}).get(k) == v for k, v in sel.items())]
    if not targets:
        problem(f, f"{n}: selector {sel} matches the pods of no workload in the manifests")
        continue
    for port in spec.get("ports") or []:
        tp = port.get("targetPort", port.get("port"))
        for wf, w in targets:
            wports = named_ports(w["spec"]["template"]["spec"])
            if (isinstance(tp, str) and tp not in wports) or (isinstance(tp, int) and tp not in wports.values()):
                problem(f, f"{n}: port {port.get('name')}: targetPort {tp!r} is not a port of {name_of(w)}")
    note(f, f"{n} selects {', '.join(name_of(w) for _, w in targets)}")

# ------------------------------------------------------------ ServiceMonitors
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SM_SPEC = {"attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints", "fallbackScrapeProtocol",
           "jobLabel", "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
           "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
           "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeProtocols", "selector",
           "selectorMechanism", "targetLabels", "targetLimit"}
SM_ENDPOINT = {"authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2", "filterRunning",
               "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings", "noProxy",
               "oauth2", "params", "path", "port", "proxyConnectHeader", "proxyFromEnvironment", "proxyUrl",
               "relabelings", "scheme", "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness"}
RELABEL = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels", "targetLabel"}
ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase",
           "keepequal", "dropequal"}

for f, r in of_kind("ServiceMonitor"):
    n = name_of(r)
    if r["apiVersion"] != "monitoring.coreos.com/v1":
        problem(f, f"{n}: apiVersion must be monitoring.coreos.com/v1, is {r['apiVersion']!r}")
    top = set(r) - {"apiVersion", "kind", "metadata", "spec"}
    if top:
        problem(f, f"{n}: unknown top-level fields {sorted(top)}")
    spec = r.get("spec")
    if not isinstance(spec, dict):
        problem(f, f"{n}: spec is missing")
        continue
    if set(spec) - SM_SPEC:
        problem(f, f"{n}: unknown spec fields {sorted(set(spec) - SM_SPEC)}")
    ml = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(ml, dict) or not ml:
        problem(f, f"{n}: spec.selector.matchLabels is missing or empty")
        continue
    namespaces = ((spec.get("namespaceSelector") or {}).get("matchNames")) or [r["metadata"].get("namespace")]
    services = [s for _, s in of_kind("Service") if s["metadata"].get("namespace") in namespaces
                and all((s["metadata"].get("labels") or {}).get(k) == v for k, v in ml.items())]
    if not services:
        problem(f, f"{n}: spec.selector.matchLabels {ml} matches the labels of no Service in {namespaces}")
        continue
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problem(f, f"{n}: spec.endpoints is missing or empty")
        continue
    for i, ep in enumerate(endpoints):
        where = f"{n}: spec.endpoints[{i}]"
        if not isinstance(ep, dict):
            problem(f, f"{where}: not a mapping")
            continue
        if set(ep) - SM_ENDPOINT:
            problem(f, f"{where}: unknown fields {sorted(set(ep) - SM_ENDPOINT)}")
        port = ep.get("port")
        if not isinstance(port, str):
            problem(f, f"{where}: port must name a Service port")
        for s in services:
            if port not in [p.get("name") for p in s["spec"].get("ports") or []]:
                problem(f, f"{where}: port {port!r} is not a port of Service {s['metadata']['name']}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not (isinstance(ep[key], str) and DURATION.match(ep[key])):
                problem(f, f"{where}: {key} {ep[key]!r} is not a duration like 30s")
        if port == "https" and ep.get("scheme") != "https":
            problem(f, f"{where}: port https needs scheme: https")
        if "path" in ep and not str(ep["path"]).startswith("/"):
            problem(f, f"{where}: path must start with /")
        for key in ("relabelings", "metricRelabelings"):
            for j, rl in enumerate(ep.get(key) or []):
                w = f"{where}.{key}[{j}]"
                if not isinstance(rl, dict):
                    problem(f, f"{w}: not a mapping")
                    continue
                if set(rl) - RELABEL:
                    problem(f, f"{w}: unknown fields {sorted(set(rl) - RELABEL)}")
                if str(rl.get("action", "replace")).lower() not in ACTIONS:
                    problem(f, f"{w}: unknown action {rl.get('action')!r}")
                for lbl in rl.get("sourceLabels") or []:
                    if not LABEL.match(str(lbl)):
                        problem(f, f"{w}: sourceLabels {lbl!r} is not a label name")
                if str(rl.get("action", "replace")).lower() == "replace" and not rl.get("targetLabel"):
                    problem(f, f"{w}: a replace needs targetLabel")
    note(f, f"{n} -> Service {', '.join(s['metadata']['name'] for s in services)}")

# ------------------------------------------------------------ report
for f in files + [UNIT] + sorted(set(problems) - set(files) - {UNIT}):
    if f in problems:
        for msg in problems[f]:
            print(f"FAIL  {f}: {msg}")
    else:
        kinds = ", ".join(name_of(r) for rf, r in resources if rf == f and r["kind"] != "Kustomization")
        what = "; ".join(x for x in [kinds] + notes.get(f, []) if x)
        print(f"ok    {f}: {what}")
sys.stdout.flush()
n = sum(len(v) for v in problems.values())
if n:
    print(f"validate.sh: {n} problem(s) in {len(problems)} file(s)", file=sys.stderr)
    sys.exit(1)
print(f"validate.sh: all {len(files)} manifests valid (Kubernetes {K8S_VERSION} schemas, strict)")
PY
