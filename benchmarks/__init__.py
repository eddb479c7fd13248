"""Benchmarks and experiment runners (throughput, paper reproductions); not part of the installed package.

Run a script from the repository root, either as a file or as a module::

    python benchmarks/train_throughput.py --smoke
    python -m benchmarks.train_throughput --smoke

Shared helpers live in :mod:`benchmarks._common` and are imported as ``benchmarks._common``. A file run
puts ``benchmarks/`` (not the repository root) on ``sys.path``, so every script that imports a sibling
starts with ``if not __package__: sys.path.insert(0, <repository root>)``, which does what ``-m`` does.
Tests import the scripts as ``benchmarks.<name>`` (pytest's ``pythonpath = ["."]``). Results (JSON,
markdown, plots) go to ``benchmarks/results/``.
"""
