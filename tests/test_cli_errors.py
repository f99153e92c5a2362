"""One error policy for the CLI: user errors in one line (exit 2), bugs with their traceback, --debug for full
tracebacks, one device / dtype policy, cheap checks before weights load, and a --help that never imports torch."""

import subprocess
import sys
import time

import pytest

from uplift_diffusion.cli import COMMANDS, main
from uplift_diffusion.utils.device import resolve_device_dtype
from uplift_diffusion.utils.errors import InputError, UnavailableError


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_and_argument_errors_never_import_torch():
    code = ("import sys\nfrom uplift_diffusion.cli import main\n"
            "for argv in (['--help'], ['upscale', '--help'], ['eval', 'sr', '--help'], ['upscale']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = _run_python(code)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_help_answers_fast():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "uplift_diffusion.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "upscale" in proc.stdout
    assert elapsed < 5, f"--help took {elapsed:.1f} s"  # ~0.2 s idle; generous for a shared CI machine


def test_every_command_module_is_light_at_import():
    names = ", ".join(repr(m) for m in COMMANDS.values())
    proc = _run_python(f"import importlib, sys\nfor m in ({names},):\n    importlib.import_module(m)\n"
                       f"print('TORCH', 'torch' in sys.modules)")
    assert "TORCH False" in proc.stdout, proc.stdout + proc.stderr


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from uplift_diffusion.commands import train

    def user_error(args):
        raise InputError("a problem the user can fix")

    monkeypatch.setattr(train, "run", user_error)
    assert main(["train", "--config", "x.json"]) == 2
    assert capsys.readouterr().err == "uplift-diffusion train: error: a problem the user can fix\n"
    with pytest.raises(InputError):  # --debug: the full traceback, before or after the command name
        main(["train", "--config", "x.json", "--debug"])
    with pytest.raises(InputError):
        main(["--debug", "train", "--config", "x.json"])

    def bug(args):
        raise ValueError("an internal invariant broke")  # not a UserError: a bug, never hidden

    monkeypatch.setattr(train, "run", bug)
    with pytest.raises(ValueError, match="invariant"):
        main(["train", "--config", "x.json"])


def test_device_and_dtype_policy():
    import torch

    assert resolve_device_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert resolve_device_dtype("cpu", "bfloat16")[1] == torch.bfloat16
    with pytest.raises(InputError, match="float16 on the CPU is refused"):
        resolve_device_dtype("cpu", "float16")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device_dtype("gpu0", None)
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="CUDA is not available"):
            resolve_device_dtype("cuda", None)


@pytest.mark.parametrize("argv, message", [
    (["features", "IMG", "--pca", "o.png", "--device", "cuda"], "CUDA is not available"),
    (["features", "IMG", "--pca", "o.png", "--device", "tpu9"], "unknown device"),
    (["upscale", "IMG", "-o", "OUT", "--dtype", "float16", "--device", "cpu"], "float16 on the CPU is refused"),
    (["upscale", "IMG", "-o", "OUT", "--tile-overlap", "16"], "--tile-overlap needs --tile-size"),
    (["generate", "a cat", "-o", "OUT/x.png", "--model", "OUT/no-such-model", "--device", "cpu"],
     "no such file or folder"),
    (["generate", "a cat", "-o", "OUT/x.png", "--height", "100", "--device", "cpu"], "multiple of 8"),
])
def test_cheap_checks_are_one_line_errors_before_any_weights(tmp_path, capsys, monkeypatch, argv, message):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    argv = [a.replace("IMG", str(tmp_path / "img.png")).replace("OUT", str(tmp_path / "out")) for a in argv]
    loaded = []
    monkeypatch.setattr("uplift_diffusion.commands.loading.load_upsampler", lambda *a, **k: loaded.append(a))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not loaded


