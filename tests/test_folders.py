"""`fastinv invert` on folders and glob patterns: which files they name, resume from OUT, OUT/manifest.jsonl,
an unreadable image among good ones, and the one-line errors of inputs that name nothing (shipped model,
64×64 photos, 2 Euler steps)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from cli_runner import cli
from filelock import FileLock
from PIL import Image
from skimage import data

import fastinv.api
import fastinv.pipeline
from fastinv import cli as cli_module
from fastinv.folders import MANIFEST, MANIFEST_FIELDS, expand_inputs
from fastinv.models import DEFAULT_MODEL
from fastinv.outputs import INVERSION_FILES, read_output_set

RUN = ["--method", "euler", "--steps", "2"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """astronaut.png, coffee.png, rocket.jpg (64×64), a text file, and broken.png: garbage bytes."""
    folder = tmp_path_factory.mktemp("photos")
    for name, suffix in (("astronaut", ".png"), ("coffee", ".png"), ("rocket", ".jpg")):
        Image.fromarray(getattr(data, name)()).resize((64, 64)).save(folder / f"{name}{suffix}")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage, not an image")
    return folder


@pytest.fixture(scope="module")
def first_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """(OUT, exit code, stdout, stderr) of `fastinv invert PHOTOS --out OUT`, run once for the module."""
    out = tmp_path_factory.mktemp("first") / "out"
    return (out, *cli(["invert", str(photos), "--out", str(out), *RUN]))


def test_a_folder_is_inverted_and_its_broken_image_reported(photos: Path, first_run: tuple) -> None:
    """Every image file of the folder (not the text file) in name order; the broken one is an error line in
    the manifest, the others are written, and the run ends in one line counting the failure."""
    out, code, stdout, err = first_run
    assert code == 2
    line = one_error_line(err)
    assert f"1 of 4 images failed (see {out / MANIFEST})" in line and "broken.png: cannot read image" in line
    lines = manifest(out)
    assert [record["image"] for record in lines] == [
        str(photos / name) for name in ("astronaut.png", "broken.png", "coffee.png", "rocket.jpg")
    ]
    assert all(list(record) == list(MANIFEST_FIELDS) for record in lines)
    assert [(record["name"], record["status"]) for record in lines] == [
        ("astronaut", "ok"),
        ("broken", "error"),
        ("coffee", "ok"),
        ("rocket", "ok"),
    ]
    broken = lines[1]
    assert broken["seconds"] is None and broken["metrics"] is None
    assert broken["error"].startswith("cannot read image") and "\n" not in broken["error"]
    for record in (lines[0], *lines[2:]):
        assert record["error"] is None and record["seconds"] > 0
        written = read_output_set(out, record["name"])
        assert {key: written["metrics"][key] for key in ("psnr", "ssim", "lpips")} == record["metrics"]
        assert written["method"] == "euler" and written["steps"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            MANIFEST,
            *(f"{stem}{suffix}" for stem in ("astronaut", "coffee", "rocket") for suffix in INVERSION_FILES),
        ]
    )
    assert "PSNR dB" in stdout and "3 inverted, 0 skipped" in stdout and "1 failed" in stdout


def test_resume_skips_complete_sets_and_reruns_the_others(
    photos: Path, first_run: tuple, tmp_path: Path
) -> None:
    """A set with its reconstruction deleted, and the broken image, are run again; complete sets made
    with the same settings are kept as they are."""
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    run_ids = {stem: read_output_set(out, stem)["run_id"] for stem in ("astronaut", "coffee", "rocket")}
    (out / "coffee.recon.png").unlink()
    code, stdout, err = cli(["invert", str(photos), "--out", str(out), *RUN])
    assert code == 2 and "1 of 4 images failed" in one_error_line(err)
    assert [(record["name"], record["status"]) for record in manifest(out)] == [
        ("astronaut", "skipped"),
        ("broken", "error"),
        ("coffee", "ok"),
        ("rocket", "skipped"),
    ]
    skipped = manifest(out)[0]
    assert skipped["seconds"] is None and skipped["metrics"] == manifest(first_run[0])[0]["metrics"]
    assert read_output_set(out, "astronaut")["run_id"] == run_ids["astronaut"]
    assert read_output_set(out, "rocket")["run_id"] == run_ids["rocket"]
    assert read_output_set(out, "coffee")["run_id"] != run_ids["coffee"]
    assert "1 inverted, 2 skipped" in stdout


def test_a_glob_names_its_image_files_and_other_settings_rerun(
    photos: Path, first_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quoted pattern takes only the image files it matches. With the recorded settings the finished ones
    are skipped (when nothing else is left, no model is loaded) and the broken one is tried again; with
    other steps they are inverted again."""
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    with monkeypatch.context() as patch:
        patch.setattr(fastinv.api, "load", lambda *args, **kwargs: pytest.fail("a model was loaded"))
        code, _, err = cli(["invert", str(photos / "[cr]*"), "--out", str(out), *RUN])
    assert code == 0, err
    assert [(record["name"], record["status"]) for record in manifest(out)] == [
        ("coffee", "skipped"),
        ("rocket", "skipped"),
    ]
    code, _, err = cli(["invert", str(photos / "*e*"), "--out", str(out), *RUN])  # not notes.txt
    assert code == 2 and "1 of 3 images failed" in one_error_line(err)
    assert [(record["name"], record["status"]) for record in manifest(out)] == [
        ("broken", "error"),
        ("coffee", "skipped"),
        ("rocket", "skipped"),
    ]
    code, _, err = cli(
        ["invert", str(photos / "[c]*.png"), "--out", str(out), "--method", "euler", "--steps", "3"]
    )
    assert code == 0, err
    assert [(record["name"], record["status"]) for record in manifest(out)] == [("coffee", "ok")]
    assert read_output_set(out, "coffee")["steps"] == 3


