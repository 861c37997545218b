"""What the benchmarks share (a module, not a benchmark: `python -m bench` lists no `_` name)."""

from __future__ import annotations

from typing import Any


def load_engine(
    model: str,
    device: str = "cpu",
    *,
    precision: str = "auto",
    cuda_graphs: str | bool = "auto",
    threads: int | None = None,
    encoder_backend: str = "torch",
    data_dir: str = "/tmp/parakeet_bench_data",
) -> Any:
    """The server's own engine (`inference.build_engine`) on `device` ("cpu", "cuda", "cuda:N") with torch's CPU
    threads set to `threads` when given (the server's workers take OMP_NUM_THREADS instead), its encoder on
    `encoder_backend` (PARAKEET_ENCODER_BACKEND; the ONNX export cached under `data_dir`)."""
    import torch

    from inference import build_engine
    from parakeet.core.settings import Settings

    if threads:
        torch.set_num_threads(threads)
    graphs = cuda_graphs if isinstance(cuda_graphs, str) else "true" if cuda_graphs else "false"
    settings = Settings(
        model=model,
        precision=precision,
        cuda_graphs=graphs,
        encoder_backend=encoder_backend,
        data_dir=data_dir,
    )
    return build_engine(settings, torch.device(device))
