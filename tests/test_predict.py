"""`launch predict RUN_DIR INPUT...`: one JSON record per input in input order, folders standing
for their files, bad files named in one line (or skipped with --skip-bad), --out written whole
or not at all. (Each built-in recipe after multi-process training: tests/test_after_training.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, launch_here


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A resnet trained a few steps on digits, and digit images as PNG files (two in a sub-folder)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    cwd = tmp_path_factory.mktemp("predict")
    r = launch_here(["recipe=resnet_finetune", "log.quiet=true", "run.name=d", "train.max_steps=3",
                     "data.image_size=16", "--device", "cpu"], cwd)  # fmt: skip
    assert r.returncode == 0, r.stderr
    digits = load_digits()
    (cwd / "images" / "more").mkdir(parents=True)
    files = []
    for i in range(5):
        path = cwd / "images" / ("more/" if i >= 3 else "") / f"digit-{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((24, 24)).save(path)
        files.append(path)
    return cwd, cwd / "runs" / "resnet_finetune" / "d", files


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_records_on_stdout_in_input_order(run):
    cwd, rd, files = run
    r = launch_here(["predict", str(rd), str(files[4]), str(cwd / "images")], cwd)
    assert r.returncode == 0, r.stderr
    records = _lines(r.stdout)
    # a file, then the folder's files sorted (sub-folders too): the first one appears twice
    assert [x["input"] for x in records] == [
        str(files[4]),
        *map(str, [files[0], files[1], files[2], files[3], files[4]]),
    ]
    assert records[0] == records[-1]  # (the same file, in another batch, gives the same record)
    for x in records:
        assert x["class"] in [str(i) for i in range(10)] and set(x["probs"]) == {str(i) for i in range(10)}
        assert x["class"] == max(x["probs"], key=x["probs"].get) and sum(x["probs"].values()) == pytest.approx(
            1, abs=1e-4
        )


def test_batch_size_does_not_change_the_records(run):
    cwd, rd, files = run
    one = launch_here(["predict", str(rd), str(cwd / "images"), "--batch-size", "1"], cwd)
    many = launch_here(["predict", str(rd), str(cwd / "images"), "--batch-size", "64"], cwd)
    assert one.returncode == many.returncode == 0, one.stderr + many.stderr
    a, b = _lines(one.stdout), _lines(many.stdout)
    assert [x["class"] for x in a] == [x["class"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert list(x["probs"].values()) == pytest.approx(list(y["probs"].values()), abs=1e-5)


def test_a_bad_file_is_one_line_and_out_is_not_written(run, tmp_path):
    cwd, rd, files = run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "preds.jsonl"
    r = launch_here(["predict", str(rd), str(files[0]), str(bad), "--out", str(out)], cwd)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and str(bad) in lines[0] and "--skip-bad" in lines[0], r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]  # (no temporary file left either)


def test_skip_bad_keeps_a_record_saying_why(run, tmp_path):
    cwd, rd, files = run
    bad, text = tmp_path / "broken.png", tmp_path / "notes.txt"
    bad.write_bytes(b"not a png")
    text.write_text("hello")
    out = tmp_path / "preds.jsonl"
    r = launch_here(["predict", str(rd), str(files[0]), str(bad), str(text), str(files[1]), "--skip-bad",
                     "--out", str(out)], cwd)  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = _lines(out.read_text())
    assert [x["input"] for x in records] == [str(files[0]), str(bad), str(text), str(files[1])]
    assert "cannot be read" in records[1]["error"] and "class" not in records[1]
    assert "is not a file this recipe reads" in records[2]["error"]
    assert "class" in records[0] and "class" in records[3]
    assert "2 skipped" in r.stderr and r.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{parent}", "{img}"], "is not a run directory"),
        (["{rd}"], "no inputs"),
        (["{rd}", "{cwd}/nope.png"], "nope.png not found"),
        (["{rd}", "{cwd}/runs"], "holds no files this recipe reads"),
        (["{rd}", "{rd}/config.yaml"], "is not a file this recipe reads"),
        (["{rd}", "{img}", "--checkpoint", "step-99"], "no checkpoint step-99"),
        (["{rd}", "{img}", "--out", "{cwd}"], "is a folder"),
        (["{rd}", "{img}", "--out", "{cwd}/no/such/dir/p.jsonl"], "does not exist"),
    ],
)
def test_bad_input_is_one_line(run, args, needle):
    cwd, rd, files = run
    values = {"parent": rd.parent, "rd": rd, "cwd": cwd, "img": files[0]}
    r = launch_here(["predict", *(a.format(**values) for a in args)], cwd)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert r.stdout == ""


def test_a_recipe_without_the_hook_says_so(tmp_path):
    r = launch_here(
        [f"recipe={TINY}", "log.quiet=true", "run.name=t", "train.max_steps=1", "--device", "cpu"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    (tmp_path / "x.bin").write_bytes(b"1")
    r = launch_here(["predict", str(tmp_path / "runs" / "tiny" / "t"), str(tmp_path / "x.bin")], tmp_path)
    assert r.returncode == 2 and "has no read_input() hook" in r.stderr, r.stderr
