"""`kaip-sklearn`: scikit-learn (and, where installed, xgboost / lightgbm) models saved with joblib or pickle,
served over KServe v1 and Open Inference v2, as KServe's sklearnserver does: with `PREDICT_PROBA=true` in the
environment a classifier answers `predict_proba` (one probability per class) instead of `predict`."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from kaip.serving.runtimes import oip
from kaip.serving.runtimes.server import Model, ModelError, build_app, parse_args, serve

MODEL_EXTENSIONS = (".joblib", ".pkl", ".pickle")
ENV_PREDICT_PROBA = "PREDICT_PROBA"  # KServe sklearnserver's switch


def find_model_file(model_dir: Path) -> Path:
    if model_dir.is_file():
        return model_dir
    found = sorted(p for p in model_dir.iterdir() if p.suffix in MODEL_EXTENSIONS)
    if not found:
        raise RuntimeError(f"no model file ({', '.join(MODEL_EXTENSIONS)}) in {model_dir}")
    if len(found) > 1:
        raise RuntimeError(f"more than one model file in {model_dir}: {', '.join(p.name for p in found)}")
    return found[0]


def load(path: Path) -> Any:
    if path.suffix == ".joblib":
        import joblib

        return joblib.load(path)
    with open(path, "rb") as fh:
        return pickle.load(fh)


class SKLearnModel(Model):
    platform = "sklearn"
    inline = True

    def __init__(self, name: str, model_dir: Path) -> None:
        self.name = name
        self.estimator = load(find_model_file(model_dir))
        if not hasattr(self.estimator, "predict"):
            raise RuntimeError(f"{model_dir}: the loaded object ({type(self.estimator).__name__}) has no predict()")
        self.n_features = getattr(self.estimator, "n_features_in_", None)
        self.proba = os.environ.get(ENV_PREDICT_PROBA, "false").lower() == "true" and \
            hasattr(self.estimator, "predict_proba")
        self.ready = True

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["inputs"] = [{"name": "input-0", "datatype": "FP64", "shape": [-1, self.n_features or -1]}]
        meta["outputs"] = [{"name": "output-0", "datatype": "FP64", "shape": [-1, len(self.estimator.classes_)]}
                           if self.proba and hasattr(self.estimator, "classes_") else
                           {"name": "output-0", "datatype": "INT64", "shape": [-1]}]
        return meta

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2:
            raise ModelError(f"expected a 2-D input [batch, features], got shape {list(x.shape)}")
        if self.n_features is not None and x.shape[1] != self.n_features:
            raise ModelError(f"expected {self.n_features} features per instance, got {x.shape[1]} "
                             f"(input shape {list(x.shape)})")
        try:
            return np.asarray(self.estimator.predict_proba(x) if self.proba else self.estimator.predict(x))
        except (ValueError, TypeError) as err:
            raise ModelError(str(err)) from err

    def infer(self, inputs: list[oip.Tensor], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        if len(inputs) != 1:
            raise ModelError(f"expected exactly one input tensor, got {len(inputs)}")
        tensor = inputs[0]
        if tensor.datatype in ("BYTES", "BOOL"):
            raise ModelError(f"input '{tensor.name}': datatype {tensor.datatype} is not numeric")
        return {"output-0": self._predict(tensor.array)}

    def predict(self, instances: list[Any]) -> list[Any]:
        try:
            x = np.asarray(instances, dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise ModelError(f"instances must be a list of numeric rows of equal length: {err}") from err
        return self._predict(x).tolist()


def main(argv: list[str] | None = None) -> None:
    args = parse_args("Kaip sklearn model server", argv=argv)
    try:
        model = SKLearnModel(args.model_name, Path(args.model_dir))
    except Exception as err:
        print(f"kaip-sklearn: cannot load model {args.model_name!r} from {args.model_dir}: {err}",
              file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"kaip-sklearn: serving {args.model_name} on {args.host}:{args.http_port}", flush=True)
    serve(build_app(model, CollectorRegistry()), args.host, args.http_port)


if __name__ == "__main__":
    main()
