"""Check our UPLiFTModel against the published implementation's outputs in <shared>/spec/fixtures.

Rebuilds the fixture weights (rule in the fixtures' README), writes them in the reference layout, loads them with
our reference-checkpoint loader and prints, per case, the relative error over the sampled outputs.
``--dtype bfloat16`` measures the opt-in bfloat16 path against the same float32 fixtures (its stated tolerance,
5e-2 relative, is tests/fast_path_helpers.py's).

    python benchmarks/reference_parity.py [--shared DIR] [--dtype float32|bfloat16]

``--shared`` defaults to ``$UPLIFT_SHARED``, else ``shared/`` beside the checkout (``uplift_diffusion.testing``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.testing import SHARED, reference_weights

TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2}  # the default path's parity bound; the opt-in bf16 path's


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--dtype", choices=list(TOLERANCE), default="float32")
    args = parser.parse_args()
    dtype, tolerance = getattr(torch, args.dtype), TOLERANCE[args.dtype]
    fixtures = args.shared / "spec" / "fixtures"
    cases = json.loads((fixtures / "cases.json").read_text())
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':45s} {'shape':>20s} {'max rel err':>12s}")
        for case in cases:
            path = Path(tmp) / case["weights"].replace(".tsv", ".safetensors")
            if not path.exists():
                save_file(reference_weights(case["weights"], args.shared / "spec"), str(path))
            model = UPLiFTModel.from_reference_checkpoint(str(path), preset=case["preset"], dtype=dtype)
            data = load_file(str(fixtures / case["file"]))
            torch.manual_seed(case["global_seed_before_forward"])
            with torch.no_grad():
                out = model(data["image"].to(dtype), data["features"].to(dtype), iterations=case["iterations"],
                            output_size=case["output_size"])
            ref = data["sample_value"]
            err = ((out.flatten()[data["sample_index"]].float() - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err)
            print(f"{case['file']:45s} {tuple(out.shape)!s:>20s} {err:12.2e}")
    print(f"worst relative error {worst:.2e} ({'PASS' if worst < tolerance else 'FAIL'} at {tolerance:g}, "
          f"{args.dtype})")
    return 0 if worst < tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
