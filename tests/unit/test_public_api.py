import inferfleet

PUBLIC = [
    "AsyncClient", "BadArgumentError", "BrokerError", "BrokerFullError", "Client",
    "ConfigurationError", "ErrorCode", "ErrorInfo",
    "InferfleetError", "InvalidInputError", "Job", "JobIdConflictError", "JobResult",
    "JobStatus", "QueueFullError", "ResultTimeoutError",
    "SampleResult", "SampleStatus", "Settings", "StreamInterruptedError",
    "UnknownModelError",
]


def test_the_public_export_list_is_pinned_and_sorted() -> None:
    assert inferfleet.__all__ == PUBLIC
    assert sorted(inferfleet.__all__) == inferfleet.__all__
    for name in PUBLIC:
        assert getattr(inferfleet, name) is not None


def test_every_error_descends_from_inferfleet_error() -> None:
    from inferfleet import errors

    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.InferfleetError), name


def test_the_producer_imports_neither_the_worker_nor_onnxruntime() -> None:
    import subprocess
    import sys

    code = ("import sys, inferfleet; inferfleet.Client; "
            "print(any(m.startswith(('onnxruntime', 'inferfleet.worker')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
