"""The producer side: submit jobs and read results. Imports no worker or ONNX Runtime code."""

from inferfleet.producer.aio import AsyncClient
from inferfleet.producer.client import Client, Job

__all__ = ["AsyncClient", "Client", "Job"]