def test_an_offline_hub_model_is_a_short_complete_message(tmp_path, capsys, monkeypatch):
    """`--pair sd15` without a network or a download: a few short sentences, not the Hub's text cut mid-word."""
    from huggingface_hub import constants
    from PIL import Image

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    assert main(["upscale", str(tmp_path / "img.png"), "-o", str(tmp_path / "out.png"), "--pair", "sd15"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1
    message = lines[0].split("error: ", 1)[1]
    assert len(message) <= 260, (len(message), message)
    assert "offline" in message and "hf download" in message and "--vae" in message
    assert message.endswith(".") and "(caused by" not in message  # whole sentences, no truncated quote of the Hub

    # the VAE present, the upsampler not: the same
    from uplift_diffusion.builtin import builtin_vae_path

    assert main(["upscale", str(tmp_path / "img.png"), "-o", str(tmp_path / "out.png"), "--pair", "sd15",
                 "--vae", str(builtin_vae_path("taef2"))]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    message = lines[0].split("error: ", 1)[1]
    assert len(lines) == 1 and len(message) <= 260 and message.endswith("."), message
    assert "offline" in message and "--upsampler" in message


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "NOPE.json"], "config file not found"),
    (["eval", "sr", "--images", "NOPE", "--output", "OUT"], "--images NOPE: no such folder"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--methods", "uplift,sharp"], "unknown method 'sharp'"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--upsampler", "NOPE.safetensors"], "no such file"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--random-upsampler", "huge"],
     "unknown UPLiFT preset 'huge'"),
    (["eval", "coco", "--annotations", "NOPE.json", "--images", "DIR", "--output", "OUT"], "--annotations NOPE"),
    (["eval", "coco", "--annotations", "IMG", "--images", "DIR", "--output", "OUT", "--steps", "25,x"], "--steps"),
    (["eval", "relaion", "--data", "NOPE", "--output", "OUT"], "--data NOPE: no such file or folder"),
    (["features", "NOPE.png", "--pca", "OUT.png"], "image not found"),
    (["features", "DIR", "--pca", "OUT.png"], "image DIR is a folder, not a file"),
    (["train", "--config", "DIR"], "config file DIR is a folder, not a file"),
    (["eval", "sr", "--images", "IMG", "--output", "OUT"], "--images IMG is a file, not a folder"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--num-processes", "0"], "--num-processes must be >= 1"),
    (["features", "IMG", "--pca", "OUT.png", "--backbone", "nope"], "unknown feature backbone 'nope'"),
    (["features", "IMG", "--pca", "OUT.png", "--upsampler", "NOPE.safetensors"], "no such file"),
    (["features", "IMG", "--pca", "OUT.png", "--backbone-weights", "NOPE.safetensors"], "no such file"),
    (["probe", "--dataset", "folder", "--root", "NOPE", "-o", "OUT", "--num-classes", "3"], "--root NOPE"),
    (["probe", "--dataset", "voc", "--root", "DIR", "-o", "OUT", "--epochs", "0"], "--epochs must be >= 1"),
    (["probe", "--dataset", "voc", "--root", "DIR", "-o", "OUT", "--backbone", "nope"], "unknown feature backbone"),
    (["probe", "--dataset", "folder", "--root", "DIR", "-o", "OUT"], "needs --num-classes"),
    (["eval", "sr", "--images", "DIR", "--output", "OUT", "--pair", "taef2"], "no images"),
])
def test_cheap_arguments_are_checked_before_torch_is_imported(tmp_path, argv, message):
    """Bad numbers, choices and missing files answer in well under a second: before torch / diffusers load (11-30 s
    on a busy CPU machine, more when a model is loaded first)."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # only its existence is checked before the imports
    (tmp_path / "config.json").write_text('{"max_steps": 5}')
    names = {"NOPE": str(tmp_path / "nope"), "OUT": str(tmp_path / "out"), "DIR": str(tmp_path / "dir"),
             "IMG": str(tmp_path / "img.png"), "CONFIG": str(tmp_path / "config.json")}
    argv = [names.get(a.split(".")[0], a) + ("." + a.split(".", 1)[1] if "." in a and a.split(".")[0] in names else "")
            for a in argv]
    message = message.replace("NOPE", names["NOPE"]).replace("DIR", names["DIR"]).replace("IMG", names["IMG"])
    code = ("import sys\nfrom uplift_diffusion.cli import main\n"
            f"rc = main({argv!r})\n"
            "print('RC', rc, 'TORCH', 'torch' in sys.modules)")
    proc = _run_python(code)
    assert "RC 2 TORCH False" in proc.stdout, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stderr.count("error:") == 1, proc.stderr


def test_the_cheap_checks_know_the_same_names_as_the_library():
    from uplift_diffusion.eval.sr import METHODS

    from uplift_diffusion.commands import checks
    from uplift_diffusion.features.extractor import _ALIASES, FEATURE_PRESETS

    assert checks.FEATURE_BACKBONES == {name: preset.backbone for name, preset in FEATURE_PRESETS.items()}
    assert checks.FEATURE_ALIASES == _ALIASES
    assert checks.SR_METHODS == METHODS


@pytest.mark.parametrize("argv, dest, value, instead", [
    (["upscale", "a.png", "-o", "out", "--preset", "sd15"], "pair", "sd15", "--pair sd15"),
    (["serve", "--preset", "taef2"], "pair", "taef2", "--pair taef2"),
    (["generate", "a cat", "-o", "x.png", "--no-color-correction"], "color_correction", "none",
     "--color-correction none"),
    (["eval", "sr", "--images", "d", "--output", "o", "--downsample", "bilinear"], "downsample", "bilinear-aliased",
     "--downsample bilinear-aliased"),
])
def test_old_spellings_still_work_and_name_the_new_one(argv, dest, value, instead):
    from uplift_diffusion.cli import build_parser

    with pytest.warns(FutureWarning, match=f"removed in uplift-diffusion 0.2.0; use {instead}$"):
        args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value


def test_a_deprecation_is_one_warning_line_before_the_run(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"), "--preset", "taef2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["uplift-diffusion upscale: warning: --preset taef2 is deprecated and will be removed in "
                   "uplift-diffusion 0.2.0; use --pair taef2",
                   f"uplift-diffusion upscale: error: input not found: {tmp_path / 'missing.png'}"]


def test_the_registry_names_each_thing_once():
    from uplift_diffusion.presets import FEATURE_BACKBONES, PAIRS, PRESETS, resolve_preset_name

    assert set(FEATURE_BACKBONES) <= set(PRESETS) and set(PAIRS) == {"taef2", "sd15"}
    assert not set(PAIRS) & {alias for p in PRESETS.values() for alias in (p.name, *p.aliases)}
    with pytest.warns(FutureWarning, match="'sd15' is deprecated .* use 'sd15-vae'"):
        assert resolve_preset_name("sd15") == "sd15-vae"


@pytest.mark.parametrize("argv", [
    ["upscale", "a.png", "-o", "out", "--seed", "99999999999999999999999"],
    ["upscale", "a.png", "-o", "out", "--scale", "1099511627776"],
    ["upscale", "a.png", "-o", "out", "--tile-size", "1e3"],
    ["features", "a.png", "--pca", "o.png", "--iterations", "100000"],
    ["features", "a.png", "--pca", "o.png", "--size", "999999999"],
    ["train", "--config", "c.json", "--max-minutes", "nan"],
    ["train", "--config", "c.json", "--max-steps", "10000000000000000000000"],
    ["train", "--config", "c.json", "--max-steps", "0"],
    ["train", "--config", "c.json", "--max-minutes", "0"],
    ["probe", "--dataset", "voc", "--root", "r", "-o", "o", "--lr", "inf"],
    ["eval", "sr", "--images", "i", "--output", "o", "--size", "99999999"],
    ["eval", "sr", "--images", "i", "--output", "o", "--scale", "0.5"],
    ["upscale", "a.png", "-o", "out", "--scale", "nan"],
    ["upscale", "a.png", "-o", "out", "--size", "1920by1080"],
    ["generate", "a cat", "-o", "x.png", "--refine", "0.3", "--refine-steps", "10000000000000000000000"],
])
def test_numbers_at_the_edges_of_their_types_are_refused_by_the_parser(argv, capsys):
    """Before any work, naming the flag and its range (not an overflow in torch or a MemoryError)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-2]}" in err and ("must be" in err or "expected" in err) and "Traceback" not in err, err


@pytest.mark.parametrize("argv, names", [
    (["upscale", "a.png"], ["-o/--output", "required"]),
    (["upscale", "a.png", "-o", "out", "--pair", "sd16"], ["--pair", "invalid choice"]),
    (["upscale", "a.png", "-o", "out", "--scale", "-inf"], ["--scale", "--scale=-1"]),
    (["eval", "sr", "--images", "i", "--output", "o", "--size", "x"], ["--size", "expected an integer"]),
    (["serve", "--port", "nan"], ["--port", "invalid int value"]),
    (["upscale", "a.png", "-o", "out", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["bogus"], ["invalid choice: 'bogus'"]),
])
def test_argument_errors_are_one_line_naming_the_option(argv, names, capsys):
    """No usage block above the cause: one line with the option, and where the options are listed."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "usage:" not in err, err
    prog = " ".join(["uplift-diffusion", *(a for a in argv[:2] if a in ("upscale", "eval", "sr", "serve"))])
    assert err.startswith(f"{prog}: error: ") and f"{prog} --help" in err, err
    assert all(name in err for name in names), err
