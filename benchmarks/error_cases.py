"""Every case of the "nothing lost, nothing silent" round, tried through the doors a user uses: the CLI in a fresh
process with tiny offline inputs (the shared test data and the built-in taef2 pair), a few lines of Python for the
library's own entry points, and, for the cases that need several processes, a browser-less server or a run that is
killed, the test that plays them (``pytest NODE``). Prints one row per case (what the user sees now, in how long)
and writes them to ``--json``; docs/errors.md holds the table made from it.

    HF_HUB_OFFLINE=1 python benchmarks/error_cases.py --json /tmp/error_cases.json [--only ID ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UPLIFT_SHARED", ROOT.parent / "shared"))
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def cli(*argv, cwd=None, env=None, timeout=300):
    """``uplift-diffusion ARGV`` in a fresh process: (exit code, stderr lines, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([PY, "-m", "uplift_diffusion", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env or ENV, timeout=timeout)
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip() and not _progress_bar(line)]
    return proc.returncode, lines, time.perf_counter() - start


def _progress_bar(line: str) -> bool:
    """A tqdm bar (its rate reads "it/s" or "s/it", also with a postfix such as ", encode]"); bars are redrawn after a
    carriage return, so stderr is split at those too."""
    return "it/s" in line or "s/it" in line or not line.replace("\x1b[A", "").strip()


def python(code: str, timeout=300):
    """A few lines of Python in a fresh process: (exit code, stderr + stdout lines, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return proc.returncode, lines, time.perf_counter() - start


def pytest_nodes(*nodes, timeout=600):
    """The tests that play a case (several processes, a killed run, a served page): (exit code, summary, seconds)."""
    start = time.perf_counter()
    proc = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *nodes], capture_output=True,
                          text=True, cwd=ROOT, env={**ENV, "UPLIFT_REQUIRE_SHARED": "1"}, timeout=timeout)
    summary = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line][-1:]
    return proc.returncode, summary, time.perf_counter() - start


def one_line(rc, lines, secs, *, code=2, contains=()):
    ok = rc == code and len(lines) == 1 and "Traceback" not in lines[0] and all(c in lines[0] for c in contains)
    return ok, f"exit {rc}, {len(lines)} line(s) in {secs:.1f} s: {lines[0] if lines else ''}"


def passed(rc, summary, secs):
    return rc == 0, f"{summary[0] if summary else 'no summary'} ({secs:.0f} s)"


def setup(tmp: Path) -> dict:
    from PIL import Image

    kodak = Image.open(SHARED / "data" / "kodak" / "kodim01.png").convert("RGB")
    photo = kodak.crop((0, 0, 48, 40))
    photo.save(tmp / "mine.png")
    (tmp / "photos").mkdir()
    for i in range(3):
        photo.rotate(180 * i).save(tmp / "photos" / f"p{i}.png")
    (tmp / "empty").mkdir()
    return {"tmp": tmp, "photo": photo}


def case_output_is_input(t):
    before = (t["tmp"] / "mine.png").read_bytes()
    (t["tmp"] / "link.png").symlink_to(t["tmp"] / "mine.png")
    results = [cli("upscale", t["tmp"] / "mine.png", "-o", t["tmp"] / name, "--overwrite", "--scale", "2")
               for name in ("mine.png", "link.png")]
    ok = all(one_line(*r)[0] for r in results) and (t["tmp"] / "mine.png").read_bytes() == before
    return ok, one_line(*results[0])[1] + " (the symlink too; the original unchanged)"


def case_output_folder_is_input(t):
    a = cli("upscale", t["tmp"] / "photos", "-o", t["tmp"] / "photos", "--scale", "2")
    b = cli("eval", "sr", "--images", t["tmp"] / "photos", "--output", t["tmp"] / "photos" / "results",
            "--pair", "taef2")
    return one_line(*a)[0] and one_line(*b)[0], one_line(*a)[1] + " | eval sr: " + one_line(*b)[1].split(": ", 1)[1]


def case_skip_existing_damaged(t):
    out = t["tmp"] / "skip"
    out.mkdir()
    (out / "mine_x2.png").write_bytes(b"")
    rc, lines, secs = cli("upscale", t["tmp"] / "mine.png", "-o", out, "--scale", "2", "--skip-existing")
    from PIL import Image

    with Image.open(out / "mine_x2.png") as image:
        size = image.size
    return rc == 0 and size == (96, 80), f"exit {rc} in {secs:.1f} s: the empty output redone ({size[0]}x{size[1]})"


def case_image_modes(t):
    import numpy as np
    from PIL import Image

    folder = t["tmp"] / "modes"
    folder.mkdir()
    Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 20).astype(np.uint16)).save(folder / "grey16.png")
    t["photo"].convert("CMYK").save(folder / "cmyk.jpg")
    t["photo"].save(folder / "anim.gif")
    (folder / "sub").mkdir()
    rc, lines, secs = cli("upscale", folder, "-o", t["tmp"] / "modes_out", "--scale", "2")
    notes = [line for line in lines if "note:" in line or "warning:" in line]
    ok = rc == 0 and len(notes) == len(lines) and any("anim.gif" in n and "sub/" in n for n in notes)
    return ok, f"exit {rc} in {secs:.1f} s, {len(notes)} note line(s): " + " / ".join(n[:110] for n in notes)


def case_closed_stdout(t):
    start = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "uplift_diffusion", "upscale", str(t["tmp"] / "photos"), "-o",
                             str(t["tmp"] / "head"), "--scale", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=ENV)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=300)
    written = len(list((t["tmp"] / "head").iterdir()))
    return rc == 0 and written == 3 and "Traceback" not in err, \
        f"exit {rc} in {time.perf_counter() - start:.1f} s, {written} of 3 photos written, no traceback"


def case_sigterm(t):
    from PIL import Image

    Image.open(SHARED / "data" / "kodak" / "kodim01.png").convert("RGB").save(t["tmp"] / "big.png")
    proc = subprocess.Popen([PY, "-m", "uplift_diffusion", "upscale", str(t["tmp"] / "big.png"), "-o",
                             str(t["tmp"] / "term"), "--scale", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=ENV)
    time.sleep(12)  # a script, not a test: the command is past its imports and into the work
    proc.send_signal(signal.SIGTERM)
    err = [line for line in proc.stderr.read().decode().replace("\r", "\n").splitlines()
           if line.strip() and not _progress_bar(line)]
    rc = proc.wait(timeout=60)
    return rc == 128 + signal.SIGTERM and len(err) == 1 and "interrupted" in err[0], \
        f"exit {rc}, {len(err)} line(s): {err[-1] if err else ''}"


def case_damaged_vae(t):
    taef2 = t["tmp"] / "taef2"
    shutil.copytree(SHARED / "weights" / "taef2", taef2)
    encoder = taef2 / "taef2_encoder.pth"
    encoder.write_bytes(encoder.read_bytes()[: encoder.stat().st_size // 2])
    return one_line(*cli("upscale", t["tmp"] / "mine.png", "-o", t["tmp"] / "dv", "--vae", taef2,
                         "--upsampler", ROOT / "uplift_diffusion" / "weights" / "uplift-taef2"),
                    contains=("taef2_encoder.pth",))


def case_missing_backbone_path(t):
    config = t["tmp"] / "nobackbone.json"
    config.write_text(json.dumps({"output_dir": str(t["tmp"] / "run"), "max_steps": 1,
                                  "backbone": {"type": "taef2", "path": str(t["tmp"] / "no-such-taef2")},
                                  "data": {"sources": [{"type": "folder", "path": str(t["tmp"] / "photos")}]}}))
    return one_line(*cli("train", "--config", config), contains=("backbone.path",))


def _train_config(t, name, **changes):
    base = {"output_dir": str(t["tmp"] / f"run_{name}"), "max_steps": 1, "batch_size": 2,
            "backbone": {"type": "taef2", "path": str(SHARED / "weights" / "taef2")},
            "model": {"preset": "tiny-vae", "overrides": {"in_channels": 32}},
            "data": {"sources": [{"type": "folder", "path": str(SHARED / "data" / "bsds500" / "val")}],
                     "crop_size": 64}}
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (base[section] if section else base)[field] = value
    path = t["tmp"] / f"{name}.json"
    path.write_text(json.dumps(base))
    return path


def case_crop_negative(t):
    return one_line(*cli("train", "--config", _train_config(t, "neg", data__crop_size=-64)),
                    contains=("data.crop_size",))


def case_crop_4096(t):
    return one_line(*cli("train", "--config", _train_config(t, "c4096", data__crop_size=4096)),
                    contains=("data.crop_size",))


def case_training_memory(t):
    config = _train_config(t, "mem", data__crop_size=256, batch_size=2048, data__views_per_image=64)
    return one_line(*cli("train", "--config", config), contains=("GiB", "lower batch_size"))


def case_dino_offline(t):
    env = {**ENV, "HF_HOME": str(t["tmp"] / "hf-empty"), "HF_HUB_CACHE": str(t["tmp"] / "hf-empty" / "hub")}
    a = cli("features", t["tmp"] / "mine.png", "--pca", t["tmp"] / "pca.png", env=env)
    (t["tmp"] / "voc").mkdir()
    b = cli("probe", "--dataset", "voc", "--root", t["tmp"] / "voc", "-o", t["tmp"] / "probe", env=env)
    ok_a, text_a = one_line(*a, contains=("--backbone-weights",))
    ok_b = (b[0] == 2 and len(b[1]) == 1 and "Traceback" not in b[1][0])
    return ok_a and ok_b, text_a + " | probe: " + (b[1][0][:140] if b[1] else "")


def case_big_png(t):
    from PIL import Image

    Image.new("1", (12000, 12000)).save(t["tmp"] / "huge.png")
    return one_line(*cli("upscale", t["tmp"] / "huge.png", "-o", t["tmp"] / "hugeout", "--scale", "2"))


def case_port_taken(t):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return one_line(*cli("serve", "--port", port), contains=(str(port),))


def case_float16_cpu(t):
    code = ("import warnings, torch\nfrom uplift_diffusion import UPLiFTSuperResolutionPipeline\n"
            "pipe = UPLiFTSuperResolutionPipeline.from_builtin('taef2')\n"
            "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    pipe.to(torch.float16)\nprint('WARNINGS', [str(x.message)[:150] for x in w])")
    rc, lines, secs = python(code)
    said = [line for line in lines if line.startswith("WARNINGS")]
    return rc == 0 and said and "float16" in said[0] and "[]" not in said[0], f"{said[0] if said else lines[-1:]}"


def case_small_photo_large_tile(t):
    rc, lines, secs = cli("upscale", t["tmp"] / "mine.png", "-o", t["tmp"] / "tile", "--scale", "4",
                          "--tile-size", "4096")
    return rc == 0, f"exit {rc} in {secs:.1f} s (upscaled, not refused)"


def case_eval_empty(t):
    rc, lines, secs = cli("eval", "sr", "--images", t["tmp"] / "empty", "--output", t["tmp"] / "evalempty",
                          "--pair", "taef2")
    ok, text = one_line(rc, lines, secs, contains=("no images",))
    return ok and secs < 3, text


def case_argparse(t):
    rc, lines, secs = cli("upscale", t["tmp"] / "mine.png", "-o", t["tmp"] / "x", "--scale", "abc")
    return one_line(rc, lines, secs, contains=("--scale", "--help"))


def case_numeric_edges(t):
    """Every number flag of upscale / train / eval sr / serve / demo / generate at 0, -1, huge, nan, inf."""
    rows = []
    flags = [("upscale", [t["tmp"] / "mine.png", "-o", t["tmp"] / "e"], ["--scale", "--tile-size", "--tile-overlap"]),
             ("eval sr", ["--images", t["tmp"] / "photos", "--output", t["tmp"] / "ee", "--pair", "taef2"],
              ["--batch-size", "--num-processes", "--size", "--scale", "--limit"]),
             ("train", ["--config", _train_config(t, "edges")], ["--num-processes", "--max-steps", "--max-minutes"]),
             ("serve", [], ["--port", "--queue-size", "--max-pixels"]),
             ("generate", ["a cat", "-o", t["tmp"] / "g.png"], ["--steps", "--refine", "--refine-steps"])]
    for command, base, names in flags:
        for flag in names:
            for value in ("0", "-1", "99999999999999999999", "nan", "inf"):
                if flag in ("--refine",) and value == "0":
                    continue  # 0 is "off": a valid value
                rc, lines, _ = cli(*command.split(), *base, f"{flag}={value}", timeout=60)
                rows.append(rc == 2 and len(lines) == 1 and flag in lines[0])
    return all(rows), f"{sum(rows)} of {len(rows)} values answered in one line naming the flag (exit 2)"


CASES = [  # id, class, the case, the command tried, before (the words), how it is tried
    ("output-is-input", "data loss", "`upscale mine.png -o mine.png --overwrite` (also a symlink to it)",
     "replaced the original", case_output_is_input),
    ("train-overwrite-user-files", "data loss", "`train --overwrite` with the user's files inside the run's folders",
     "deleted model/README.md, previews/selected/, checkpoints/keep/",
     lambda t: passed(*pytest_nodes("tests/test_train_safety.py::"
                                    "test_overwrite_keeps_the_users_files_inside_the_runs_folders"))),
    ("output-folder-is-input", "silent wrong result", "`upscale DIR -o DIR`, `eval sr --images DIR --output DIR/r`",
     "outputs read as inputs on the next run", case_output_folder_is_input),
    ("skip-existing-damaged", "silent wrong result", "`--skip-existing` with a 0-byte output",
     "kept as done", case_skip_existing_damaged),
    ("fsync", "silent wrong result", "the atomic writer", "renamed without fsync",
     lambda t: passed(*pytest_nodes("tests/test_images.py::"
                                    "test_atomic_writes_reach_the_disk_before_and_after_the_rename"))),
    ("sigkill-workers", "silent wrong result", "SIGKILL of `train --num-processes 2`, then `--resume`",
     "workers kept running; a second run beside them",
     lambda t: passed(*pytest_nodes("tests/test_train_safety.py::"
                                    "test_a_killed_launcher_takes_its_workers_and_a_second_run_is_refused_while_one_"
                                    "runs"))),
    ("builtin-digest", "silent wrong result", "damaged built-in weights (finite garbage)", "exit 0, damage hidden",
     lambda t: passed(*pytest_nodes("tests/test_bad_checkpoints.py::test_a_damaged_builtin_install_says_reinstall",
                                    "tests/test_builtin.py::test_the_shipped_files_match_their_recorded_digests"))),
    ("display-p3", "silent wrong result", "a Display-P3 JPEG", "profile dropped: 12 % less chroma, no note",
     lambda t: passed(*pytest_nodes("tests/test_images.py::test_a_display_p3_photo_is_converted_to_srgb"))),
    ("probe-labels-fingerprint", "silent wrong result / traceback",
     "`probe`: labels of another size, labels >= --num-classes, a rerun with other settings",
     "stretched silently; IndexError; old results printed",
     lambda t: passed(*pytest_nodes(
         "tests/test_features_probe.py::test_labels_of_another_size_or_beyond_the_classes_are_refused",
         "tests/test_features_probe.py::test_a_rerun_with_other_settings_is_refused_not_reused"))),
    ("image-modes-entries", "silent wrong result", "16-bit, CMYK, a GIF and a sub-folder in an input folder",
     "converted / left out without a word", case_image_modes),
    ("eval-2proc-truncated", "traceback", "`eval sr --num-processes 2` with a truncated JPEG",
     "80 lines before the cause",
     lambda t: passed(*pytest_nodes("tests/test_eval_sharded.py::"
                                    "test_eval_on_two_processes_ends_a_broken_photo_in_one_line"))),
    ("train-2proc-traceback", "traceback", "`train --num-processes 2`, a worker fails",
     "the other worker's traceback first",
     lambda t: passed(*pytest_nodes("tests/test_train_safety.py::"
                                    "test_a_photo_one_worker_cannot_read_mid_run_is_one_line_not_the_other_workers_"
                                    "traceback"))),
    ("sigterm", "traceback", "SIGTERM of `upscale` (and of a two-process run)", "torch's SignalException traceback",
     case_sigterm),
    ("damaged-vae", "traceback", "`--vae` folder with a truncated taef2_encoder.pth", "a torch traceback",
     case_damaged_vae),
    ("flux2-partial", "traceback", "a FLUX.2 folder with a missing or truncated component", "a diffusers traceback",
     lambda t: passed(*pytest_nodes("tests/test_pipeline_flux2.py::"
                                    "test_generate_from_a_partial_flux2_download_is_one_line"))),
    ("backbone-path", "traceback", "a training config whose backbone.path does not exist", "a loader traceback",
     case_missing_backbone_path),
    ("dino-offline", "traceback", "`features photo --pca` and `probe` offline", "pointed to a Python call",
     case_dino_offline),
    ("flux2-latents-shape", "traceback", "`upscale_flux2_latents` with wrong channels / rank / size",
     "a deep torch error",
     lambda t: passed(*pytest_nodes("tests/test_pipeline_flux2.py::test_clear_errors"))),
    ("crop-negative", "traceback", "`data.crop_size: -64`", "failed after 14 s in torch", case_crop_negative),
    ("crop-4096", "traceback", "`data.crop_size: 4096` on 128-px photos", "killed by the kernel (22 GB), no message",
     case_crop_4096),
    ("training-memory", "traceback", "crop 256 with batch_size 2048 (each within its range)",
     "killed by the kernel, no message", case_training_memory),
    ("closed-stdout", "traceback", "`upscale folder | head -1`", "BrokenPipeError; stopped after 2 of 20",
     case_closed_stdout),
    ("page-api", "traceback", "the page's API: invalid scale / tiles, scale=None, a memory refusal",
     "20-line tracebacks in the log; 'Something went wrong (TypeError / InputError)'",
     lambda t: passed(*pytest_nodes(
         "tests/test_serve_api.py::test_api_wrong_values_are_one_line_errors_without_a_traceback",
         "tests/test_serve.py::test_the_librarys_refusals_reach_the_visitor_in_the_pages_words"))),
    ("numeric-edges", "traceback", "numbers at the edges of their types (0, -1, huge, nan, inf)",
     "overflows and tracebacks", case_numeric_edges),
    ("argparse", "traceback", "a bad value of a flag (`--scale abc`)", "a 12-line usage block above the cause",
     case_argparse),
    ("big-png", "slow answer", "a 12000x12000 PNG", "decoded twice, 22 s and 6.2 GB, then refused", case_big_png),
    ("port-taken", "slow answer", "`serve` on a port in use", "13.6 s (model loaded first)", case_port_taken),
    ("float16-cpu", "slow answer", "`pipe.to(torch.float16)` on a CPU", "97x slower, no warning", case_float16_cpu),
    ("eval-empty", "slow answer", "`eval sr --images EMPTY`", "~8 s (models loaded first)", case_eval_empty),
    ("false-refusal", "false refusal", "a 48x40 photo with `--tile-size 4096`", "'needs 47.6 GiB' (1.18 GiB measured)",
     case_small_photo_large_tile),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--only", nargs="*", default=None, help="case ids")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case_id, kind, case, before, run in CASES:
            if args.only and case_id not in args.only:
                continue
            tmp = Path(folder) / case_id
            tmp.mkdir()
            try:
                ok, after = run(setup(tmp))
            except Exception as err:  # the script reports every case, whatever one of them does
                ok, after = False, f"script error: {type(err).__name__}: {err}"
            rows.append({"id": case_id, "class": kind, "case": case, "before": before, "after": after, "clean": ok})
            print(f"{'clean' if ok else 'OPEN '} {case_id}: {after}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{sum(r['clean'] for r in rows)} of {len(rows)} cases clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
