"""Every Prometheus metric, defined once, on a registry owned by the app (no module globals).

Label values come from bounded sets: endpoints are route templates, models are registry ids or
"unknown", reasons and results are fixed words. Nothing from a request's content becomes a label.
"""

from __future__ import annotations

import platform
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics_core import Metric

MIB = 1024 * 1024
LOAD_RESULTS = ("success", "failure", "timeout")
EVICTION_REASONS = ("capacity", "drained", "over_budget", "keep_alive", "admin", "crashed", "hung", "shutdown")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LOAD = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)  # up to the default load timeout
_TOKEN_GAP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# The scheduler's fixed label values.
SWAP_SOURCES = ("disk", "ram")
WAIT_REASONS = ("load", "queue", "drain", "busy")
SWITCH_REASONS = ("idle", "aging")
FIT_RUNGS = ("full", "context", "offload", "compute", "cpu")
_RATIO = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4)  # measured / estimated


class Metrics:
    def __init__(self, version: str = "0.1.0"):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelyard_requests_total", "HTTP requests answered.",
                                ["endpoint", "model", "status"], registry=r)
        self.request_duration = Histogram("modelyard_request_duration_seconds", "Time to the last byte.",
                                          ["endpoint"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram("modelyard_time_to_first_token_seconds", "Request start to first token.",
                              ["model"], buckets=_LATENCY, registry=r)
        self.inter_token = Histogram("modelyard_inter_token_latency_seconds", "Mean gap between tokens.",
                                     ["model"], buckets=_TOKEN_GAP, registry=r)
        self.queue_wait = Histogram("modelyard_queue_wait_seconds", "Time waiting for a model lease.",
                                    ["model"], buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("modelyard_prompt_tokens_total", "Prompt tokens processed.",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("modelyard_generation_tokens_total", "Tokens generated.",
                                         ["model"], registry=r)
        self.running = Gauge("modelyard_num_requests_running", "Requests being served.", registry=r)
        self.waiting = Gauge("modelyard_num_requests_waiting", "Requests waiting for a model.", registry=r)
        # The queue's bound (--max-queue), so an alert can say "80% full" rather than guess a number.
        self.queue_capacity = Gauge("modelyard_queue_capacity", "Requests that may wait before 503.", registry=r)
        self.loads = Counter("modelyard_model_loads_total", "Model loads.", ["model", "result"], registry=r)
        self.load_duration = Histogram("modelyard_model_load_duration_seconds", "Model load time.",
                                       ["model"], buckets=_LOAD, registry=r)
        self.evictions = Counter("modelyard_model_evictions_total", "Models unloaded, by reason.",
                                 ["model", "reason"], registry=r)
        self.resident = Gauge("modelyard_model_resident_bytes", "Accounted memory per resident model.",
                              ["model"], registry=r)
        self.budget = Gauge("modelyard_memory_budget_bytes", "The arbiter's memory budget.", registry=r)
        self.used = Gauge("modelyard_memory_used_bytes", "Memory the arbiter has accounted.", registry=r)
        # The scheduler: swaps, waits by cause, estimates against measurements, the warm tier, the fit ladder.
        self.swap_in = Histogram("modelyard_model_swap_in_seconds", "Time to bring a model onto the device.",
                                 ["model", "source"], buckets=_LOAD, registry=r)
        self.wait_reason = Histogram("modelyard_wait_seconds", "Time a request waited for its lease, by cause: "
                                     "load (its model's load), queue (deferred to another model's work), drain "
                                     "(busy models making room), busy (behind its own model's requests).",
                                     ["model", "reason"], buckets=_LATENCY, registry=r)
        self.estimate_ratio = Histogram("modelyard_memory_estimate_ratio", "Measured / estimated footprint per load.",
                                        ["backend"], buckets=_RATIO, registry=r)
        self.parked_models = Gauge("modelyard_parked_models", "Models parked in the warm tier (off the device).",
                                   registry=r)
        self.parked_bytes = Gauge("modelyard_parked_bytes", "System RAM the warm tier holds.", registry=r)
        self.ram_budget = Gauge("modelyard_ram_budget_bytes", "The warm tier's RAM budget.", registry=r)
        self.fit_rung = Gauge("modelyard_model_fit_rung", "1 for the fit-ladder rung a model loads at.",
                              ["model", "rung"], registry=r)
        self.switches = Counter("modelyard_admission_switches_total", "Loads that took another model's place, "
                                "by why: idle (its work was done) or aging (a waiter reached the bound).",
                                ["reason"], registry=r)
        for reason in SWITCH_REASONS:
            self.switches.labels(reason)
        self.images = Counter("modelyard_images_generated_total", "Images generated.", ["model"], registry=r)
        self.image_duration = Histogram("modelyard_image_generation_duration_seconds", "Image request time.",
                                        ["model"], buckets=_LATENCY, registry=r)
        self.audio_seconds = Counter("modelyard_audio_seconds_transcribed_total", "Seconds of audio transcribed.",
                                     ["model"], registry=r)
        self.transcription_duration = Histogram("modelyard_transcription_duration_seconds",
                                                "Transcription request time.", ["model"], buckets=_LATENCY,
                                                registry=r)
        self.speech_seconds = Counter("modelyard_audio_seconds_synthesised_total", "Seconds of speech synthesised.",
                                      ["model"], registry=r)
        self.speech_duration = Histogram("modelyard_speech_duration_seconds", "Speech request time.", ["model"],
                                         buckets=_LATENCY, registry=r)
        # Info appends "_info": this exports modelyard_build_info{version,python} 1
        self.build = Info("modelyard_build", "Build information.", registry=r)
        self.build.info({"version": version, "python": platform.python_version()})
        self._models: set[str] = set()

    def known_models(self, ids: list[str]) -> None:
        """Fix the model label set, and start each model's event counters at 0.

        A counter series born at 1 has no earlier sample, so increase()/rate() in alerts and
        dashboards would miss a model's first load failure or eviction; born at 0 they see it.
        """
        self._models = set(ids)
        for model in self._models:
            for result in LOAD_RESULTS:
                self.loads.labels(model, result)
            for reason in EVICTION_REASONS:
                self.evictions.labels(model, reason)

    def watch_gateway(self, collector) -> None:
        """Export the inference gateway's view (server/gateway.py), read from the arbiter at scrape time."""
        self.registry.register(collector)

    def model(self, name: str | None) -> str:
        return name if name in self._models else "unknown"

    def request_model(self, name: str | None) -> str:
        """A request's model label: "none" where the endpoint names no model (GET /v1/models)."""
        return "none" if name is None else self.model(name)

    # ---- arbiter events ------------------------------------------------------------------------

    def loaded(self, model: str, result: str, seconds: float) -> None:
        self.loads.labels(self.model(model), result).inc()
        self.load_duration.labels(self.model(model)).observe(seconds)

    def evicted(self, model: str, reason: str) -> None:
        self.evictions.labels(self.model(model), reason).inc()

    def waited(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(self.model(model)).observe(seconds)

    def memory(self, used_mb: float, budget_mb: float, per_model_mb: dict[str, float]) -> None:
        self.used.set(used_mb * MIB)
        self.budget.set(budget_mb * MIB)
        for model in self._models:
            self.resident.labels(model).set(per_model_mb.get(model, 0.0) * MIB)

    def queue(self, waiting: int) -> None:
        self.waiting.set(waiting)

    def swapped_in(self, model: str, source: str, seconds: float) -> None:
        self.swap_in.labels(self.model(model), source).observe(seconds)

    def waited_for(self, model: str, reason: str, seconds: float, swap_s: float = 0.0) -> None:
        self.wait_reason.labels(self.model(model), reason).observe(seconds)

    def estimated(self, backend: str, ratio: float) -> None:
        self.estimate_ratio.labels(backend).observe(ratio)

    def warm(self, parked: int, parked_mb: float) -> None:
        self.parked_models.set(parked)
        self.parked_bytes.set(parked_mb * MIB)

    def placed(self, model: str, rung: str) -> None:
        for name in FIT_RUNGS:
            self.fit_rung.labels(self.model(model), name).set(1 if name == rung else 0)

    def switched(self, reason: str) -> None:
        self.switches.labels(reason).inc()

    def changed(self) -> None: ...  # the event hub's cue (server/events.py); no metric of its own

    # ---- requests ------------------------------------------------------------------------------

    def observe_request(self, endpoint: str, model: str | None, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, self.request_model(model), str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)

    def observe_generation(self, model_id: str, generation) -> None:
        model = self.model(model_id)
        prompt, completion = generation.usage
        self.prompt_tokens.labels(model).inc(prompt)
        self.generation_tokens.labels(model).inc(completion)
        if generation.first_token_at is not None:
            self.ttft.labels(model).observe(generation.first_token_at - generation.started)
            if completion > 1:
                gap = (time.perf_counter() - generation.first_token_at) / (completion - 1)
                self.inter_token.labels(model).observe(gap)

    def observe_images(self, model: str, count: int, seconds: float) -> None:
        self.images.labels(self.model(model)).inc(count)
        self.image_duration.labels(self.model(model)).observe(seconds)

    def observe_transcription(self, model: str, audio_seconds: float, seconds: float) -> None:
        self.audio_seconds.labels(self.model(model)).inc(audio_seconds)
        self.transcription_duration.labels(self.model(model)).observe(seconds)

    def observe_speech(self, model: str, audio_seconds: float, seconds: float) -> None:
        self.speech_seconds.labels(self.model(model)).inc(audio_seconds)
        self.speech_duration.labels(self.model(model)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """The registry minus the `_created` series.

    prometheus_client adds a `*_created` gauge per labelled counter and histogram; they double the
    series count and no dashboard uses them. prometheus_client.disable_created_metrics() would drop
    them too, but it flips a module-global flag for every registry in the process; filtering here
    keeps the choice inside this app's exposition.
    """

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield kept
