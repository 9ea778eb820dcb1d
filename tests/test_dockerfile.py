"""No Docker engine runs here: check what can be checked without one."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
KNOWN = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
}
KNOWN |= {"ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word, rest.strip()))
    return out


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", req.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_every_instruction_is_known_and_it_starts_from_a_cuda_pytorch_image():
    ins = instructions()
    assert all(word in KNOWN for word, _ in ins), [w for w, _ in ins if w not in KNOWN]
    assert ins[0][0] == "FROM"
    assert re.match(r"pytorch/pytorch:2\.11\.0-cuda[\d.]+-cudnn\d+-", ins[0][1])


def test_pins_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = pins(project["dependencies"])
    got = pins(re.findall(r"([A-Za-z0-9_.-]+==[^\s\\]+)", DOCKERFILE))
    assert want, "pyproject.toml pins nothing?"
    assert got == want


def test_runs_as_a_non_root_user_with_launch_as_entrypoint():
    ins = instructions()
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == ['["launch"]']
    # the last USER comes after the installs, so the image's files are in place as root
    last_user = max(i for i, (w, _) in enumerate(ins) if w == "USER")
    last_run = max(i for i, (w, _) in enumerate(ins) if w == "RUN")
    assert last_user > last_run


def test_copies_what_the_package_needs():
    copied = " ".join(rest for word, rest in instructions() if word == "COPY")
    for path in ("pyproject.toml", "launcher", "recipes", "README.md"):
        assert path in copied
