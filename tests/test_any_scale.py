"""Any output size: a scale >= 1 that is not a power of two, or an exact (height, width), through Python, the CLI and
`eval sr`; the power-of-two path unchanged; bad values refused in one line; tiles; real photos against bicubic."""

import pytest
import torch
from eval_helpers import tiny_vae
from PIL import Image
from sr_helpers import make_pipe
from uplift_diffusion.eval.common import to_tensor_uint8
from uplift_diffusion.eval.metrics import psnr_per_image
from uplift_diffusion.eval.sr import run_sr_benchmark

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.cli import main


def seeded():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def pipe(taef2):
    return make_pipe(taef2)


@pytest.mark.parametrize("resample", ["pixel", "latent"])
@pytest.mark.parametrize("kwargs, size", [
    (dict(scale=1.5), (113, 150)),  # photo: 100 x 75; 75 * 1.5 = 112.5 rounds half up
    (dict(scale=3), (225, 300)),
    (dict(size=(90, 200)), (90, 200)),  # another aspect ratio
    (dict(scale=1), (75, 100)),
])
def test_output_sizes(pipe, photo, resample, kwargs, size):
    out = pipe(photo, generator=seeded(), output_type="pt", resample=resample, **kwargs).images
    assert tuple(out.shape) == (1, 3, *size) and 0 <= out.min() and out.max() <= 1


def test_resamplings_differ_and_latent_output_is_what_is_decoded(pipe, photo):
    pixel = pipe(photo, scale=1.5, generator=seeded(), output_type="pt").images
    latent = pipe(photo, scale=1.5, generator=seeded(), output_type="pt", resample="latent").images
    assert not torch.equal(pixel, latent)
    power = pipe(photo, scale=2, generator=seeded(), output_type="latent").images
    assert torch.equal(pipe(photo, scale=1.5, generator=seeded(), output_type="latent").images, power)
    resized = pipe(photo, scale=1.5, generator=seeded(), output_type="latent", resample="latent").images
    assert tuple(resized.shape[-2:]) == (15, 19)  # 113 x 150 pixels in whole 8-pixel latents


