"""The experiment harness: the only layer that knows ``argparse``, sets matplotlib's backend, seeds
the random generators and sets torch's thread count and the process's ``malloc`` thresholds
(:mod:`~pyro_lfbm.harness.allocator`). :mod:`~pyro_lfbm.harness.cli` (common options,
checks made before any work, the one error wrapper ``run_cli``, result folders written whole),
:mod:`~pyro_lfbm.harness.task_cli` (data-set options of the image tasks), one ``*_experiment``
module per experiment (settings from the command line -> task and library functions -> result
files; the bodies of the longer ``experiments/`` scripts), ``*_report`` modules (tables and READMEs
over many runs), :mod:`~pyro_lfbm.harness.locking` (side-by-side runners),
:mod:`~pyro_lfbm.harness.formatting` (the one mean ± std formatter and prior-label map), and the
figures (:mod:`~pyro_lfbm.harness.panels`, :mod:`~pyro_lfbm.harness.plots`).
Nothing in the library imports it."""
