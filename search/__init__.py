"""The Ray Tune + Optuna + MLflow layer over the maskclf core (which never imports it)."""
