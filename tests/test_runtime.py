"""Execution provider choice: preference order, what the build offers, and clean fallback."""

from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from posefleet.config import CPU, CUDA, TENSORRT, OrtConfig
from posefleet.pipeline.runtime import choose_providers, create_session, session_options

ALL = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        ([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
        (["AzureExecutionProvider", CUDA, CPU], [CUDA, CPU]),
        ([CPU], [CPU]),
        (["AzureExecutionProvider", CPU], [CPU]),
        ([], [CPU]),
    ],
)
def test_chain_follows_preference_and_build(available: list[str], expected: list[str]) -> None:
    assert choose_providers(available, ALL) == expected


def test_config_can_exclude_tensorrt() -> None:
    assert choose_providers([TENSORRT, CUDA, CPU], [CUDA, CPU]) == [CUDA, CPU]


def test_cpu_always_last_even_if_not_listed() -> None:
    assert choose_providers([CUDA, CPU], [CUDA]) == [CUDA, CPU]


def test_gpu_chain_on_cpu_build_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # Claim the build offers CUDA; this machine's onnxruntime cannot start it and drops it quietly.
    with caplog.at_level(logging.INFO, logger="posefleet.runtime"):
        session = create_session("blazepose_landmark_full", OrtConfig(), available=[CUDA, CPU])
    assert session.get_providers()[0] == CPU
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{CUDA} did not start" in m and "running on CPUExecutionProvider" in m for m in warned), warned


def test_cpu_chain_starts_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="posefleet.runtime"):
        assert create_session("blazepose_landmark_full", OrtConfig(providers=[CPU])).get_providers()[0] == CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "did not start" in r.getMessage()]


@pytest.mark.parametrize("spin", [True, False])
def test_session_options_come_from_config(spin: bool) -> None:
    cfg = OrtConfig(intra_op_num_threads=3, graph_optimization_level="basic", allow_spinning=spin)
    so = session_options(cfg)
    assert so.intra_op_num_threads == 3
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