def test_powers_of_two_take_the_same_path(pipe, photo):
    """2.0, 4.0 and the equivalent exact sizes are the power-of-two path itself: the same bits as ``scale=2 / 4``."""
    photo = photo.crop((0, 0, 52, 36))  # still no side a multiple of 8; eight runs of it, at up to 4x
    for s in (2, 4):
        ref = pipe(photo, scale=s, generator=seeded(), output_type="pt").images
        for kwargs in (dict(scale=float(s)), dict(size=(36 * s, 52 * s)), dict(scale=s, resample="latent")):
            assert torch.equal(pipe(photo, generator=seeded(), output_type="pt", **kwargs).images, ref), kwargs


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=0.5), "scale must be a finite number >= 1"),
    (dict(scale=float("nan")), "scale must be a finite number >= 1"),
    (dict(scale=float("inf")), "scale must be a finite number >= 1"),
    (dict(scale="abc"), "scale must be a finite number >= 1"),
    (dict(scale=True), "scale must be a finite number >= 1"),
    (dict(scale=2, size=(200, 200)), "either scale or size"),
    (dict(size=(0, 200)), r"size must be \(height, width\)"),
    (dict(size=(200,)), r"size must be \(height, width\)"),
    (dict(size=(100.5, 200)), r"size must be \(height, width\)"),
    (dict(size=(50, 200)), "smaller than the input 75x100"),
    (dict(scale=1.5, resample="nearest"), "resample must be one of"),
])
def test_bad_values_are_one_line(pipe, photo, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        pipe(photo, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("resample", ["pixel", "latent"])
def test_tiled_matches_untiled(taef2, shared_dir, resample):
    """As tests/test_pipeline_sr.py's tiling check (no noise channels: the tiling is the only difference)."""
    image = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((200, 200, 392, 392))
    pipe = make_pipe(taef2, noise_channels=0)
    full = pipe(image, scale=1.5, output_type="pt", resample=resample).images
    tiled = pipe(image, scale=1.5, output_type="pt", tile_size=128, tile_overlap=64, resample=resample).images
    assert tiled.shape == full.shape == (1, 3, 288, 288)
    psnr = -10 * torch.log10(((full - tiled) ** 2).mean())
    assert psnr > 30, f"tiled and untiled outputs differ: PSNR {psnr:.1f} dB"


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("any_scale_cli")
    torch.manual_seed(0)
    UPLiFTModel.from_preset("tiny-vae", in_channels=32).save_pretrained(root / "upsampler")
    Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((0, 0, 44, 36)).save(root / "a.png")
    return root, ["--vae", str(shared_dir / "weights" / "taef2"), "--upsampler", str(root / "upsampler")]


@pytest.mark.parametrize("flags, name, size", [
    (["--scale", "1.5"], "a_x1.5.png", (66, 54)),
    (["--scale", "3", "--resample", "latent"], "a_x3.png", (132, 108)),
    (["--size", "100x40"], "a_100x40.png", (100, 40)),
    (["--scale", "4"], "a_x4.png", (176, 144)),
])
def test_cli_sizes_and_names(cli_assets, tmp_path, flags, name, size):
    root, models = cli_assets
    assert main(["upscale", str(root / "a.png"), "-o", str(tmp_path), *flags, *models]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [name]
    with Image.open(tmp_path / name) as image:
        assert image.size == size


@pytest.mark.parametrize("flags, message", [
    (["--scale", "0.5"], "argument --scale: must be a finite number in [1, 64], got 0.5"),
    (["--scale", "inf"], "argument --scale: must be a finite number"),
    (["--scale", "abc"], "argument --scale: expected a number, got 'abc'"),
    (["--size", "1920"], "argument --size: expected WIDTHxHEIGHT"),
    (["--size", "0x1080"], "argument --size: width and height must be in [1, 65536]"),
    (["--scale", "2", "--size", "100x100"], "not allowed with argument"),
])
def test_cli_bad_values_are_one_error_line(cli_assets, tmp_path, capsys, flags, message):
    root, models = cli_assets
    with pytest.raises(SystemExit) as stop:
        main(["upscale", str(root / "a.png"), "-o", str(tmp_path), *flags, *models])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("error:") == 1 and message in err, err


def test_cli_size_smaller_than_an_input_is_refused_before_any_work(cli_assets, tmp_path, capsys):
    root, models = cli_assets
    assert main(["upscale", str(root / "a.png"), "-o", str(tmp_path / "out"), "--size", "100x30", *models]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size 100x30 is smaller than" in err[0] and "(44x36)" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_eval_sr_at_one_and_a_half(image_folder, tmp_path):
    torch.manual_seed(0)
    upsampler = UPLiFTModel.from_preset("tiny-vae").eval()
    results = run_sr_benchmark(image_folder, tiny_vae(), tmp_path, upsampler=upsampler, scale=1.5, size=64,
                               methods=("uplift", "pixel-bicubic"), fid_factory=None, limit=2)
    assert results["config"]["low_res"] == 43 and results["metrics"]["uplift"]["iterations"] == 1
    for method in ("uplift", "pixel-bicubic"):
        for path in (tmp_path / "images" / method).iterdir():
            with Image.open(path) as image:
                assert image.size == (64, 64)
    assert "43->64" in (tmp_path / "table.md").read_text()


def test_cli_beats_pixel_bicubic_on_photos_at_one_and_a_half(shared_dir, tmp_path):
    """The built-in model through the CLI at 1.5x (UPLiFT 2x, then the default resampling) on three Kodak crops,
    low-res = PIL bicubic downscale: a higher mean PSNR than PIL bicubic of the same low-res input."""
    (tmp_path / "lr").mkdir()
    hr = {}
    for name in ("kodim03", "kodim05", "kodim23"):
        image = Image.open(shared_dir / "data" / "kodak" / f"{name}.png").convert("RGB").crop((192, 96, 480, 384))
        hr[name] = image
        image.resize((192, 192), Image.Resampling.BICUBIC).save(tmp_path / "lr" / f"{name}.png")
    assert main(["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "out"), "--scale", "1.5"]) == 0

    def psnr(image, name):
        return float(psnr_per_image(to_tensor_uint8(image)[None], to_tensor_uint8(hr[name])[None])[0])

    ours = sum(psnr(Image.open(tmp_path / "out" / f"{n}_x1.5.png"), n) for n in hr) / len(hr)
    bicubic = sum(psnr(Image.open(tmp_path / "lr" / f"{n}.png").resize((288, 288), Image.Resampling.BICUBIC), n)
                  for n in hr) / len(hr)
    assert ours > bicubic + 0.1, (ours, bicubic)
