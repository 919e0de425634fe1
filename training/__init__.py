"""Offline fine-tuning of the service's recognizers (needs the ``[train]`` extra: PyTorch).

config -> data (the service's own detection and alignment) -> backbone (a pretrained
ONNX recognizer imported as a trainable module) -> margin head -> training loop ->
evaluation -> ONNX export + manifest. The service consumes only the exported ONNX
file and its manifest, so it never needs PyTorch.
"""
