"""Validate a Compose file against the Compose Specification's JSON Schema, offline.

Usage: python deploy/check_compose.py SCHEMA COMPOSE_FILE

SCHEMA is ``schema/compose-spec.json`` of the compose-spec Go module
(github.com/compose-spec/compose-go/v2, fetched by ``./dev check-deploy`` through the Go module
proxy): the schema ``docker compose`` itself validates with.  The file is read as YAML
(anchors and ``<<`` merge keys resolved, as Compose does); ``${VAR}`` interpolation is not
performed, so a typed field (a number, a boolean) must hold a literal value.  Exit 0 when
valid; 1 with one line per violation (where, what) otherwise; 2 when a file is unreadable.
"""

from __future__ import annotations

import json
import sys

import jsonschema
import yaml


def violations(schema: dict, document: object) -> list[str]:
    """Every violation of ``schema`` by ``document``, as 'path: message' lines, in path order."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in found]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            schema = json.load(f)
        with open(argv[2], encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"cannot read {exc}", file=sys.stderr)
        return 2
    problems = violations(schema, document)
    for line in problems:
        print(f"{argv[2]}: {line}")
    if not problems:
        print(f"{argv[2]}: valid against {argv[1].rsplit('/', 1)[-1]} "
              f"({len(document.get('services', {}))} services)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
