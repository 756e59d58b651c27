"""kerastl benchmarks: kerastl against the plain-Keras way, in one command.

    python -m bench              # full suite (< 30 min on 2 cores), writes bench/RESULTS.md
    python -m bench --quick      # a few minutes, writes bench/RESULTS_quick.md
    python -m bench --only startup,finetune   # some sections, merged into the stored results

Sections (issue 6): ``startup`` (6), ``finetune`` (2 + batch scaling, XLA, bfloat16),
``features`` (1 + dataset-size scaling), ``pipeline`` (3), ``inference`` (4),
``distribute`` (MirroredStrategy 1 vs 2 logical CPUs). Export memory and time (issue 19)
are measured by the stand-alone ``python -m bench.export_memory`` and
``python -m bench.export_time``, whose sections RESULTS.md includes.
Each section runs in its own subprocess (fresh TensorFlow, isolated memory);
inside it, both sides of every comparison alternate in the same process.
Raw figures go to ``bench/results.json`` (``results_quick.json``), rendered by
:mod:`bench.report`.
"""

#: Section key -> module (each has ``run(quick: bool) -> Section``).
SECTIONS = {
    "startup": "bench.startup",
    "finetune": "bench.finetune",
    "features": "bench.features",
    "pipeline": "bench.pipeline",
    "inference": "bench.inference",
    "distribute": "bench.distribute",
}
