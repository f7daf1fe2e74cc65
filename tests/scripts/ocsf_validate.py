#!/usr/bin/env python3
"""Validates OCSF events (NDJSON files, or syslog lines whose message is an
event after the BOM) against the published OCSF schema, as packaged by the
`ocsf-json-schema` PyPI package (the schema of each event's
metadata.version, its class from class_uid, its metadata.profiles), with
`jsonschema` (Draft 2020-12). Prints one JSON line: {"valid": N,
"invalid": [{"file", "line", "errors"}]}; exit 0 when every event is valid
and there is at least one, 1 otherwise, 2 on bad usage."""
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

if len(sys.argv) < 2:
    print(__doc__, file=sys.stderr)
    sys.exit(2)

schemas, validators = {}, {}


def validator(version, class_uid, profiles):
    key = (version, class_uid, tuple(sorted(profiles)))
    if key not in validators:
        if version not in schemas:
            schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        s = schemas[version]
        name = s.lookup_class_name_from_uid(class_uid=class_uid)
        schema = s.get_class_schema(class_name=name, profiles=list(profiles))
        Draft202012Validator.check_schema(schema)
        validators[key] = Draft202012Validator(schema)
    return validators[key]


valid, invalid = 0, []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if "\ufeff" in line:  # an RFC 5424 syslog line: the message follows the BOM
                line = line.split("\ufeff", 1)[1]
            try:
                ev = json.loads(line)
                v = validator(ev["metadata"]["version"], ev["class_uid"], ev["metadata"].get("profiles", []))
                errors = sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(ev))
            except Exception as e:  # not JSON, no metadata, unknown class or version
                errors = [f"{type(e).__name__}: {e}"]
            if errors:
                invalid.append({"file": path, "line": n, "errors": errors[:20]})
            else:
                valid += 1
print(json.dumps({"valid": valid, "invalid": invalid}))
sys.exit(0 if valid and not invalid else 1)
