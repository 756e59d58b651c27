"""Write kerastl/zoo/tables/*.json, the model registry's data, from the tables in tools/zoo_tables/.

- ``keras_apps.json``: the hand facts of ``zoo_tables/keras_apps.py`` (names, sizes,
  preprocessing, top-1, licence) and the facts measured on every keras.applications
  model built with random weights (feature width, params, taps, layer groups).
- ``keras_hub.json``: the architecture table of ``zoo_tables/keras_hub.py`` (backbone
  class, group rule, tiny config, constructor kwargs of every preset) and the facts
  measured on random-init builds (params, feature width, groups, taps).

The JSON is generated output: edit the tables here, never the JSON.

Run: ``python tools/write_zoo_tables.py [--check] [keras_apps|keras_hub] [family ...]``
(minutes for everything; ``--check`` writes nothing and exits 1 listing every fact
that differs from the checked-in tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
TABLES = TOOLS.parent / "kerastl" / "zoo" / "tables"
SOURCES = ("keras_apps", "keras_hub")


def _source(name: str):
    """The table module of a source: ``NAMES`` and ``family_table(family)``."""
    sys.path.insert(0, str(TOOLS))
    try:
        if name == "keras_apps":
            from zoo_tables import keras_apps as module
        else:
            from zoo_tables import keras_hub as module
    finally:
        sys.path.remove(str(TOOLS))
    return module


def family_names(source: str) -> list[str]:
    """Every family of ``source``, in registration order."""
    return list(_source(source).NAMES)


def regenerate(
    source: str, families: list[str] | None = None, presets: list[str] | None = None
) -> dict[str, Any]:
    """Measure ``families`` (default: all) of ``source`` afresh, as JSON-ready data;
    ``presets`` (KerasHub) keeps only those variants, for a quick partial check."""
    module = _source(source)
    opts = {} if presets is None else {"presets": presets}
    fresh = {f: module.family_table(f, **opts) for f in families or module.NAMES}
    return json.loads(json.dumps(fresh))  # tuples -> lists, exactly as stored


def checked_in(source: str) -> dict[str, Any]:
    """The table of ``source`` as checked in."""
    return json.loads((TABLES / f"{source}.json").read_text(encoding="utf-8"))


def differences(source: str, fresh: dict[str, Any], partial: bool = False) -> list[str]:
    """Every fact of ``fresh`` families that differs from the checked-in table
    (``partial``: ``fresh`` holds only some variants of each family)."""
    stored, out = checked_in(source), []
    for family, fam in fresh.items():
        old = stored.get(family)
        if old is None:
            out.append(f"{source}/{family}: not in the checked-in table")
            continue
        for key in sorted(set(fam) | set(old)):
            if key != "variants" and fam.get(key) != old.get(key):
                out.append(f"{source}/{family}.{key}: {old.get(key)!r} -> {fam.get(key)!r}")
        new_v, old_v = fam.get("variants", {}), old.get("variants", {})
        if not partial and list(new_v) != list(old_v):
            out.append(f"{source}/{family}: variants {list(old_v)} -> {list(new_v)}")
        for name in new_v.keys() & old_v.keys():
            for key in sorted(set(new_v[name]) | set(old_v[name])):
                a, b = old_v[name].get(key), new_v[name].get(key)
                if a != b:
                    out.append(f"{source}/{family}/{name}.{key}: {a!r} -> {b!r}")
    return out


def dumps(table: dict[str, Any]) -> str:
    """The table as JSON: one block per family and per variant, each fact on one line."""

    def obj(items: list[tuple[str, str]], indent: int) -> str:
        pad = "  " * (indent + 1)
        body = ",\n".join(f"{pad}{json.dumps(k)}: {v}" for k, v in items)
        return "{\n" + body + "\n" + "  " * indent + "}"

    def flat(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    def family(fam: dict[str, Any]) -> str:
        items = [(k, flat(v)) for k, v in fam.items() if k != "variants"]
        variants = [
            (name, obj([(k, flat(v)) for k, v in facts.items()], 3))
            for name, facts in fam["variants"].items()
        ]
        return obj([*items, ("variants", obj(variants, 2))], 1)

    return obj([(name, family(fam)) for name, fam in table.items()], 0) + "\n"


def write(source: str, fresh: dict[str, Any]) -> Path:
    """Write ``fresh`` families into the table of ``source`` (others, and the order, kept)."""
    path = TABLES / f"{source}.json"
    table = checked_in(source) if path.exists() else {}
    table = {
        f: fresh.get(f, table.get(f)) for f in family_names(source) if f in fresh or f in table
    }
    path.write_text(dumps(table), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", choices=SOURCES, help="default: both")
    parser.add_argument("families", nargs="*", help="default: every family of the source")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    diffs = []
    for source in [args.source] if args.source else SOURCES:
        fresh = regenerate(source, args.families or None)
        if args.check:
            diffs += differences(source, fresh)
        else:
            print("wrote", write(source, fresh))
    print("\n".join(diffs) or ("tables up to date" if args.check else ""))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
