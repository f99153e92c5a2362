"""A test-time ensemble in latent space: does averaging a model's upscaled latents over flips (and transposes) beat
one pass? Each view of the low-res latents and guide is upscaled, mapped back, and the mean decoded once (the cost
stays near one run: the decoder is most of it).

Scored like the recipe table (``recipe_search.py``: the 12 validation photos, five protocols, strength 1), one line
of PSNR per way:

    python benchmarks/latent_ensemble.py --model uplift_diffusion/weights/uplift-taef2 --views 1 4 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_search  # noqa: E402


def views(count: int) -> list[tuple]:
    """``count`` (1, 2, 4 or 8) pairs of (view, its inverse) over the last two dimensions."""
    flips = [(), (-1,), (-2,), (-1, -2)][:min(count, 4)]
    pairs = [(lambda t, d=d: t.flip(d) if d else t, lambda t, d=d: t.flip(d) if d else t) for d in flips]
    if count == 8:
        pairs += [(lambda t, f=f: f(t).transpose(-1, -2), lambda t, i=i: i(t.transpose(-1, -2))) for f, i in pairs]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(recipe_search.REPO / "uplift_diffusion/weights/uplift-taef2"))
    parser.add_argument("--views", type=int, nargs="+", choices=(1, 2, 4, 8), default=[1, 4, 8])
    parser.add_argument("--val-dir", default=str(recipe_search.REPO.parent / "shared" / "data" / "train_photos"))
    parser.add_argument("--val-count", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import uplift_diffusion.pipelines.super_resolution as super_resolution

    one_pass = super_resolution.uplift_steps
    photos = recipe_search.val_photos(Path(args.val_dir), args.val_count)
    for count in args.views:
        pairs = views(count)

        def ensemble(upsampler, latents, guide, iterations, generator=None, progress=None, pairs=pairs):
            outs = [inverse(one_pass(upsampler, view(latents), view(guide), iterations, generator))
                    for view, inverse in pairs]
            return torch.stack(outs).mean(0)

        super_resolution.uplift_steps = ensemble
        scores = recipe_search.evaluate(args.model, photos)
        print(json.dumps({"views": count, **{label: row["uplift"]["psnr"] for label, row in scores.items()}}),
              flush=True)
    super_resolution.uplift_steps = one_pass


if __name__ == "__main__":
    main()
