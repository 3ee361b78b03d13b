"""Reading a Prometheus text exposition back into {(sample name, labels): value} for assertions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Exposition:
    def __init__(self, text: str):
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The one sample with exactly these labels (histogram `le` included when given)."""
        key = (name, frozenset(labels.items()))
        if key not in self.samples:
            present = sorted(dict(k[1]) for k in self.samples if k[0] == name)
            raise AssertionError(f"no sample {name}{labels}; present: {present}")
        return self.samples[key]

    def label_values(self, label: str) -> set[str]:
        return {v for (_, labels) in self.samples for k, v in labels if k == label}


def scrape(served) -> Exposition:
    """GET /metrics from a running test server, checking the exposition's content type."""
    response = served.http.get("/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Exposition(response.text)
