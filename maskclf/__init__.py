"""maskclf: the model core for 18-class mask / gender / age classification.

Plain PyTorch: this package never imports ray, optuna or mlflow.
"""

__version__ = "0.1.0"
