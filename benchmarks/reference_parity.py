"""Check our UPLiFTModel against the published implementation's outputs in ../shared/spec/fixtures.

Rebuilds the fixture weights (rule in the fixtures' README), writes them in the reference layout, loads them with
our reference-checkpoint loader and prints, per case, the relative error over the sampled outputs.

    python benchmarks/reference_parity.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.testing import reference_weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    fixtures = args.shared / "spec" / "fixtures"
    cases = json.loads((fixtures / "cases.json").read_text())
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'case':45s} {'shape':>20s} {'max rel err':>12s}")
        for case in cases:
            path = Path(tmp) / case["weights"].replace(".tsv", ".safetensors")
            if not path.exists():
                save_file(reference_weights(case["weights"], args.shared / "spec"), str(path))
            model = UPLiFTModel.from_reference_checkpoint(str(path), preset=case["preset"])
            data = load_file(str(fixtures / case["file"]))
            torch.manual_seed(case["global_seed_before_forward"])
            with torch.no_grad():
                out = model(data["image"], data["features"], iterations=case["iterations"],
                            output_size=case["output_size"])
            ref = data["sample_value"]
            err = ((out.flatten()[data["sample_index"]] - ref).abs().max() / ref.abs().max()).item()
            worst = max(worst, err)
            print(f"{case['file']:45s} {tuple(out.shape)!s:>20s} {err:12.2e}")
    print(f"worst relative error {worst:.2e} ({'PASS' if worst < 1e-5 else 'FAIL'} at 1e-5)")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
