"""Whether a forward runs eagerly or is being traced (``torch.compile``, ``torch.export``).

Value checks that read a tensor on the host (``int(ids.max())``) give friendly errors in eager
mode, but under tracing they break the graph (``torch.compile``), fail outright
(``torch.export``) and force a device sync. Parts run them only when :func:`eager` is true.

Every part is expected to compile with ``fullgraph=True`` (``tests/test_compile.py`` checks
each registered one). A part whose ``forward`` cannot (data-dependent shapes) declares the
class attribute ``supports_fullgraph = False``; the check then compiles it with graph breaks
allowed and still requires it to match eager mode.
"""

from __future__ import annotations

import torch


def eager() -> bool:
    """True when running eagerly; False while ``torch.compile`` or ``torch.export`` traces."""
    return not torch.compiler.is_compiling()