def test_an_interrupted_run_leaves_a_manifest_of_what_it_finished(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT during the second image: exit 130, the first image's files and its manifest line."""
    reconstruct = fastinv.pipeline.reconstruct_and_score
    calls = []

    def second_is_interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            cli_module._on_signal(signal.SIGINT, None)
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(fastinv.pipeline, "reconstruct_and_score", second_is_interrupted)
    out = tmp_path / "out"
    code, _, err = cli(
        ["invert", str(photos / "astronaut.png"), str(photos / "coffee.png"), "--out", str(out), *RUN]
    )
    assert code == 130 and "interrupted by SIGINT" in one_error_line(err)
    assert [(record["name"], record["status"]) for record in manifest(out)] == [("astronaut", "ok")]
    assert read_output_set(out, "astronaut") is not None and read_output_set(out, "coffee") is None


def test_expand_inputs(photos: Path, tmp_path: Path) -> None:
    """Files as given, folders and patterns by the shared image-suffix rule, sorted, each file once, never
    from inside OUT."""
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(photos / "coffee.png", nested / "deep.PNG")
    (tmp_path / "a" / "out").mkdir()
    shutil.copy(photos / "coffee.png", tmp_path / "a" / "out" / "old.recon.png")
    found = expand_inputs(
        [str(photos / "notes.txt"), str(photos), str(photos / "*.png"), f"{tmp_path}/a/**/*"],
        tmp_path / "a" / "out",
    )
    assert found == [
        photos / "notes.txt",  # a named file is taken as is: PIL decides
        *(photos / name for name in ("astronaut.png", "broken.png", "coffee.png", "rocket.jpg")),
        nested / "deep.PNG",
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["EMPTY"], "no image files in EMPTY (looked for .bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp)"),
        (["EMPTY/*.jpg"], "no image files match 'EMPTY/*.jpg'"),
        (["EMPTY/missing.png"], "image not found: EMPTY/missing.png"),
        (["SAME"], "would write the same outputs; rename one"),
        (["EMPTY", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["EMPTY", "--workers", "2"], "--workers needs --ray"),
        (["EMPTY", "--ray", "local", "--workers", "0"], "--workers must be at least 1"),
        (["EMPTY", "--ray", "local"], "--ray needs Ray, which is not installed: pip install 'fastinv[ray]'"),
    ],
)
def test_inputs_naming_nothing_and_bad_options_are_one_line(
    arguments: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line, exit 2, before any model or Ray is loaded and before OUT is made."""
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "EMPTY" / "notes.txt").write_text("x")
    (tmp_path / "SAME").mkdir()
    for name in ("photo.png", "photo.jpg"):
        Image.new("RGB", (64, 64)).save(tmp_path / "SAME" / name)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    monkeypatch.setattr(fastinv.api, "load", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["invert", *arguments, "--out", "out", *RUN])
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_names_that_cannot_be_written_are_reported_and_the_others_run(photos: Path, tmp_path: Path) -> None:
    """A file name that is not UTF-8, and one whose output names would be too long, are errors of their own
    images before any work; the manifest stays UTF-8 JSON, and the image after them is inverted."""
    folder = tmp_path / "odd"
    folder.mkdir()
    long_name = "x" * 230 + ".png"  # a legal name: its outputs' staging names would not be
    for name in (b"0\xff.png", long_name.encode(), b"z1.png"):
        shutil.copy(photos / "coffee.png", os.fsdecode(bytes(folder) + b"/" + name))
    out = tmp_path / "out"
    code, _, err = cli(["invert", str(folder), "--out", str(out), *RUN])
    assert code == 2 and "2 of 3 images failed" in one_error_line(err)
    lines = [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]
    assert [(Path(record["image"]).name, record["status"]) for record in lines] == [
        ("0\\xff.png", "error"),
        (long_name, "error"),
        ("z1.png", "ok"),
    ]
    assert "not valid UTF-8" in lines[0]["error"]
    assert "too long: rename it to at most 226 bytes before the suffix" in lines[1]["error"]
    assert read_output_set(out, "z1") is not None
    assert {p.name for p in out.iterdir()} == {
        MANIFEST,
        *(f"z1{s}" for s in INVERSION_FILES),
    }


def test_a_second_run_into_the_same_out_is_refused(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / cli_module.LOCK_FILE)):  # another run holds it
        code, _, err = cli(["invert", str(photos / "coffee.png"), "--out", str(out), *RUN])
    assert code == 2
    assert (
        one_error_line(err)
        == f"error: another fastinv run is writing to {out}: wait for it, or pick another --out"
    )
    assert not (out / MANIFEST).exists()
    code, _, err = cli(["invert", str(photos / "coffee.png"), "--out", str(out), *RUN])  # free again
    assert code == 0, err


def test_damaged_records_are_run_again_and_bad_options_fail_before_skipping(
    photos: Path, first_run: tuple, tmp_path: Path
) -> None:
    """A metrics record of the wrong shape is re-run, not an internal error; a bad --dtype or --kernels is
    refused even when every set is complete, and leaves the manifest as it was."""
    out = tmp_path / "out"
    shutil.copytree(first_run[0], out)
    record_file = out / "coffee.metrics.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps(record | {"method_options": [1, 2]}))
    (out / "rocket.metrics.json").write_text(json.dumps(record | {"metrics": [1]}))
    images = [str(photos / name) for name in ("astronaut.png", "coffee.png", "rocket.jpg")]
    code, _, err = cli(["invert", *images, "--out", str(out), *RUN])
    assert code == 0, err
    assert [(r["name"], r["status"]) for r in manifest(out)] == [
        ("astronaut", "skipped"),
        ("coffee", "ok"),
        ("rocket", "ok"),
    ]
    before = (out / MANIFEST).read_text()
    for option, message in (
        (["--dtype", "bogus"], "unknown dtype 'bogus': use auto, fp32, bf16, fp16"),
        (["--kernels", "bogus"], "unknown kernel backend 'bogus': use auto or torch"),
    ):
        code, _, err = cli(["invert", *images, "--out", str(out), *RUN, *option])
        assert code == 2 and message in one_error_line(err)
        assert (out / MANIFEST).read_text() == before


def test_links_and_fifos_named_like_images_fail_on_their_own(photos: Path, tmp_path: Path) -> None:
    """In a folder, a broken link and a FIFO named like images are error lines of their own (the FIFO is
    never opened: reading it would wait for a writer) and the others run; a folder named like an image is
    not an image. That FIFO or link named as an argument is refused up front."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photos / "coffee.png", folder / "coffee.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "album.png").mkdir()
    out = tmp_path / "out"
    code, _, err = cli(["invert", str(folder), "--out", str(out), *RUN])
    assert code == 2 and "2 of 3 images failed" in one_error_line(err)
    assert [(r["name"], r["status"], r["error"]) for r in manifest(out)] == [
        ("coffee", "ok", None),
        ("gone", "error", f"image not found: {folder / 'gone.png'} (a broken symbolic link)"),
        ("pipe", "error", f"cannot read image {folder / 'pipe.png'}: not a regular file"),
    ]
    for name, message in (("pipe", "not a regular file or folder"), ("gone", "image not found")):
        code, _, err = cli(["invert", str(folder / f"{name}.png"), "--out", str(tmp_path / "o2"), *RUN])
        assert code == 2 and f"{message}: {folder / f'{name}.png'}" in one_error_line(err)
        assert not (tmp_path / "o2").exists()
    assert one_error_line(err).endswith("(a broken symbolic link)")


