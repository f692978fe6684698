"""The GPU benchmark's bookkeeping, on CPU: measurement order and results that survive an
interrupted run (the measurements themselves need a GPU: benchmarks/gpu_check.sh)."""
import json
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu_bench  # noqa: E402


def test_plan_puts_large_batches_first():
    configs = gpu_bench.plan([1, 256, 8, 64], ["fp16", "fp32"])
    batches = [n for _, n, _ in configs]
    assert batches == sorted(batches, reverse=True) and batches[0] == 256
    assert len(configs) == 4 * 2 * len(gpu_bench.LARGE)


@pytest.mark.parametrize("stop", ["interrupt", "deadline"])
def test_rows_on_disk_before_the_next_measurement(tmp_path, monkeypatch, stop):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    writer = gpu_bench.TableWriter(str(md), str(js), {"copy_gbs": 3000.0})
    configs = gpu_bench.plan([8], ["fp16"])[:5]
    clock = [0.0]
    monkeypatch.setattr(gpu_bench, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    seen = []

    def measure_one(dname, n, layer):
        # Every earlier row is already in both files when the next measurement starts.
        assert md.read_text().count("| ok |") == len(seen)
        assert len(json.loads(js.read_text())["rows"]) == len(seen)
        if len(seen) == 3 and stop == "interrupt":
            raise KeyboardInterrupt("signal 15")  # what SIGINT/SIGTERM raise mid-measurement
        seen.append({"layer": layer.name, "batch": n, "check": "ok"})
        if len(seen) == 3 and stop == "deadline":
            clock[0] = 100.0  # the budget runs out during the third measurement
        return seen[-1]

    done = gpu_bench.run_plan(configs, measure_one, lambda r: f"| {r['layer']} | ok |", writer, deadline=50.0)
    assert done == 3
    text = md.read_text()
    assert text.startswith(gpu_bench.header(3000.0))
    assert text.count("| ok |") == 3
    assert "2 configurations not measured" in text
    assert ("Interrupted (signal 15) after 3 configurations" in text) == (stop == "interrupt")
    assert [r["layer"] for r in json.loads(js.read_text())["rows"]] == [c[2].name for c in configs[:3]]
