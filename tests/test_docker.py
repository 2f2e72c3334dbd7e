"""The Docker image's recipe, checked without a Docker engine: what it copies exists, the base image
matches the pinned TensorFlow, it runs as a non-root user, and its entrypoint command resolves."""
import argparse
import fnmatch
import json
import re
from pathlib import Path

import pytest
import tomllib

from strokeseg.infer import predict

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def one(name: str) -> str:
    found = [rest for word, rest in instructions() if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def copied_sources() -> list[str]:
    sources = []
    for word, rest in instructions():
        if word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes ``path`` (its patterns in order, ``!`` re-includes)."""
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        return False
    excluded = False
    for pattern in ignore.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
            excluded = not negate
    return excluded


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context():
    sources = copied_sources()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        path = source.rstrip("/").removeprefix("./")
        assert (ROOT / path).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(path), f"COPY {source}: excluded by .dockerignore"
    # pyproject names README.md as the readme, so installing the package needs it in the image
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in [s.rstrip("/") for s in sources]
    # no models, data or stage outputs are baked in
    assert not any(re.search(r"keras|\.h5|models|data|0\d_|10_", s) for s in sources)


def test_base_image_is_the_pinned_tensorflow():
    pinned = re.search(r"^tensorflow(?:-cpu)?==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    base = re.search(r"^BASE_IMAGE=(\S+)$", one("ARG"), re.M).group(1)
    assert base == f"tensorflow/tensorflow:{pinned}"
    assert one("FROM") == "${BASE_IMAGE}"


def test_runs_as_a_non_root_user_with_mount_points():
    user = one("USER")
    assert user and user not in ("root", "0", "0:0")
    text = DOCKERFILE.read_text()
    for mount in ("/input", "/models", "/output"):
        assert mount in one("VOLUME") and mount in text


def test_entrypoint_is_strokeseg_predict_and_resolves(capsys):
    entrypoint = json.loads(one("ENTRYPOINT"))
    assert entrypoint == ["strokeseg", "predict"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["strokeseg"] == "strokeseg.cli:main"
    parser = predict.add_arguments(argparse.ArgumentParser(prog="strokeseg predict"))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--models" in capsys.readouterr().out
    # the default command line (CMD) parses into the documented mounts
    args = parser.parse_args(json.loads(one("CMD")))
    assert (args.inputs, args.models, args.output) == ([Path("/input")], Path("/models"), Path("/output"))


def test_the_strokeseg_command_has_predict():
    from strokeseg import cli

    if "predict" not in cli.COMMANDS and "predict" not in str(cli.build_parser().format_help()):
        pytest.skip("strokeseg predict is not wired into strokeseg/cli.py yet")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "--help"])
    assert exit_info.value.code == 0


def test_readme_shows_the_build_and_run_lines():
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "docker build -f docker/Dockerfile -t strokeseg ." in readme
    assert all(f":{mount}" in readme for mount in ("/input", "/models", "/output"))
    assert "--user" in readme


def test_predict_and_serve_import_with_only_the_images_runtime_libraries():
    """The image installs TensorFlow (its base) and the pins it greps from requirements.txt, nothing
    else: `import strokeseg.infer.predict` and `strokeseg.serve.app` (its build check, its entrypoint
    and `strokeseg serve`) must not need another library at import time."""
    import subprocess
    import sys

    install = next(rest for word, rest in instructions() if word == "RUN" and "requirements.txt" in rest)
    pinned = set(re.search(r"\^\(([^)]*)\)==", install).group(1).split("|"))
    assert {"numpy", "nibabel", "keras"} <= pinned
    absent = [name for name in ("tqdm", "matplotlib", "seaborn", "ptitprince", "sklearn", "nilearn", "cv2")
              if name not in pinned]
    blocker = ("import sys\n"
               "class Absent:\n"
               f"    names = {absent!r}\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in self.names:\n"
               "            raise ImportError(f'{name} is not installed in the image')\n"
               "sys.meta_path.insert(0, Absent())\n"
               "import strokeseg.infer.predict\n"
               "import strokeseg.serve.app\n")
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
