"""The GPU suite (benchmarks/gpu_suite.py) runs end to end with ``--quick --device cpu`` and writes its JSON and
table, every measurement present and labelled with the device it ran on."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = {
    "sd15-vae 512->1024": {"UPLiFT (eager)", "latent bilinear (pipeline)", "UPLiFT (pipeline, eager)",
                           "UPLiFT (Local Attender compiled)"},
    "sd15-vae 512->2048": {"UPLiFT (eager)", "latent bilinear (pipeline)", "UPLiFT (pipeline, eager)",
                           "UPLiFT (Local Attender compiled)"},
    "dinov2-s14 448 pixel-dense": {"UPLiFT (eager)", "bilinear", "UPLiFT (Local Attender compiled)"},
}


def test_quick_cpu_run_writes_json_and_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--quick", "--device", "cpu", "--dtypes",
         "float32", "--threads", "1", "--jobs", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    payload = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert payload["device"] == "cpu" and "not a GPU" in payload["device_name"] and payload["quick"]
    assert payload["memory_method"].startswith(("VmHWM", "ru_maxrss"))  # RSS-based on CPU, and said so
    assert {c["case"] for c in payload["cases"]} == set(MEASUREMENTS)
    for case in payload["cases"]:
        assert "error" not in case, case
        rows = {r["measurement"]: r for r in case["rows"]}
        assert set(rows) == MEASUREMENTS[case["case"]]
        for r in rows.values():
            assert r["device"] == "cpu" and r["dtype"] == "float32" and r["iterations"] == 2 and r["warmup"] == 1
            assert r["mean_s"] > 0 and r["peak_mib"] >= 0
        assert rows["UPLiFT (Local Attender compiled)"]["compiled"] and not rows["UPLiFT (eager)"]["compiled"]
    sd = next(c for c in payload["cases"] if c["case"] == "sd15-vae 512->2048")
    assert sd["output"] == [3, 256, 256]  # 64² image -> 8² latents -> 2 steps -> 32² latents -> 256² pixels
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "not a GPU" in table and ("VmHWM" in table or "ru_maxrss" in table)
    assert table.count("| float32 |") == sum(len(m) for m in MEASUREMENTS.values())