def test_sets_made_with_another_solver_are_run_again(
    photos: Path, shipped_export: tuple[Path, str], tmp_path: Path
) -> None:
    """DeepInv sets made with a --solver folder are not kept by a run with the model's own solver, nor the
    other way round; the same solver keeps them. A set made on ONNX Runtime records the solver graph it ran,
    which the backend checked against the model's solver: a torch run keeps it (backends are not compared)."""
    other = tmp_path / "other_solver"
    shutil.copytree(DEFAULT_MODEL / "solver", other)
    out, image = tmp_path / "out", str(photos / "coffee.png")
    deepinv = ["invert", image, "--out", str(out), "--method", "deepinv", "--steps", "2"]
    for extra, status in (
        (["--solver", str(other)], "ok"),
        ([], "ok"),
        ([], "skipped"),
        (["--solver", str(other)], "ok"),
        (["--solver", str(other)], "skipped"),
        (["--backend", "ort", "--export-dir", str(shipped_export[0])], "ok"),
        ([], "skipped"),
    ):
        code, _, err = cli([*deepinv, *extra])
        assert code == 0, err
        assert [record["status"] for record in manifest(out)] == [status], extra
    solver = shipped_export[0] / "solver.fp32.onnx"
    assert read_output_set(out, "coffee")["method_options"]["solver"] == str(solver)


