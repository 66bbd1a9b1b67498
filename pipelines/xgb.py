"""XGBoost as a scikit-learn step with the class names as labels, convertible by skl2onnx.

XGBoost's scikit-learn classifier only learns integer labels 0..n-1, while every other
family (and the run contract) labels rows with the class names, so this step encodes
the names on ``fit`` and gives them back as ``classes_``. skl2onnx does not know
XGBoost: onnxmltools' converter is registered for this class, with skl2onnx's linear
classifier shape calculator (a label tensor and a probabilities tensor), so the
Pipeline converts in one ``convert_sklearn`` call like the other families.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
from skl2onnx import update_registered_converter
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from sklearn.preprocessing import LabelEncoder
from xgboost import XGBClassifier

# What skops must trust to load a fitted pipeline holding this step (MLflow saves
# sklearn models with skops); the booster is XGBoost's own JSON-backed state.
SKOPS_TYPES = ("pipelines.xgb.LabelledXGBClassifier", "xgboost.core.Booster")
# onnxmltools 1.16 writes TreeEnsembleClassifier of ai.onnx.ml version 3 and refuses newer.
ONNX_ML_OPSET = 3


class LabelledXGBClassifier(XGBClassifier):
    """An ``XGBClassifier`` fitted on class names; ``classes_`` and ``predict`` give names."""

    def fit(self, X: Any, y: Any, **kwargs: Any) -> LabelledXGBClassifier:  # noqa: N803
        """Encode the class names as 0..n-1 and fit on float32 features without names."""
        encoder = LabelEncoder().fit(np.asarray(y))
        # XGBoost checks classes_ against the encoded labels during fit: the names
        # of an earlier fit must not answer then.
        self.__dict__.pop("label_names_", None)
        # A plain float32 matrix: the ONNX converter only reads features named f0..fN,
        # and float32 is what both XGBoost and the ONNX graph compute with.
        super().fit(np.asarray(X, dtype=np.float32), encoder.transform(np.asarray(y)), **kwargs)
        self.label_names_ = encoder.classes_.astype(object)
        return self

    @property
    def classes_(self) -> np.ndarray:
        """The class names once fitted (0..n-1 while XGBoost itself is fitting)."""
        names = self.__dict__.get("label_names_")
        return names if names is not None else np.arange(self.n_classes_)

    def predict_proba(self, X: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]  # noqa: N803
        """Probabilities in ``classes_`` order."""
        return super().predict_proba(np.asarray(X, dtype=np.float32), **kwargs)

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:  # noqa: N803
        """The most probable class name of each row (as the ONNX label output does)."""
        return self.classes_[np.argmax(self.predict_proba(X, **kwargs), axis=1)]


update_registered_converter(
    LabelledXGBClassifier,
    "LabelledXGBClassifier",
    calculate_linear_classifier_output_shapes,
    convert_xgboost,
    options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
)
