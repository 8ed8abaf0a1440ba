"""The conformance kit on this plugin's kernel: one pytest test per check.

The ``conformance_tests`` line is all a plugin needs; pytest finds the kit's plugin through
plugformer's ``pytest11`` entry point, and the part through this distribution's ``plugformer``
entry point.
"""

from plugformer.testing import conformance_tests

test_cosine = conformance_tests("attention", "cosine")
