"""Property-based: whatever query parameters a client sends, the answer is a 200 in the documented shape or a
JSON error with a code, never a 500 (hypothesis over the zero-shot and embed parameters)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mammoclip.serve import create_app
from tests.serve.conftest import Served, config

NAMES = st.one_of(st.sampled_from(["mass", "density", "birads", "calc", "malignancy", "mass,density", ""]),
                  st.text(max_size=12))
FLAGS = st.sampled_from(["true", "false", "1", "0", "yes", "maybe", ""])


@pytest.fixture(scope="module")
def client(served: Served, engine):  # noqa: ANN001, ANN201
    with TestClient(create_app(config(served), engine)) as c:
        yield c


def _check(r, ok_keys: set[str]) -> None:  # noqa: ANN001
    assert r.status_code != 500, r.text
    body = r.json()
    if r.status_code == 200:
        assert ok_keys <= set(body)
    else:
        assert 400 <= r.status_code < 500 and body["error"]["code"] and body["error"]["message"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.lists(NAMES, max_size=3), prompts=st.one_of(st.sampled_from(["paper", "ensemble"]), st.text(max_size=8)),
       labels=st.lists(st.text(max_size=10), max_size=4), flag=FLAGS)
def test_zeroshot_params(client: TestClient, served: Served, task: list[str], prompts: str, labels: list[str],
                         flag: str) -> None:
    params = [("task", t) for t in task] + [("labels", x) for x in labels] + [("prompts", prompts),
                                                                            ("use_logit_scale", flag)]
    r = client.post("/v1/zeroshot", params=params, content=served.dicoms[0].read_bytes(),
                    headers={"content-type": "application/dicom"})
    _check(r, {"tasks", "image", "prompt_style"})
    if r.status_code == 200:
        for item in r.json()["tasks"]:
            assert abs(sum(c["probability"] for c in item["classes"]) - 1.0) < 1e-6
            assert item["prediction"] in [c["name"] for c in item["classes"]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.one_of(st.lists(st.text(max_size=40), max_size=5), st.text(max_size=10), st.integers(), st.none()),
       processed=FLAGS)
def test_embed_params(client: TestClient, texts: object, processed: str) -> None:
    r = client.post(f"/v1/embed?processed={processed}", json={"texts": texts})
    _check(r, {"texts", "embed_dim"})
    if r.status_code == 200:
        assert all(len(t["embedding"]) == r.json()["embed_dim"] for t in r.json()["texts"])
