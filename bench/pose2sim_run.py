"""Pose2Sim's own person association and triangulation of posefleet's 2D keypoints (run by the bench with the
interpreter of a separate environment holding the ``pose2sim`` extra: Pose2Sim pulls opencv-python, PySide6 and
OpenSim, which must not meet posefleet's own install).

    python bench/pose2sim_run.py PROJECT CONFIG.toml OUT.json [--single]

PROJECT holds ``calibration/*.toml`` and ``pose/<camera>_json/*.json`` (OpenPose JSON, COCO-17). Writes OUT.json:
``{"people": [{frame: [[x, y, z] | null] * 17}], "seconds": ...}`` in the calibration's frame (z up, metres).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    project, config_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    import numpy as np
    import tomllib
    from anytree import PreOrderIter
    from Pose2Sim import Pose2Sim
    from Pose2Sim.skeletons import COCO_17

    cfg = tomllib.loads(config_path.read_text())
    cfg["project"].update(project_dir=str(project), multi_person="--single" not in sys.argv, frame_range="all",
                          frame_rate=60)  # fmt: skip
    cfg["pose"]["pose_model"] = "COCO_17"
    # Pose2Sim's default tracked keypoint (Neck) is one COCO-17 does not have
    cfg.setdefault("personAssociation", {}).setdefault("single_person", {})["tracked_keypoint"] = "RShoulder"
    (project / "Config.toml").write_text(config_path.read_text())  # how Pose2Sim finds its project folder
    cfg["triangulation"].update(undistort_points=True, make_c3d=False, interpolation="none", fill_large_gaps_with="nan")
    cfg.setdefault("logging", {})["use_custom_logging"] = True
    t0 = time.perf_counter()
    Pose2Sim.personAssociation(cfg)
    Pose2Sim.triangulation(cfg)
    seconds = time.perf_counter() - t0
    ids = {node.name: node.id for node in PreOrderIter(COCO_17) if node.id is not None}
    people = []
    for trc in sorted((project / "pose-3d").glob("*.trc")):
        lines = trc.read_text().splitlines()
        names = [n for n in lines[3].split("\t")[2:] if n]
        person: dict[int, list] = {}
        for row in lines[5:]:
            cells = row.split("\t")
            if len(cells) < 2 or not cells[0].strip():
                continue
            frame = int(float(cells[0]))
            values = np.array([float(c) if c.strip() else np.nan for c in cells[2 : 2 + 3 * len(names)]])
            xyz = values.reshape(-1, 3)[:, [2, 0, 1]]  # the TRC is Y-up (Pose2Sim's zup2yup): back to z up
            points: list = [None] * 17
            for name, p in zip(names, xyz, strict=False):
                if name in ids and np.isfinite(p).all():
                    points[ids[name]] = p.tolist()
            person[frame] = points
        people.append(person)
    out.write_text(json.dumps({"people": people, "seconds": seconds}))


if __name__ == "__main__":
    main()
