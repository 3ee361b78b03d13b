"""The app's services, created once in the lifespan and reached from a request by `services_of`."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from backends.plan import Device
from server.arbiter import Arbiter
from server.audio import ScratchDir
from server.events import EventHub
from server.image_input import ImagePolicy
from server.imagestore import ImageStore
from server.inflight import InFlight
from server.memory import MemoryProbe
from server.metrics import Metrics
from server.registry import Registry
from server.response_store import ResponseStore
from server.settings import Settings


@dataclass
class Services:
    settings: Settings
    registry: Registry
    arbiter: Arbiter
    metrics: Metrics
    probe: MemoryProbe
    device: Device
    images: ImageStore  # generated images served by URL
    audio_scratch: ScratchDir  # decoded uploads on their way to a worker
    responses: ResponseStore  # /v1/responses kept with store: true
    started_at: int
    events: EventHub  # the arbiter's events as streams (/admin/events)
    in_flight: InFlight = field(default_factory=InFlight)  # generations a shutdown must end
    image_policy: ImagePolicy = field(default_factory=ImagePolicy)  # images in chat requests (set from settings)


def services_of(request: Request) -> Services:
    return request.app.state.services
