"""Process-wide settings: logging for the commands, and TensorFlow settings, which must be made
before TensorFlow is imported.

TensorFlow's oneDNN CPU kernels are fast for upstream-width models (RAX-Net width 1.0 trains 2.3×
faster with them on our 2-core CPU) but crashed training of narrow RAX-Nets at full size
(``width`` 0.25: segmentation fault, "double free or corruption", ``Check failed: IsAligned()``
within 40 steps, 3 runs of 3; never with oneDNN off). The config's ``onednn`` chooses; a value of
``TF_ENABLE_ONEDNN_OPTS`` exported by the user always wins.
"""
from __future__ import annotations

import logging
import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

log = logging.getLogger(__name__)


def configure_tensorflow(onednn: bool) -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS`` for this process unless the user set it; TensorFlow reads it
    once, at import, so a later call can only warn."""
    wanted = "1" if onednn else "0"
    if "tensorflow" in sys.modules:
        if os.environ.get(ONEDNN_VARIABLE, "1") != wanted:
            log.warning("TensorFlow is already imported: oneDNN cannot be turned %s", "on" if onednn else "off")
        return
    os.environ.setdefault(ONEDNN_VARIABLE, wanted)


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes, not as it was when logging
    was configured: a program that swaps ``sys.stderr`` (a test harness, an embedding app) would
    otherwise get "--- Logging error ---" tracebacks from a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(quiet: bool) -> None:
    """One log format for every command: warnings only with ``--quiet``, else progress at INFO."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[_CurrentStderr()],
                        format="%(levelname)s %(name)s: %(message)s", force=True)
