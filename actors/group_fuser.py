"""One fuser actor per group (court), and the ingress replica's feed to it.

A replica's :class:`GroupFeed` sends each group's results to its fuser in one call at a time: while a call is out,
results gather (the newest ``queue_frames`` a stream kept) and go together in the next, so a stalled fuser costs the
streams nothing but the results it misses. The fuser matches the cameras' results by time (capture timestamps where
given), fuses each group frame (:class:`posefleet.court.fusion.GroupFuser`), keeps the latest for the API, appends
it to the group's JSONL sink and webhook, and checkpoints its group ids and API-set calibrations in the deploy's
checkpoint store, so a restarted fuser keeps its ids. Named after its deploy, it is removed with the deploy's other
actors by the deploy's owner (:mod:`posefleet.actors.owner`).

The feed also places each answered result on the court (every person's ``court_xy``) before it leaves the replica,
with the group's calibrations as the fuser holds them: fetched once a group, again whenever a push answers that
they changed (set or deleted over the API, on any replica).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ray

from posefleet.actors import FAULTS
from posefleet.actors.owner import ON_HEAD, actor_name
from posefleet.court.calibration import CalibrationError, CameraCalibration, camera_from_model, reprojection_errors
from posefleet.court.fusion import GroupFuser
from posefleet.court.homography import HomographyCalibration, fit_homography
from posefleet.court.settings import GroupSettings
from posefleet.pipeline.schema import FrameResult
from posefleet.serving_config import ServingConfig
from posefleet.time_match import match_by_time

log = logging.getLogger("posefleet.groups")
HISTORY = 32  # results kept a camera to match the group's time against
GROUPS_DIR = "_groups"  # the sink's folder of group frames: no stream id starts with "_"


def check_camera(stream: str, body: dict[str, Any]) -> dict[str, Any]:
    """A camera's calibration as the API takes it, checked: ``{"camera": CameraCalibration}`` with optional
    ``check_points: [{world: [x, y, z], image: [u, v]}]``, or ``{"court_points": HomographyCalibration}``.
    Returns the stored form and the reprojection errors of the given points; CalibrationError says what is wrong."""
    if ("camera" in body) == ("court_points" in body):
        raise CalibrationError("give either camera (a full calibration) or court_points (a court homography)")
    try:
        if "camera" in body:
            model = CameraCalibration(**body["camera"])
            cam = camera_from_model(stream, model)
            checks = body.get("check_points") or []
            world, image = [p["world"] for p in checks], [p["image"] for p in checks]
            errors = reprojection_errors(cam, world, image) if checks else []
            return {"kind": "camera", "calibration": model.model_dump(mode="json"),
                    "reprojection_px": [round(float(e), 2) for e in errors]}  # fmt: skip
        points = HomographyCalibration(**body["court_points"])
        hom = fit_homography(points, body.get("size"))
        return {"kind": "court_points", "calibration": points.model_dump(mode="json"),
                "reprojection_px": [round(float(e), 2) for e in hom.errors_px]}  # fmt: skip
    except (TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, CalibrationError):
            raise
        raise CalibrationError(f"camera {stream}: {exc}") from exc


class GroupFuserActor:
    def __init__(self, group: str, settings: dict[str, Any], serving: ServingConfig, store: Any) -> None:
        self.group = group
        self.base = GroupSettings(**settings)
        self.cfg = serving.groups
        self.store = store
        self.api: dict[str, dict[str, Any]] = {}  # stream -> its calibration set over the API
        self.history: dict[str, collections.deque] = {}
        self.latest: dict[str, Any] | None = None
        self.version = 0
        self.changed = asyncio.Event()
        self.errors: dict[str, str] = {}  # stream -> why its results are left out (a size that does not fit)
        self.last_time = float("-inf")
        self.last_checkpoint = 0.0
        self.fused = 0
        self.sink = self.webhook = None
        if serving.sink.directory:
            from posefleet.sink import JsonlSink

            self.sink = JsonlSink(serving.sink)
        if serving.sink.webhook.url:
            from posefleet.webhook import WebhookSink

            self.webhook = WebhookSink(serving.sink.webhook, f"group-{group}", key="group_frames")
        self.fuser = self._build()
        self._restored: asyncio.Task | None = None

    async def _restore(self) -> None:
        """The group ids and API calibrations of this fuser before a restart (once, before its first call)."""
        with contextlib.suppress(*FAULTS):
            state = await self.store.group_state.remote(self.group)
            if state:
                self.api = state.get("cameras", {})
                self.fuser = self._build()
                self.fuser.tracker.restore(state["tracker"])
                self.version = state.get("version", 0)

    async def _ready(self) -> None:
        if self._restored is None:
            self._restored = asyncio.get_running_loop().create_task(self._restore())
        await self._restored

    def _settings(self) -> GroupSettings:
        """The group's settings: the config's cameras with the API's over them (a camera is one kind or the other)."""
        cameras = dict(self.base.cameras)
        points = dict(self.base.court_points)
        for stream, entry in self.api.items():
            cameras.pop(stream, None)
            points.pop(stream, None)
            if entry["kind"] == "camera":
                cameras[stream] = CameraCalibration(**entry["calibration"])
            else:
                points[stream] = HomographyCalibration(**entry["calibration"])
        return self.base.model_copy(update={"cameras": cameras, "court_points": points})

    def _build(self) -> GroupFuser:
        """The fuser of the calibrations held now; they get a new name (``placement``, what feeds compare)."""
        fuser = GroupFuser(self.group, self._settings())
        if hasattr(self, "fuser"):
            # the players keep their ids through a camera's recalibration (by stream name: the streams may change)
            fuser.tracker.restore(self.fuser.tracker.state())
        self.placement = uuid.uuid4().hex
        return fuser

    # -- results in ---------------------------------------------------------------------------------------------

    async def push(self, results: list[tuple[float, FrameResult]]) -> dict[str, Any]:
        """Results of the group's streams (each with when it was served); fuses every group frame now complete.
        Returns the latest version and the name of the calibrations held (:meth:`placing`)."""
        await self._ready()
        for served, result in results:
            if result.stream_id in self.fuser.streams and result.stream_id not in self.errors:
                when = result.timestamp if result.timestamp is not None else served
                self.history.setdefault(result.stream_id, collections.deque(maxlen=HISTORY)).append((when, result))
        self._fuse_ready()
        return {"version": self.version, "placement": self.placement}

    async def placing(self) -> dict[str, Any]:
        """What a feed needs to place its results on the court as this fuser does: the group's settings with every
        calibration, and their name (a new one each time they change)."""
        await self._ready()
        return {"placement": self.placement, "settings": self._settings().model_dump(mode="json")}

    def _fuse_ready(self) -> None:
        """Fuse at the group's time (:func:`match_by_time`), each camera's nearest result within ``match_window_s``."""
        cams = {s: h for s, h in self.history.items() if h and s in self.fuser.streams}
        if not cams:
            return
        now, nearest = match_by_time(cams, lambda e: e[0])
        if now <= self.last_time:
            return
        # the results are this actor's own copies: fusing may set their court_xy in place
        frame = {s: result for s, (when, result) in nearest.items() if abs(when - now) <= self.cfg.match_window_s}
        self.last_time = now
        try:
            fused = self.fuser.fuse(frame, now)
        except CalibrationError as exc:  # frames of another size than the camera's calibration
            bad = next((s for s in frame if f"camera {s}:" in str(exc)), None)
            if bad is not None:
                self.errors[bad] = str(exc)
                self.history.pop(bad, None)
            return
        self.latest = fused.model_dump(mode="json")
        self.version += 1
        self.fused += 1
        self.changed.set()
        self.changed = asyncio.Event()
        line = fused.model_dump_json()
        if self.sink is not None:
            self.sink.write(f"{GROUPS_DIR}/{self.group}", line)
        if self.webhook is not None:
            self.webhook.add(line)
        if time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_s:
            self._checkpoint()

    def _checkpoint(self) -> None:
        self.last_checkpoint = time.monotonic()
        state = {"tracker": self.fuser.tracker.state(), "cameras": self.api, "version": self.version}
        with contextlib.suppress(*FAULTS):
            self.store.put_group.remote(self.group, state)

    # -- results out --------------------------------------------------------------------------------------------

    async def people(self) -> dict[str, Any] | None:
        await self._ready()
        if self.latest is None:
            return None
        return {**self.latest, "version": self.version, "errors": self.errors}

    async def wait(self, version: int, timeout_s: float) -> dict[str, Any] | None:
        """The latest fused frame once newer than ``version`` (or after ``timeout_s``, None)."""
        await self._ready()
        if self.version <= version:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return await self.people() if self.version > version else None

    # -- calibrations over the API ------------------------------------------------------------------------------

    async def set_camera(self, stream: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Store a calibration :func:`check_camera` passed; refused when the group's cameras would not
        triangulate with it. Answers ``{"ok": ..., "reason" | "reprojection_px": ...}``."""
        await self._ready()
        try:
            before = self.api.get(stream)
            self.api[stream] = entry
            try:
                self.fuser = self._build()
            except CalibrationError:
                self.api.pop(stream) if before is None else self.api.__setitem__(stream, before)
                raise
        except CalibrationError as exc:
            return {"ok": False, "reason": str(exc)}
        self.errors.pop(stream, None)
        self._checkpoint()
        return {"ok": True, "stream_id": stream, "kind": entry["kind"], "reprojection_px": entry["reprojection_px"]}

    async def camera(self, stream: str) -> dict[str, Any] | None:
        await self._ready()
        if stream in self.api:
            return {"stream_id": stream, "source": "api", **self.api[stream]}
        if stream in self.base.cameras:
            return {"stream_id": stream, "source": "config", "kind": "camera",
                    "calibration": self.base.cameras[stream].model_dump(mode="json")}  # fmt: skip
        if stream in self.base.court_points:
            return {"stream_id": stream, "source": "config", "kind": "court_points",
                    "calibration": self.base.court_points[stream].model_dump(mode="json")}  # fmt: skip
        return None

    async def delete_camera(self, stream: str) -> bool:
        """Forget a calibration set over the API (a config's stays: the config is changed by redeploying)."""
        await self._ready()
        if self.api.pop(stream, None) is None:
            return False
        self.fuser = self._build()
        self.history.pop(stream, None)
        self._checkpoint()
        return True

    def stats(self) -> dict[str, Any]:
        return {"group": self.group, "fused": self.fused, "version": self.version,
                "cameras": sorted(self.fuser.streams), "errors": self.errors}  # fmt: skip


FuserActor = ray.remote(GroupFuserActor)
LOOKUP_S = 2.0  # a group found to have no fuser is looked for again after this (one made by another replica)


def fuser_name(deploy_id: str, group: str) -> str:
    return actor_name(deploy_id, f"group-{group}")


def group_fuser(deploy_id: str, group: str, serving: ServingConfig, store: Any) -> ray.actor.ActorHandle:
    """The group's fuser (get or create): one per group of a deploy, shared by its ingress replicas."""
    settings = serving.groups.courts.get(group, GroupSettings()).model_dump(mode="json")
    return FuserActor.options(  # type: ignore[attr-defined]
        name=fuser_name(deploy_id, group), namespace=serving.namespace, get_if_exists=True,
        lifetime="detached", num_cpus=0, max_restarts=-1, max_concurrency=100, **ON_HEAD,
    ).remote(group, settings, serving, store)  # fmt: skip


@dataclass
class Placer:
    """A group's calibrations as its fuser held them when fetched (``placement`` names them)."""

    placement: str
    fuser: GroupFuser


class GroupFeed:
    """An ingress replica's side of the group fusers: one call out at a time a group, the newest results kept;
    and the placing of its answered results on the court."""

    def __init__(self, deploy_id: str, serving: ServingConfig, store: Any) -> None:
        self.deploy_id, self.serving, self.store = deploy_id, serving, store
        self.cfg = serving.groups
        self.fusers: dict[str, Any] = {}
        self.pending: dict[str, dict[str, collections.deque]] = {}  # group -> stream -> (served, result)
        self.out: dict[str, asyncio.Task] = {}
        self.calls = 0
        self.refused: set[str] = set()  # groups past max_groups (told once in the log)
        self.missing: dict[str, float] = {}  # group -> when it was found to have no fuser
        self.placers: dict[str, Placer] = {}
        self.fetching: dict[str, asyncio.Task] = {}
        self.tried: dict[str, float] = {}  # group -> when its calibrations were last asked for

    def fuser(self, group: str, create: bool = False) -> Any | None:
        """The group's fuser: made for a group of the config's (or with ``create``: a calibration set over the
        API), else the one made already, if any (looked for again every ``LOOKUP_S``). A group whose cameras
        nobody calibrated has none: its frames are matched by time only, and reading it costs no actor."""
        if group in self.fusers:
            return self.fusers[group]
        if group in self.cfg.courts or create:
            if len(self.fusers) >= self.cfg.max_groups:
                self.refused.add(group)
                return None
            self.fusers[group] = group_fuser(self.deploy_id, group, self.serving, self.store)
            self.missing.pop(group, None)
            return self.fusers[group]
        if time.monotonic() - self.missing.get(group, float("-inf")) < LOOKUP_S:
            return None
        try:
            self.fusers[group] = ray.get_actor(fuser_name(self.deploy_id, group), namespace=self.serving.namespace)
        except ValueError:  # none was made
            self.missing[group] = time.monotonic()
            if len(self.missing) > 4 * self.cfg.max_groups:  # bounded, whatever names frames carry
                self.missing.pop(next(iter(self.missing)))
            return None
        return self.fusers[group]

    def add(self, group: str, result: FrameResult) -> None:
        """A served result of one of ``group``'s streams; call from the event loop. Never waits."""
        if self.fuser(group) is None:
            return
        streams = self.pending.setdefault(group, {})
        streams.setdefault(result.stream_id, collections.deque(maxlen=self.cfg.queue_frames)).append(
            (time.time(), result)
        )
        task = self.out.get(group)
        if task is None or task.done():
            self.out[group] = asyncio.get_running_loop().create_task(self._send(group))

    async def _send(self, group: str) -> None:
        while self.pending.get(group):
            batch = [item for q in self.pending.pop(group).values() for item in q]
            self.calls += 1
            with contextlib.suppress(*FAULTS):
                got = await self.fusers[group].push.remote(batch)
                held = self.placers.get(group)
                if held is not None and held.placement != got["placement"]:  # recalibrated: fetched behind the frames
                    self._fetch(group)

    async def place(self, group: str, result: FrameResult) -> None:
        """Each person of ``result`` placed on the court (``court_xy``, ``outside_court``) as the group's fuser
        places them. A stream the group has no calibration of, or whose frame size does not fit its own, is left
        as it is."""
        placer = self.placers.get(group) or await self._first_placer(group)
        if placer is not None and result.stream_id in placer.fuser.streams:
            with contextlib.suppress(CalibrationError):
                placer.fuser.place(result)

    async def _first_placer(self, group: str) -> Placer | None:
        """A group of the config is placed at once with the config's calibrations, then with the fuser's (those set
        over the API over them), fetched behind the frames; a group made over the API has its first frame here wait
        for them (at most ``placement_wait_s``). Later frames never wait: a fuser away is asked now and then."""
        if self.fuser(group) is None:
            return None
        first = group not in self.tried
        if not first and time.monotonic() - self.tried[group] < LOOKUP_S:
            return None
        self.tried[group] = time.monotonic()
        fetch = self._fetch(group)
        if first and group in self.cfg.courts:
            with contextlib.suppress(CalibrationError):
                self.placers.setdefault(group, Placer("", GroupFuser(group, self.cfg.courts[group])))
        elif first:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(fetch), self.cfg.placement_wait_s)
        return self.placers.get(group)

    def _fetch(self, group: str) -> asyncio.Task:
        """The group's calibrations fetched from its fuser (one fetch at a time a group)."""
        task = self.fetching.get(group)
        if task is None or task.done():
            task = self.fetching[group] = asyncio.get_running_loop().create_task(self._fetched(group))
        return task

    async def _fetched(self, group: str) -> None:
        try:
            got = await self.fusers[group].placing.remote()
        except FAULTS:  # the fuser is restarting: its next push or frame asks again
            return
        try:
            fuser = GroupFuser(group, GroupSettings(**got["settings"]))
        except CalibrationError:  # the fuser held them: they were checked there
            log.warning("group %s: its calibrations do not build here", group)
            return
        self.placers[group] = Placer(got["placement"], fuser)
