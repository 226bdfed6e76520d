"""The seed paper's published figures (its Tables 2 and 3), to print beside ours."""

from __future__ import annotations

from common.data.synthetic import PAPER_ROWS

MODELS = ("lr", "rf", "svm")
FRAMEWORKS = ("federated", "centralised", "spark")
MODEL_LABELS = {"lr": "LR", "rf": "RF", "svm": "SVM"}
FRAMEWORK_LABELS = {"federated": "FL", "centralised": "Centralised", "spark": "Decentralised"}

# Table 2, MSE, and Table 3, ML training time in seconds: model → framework → figure.
TABLE2_MSE = {
    "lr": {"federated": 27.209, "centralised": 0.011, "spark": 0.012},
    "rf": {"federated": 0.021, "centralised": 0.507, "spark": 0.025},
    "svm": {"federated": 37.596, "centralised": 8550.537, "spark": 49.547},
}
TABLE3_SECONDS = {
    "lr": {"federated": 9.7, "centralised": 20, "spark": 19},
    "rf": {"federated": 515, "centralised": 1083, "spark": 695},
    "svm": {"federated": 4989, "centralised": 3951, "spark": 3847},
}
__all__ = ["FRAMEWORKS", "MODELS", "PAPER_ROWS", "TABLE2_MSE", "TABLE3_SECONDS"]
