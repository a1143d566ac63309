"""The flagship example end to end: `demo.py --quick` (what `make demo-quick` runs) on a fresh state directory.

The demo itself checks every outcome and exits non-zero if one fails (pipeline succeeded; a model version with
full lineage; the InferenceService Ready at 80/20; each member answered with their own figure and never the
other's; PII redacted and injection blocked, in the prediction log; the requests in Prometheus metrics). This test
runs it as a user would and reads its result file to assert the same outcomes independently of the demo's own
report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kaip.testing.live import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(1500)
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "kaip-home"
    proc = subprocess.run([sys.executable, "examples/healthcare-chatbot/demo.py", "--quick", "--home", str(home),
                           "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=1400,
                          env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(tmp_path),
                               "COLUMNS": "160", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "0 failed check(s)" in out
    result = json.loads((home / "demo-result.json").read_text())
    assert result["version"] is not None
    members = {r["member_id"]: r for r in map(json.loads, (ROOT / "examples/healthcare-chatbot/knowledge/members.jsonl")
                                                    .read_text().splitlines())}
    figure_a, figure_b = (f"{members[m]['deductible_met']:.2f}" for m in ("EVM-100001", "EVM-100002"))
    answer_a, answer_b = (result["outcomes"][f"{k}:deductible"]["answer"].replace(",", "") for k in "AB")
    assert figure_a in answer_a and figure_b not in answer_a, answer_a
    assert figure_b in answer_b and figure_a not in answer_b, answer_b
    assert result["outcomes"]["B:injection"]["finish_reason"] == "content_filter"
    assert "123-45-6789" not in result["outcomes"]["A:pii"]["answer"]
