"""One-off experiments (offline probes); not part of the installed package.

Run from the repository root as ``python -m experiments.<name>`` (``python experiments/<name>.py``
works too: the scripts import only :mod:`mdlm`). Tests import them as ``experiments.<name>``.
"""
