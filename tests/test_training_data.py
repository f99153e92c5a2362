"""Training data: recursive folders, Hugging Face datasets, WebDataset shards, fixed crops, epoch sharding."""

import io
import tarfile

import pytest
import torch
from PIL import Image
from training_helpers import write_images

from uplift_diffusion.training.config import DataSource
from uplift_diffusion.training.data import (
    FolderSource,
    HFSource,
    ViewDataset,
    WebDatasetSource,
    build_source,
    collate_views,
    epoch_batches,
)


def test_folder_source_is_recursive_and_views_are_fixed(tmp_path):
    write_images(tmp_path / "imgs", count=4)
    source = FolderSource(tmp_path / "imgs")
    assert len(source) == 4 and any("sub/" in source.key(i) for i in range(4))
    ds = ViewDataset([source], crop_size=32, levels=2, views_per_image=3, min_crop_fraction=0.5, hflip=True, seed=1)
    assert len(ds) == 12
    item = ds[5]
    assert item["key"] == f"{source.key(1)}#v2"
    assert [tuple(x.shape) for x in item["images"]] == [(3, 32, 32), (3, 16, 16), (3, 8, 8)]
    assert torch.equal(item["images"][0], ds[5]["images"][0])  # a view is the same crop every time
    assert not torch.equal(ds[3]["images"][0], ds[4]["images"][0])  # views of one image differ
    other_seed = ViewDataset([source], 32, 2, 3, 0.5, True, seed=2)
    assert not torch.equal(other_seed[5]["images"][0], item["images"][0])
    batch = collate_views([ds[0], ds[1]])
    assert batch["keys"] == [ds.key(0), ds.key(1)] and batch["images"][1].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*3"):
        ViewDataset([source], crop_size=36, levels=3)


def test_webdataset_and_hf_sources(tmp_path):
    paths = write_images(tmp_path / "imgs", count=3, nested=False)
    shard = tmp_path / "shards" / "train-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(paths):
            for name, data in ((f"sample{i:03d}.png", path.read_bytes()), (f"sample{i:03d}.txt", b"caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    wds = build_source(DataSource(type="webdataset", path=str(shard.parent)))
    assert isinstance(wds, WebDatasetSource) and len(wds) == 3
    assert wds.key(1) == "train-000000/sample001"
    assert wds.load(2).size == Image.open(paths[2]).size

    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [Image.open(p) for p in paths]}, features=datasets.Features(
        {"image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "hf"))
    hf = build_source(DataSource(type="hf", path=str(tmp_path / "hf")))
    assert isinstance(hf, HFSource) and len(hf) == 3 and hf.load(0).size == Image.open(paths[0]).size
    with pytest.raises(ValueError, match="no column 'pixels'"):
        HFSource(str(tmp_path / "hf"), image_column="pixels")
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        WebDatasetSource(str(tmp_path / "nothing*.tar"))


def test_epoch_batches_partition_the_epoch_across_processes():
    one = epoch_batches(10, 2, epoch=0, seed=0)
    assert len(one) == 5 and sorted(i for b in one for i in b) == list(range(10))
    assert one != epoch_batches(10, 2, epoch=1, seed=0)
    ranks = [epoch_batches(10, 2, epoch=0, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 4-item global batches, the incomplete last one dropped
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) == 8
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_batches(3, 2, epoch=0, seed=0, world_size=2)


def test_each_view_draws_one_downscale_kernel_and_single_kernel_crops_are_unchanged(tmp_path):
    write_images(tmp_path / "imgs", count=4)
    source = FolderSource(tmp_path / "imgs")
    bilinear = ViewDataset([source], 32, 2, views_per_image=4, min_crop_fraction=0.5, seed=1)
    mixed = ViewDataset([source], 32, 2, views_per_image=4, min_crop_fraction=0.5, seed=1,
                        kernels=["bilinear", "bicubic"])
    drawn = [mixed.kernel(source.key(i // 4), i % 4) for i in range(16)]
    assert set(drawn) == {"bilinear", "bicubic"}  # both kernels occur
    assert drawn == [mixed.kernel(source.key(i // 4), i % 4) for i in range(16)]  # and are fixed per view
    for i, kernel in enumerate(drawn):
        a, b = bilinear[i]["images"], mixed[i]["images"]
        assert torch.equal(a[0], b[0])  # the high-res crop never depends on the kernel
        assert torch.equal(a[2], b[2]) == (kernel == "bilinear")
        assert 0 <= b[2].min() and b[2].max() <= 1  # bicubic overshoot is clamped


def test_aliased_bilinear_kernel_is_the_paper_protocol():
    """``"bilinear-aliased"`` is exactly ``eval sr``'s paper protocol (interpolate without antialiasing): at 4x each
    low-res pixel is the mean of the 2x2 centre of its 4x4 block, so a one-pixel checkerboard survives it (aliasing)
    while the antialiased kernels average it to grey."""
    from uplift_diffusion.training.data import downscale, image_pyramid

    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 48)
    aliased = downscale(image, (8, 12), "bilinear-aliased")
    centres = image.unfold(2, 4, 4).unfold(3, 4, 4)[..., 1:3, 1:3].mean((-1, -2))  # [2, 3, 8, 12]
    torch.testing.assert_close(aliased, centres)
    lines = torch.zeros(1, 3, 32, 32)
    lines[..., ::4, :] = 1.0  # every 4th row white: the sampled rows skip them all
    assert downscale(lines, (8, 8), "bilinear-aliased").max() == 0
    assert downscale(lines, (8, 8), "bilinear").min() > 0.1
    pyramid = image_pyramid(image, 2, "bilinear-aliased")
    assert [tuple(x.shape[-2:]) for x in pyramid] == [(32, 48), (16, 24), (8, 12)]
    torch.testing.assert_close(pyramid[2], aliased)
    with pytest.raises(Exception, match="bilinear-aliased"):
        downscale(image, (8, 12), "lanczos")


def test_jpeg_degradation_compresses_only_the_low_res_levels():
    from uplift_diffusion.training.data import image_pyramid

    torch.manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(64, 64), mode="bilinear")  # smooth
    bicubic = image_pyramid(image, 2, "bicubic")
    jpeg = image_pyramid(image, 2, "bicubic-jpeg", jpeg_quality=30)
    assert torch.equal(jpeg[0], bicubic[0])  # the target is never degraded
    for level in (1, 2):
        error = (jpeg[level] - bicubic[level]).abs().mean()
        assert 1 / 255 < error < 0.1  # compressed, still the same picture
    assert not torch.equal(image_pyramid(image, 2, "bicubic-jpeg", jpeg_quality=90)[1], jpeg[1])


def test_predownscale_halves_each_photo_before_cropping(tmp_path):
    write_images(tmp_path / "imgs", count=2)
    source = FolderSource(tmp_path / "imgs")
    whole = ViewDataset([source], 16, 1, min_crop_fraction=1.0, seed=0)
    half = ViewDataset([source], 16, 1, min_crop_fraction=1.0, seed=0, predownscale=0.5)
    photo = source.load(0)
    assert half.shrink(photo).size == (photo.width // 2, photo.height // 2)
    assert whole.shrink(photo) is photo
    assert half[0]["images"][0].shape == whole[0]["images"][0].shape == (3, 16, 16)
