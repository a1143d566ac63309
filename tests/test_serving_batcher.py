"""KServe's `batcher` in the gateway: requests gathered up to maxBatchSize instances or maxLatency, one model call,
each caller its own predictions and the batch's id — the pure batcher, then an sklearn InferenceService."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import serving_fixtures  # noqa: E402
from kaip.serving.batcher import Batcher, BatchError, BatcherSettings, instances_of
from kaip.testing.live import LiveServer
from serving_fixtures import apply_isvc, build_iris_model, isvc_doc, wait_ready

serving_server = serving_fixtures.serving_server  # the module's shared live server (a fixture)


class Model:
    """A model that doubles each instance and records the batches it was called with."""

    def __init__(self, status: int = 200, drop: int = 0) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.status, self.drop = status, drop

    async def __call__(self, path: str, body: bytes) -> tuple[int, bytes]:
        instances = json.loads(body)["instances"]
        self.calls.append((path, instances))
        if self.status != 200:
            return self.status, b'{"error": "model says no"}'
        return 200, json.dumps({"predictions": [2 * x for x in instances][self.drop:]}).encode()


def test_batches_fill_up_or_time_out_and_each_caller_gets_its_slice() -> None:
    async def scenario() -> None:
        model = Model()
        batcher = Batcher(BatcherSettings(max_batch_size=5, max_latency=0.2), model)
        answers = await asyncio.gather(batcher.submit("/v1/models/m:predict", [1, 2]),
                                       batcher.submit("/v1/models/m:predict", [3]),
                                       batcher.submit("/v1/models/m:predict", [4, 5]))
        assert model.calls == [("/v1/models/m:predict", [1, 2, 3, 4, 5])]  # full at 5 instances: no wait
        docs = [json.loads(body) for status, body in answers if status == 200]
        assert [d["predictions"] for d in docs] == [[2, 4], [6], [8, 10]]
        assert len({d["batchId"] for d in docs}) == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await batcher.submit("/v1/models/m:predict", [7])  # alone: flushed by maxLatency
        assert status == 200 and json.loads(body)["predictions"] == [14]
        assert 0.18 <= loop.time() - started < 1.0
        assert json.loads(body)["batchId"] != docs[0]["batchId"]

        failing = Batcher(BatcherSettings(max_batch_size=2, max_latency=0.2), Model(status=503))
        answers = await asyncio.gather(failing.submit("/p:predict", [1]), failing.submit("/p:predict", [2]))
        assert answers == [(503, b'{"error": "model says no"}')] * 2  # the model's own error, to every caller
        short = Batcher(BatcherSettings(max_batch_size=2, max_latency=0.2), Model(drop=1))
        status, body = (await asyncio.gather(short.submit("/p:predict", [1]), short.submit("/p:predict", [2])))[0]
        assert status == 502 and b"size of prediction is not equal to the size of instances" in body

    asyncio.run(scenario())


def test_settings_and_bad_bodies_as_upstreams_agent() -> None:
    assert BatcherSettings.from_spec(None) is None
    assert BatcherSettings.from_spec({}) == BatcherSettings(32, 5.0)  # the agent's defaults
    assert BatcherSettings.from_spec({"maxBatchSize": -1, "maxLatency": 0}) == BatcherSettings(32, 5.0)
    assert BatcherSettings.from_spec({"maxBatchSize": 8, "maxLatency": 50}) == BatcherSettings(8, 0.05)
    for body, message in ((b"{", "can't Unmarshal body"), (b'{"instances": []}', "no instances in the request"),
                          (b'{"inputs": [1]}', "no instances in the request")):
        with pytest.raises(BatchError, match=message):
            instances_of(body)


@pytest.mark.slow
def test_an_inference_service_with_a_batcher(serving_server: LiveServer, tmp_path: Path) -> None:
    import joblib

    folder = build_iris_model(tmp_path / "iris")
    expected = joblib.load(folder / "model.joblib").predict(np.array([[6.8, 2.8, 4.8, 1.4]] * 2 + [[5.1, 3.5,
                                                                                                     1.4, 0.2]] * 2))
    with serving_server.client() as c:
        apply_isvc(c, isvc_doc("batched", {"minReplicas": 1, "batcher": {"maxBatchSize": 4, "maxLatency": 2000},
                                           "model": {"modelFormat": {"name": "sklearn"},
                                                     "storageUri": str(folder)}}))
        wait_ready(c, "batched")
    rows = [[6.8, 2.8, 4.8, 1.4]] * 2 + [[5.1, 3.5, 1.4, 0.2]] * 2

    def predict(row: list[float]) -> Any:
        with serving_server.client() as c:
            return c.post("/serving/default/batched/v1/models/batched:predict", json={"instances": [row]})

    with ThreadPoolExecutor(4) as pool:  # four callers of one instance each: one batch of four
        answers = list(pool.map(predict, rows))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    docs = [r.json() for r in answers]
    assert [d["predictions"][0] for d in docs] == expected.tolist()
    assert len({d["batchId"] for d in docs}) == 1
    with serving_server.client() as c:
        r = c.post("/serving/default/batched/v1/models/batched:predict", json={"instances": []})
        assert r.status_code == 400 and "no instances in the request" in r.text
        # Not a :predict: not batched, answered directly.
        assert c.get("/serving/default/batched/v1/models/batched").json() == {"name": "batched", "ready": True}
