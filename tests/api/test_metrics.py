from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_move_with_traffic(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/embed", json={"inputs": ["one two three", "four"]})
    client.post("/embed", json={"inputs": 5})
    client.get("/no/such/path")
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain; version=")
    text = after.text

    def delta(name: str, **labels: str) -> float:
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert delta("embed_requests_total", route="/embed", status="200") == 1
    assert delta("embed_requests_total", route="/embed", status="422") == 1
    assert delta("embed_requests_total", route="unmatched", status="404") == 1
    assert delta("embed_inputs_total", model="all-MiniLM-L6-v2") == 2
    assert delta("embed_tokens_total", model="all-MiniLM-L6-v2") == 5 + 3
    assert delta("embed_request_duration_seconds_count", route="/embed") == 2
    assert delta("embed_inference_duration_seconds_count", model="all-MiniLM-L6-v2") == 1
    assert delta("embed_batch_size_sum", model="all-MiniLM-L6-v2") == 2
    assert delta("embed_queue_wait_seconds_count", model="all-MiniLM-L6-v2") == 1
    real = delta("embed_batch_tokens_sum", model="all-MiniLM-L6-v2", kind="real")
    padded = delta("embed_batch_tokens_sum", model="all-MiniLM-L6-v2", kind="padded")
    assert (real, padded) == (5 + 3, 2 * 5)  # two rows padded to the longer one
    assert "embed_queue_depth" in text
    assert sample(text, "process_resident_memory_bytes") > 10e6
    assert "embed_requests_created" not in text
