"""Feature cache: returns exactly what the backbone computes, persists in safetensors shards, never serves stale."""

import pytest
import torch
from training_helpers import tiny_backbone

from uplift_diffusion.training.cache import FeatureCache, cache_key
from uplift_diffusion.utils.errors import StaleResultsError


def test_cache_returns_what_the_backbone_computes(tmp_path):
    backbone = tiny_backbone()
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return backbone.encode(x)

    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    cache = FeatureCache(tmp_path, "fp-a", shard_size=4)
    first = cache.features(["a#v0", "b#v0", "c#v0"], images, encode)
    torch.testing.assert_close(first, backbone.encode(images), rtol=0, atol=0)
    again = cache.features(["a#v0", "b#v0", "c#v0"], images, encode)
    assert calls == [3] and torch.equal(first, again) and (cache.hits, cache.misses) == (3, 3)

    # a mixed batch computes only the missing item, and keeps the batch order
    mixed = torch.stack([images[1], torch.rand(3, 32, 32), images[0]])
    out = cache.features(["b#v0", "d#v0", "a#v0"], mixed, encode)
    assert calls == [3, 1]
    torch.testing.assert_close(out, backbone.encode(mixed))  # conv kernels may round differently per batch size

    # the same view at another scale is another entry
    small = torch.nn.functional.avg_pool2d(images, 2)
    torch.testing.assert_close(cache.features(["a#v0", "b#v0", "c#v0"], small, encode), backbone.encode(small))
    assert cache_key("a#v0", (16, 16)) in cache and cache_key("a#v0", (32, 32)) in cache

    cache.flush()
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert shards  # 4 entries triggered a shard on put, flush wrote the rest
    reopened = FeatureCache(tmp_path, "fp-a")
    assert len(reopened) == len(cache) == 7
    torch.testing.assert_close(reopened.get(cache_key("a#v0", (32, 32))), first[0], rtol=0, atol=0)

    # another backbone / crop setting (fingerprint) is refused, naming the difference; overwrite starts afresh
    with pytest.raises(StaleResultsError, match="fp-a -> fp-b"):
        FeatureCache(tmp_path, "fp-b")
    assert len(FeatureCache(tmp_path, "fp-b", overwrite=True)) == 0
    assert len(FeatureCache(tmp_path, "fp-b")) == 0 and not list(tmp_path.glob("*.safetensors"))


def test_cache_fingerprint_covers_every_setting_that_changes_features(tmp_path):
    """Any data setting (present or added later, e.g. the downscale kernels), the backbone dtype, the seed and the
    files themselves change the fingerprint; worker count and cache location do not."""
    import dataclasses

    from training_helpers import tiny_config, write_images

    from uplift_diffusion.training.cache import cache_fingerprint
    from uplift_diffusion.training.data import FolderSource

    write_images(tmp_path / "images", count=2)
    backbone = tiny_backbone()
    config = tiny_config(tmp_path, tmp_path / "images")
    source = FolderSource(tmp_path / "images")
    base = cache_fingerprint(backbone, config, 2, [source])
    for change in (dict(min_crop_fraction=0.9), dict(crop_size=config.data.crop_size * 2), dict(hflip=False)):
        other = dataclasses.replace(config, data=dataclasses.replace(config.data, **change))
        assert cache_fingerprint(backbone, other, 2, [source]) != base, change
    same = dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=3, cache_dir="elsewhere"))
    assert cache_fingerprint(backbone, same, 2, [source]) == base
    assert cache_fingerprint(backbone, dataclasses.replace(config, seed=1), 2, [source]) != base
    first = sorted((tmp_path / "images").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")  # the same file name with other content
    assert cache_fingerprint(backbone, config, 2, [FolderSource(tmp_path / "images")]) != base


def test_cache_fingerprint_survives_a_copy_of_the_same_photos(tmp_path):
    """Another machine's copy of the same photos (new modification times) keeps the cache valid."""
    import os

    from training_helpers import tiny_config, write_images

    from uplift_diffusion.training.cache import cache_fingerprint
    from uplift_diffusion.training.data import FolderSource

    write_images(tmp_path / "images", count=2)
    backbone = tiny_backbone()
    config = tiny_config(tmp_path, tmp_path / "images")
    base = cache_fingerprint(backbone, config, 2, [FolderSource(tmp_path / "images")])
    for f in (tmp_path / "images").iterdir():
        os.utime(f, (1_000_000, 1_000_000))
    assert cache_fingerprint(backbone, config, 2, [FolderSource(tmp_path / "images")]) == base


def test_a_truncated_shard_is_ignored_and_recomputed(tmp_path):
    backbone = tiny_backbone()
    images = torch.rand(2, 3, 32, 32)
    cache = FeatureCache(tmp_path, "fp")
    cache.features(["a", "b"], images, backbone.encode)
    cache.flush()
    shard = next(tmp_path.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:20])
    reopened = FeatureCache(tmp_path, "fp")
    assert len(reopened) == 0
    torch.testing.assert_close(reopened.features(["a", "b"], images, backbone.encode), backbone.encode(images))


def test_processes_see_each_others_shards_after_a_refresh(tmp_path):
    """Each process writes shards under its own prefix; a refresh indexes the others' (never a shard being written)."""
    rank0, rank1 = (FeatureCache(tmp_path, "fp-a", prefix=f"r{r}") for r in range(2))
    rank0.put("a#v0@4x4", torch.ones(2, 4, 4))
    rank0.flush()
    (shard,) = tmp_path.glob("r0-*.safetensors")
    (tmp_path / ".r0-000001.tmpXYZ.safetensors").write_bytes(shard.read_bytes())  # as atomic_write names it
    assert "a#v0@4x4" not in rank1
    rank1.refresh()
    assert torch.equal(rank1.get("a#v0@4x4"), torch.ones(2, 4, 4)) and rank1.index["a#v0@4x4"] == shard


def test_fill_cache_pays_every_backbone_pass_before_training(tmp_path):
    from training_helpers import tiny_backbone, tiny_config, write_images

    from uplift_diffusion.training.data import collate_views
    from uplift_diffusion.training.trainer import Trainer

    write_images(tmp_path / "images", count=2)
    trainer = Trainer(tiny_config(tmp_path, tmp_path / "images"), backbone=tiny_backbone())
    trainer.fill_cache()
    levels = len(trainer.dataset[0]["images"])
    assert trainer.cache.misses == len(trainer.dataset) * levels
    items = collate_views([trainer.dataset[i] for i in range(len(trainer.dataset))])
    trainer.features(items["keys"], items["images"])
    assert trainer.cache.misses == len(trainer.dataset) * levels  # all served from the cache now
