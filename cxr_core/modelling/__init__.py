"""Modelling: network builders (``networks``), Grad-CAM (``gradcam``), the out-of-distribution check (``ood``) and the serving ``predictor``."""
