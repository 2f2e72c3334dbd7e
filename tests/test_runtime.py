"""TensorFlow's oneDNN switch is set from the config before TensorFlow is imported (fresh processes:
the test process may have imported TensorFlow already)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = ("import sys; from strokeseg.runtime import configure_tensorflow; configure_tensorflow({onednn}); "
          "import os; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")


def _run(onednn: bool, exported: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if exported is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = exported
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(onednn=onednn)], env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize("onednn, expected", [(False, "0"), (True, "1")])
def test_the_config_sets_the_onednn_switch(onednn, expected):
    assert _run(onednn, None) == expected


def test_a_value_the_user_exported_wins():
    assert _run(False, "1") == "1"


def test_the_demo_profile_turns_onednn_off_and_paper_keeps_it():
    from strokeseg.config import load_profile

    assert load_profile("demo").onednn is False and load_profile("paper").onednn is True
