"""Test support that ships with mdlm: local stand-ins for remote-code backbones (LLaDA, Dream).

Used by the test suite and by ``benchmarks/rehearse_8b_route.py`` (the paper's 8B route rehearsed on
a CPU). Nothing here is imported by training code.
"""
