"""`inferfleet bench`: the fleet against raw ONNX Runtime and a plain Celery task per
sample, measured in one run on one machine (see `scenarios` for what each one does)."""
