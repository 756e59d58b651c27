"""``python -m bench``: run the benchmark sections, each in a subprocess, and write RESULTS.md."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench import SECTIONS
from bench import report as report_mod
from bench._harness import HERE, Section, machine, run_child, versions

#: Wall-time limit of one section's subprocess (seconds), full / quick.
TIMEOUTS = {
    "startup": (300, 120),
    "finetune": (900, 300),
    "features": (900, 300),
    "pipeline": (600, 240),
    "inference": (1200, 400),
    "distribute": (400, 200),
}


def _child(key: str, quick: bool, out: Path) -> int:
    """In the child process: run one section and write its JSON to ``out``."""
    from bench._harness import quiet_tf

    quiet_tf()
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(SECTIONS[key])
        section = module.run(quick=quick)
    except Exception as exc:  # noqa: BLE001 - a failing section is reported, not fatal
        section = Section(key, key, status="error", reason=f"{type(exc).__name__}: {exc}"[:500])
        traceback.print_exc()
    section.seconds = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(section.to_json(), default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    p.add_argument("--only", default="", help=f"comma-separated sections of {list(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument(
        "--results",
        default=None,
        help="results JSON (default bench/results.json, bench/results_quick.json with --quick)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="Markdown report (default bench/RESULTS.md, bench/RESULTS_quick.md with --quick)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child, args.quick, Path(args.child_out))

    only = [s for s in args.only.split(",") if s]
    skip = {s for s in args.skip.split(",") if s}
    for s in [*only, *skip]:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; valid: {', '.join(SECTIONS)}")
    keys = [k for k in (only or SECTIONS) if k not in skip]
    suffix = "_quick" if args.quick else ""
    results_path = Path(args.results or HERE / f"results{suffix}.json")
    md_path = Path(args.out or HERE / f"RESULTS{suffix}.md")
    data = report_mod.load(results_path)
    command = "python -m bench" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:])
        if (argv if argv is not None else sys.argv[1:])
        else ""
    )
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = {
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "sections": keys,
    }
    t_all = time.perf_counter()
    for key in keys:
        timeout = TIMEOUTS[key][1 if args.quick else 0]
        print(
            f"[bench] {key} (limit {timeout} s, load {run['machine']['load_avg']}) ...", flush=True
        )
        out = HERE / f".{key}{suffix}.tmp.json"
        out.unlink(missing_ok=True)
        child_args = ["-m", "bench", "--child", key, "--child-out", str(out)]
        if args.quick:
            child_args.append("--quick")
        res = run_child(child_args, timeout=timeout)
        if out.is_file():
            section = json.loads(out.read_text())
            out.unlink()
        else:
            why = res["killed"] or f"exit code {res['returncode']}"
            section = Section(
                key,
                key,
                status="error",
                reason=f"subprocess failed ({why}): " + res["stderr"].strip()[-400:],
            ).to_json()
            section["seconds"] = round(res["seconds"], 1)
        section.setdefault("data", {})["run"] = run_id
        if section["status"] == "error":
            print(res["stderr"][-3000:], file=sys.stderr)
        data["sections"][key] = section
        status = section["status"]
        bars = ", ".join(f"{b['item']}: {b['met']}" for b in section.get("bars", []))
        print(f"[bench] {key}: {status} in {res['seconds']:.0f} s. {bars}", flush=True)
        run["seconds"] = time.perf_counter() - t_all
        data["runs"] = {
            k: v
            for k, v in data.get("runs", {}).items()
            if any(s.get("data", {}).get("run") == k for s in data["sections"].values())
        }
        data["runs"][run_id] = run
        report_mod.save(data, results_path)
        report_mod.write(data, md_path)
    print(f"[bench] wrote {md_path} ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