def test_relative_paths_are_read_from_the_folder_of_the_run_that_wrote_them(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """photos/coffee.png names another file from another working folder: run there into the same OUT, it
    is inverted again, not kept; the same file named from anywhere is kept. A record without its working
    folder (an older fastinv's), whose relative path may name another file, is re-run."""
    for folder, photo in (("a", "coffee.png"), ("b", "astronaut.png")):
        (tmp_path / folder / "photos").mkdir(parents=True)
        shutil.copy(photos / photo, tmp_path / folder / "photos" / "coffee.png")
    out = tmp_path / "out"

    def run(cwd: Path, image: str) -> str:
        monkeypatch.chdir(cwd)
        code, _, err = cli(["invert", image, "--out", str(out), *RUN])
        assert code == 0, err
        [record] = manifest(out)
        return record["status"]

    assert run(tmp_path / "a", "photos/coffee.png") == "ok"
    written = read_output_set(out, "coffee")
    assert (written["image"], written["working_folder"]) == ("photos/coffee.png", str(tmp_path / "a"))
    assert run(tmp_path / "b", "photos/coffee.png") == "ok"  # the astronaut, not a.png's coffee
    assert read_output_set(out, "coffee")["working_folder"] == str(tmp_path / "b")
    assert run(tmp_path, "b/photos/coffee.png") == "skipped"
    assert run(tmp_path / "b", str(tmp_path / "b" / "photos" / "coffee.png")) == "skipped"
    record_file = out / "coffee.metrics.json"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "working_folder": None}))
    assert run(tmp_path / "b", "photos/coffee.png") == "ok"


def test_a_recursive_pattern_does_not_follow_links_to_folders(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(photos / "coffee.png", tmp_path / "a.png")
    shutil.copy(photos / "coffee.png", tmp_path / "sub" / "b.png")
    shutil.copy(photos / "coffee.png", tmp_path / "sub" / ".hidden.png")
    for link in ("self", "self2"):  # two links to their own folder: following them never ends
        (tmp_path / link).symlink_to(".")
    found = expand_inputs([f"{tmp_path}/**/*.png"], tmp_path / "out")
    assert found == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert expand_inputs([f"{tmp_path}/**/.hidden.png"], tmp_path / "out") == [
        tmp_path / "sub" / ".hidden.png"
    ]


def test_a_signal_dropped_by_a_finaliser_still_stops_the_run(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler's KeyboardInterrupt can land in a `__del__`, where Python prints and drops it: the run
    still stops at its next step, exit 130, and only complete sets are left."""
    reconstruct = fastinv.pipeline.reconstruct_and_score

    def dropped(*args: object, **kwargs: object) -> object:
        with contextlib.suppress(KeyboardInterrupt):  # what a finaliser does with it
            cli_module._on_signal(signal.SIGTERM, None)
        return reconstruct(*args, **kwargs)

    monkeypatch.setattr(fastinv.pipeline, "reconstruct_and_score", dropped)
    out = tmp_path / "out"
    code, _, err = cli(
        ["invert", str(photos / "astronaut.png"), str(photos / "coffee.png"), "--out", str(out), *RUN]
    )
    assert code == 143 and "interrupted by SIGTERM" in one_error_line(err)
    assert read_output_set(out, "astronaut") is None and read_output_set(out, "coffee") is None
