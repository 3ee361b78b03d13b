"""A real Prometheus (Debian's package, installed by `make setup`) scrapes a running modelyard with
the shipped scrape config and alert rules; PromQL over its HTTP API sees the known workload, every
rule evaluates cleanly, the load-failure alert fires, and every dashboard query runs."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from conftest import fake, free_port, serve
from exposition import Exposition, scrape
from promql import RULES, dashboard_expressions, metric_names, rule_expressions, with_values

from server.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
HELLO = [{"role": "user", "content": "hello there"}]
CHAT = "/v1/chat/completions"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "the prometheus server is not installed: run `make setup` (apt-get install prometheus)"
    return found


class Prometheus:
    """A throwaway Prometheus: temp config and storage, its own localhost port, stopped afterwards."""

    def __init__(self, workdir: Path, target: str):
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        shutil.copy(RULES, workdir / "rules.yml")  # the shipped file resolves its rules next to itself
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [prometheus_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        self._wait(lambda: self.http.get("/-/ready").status_code == 200, "Prometheus did not become ready")

    def _wait(self, predicate, message: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                value = predicate()
                if value:
                    return value
            time.sleep(0.2)
        raise AssertionError(message)

    def api(self, path: str, **params) -> dict:
        body = self.http.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr} -> {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, expected: float, timeout: float = 30.0) -> None:
        def matches():
            result = self.query(expr)
            return len(result) == 1 and float(result[0]["value"][1]) == expected
        self._wait(matches, f"{expr} never read {expected}", timeout)

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """modelyard scraped by Prometheus; after the first scrape: 3 chats of 4 tokens to "a", one to a
    model the registry lacks, one to a model whose load fails. Yields (server, prometheus, /metrics)."""
    models = [fake("a", memory_mb=300), fake("broken", memory_mb=100, fail_load="weights unreadable")]
    with serve(tmp_path_factory.mktemp("served"), models, budget_mb=1000) as s:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), s.base_url.removeprefix("http://"))
        try:
            prometheus.wait_for('up{job="modelyard"}', 1)
            prometheus.wait_for('modelyard_model_loads_total{model="broken", result="failure"}', 0)
            client = s.client()
            for _ in range(3):
                client.chat.completions.create(model="a", messages=HELLO, max_tokens=4)
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="not-in-the-registry", messages=HELLO, max_tokens=4)
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="broken", messages=HELLO, max_tokens=4)
            prometheus.wait_for(f'modelyard_requests_total{{endpoint="{CHAT}", model="a", status="200"}}', 3)
            prometheus.wait_for(f'modelyard_requests_total{{endpoint="{CHAT}", model="broken", status="500"}}', 1)
            yield s, prometheus, scrape(s)
        finally:
            prometheus.stop()


def test_prometheus_sees_the_workload(stack):
    _, prometheus, _ = stack
    assert prometheus.value('sum(modelyard_generation_tokens_total{model="a"})') == 12
    assert prometheus.value('modelyard_prompt_tokens_total{model="a"}') == 15
    assert prometheus.value(f'modelyard_requests_total{{endpoint="{CHAT}", model="unknown", status="404"}}') == 1
    assert prometheus.value('modelyard_model_loads_total{model="a", result="success"}') == 1
    assert prometheus.value('modelyard_model_loads_total{model="broken", result="failure"}') == 1
    assert prometheus.value('modelyard_time_to_first_token_seconds_count{model="a"}') == 3
    ttft = prometheus.value('histogram_quantile(0.5, sum by (le) (modelyard_time_to_first_token_seconds_bucket{model="a"}))')
    assert 0 < ttft < 5 and math.isfinite(ttft)
    assert not prometheus.query('modelyard_requests_total{model="not-in-the-registry"}')


def test_prometheus_memory_series_match_the_arbiter(stack):
    s, prometheus, _ = stack
    snapshot = s.ps()
    assert prometheus.value("modelyard_memory_budget_bytes") == 1000 * MIB
    assert prometheus.value("modelyard_memory_used_bytes") == pytest.approx(snapshot["used_mb"] * MIB, rel=1e-3)
    assert prometheus.value("count(modelyard_model_resident_bytes > 0)") == len(snapshot["residents"]) == 1
    assert prometheus.value('modelyard_model_resident_bytes{model="a"}') >= 300 * MIB


def test_every_alert_rule_evaluates_without_error(stack):
    _, prometheus, _ = stack

    def evaluated():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r["lastEvaluation"] > "2000" for r in rules) else None

    rules = prometheus._wait(evaluated, "rules were never evaluated")
    assert len(rules) == len(rule_expressions())
    assert {r["health"] for r in rules} == {"ok"}, [(r["name"], r.get("lastError")) for r in rules]


def test_a_failed_load_fires_its_alert_and_nothing_else_fires(stack):
    _, prometheus, _ = stack

    def firing():
        alerts = prometheus.api("alerts")["alerts"]
        return alerts if any(a["state"] == "firing" for a in alerts) else None

    alerts = prometheus._wait(firing, "no alert fired after a failed load")
    assert [(a["labels"]["alertname"], a["labels"].get("model"), a["state"]) for a in alerts] == [
        ("ModelyardModelLoadFailing", "broken", "firing")]


def test_every_dashboard_query_runs_on_prometheus(stack):
    _, prometheus, _ = stack
    for expr in dashboard_expressions():
        prometheus.query(with_values(expr))  # a syntax or type error is a 400, which api() refuses


def test_every_metric_the_dashboard_and_alerts_query_is_exported(stack):
    _, _, live = stack
    media = Metrics()  # the image and audio families, fed by routes this workload does not call
    media.known_models(["m"])
    media.observe_images("m", 1, 1.0)
    media.observe_transcription("m", 3.0, 1.0)
    exported = live.names | Exposition(media.render().decode()).names | {"up"}  # `up` is Prometheus' own
    queried = {name for expr in dashboard_expressions() + rule_expressions() for name in metric_names(expr)}
    assert queried - exported == set()
    for family in ("modelyard_images_generated_total", "modelyard_image_generation_duration_seconds_bucket",
                   "modelyard_audio_seconds_transcribed_total", "modelyard_transcription_duration_seconds_bucket",
                   "modelyard_time_to_first_token_seconds_bucket", "modelyard_model_evictions_total",
                   "modelyard_memory_budget_bytes", "modelyard_num_requests_waiting",
                   "modelyard_model_swap_in_seconds_bucket", "modelyard_wait_seconds_bucket",
                   "modelyard_memory_estimate_ratio_bucket", "modelyard_parked_bytes", "modelyard_parked_models",
                   "modelyard_model_fit_rung", "modelyard_admission_switches_total"):
        assert family in queried, f"the dashboard shows nothing from {family}"


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{model=~"x|y"}[5m])))'
            ' / on (instance) group_left b_total offset 5m > bool 1e3 or vector(0) and c:rate5m')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:rate5m"}
