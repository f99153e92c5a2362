"""`uplift-diffusion upscale` / `demo` lose nothing and say everything: output names it cannot write, skipped files,
multi-frame files, partial folders, interrupted runs, damaged weights, tile overlap 0, cheap argument checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline
from uplift_diffusion.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    UPLiFTModel.from_preset("tiny-vae", in_channels=32, noise_channels=0).save_pretrained(root / "upsampler")
    photo = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((0, 0, 48, 40))
    (root / "in").mkdir()
    photo.save(root / "in" / "a.png")
    photo.transpose(Image.FLIP_LEFT_RIGHT).save(root / "in" / "b.png")
    return root, photo, ["--vae", str(shared_dir / "weights" / "taef2"), "--upsampler", str(root / "upsampler")]


def test_output_with_an_unwritable_suffix_is_refused(assets, tmp_path, capsys):
    root, _, models = assets
    assert main(["upscale", str(root / "in" / "a.png"), "-o", str(tmp_path / "out" / "result.gif"), *models]) == 2
    assert "cannot write .gif" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no folder named result.gif either


def test_files_left_out_of_a_folder_are_named(assets, tmp_path, capsys):
    root, photo, models = assets
    folder = tmp_path / "mixed"
    folder.mkdir()
    photo.save(folder / "keep.png")
    photo.save(folder / "anim.gif")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--scale", "2", *models]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file(s)" in err and "anim.gif" in err


def test_multi_frame_file_says_which_frame_was_used(assets, tmp_path, capsys):
    _, photo, models = assets
    path = tmp_path / "pages.tif"
    photo.save(path, save_all=True, append_images=[photo.rotate(90)])
    assert main(["upscale", str(path), "-o", str(tmp_path / "out"), "--scale", "2", *models]) == 0
    assert "first of its 2 frames" in capsys.readouterr().err


def test_unreadable_image_does_not_stop_the_others(assets, tmp_path, capsys):
    root, photo, models = assets
    folder = tmp_path / "some_bad"
    folder.mkdir()
    photo.save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--scale", "2", *models]) == 1
    assert (tmp_path / "out" / "good_x2.png").is_file() and not (tmp_path / "out" / "broken_x2.png").exists()
    err = capsys.readouterr().err
    assert "1 input(s) could not be read" in err and "broken.png" in err
    (folder / "good.png").unlink()
    assert main(["upscale", str(folder), "-o", str(tmp_path / "none"), "--scale", "2", *models]) == 2
    assert not (tmp_path / "none").exists()  # nothing readable: no empty output folder left behind


def test_skip_existing_continues_an_interrupted_run(assets, tmp_path, capsys):
    root, _, models = assets
    out = tmp_path / "out"
    assert main(["upscale", str(root / "in" / "a.png"), "-o", str(out), "--scale", "2", *models]) == 0
    kept = (out / "a_x2.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["upscale", str(root / "in"), "-o", str(out), "--scale", "2", *models]) == 2
    assert "--skip-existing" in capsys.readouterr().err
    assert main(["upscale", str(root / "in"), "-o", str(out), "--scale", "2", "--skip-existing", *models]) == 0
    assert (out / "a_x2.png").stat().st_mtime_ns == kept and (out / "b_x2.png").is_file()
    assert "skipping 1 image(s)" in capsys.readouterr().out


def test_skip_existing_redoes_an_empty_or_truncated_output(assets, tmp_path, capsys):
    root, _, models = assets
    out = tmp_path / "out"
    assert main(["upscale", str(root / "in"), "-o", str(out), "--scale", "2", *models]) == 0
    whole = (out / "b_x2.png").read_bytes()
    (out / "a_x2.png").write_bytes(b"")  # a crash, a full disk, a copy cut short
    (out / "b_x2.png").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert main(["upscale", str(root / "in"), "-o", str(out), "--scale", "2", "--skip-existing", *models]) == 0
    captured = capsys.readouterr()
    assert (out / "b_x2.png").read_bytes() == whole and Image.open(out / "a_x2.png").size == (96, 80)
    assert "skipping" not in captured.out and "2 unreadable output(s)" in captured.err


def test_a_closed_stdout_stops_the_printing_not_the_work(assets, tmp_path):
    """`upscale folder | head -1`: every photo is upscaled, no BrokenPipeError traceback, exit code 0."""
    root, photo, models = assets
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4):
        photo.rotate(90 * i).save(folder / f"p{i}.png")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uplift_diffusion.cli", "upscale", str(folder), "-o",
                             str(tmp_path / "out"), "--scale", "2", *models], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert b"p0.png" in first and "Traceback" not in err and "BrokenPipe" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}_x2.png" for i in range(4)]


def test_a_tile_larger_than_the_photo_is_not_refused(assets, tmp_path, shared_dir):
    """The memory estimate counts a tile that covers the photo as the photo, not as tile_size² pixels (a 256-px
    photo with --tile-size 4096 at 4x: 47.7 GiB estimated before, 0.82 GiB measured; now 1.14 GiB)."""
    root, photo, models = assets
    assert main(["upscale", str(root / "in" / "a.png"), "-o", str(tmp_path / "t.png"), "--scale", "4",
                 "--tile-size", "4096", *models]) == 0
    from uplift_diffusion.backbones.taef2 import TAEF2
    from uplift_diffusion.backbones.vae import estimate_sr_memory, memory_advice

    vae = TAEF2.from_pretrained(shared_dir / "weights" / "taef2")
    assert estimate_sr_memory(vae, 256, 256, 4, 4096).peak == estimate_sr_memory(vae, 256, 256, 4).peak < 1.5 * 2**30
    assert memory_advice(vae, 256, 256, 4, 4096, available=2 * 2**30) is None


def test_tile_overlap_zero_works_in_the_cli_and_the_api(assets, tmp_path, shared_dir):
    root, photo, models = assets
    assert main(["upscale", str(root / "in" / "a.png"), "-o", str(tmp_path / "t.png"), "--scale", "2",
                 "--tile-size", "32", "--tile-overlap", "0", *models]) == 0
    assert Image.open(tmp_path / "t.png").size == (96, 80)
    from uplift_diffusion.backbones.taef2 import TAEF2

    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2").eval(),
                                         upsampler=UPLiFTModel.from_pretrained(root / "upsampler"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(photo, scale=2, tile_size=32, tile_overlap=0).images[0].size == (96, 80)


def test_damaged_output_is_refused_not_written(assets, shared_dir):
    """Weights that make NaN (damaged bytes with a valid header) give an error and no all-black file."""
    root, photo, _ = assets
    from uplift_diffusion.pipelines.super_resolution import check_output

    from uplift_diffusion.backbones.taef2 import TAEF2
    from uplift_diffusion.utils.errors import UserError

    broken = UPLiFTModel.from_pretrained(root / "upsampler")
    with torch.no_grad():
        broken.refiner_out.weight.fill_(float("nan"))
    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2").eval(),
                                         upsampler=broken)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(UserError, match="damaged"):
        pipe(photo, scale=2)

    with pytest.raises(FloatingPointError, match="NaN"):
        check_output(torch.full((1, 3, 8, 8), float("nan")), torch.rand(1, 3, 4, 4))
    with pytest.raises(FloatingPointError, match="flat colour"):
        check_output(torch.zeros(1, 3, 8, 8), torch.rand(1, 3, 4, 4))
    check_output(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4))  # a flat input may give a flat output


@pytest.mark.parametrize("tensor, message", [
    (torch.zeros(1, 3, 16, 16, dtype=torch.int64), "uint8"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.bool), "uint8"),
    (torch.zeros(1, 3, 0, 16), "empty image"),
])
def test_tensor_inputs_of_the_wrong_kind_are_named(assets, shared_dir, tensor, message):
    root, _, _ = assets
    from uplift_diffusion.backbones.taef2 import TAEF2

    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2").eval(),
                                         upsampler=UPLiFTModel.from_pretrained(root / "upsampler"))
    with pytest.raises(ValueError, match=message):
        pipe(tensor, scale=2)


def test_bad_arguments_are_reported_before_the_heavy_imports(tmp_path):
    """`upscale --scale 3` says the scale is wrong without first spending seconds importing torch / diffusers."""
    code = ("import sys, time; t = time.perf_counter(); from uplift_diffusion.cli import main; "
            "rc = main(sys.argv[1:]); print('torch' in sys.modules, rc)")
    for args in (["upscale", "x.png", "--scale", "3"], ["upscale", "x.png", "--tile-size", "30"],
                 ["upscale", "x.png", "--tile-size", "64", "--tile-overlap", "4"], ["demo", "--scale", "3"]):
        done = subprocess.run([sys.executable, "-c", code, *args, "-o", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.stdout.split() == ["False", "2"], (args, done.stdout, done.stderr)
        assert "error:" in done.stderr


def test_demo_never_replaces_an_earlier_demo_silently(tmp_path, capsys):
    (tmp_path / "demo.png").write_bytes(b"an earlier figure")
    started = time.perf_counter()
    assert main(["demo", "-o", str(tmp_path), "--photos", "chelsea"]) == 2
    assert "--overwrite" in capsys.readouterr().err and time.perf_counter() - started < 30
    assert (tmp_path / "demo.png").read_bytes() == b"an earlier figure"


def test_flat_input_still_upscales(assets, shared_dir):
    root, _, _ = assets
    from uplift_diffusion.backbones.taef2 import TAEF2

    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2").eval(),
                                         upsampler=UPLiFTModel.from_pretrained(root / "upsampler"))
    pipe.set_progress_bar_config(disable=True)
    grey = Image.fromarray(np.full((32, 32, 3), 128, np.uint8))
    assert pipe(grey, scale=2).images[0].size == (64, 64)


def test_a_request_too_big_for_memory_is_refused_with_advice(assets, tmp_path, capsys, monkeypatch):
    """Say what it needs and how to fit it before starting, rather than a raw allocator error mid-way."""
    import uplift_diffusion.backbones.vae as vae_module

    root, _, models = assets
    monkeypatch.setattr(vae_module, "available_memory", lambda: 2 * 2**20)  # 2 MiB: nothing fits untiled
    assert main(["upscale", str(root / "in" / "a.png"), "-o", str(tmp_path / "o.png"), "--scale", "4", *models]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "available" in err and not (tmp_path / "o.png").exists()


def test_tiled_taef2_encode_and_decode_match_the_whole_image(shared_dir):
    """With tiles the encoder and decoder work in exact tiles too (bounded memory); only the upsampler's tiles are
    blended, so the result stays within a small bound of the whole-image run."""
    from uplift_diffusion.builtin import load_builtin_upsampler, load_builtin_vae

    pipe = UPLiFTSuperResolutionPipeline(vae=load_builtin_vae(), upsampler=load_builtin_upsampler())
    pipe.set_progress_bar_config(disable=True)
    photo = Image.open(shared_dir / "data" / "kodak" / "kodim03.png").convert("RGB").crop((0, 0, 320, 256))
    calls = []
    encode_tiled = pipe.vae.encode_tiled
    pipe.vae.encode_tiled = lambda *a, **k: calls.append("encode") or encode_tiled(*a, **k)
    whole = pipe(photo, scale=2, output_type="pt").images
    tiled = pipe(photo, scale=2, output_type="pt", tile_size=256, tile_overlap=64).images
    assert calls == ["encode"]
    assert (whole - tiled).abs().mean() < 2e-3 and (whole - tiled).abs().max() < 0.1
