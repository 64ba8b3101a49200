"""The HTTP API with FastAPI's test client: every endpoint, every refusal, the batch pipeline's numbers."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient

from mammoclip.errors import ConfigError
from mammoclip.serve import ServeConfig, create_app
from mammoclip.serve.batcher import MicroBatcher
from tests.serve.conftest import Served, config

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def client(served: Served, engine):  # noqa: ANN001, ANN201
    with TestClient(create_app(config(served), engine)) as c:
        yield c


def _post(c: TestClient, path: str, body: bytes, ctype: str = "application/dicom", **kw):  # noqa: ANN202
    return c.post(path, content=body, headers={"content-type": ctype, **kw.pop("headers", {})}, **kw)


def _png_array(b64: str) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def test_health_info_and_schema(client: TestClient, engine) -> None:  # noqa: ANN001
    assert client.get("/healthz").json() == {"status": "ok", "auth": False}
    info = client.get("/v1/info").json()
    assert info["input_size"] == [128, 80] and info["embed_dim"] == engine.model.embed_dim
    assert info["loaded"] == {"zeroshot": True, "embed": True, "explain": True, "detect": True}
    assert info["explain"]["attributes"] == ["mass", "calcification"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/zeroshot", "/v1/embed", "/v1/explain", "/v1/detect", "/v1/info", "/healthz"} <= set(schema["paths"])
    assert "application/dicom" in schema["paths"]["/v1/zeroshot"]["post"]["requestBody"]["content"]


def test_zeroshot_equals_the_library(client: TestClient, engine, served: Served) -> None:  # noqa: ANN001
    from mammoclip.evaluate.tasks import get_task
    from mammoclip.evaluate.zeroshot import class_embeddings, load_prompts

    dcm = served.dicoms[0]
    r = _post(client, "/v1/zeroshot?task=mass,density&prompts=paper&return_image=true", dcm.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert [t["task"] for t in body["tasks"]] == ["mass", "density"]
    tensor, record = engine.prep(dcm, return_record=True)  # the one-image batch pipeline
    with torch.no_grad():
        emb = engine.model.encode_image(tensor, normalize=True)[0]
    for task in body["tasks"]:
        table = load_prompts(get_task(task["task"]), "paper")
        want = (emb @ class_embeddings(engine.model, table).T).softmax(-1).numpy()
        got = np.array([c["probability"] for c in task["classes"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert [c["prompts"] for c in task["classes"]] == list(table.values())
        assert sum(got) == pytest.approx(1.0, abs=1e-6)
    image = body["image"]
    assert image["kind"] == "dicom" and image["processed_size"] == [128, 80]
    assert image["original_size"] == [320, 192] and image["transform"] == record.to_dict()
    assert _png_array(image["processed_png"]).shape == (128, 80)


def test_custom_labels_and_bad_names(client: TestClient, served: Served) -> None:
    data = served.dicoms[0].read_bytes()
    body = _post(client, "/v1/zeroshot?labels=fatty breast,dense breast,implant", data).json()
    assert [t["task"] for t in body["tasks"]] == ["custom"]
    assert [c["prompts"] for c in body["tasks"][0]["classes"]] == [["fatty breast"], ["dense breast"], ["implant"]]
    r = _post(client, "/v1/zeroshot?task=massss", data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_TASK" and "known" in r.text.lower()
    r = _post(client, "/v1/zeroshot?task=mass&prompts=poetry", data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_PROMPT_STYLE"
    r = _post(client, "/v1/zeroshot?labels=only-one", data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_LABELS"
    r = _post(client, "/v1/explain?attribute=mass,spiculation", data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "UNKNOWN_ATTRIBUTE"


def test_served_embedding_equals_mammoclip_embed(client: TestClient, engine, served: Served, tmp_path: Path) -> None:  # noqa: ANN001
    """The DICOM preprocessed by `mammoclip preprocess` and embedded by `mammoclip embed` (mammoclip.embed)
    gives the embedding the server returns for the same DICOM uploaded as is."""
    import pandas as pd

    from mammoclip.data.manifest import load_bundle
    from mammoclip.data.preprocess import PreprocessOptions, preprocess
    from mammoclip.embed import export_embeddings

    res = preprocess(served.manifest, tmp_path / "png", PreprocessOptions(size=(128, 80)), workers=1, progress=False)
    out = export_embeddings(engine.model, load_bundle(res.manifest), tmp_path / "emb.parquet", texts=False)
    table = pd.read_parquet(out)
    dicoms = load_bundle(served.manifest).images
    for image_id, rel in zip(dicoms["image_id"].astype(str), dicoms["path"]):
        dcm = served.manifest.parent / rel
        got = _post(client, "/v1/embed", dcm.read_bytes()).json()["image"]["embedding"]
        want = np.stack(table.loc[table["image_id"] == image_id, "embedding"].to_numpy())[0]
        np.testing.assert_allclose(np.array(got), want, atol=1e-5)


def test_text_embeddings_equal_embed_text(client: TestClient, engine) -> None:  # noqa: ANN001
    from mammoclip.embed import embed_text

    texts = ["a spiculated mass in the upper outer quadrant", "no suspicious calcification"]
    body = client.post("/v1/embed", json={"texts": texts}).json()
    for item, text in zip(body["texts"], texts):
        np.testing.assert_allclose(item["embedding"], embed_text(engine.model, text), atol=1e-5)
    multi = client.post("/v1/embed", files=[("text", (None, t)) for t in texts]).json()  # multipart, no file
    np.testing.assert_allclose(multi["texts"][1]["embedding"], body["texts"][1]["embedding"], atol=1e-6)
    r = client.post("/v1/embed", json={"texts": []})  # was a 500 (torch.cat of nothing), found by hypothesis
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_TEXT"
    r = client.post("/v1/embed", json={"texts": "not a list"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_TEXT"
    r = client.post("/v1/embed", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "BAD_JSON"


def test_multipart_png_upload(client: TestClient, served: Served) -> None:
    import cv2

    pixels = pydicom.dcmread(served.dicoms[0]).pixel_array
    ok, png = cv2.imencode(".png", pixels.astype(np.uint16))
    r = client.post("/v1/zeroshot?task=mass", files={"file": ("scan.png", png.tobytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["kind"] == "png" and r.json()["image"]["original_size"] == list(pixels.shape)


def test_explain_and_detect_map_to_original_pixels(client: TestClient, engine, served: Served) -> None:  # noqa: ANN001
    from mammoclip.imaging.breast import TransformRecord

    data = served.dicoms[1].read_bytes()
    body = _post(client, "/v1/explain?original=true", data).json()
    record = TransformRecord.from_row(body["image"]["transform"])
    assert [a["attribute"] for a in body["attributes"]] == ["mass", "calcification"]
    for item in body["attributes"]:
        heat = _png_array(item["heatmap_png"])
        assert heat.shape == (128, 80) and heat.max() == 255  # min-max normalised per map
        assert _png_array(item["heatmap_original_png"]).shape == (320, 192)
        assert item["regions"], "a non-flat heatmap has at least one region"
        for region in item["regions"]:
            mapped = record.map_boxes(np.array([region["box"]["processed"]]), inverse=True)[0]
            np.testing.assert_allclose(region["box"]["original"], mapped, atol=0.01)
    one = _post(client, "/v1/explain?attribute=calcification", data).json()
    assert [a["attribute"] for a in one["attributes"]] == ["calcification"]
    assert one["attributes"][0]["score"] == pytest.approx(body["attributes"][1]["score"], abs=1e-5)

    det = _post(client, "/v1/detect", data).json()
    assert det["boxes"], "score_thresh 0 keeps the top detections"
    for box in det["boxes"]:
        assert box["class"] == "mass" and 0.0 <= box["score"] <= 1.0
        mapped = record.map_boxes(np.array([box["box"]["processed"]]), inverse=True)[0]
        np.testing.assert_allclose(box["box"]["original"], mapped, atol=0.01)


def test_not_loaded_features_answer_501(served: Served, engine) -> None:  # noqa: ANN001
    from mammoclip.serve.engine import Engine

    bare = Engine.__new__(Engine)
    bare.__dict__.update({**engine.__dict__, "mapper": None, "detector": None, "det_prep": None})
    with TestClient(create_app(config(served, factor=None, detector=None), bare)) as c:
        for path in ("/v1/explain", "/v1/detect"):
            r = _post(c, path, served.dicoms[0].read_bytes())
            assert r.status_code == 501 and r.json()["error"]["code"] == "NOT_LOADED", path
        assert c.get("/v1/info").json()["loaded"]["explain"] is False


def _huge_dicom(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.Rows, ds.Columns = 60000, 60000  # 3.6 GP declared: must be refused on the header
    ds.save_as(dst)
    return dst


@pytest.mark.parametrize("case", ["wrong-type", "not-an-image", "empty", "truncated-dicom", "huge-declared",
                                  "two-files"])
def test_bad_uploads_are_refused_with_a_code(client: TestClient, served: Served, tmp_path: Path, case: str) -> None:
    data = served.dicoms[0].read_bytes()
    expected = {"wrong-type": (415, "UNSUPPORTED_MEDIA"), "not-an-image": (422, "UNSUPPORTED_MEDIA"),
                "empty": (422, "UNSUPPORTED_MEDIA"), "truncated-dicom": (422, "DECODE_ERROR"),
                "huge-declared": (413, "TOO_LARGE"), "two-files": (422, "UNSUPPORTED_MEDIA")}[case]
    if case == "wrong-type":
        r = _post(client, "/v1/zeroshot", data, "text/plain")
    elif case == "not-an-image":
        r = _post(client, "/v1/zeroshot", b"%PDF-1.4 " * 50, "application/octet-stream")
    elif case == "empty":
        r = _post(client, "/v1/embed", b"")
    elif case == "truncated-dicom":
        r = _post(client, "/v1/zeroshot", data[: len(data) // 2])  # header whole, pixel data cut
    elif case == "huge-declared":
        r = _post(client, "/v1/zeroshot", _huge_dicom(served.dicoms[0], tmp_path / "huge.dcm").read_bytes())
    else:
        r = client.post("/v1/zeroshot", files=[("file", ("a.dcm", data, "application/dicom")),
                                                ("file", ("b.dcm", data, "application/dicom"))])
    assert (r.status_code, r.json()["error"]["code"]) == expected, r.text
    assert "/tmp" not in r.json()["error"]["message"]  # the private folder is never named


def test_upload_and_pixel_limits(served: Served, engine) -> None:  # noqa: ANN001
    import cv2

    data = served.dicoms[0].read_bytes()
    with TestClient(create_app(config(served, max_upload_bytes=4096, max_pixels=10_000), engine)) as c:
        r = _post(c, "/v1/zeroshot", data)
        assert r.status_code == 413 and r.json()["error"]["code"] == "UPLOAD_TOO_LARGE"
        ok, png = cv2.imencode(".png", np.zeros((200, 100), np.uint8))  # 20 000 px > 10 000, small file
        r = _post(c, "/v1/zeroshot", png.tobytes(), "image/png")
        assert r.status_code == 413 and r.json()["error"]["code"] == "TOO_LARGE"
    with TestClient(create_app(config(served, max_pixels=320 * 192 - 1), engine)) as c:
        r = _post(c, "/v1/zeroshot", data)  # the DICOM's declared 320x192 is one pixel over
        assert r.status_code == 413 and r.json()["error"]["code"] == "TOO_LARGE"


def test_token_is_required_when_set(served: Served, engine) -> None:  # noqa: ANN001
    with TestClient(create_app(config(served, token=TOKEN), engine)) as c:
        assert c.get("/healthz").json()["auth"] is True
        assert c.get("/").status_code == 200  # the page holds no data
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.get("/v1/info", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.get("/metrics", headers=headers).status_code == 401
        r = _post(c, "/v1/zeroshot?task=mass", served.dicoms[0].read_bytes(), headers={"Authorization": "x"})
        assert r.status_code == 401
        assert c.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_config_refuses_an_exposed_bind_without_token(served: Served) -> None:
    with pytest.raises(ConfigError, match="refusing to bind"):
        ServeConfig(checkpoint=str(served.ckpt), host="0.0.0.0")
    with pytest.raises(ConfigError, match="at least 16"):
        ServeConfig(checkpoint=str(served.ckpt), host="0.0.0.0", token="short")
    assert ServeConfig(checkpoint=str(served.ckpt), host="0.0.0.0", token=TOKEN).host == "0.0.0.0"
    assert ServeConfig(checkpoint="x", host="::1").token is None  # loopback needs none
    for bad in ({"max_concurrency": 0}, {"timeout_s": 0.0}, {"batch_max_wait_ms": -1.0}, {"port": 70000}):
        with pytest.raises(ConfigError):
            ServeConfig(checkpoint="x", **bad)  # type: ignore[arg-type]


def test_cli_refuses_before_loading_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammoclip.cli.main import main

    assert main(["serve", "--checkpoint", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_saturation_answers_503_with_retry_after(client: TestClient, served: Served) -> None:
    slots = client.app.state.server.slots
    held = 0
    while slots.try_acquire():
        held += 1
    try:
        r = _post(client, "/v1/zeroshot", served.dicoms[0].read_bytes())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "SATURATED"
        assert client.post("/v1/embed", json={"texts": ["x"]}).status_code == 503
    finally:
        for _ in range(held):
            slots.release()
    assert held == 16 and _post(client, "/v1/zeroshot?task=mass", served.dicoms[0].read_bytes()).status_code == 200


def test_timeout_answers_504_and_the_server_recovers(served: Served, engine) -> None:  # noqa: ANN001
    app = create_app(config(served, timeout_s=0.3), engine)
    server = app.state.server
    real = engine.embed_images_sync

    def slow(batch: torch.Tensor) -> torch.Tensor:
        time.sleep(1.0)
        return real(batch)

    with TestClient(app) as c:
        server.batcher.forward = slow
        r = _post(c, "/v1/embed", served.dicoms[0].read_bytes())
        assert r.status_code == 504 and r.json()["error"]["code"] == "TIMEOUT"
        server.batcher.forward = real
        time.sleep(0.8)  # the abandoned forward pass finishes on the model thread
        assert _post(c, "/v1/embed", served.dicoms[0].read_bytes()).status_code == 200
        assert server.slots.used == 0


def test_burst_of_malformed_uploads_leaves_the_server_correct(client: TestClient, served: Served) -> None:
    data = served.dicoms[2].read_bytes()
    before = _post(client, "/v1/embed", data).json()["image"]["embedding"]
    rng = np.random.default_rng(0)
    bad = [data[: int(n)] for n in rng.integers(1, len(data) - 1, 10)]
    bad += [bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b"DICM" * 40]
    flipped = bytearray(data)
    flipped[132:400] = bytes(rng.integers(0, 256, 268, dtype=np.uint8))  # scrambled header after the magic
    bad.append(bytes(flipped))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda b: _post(client, "/v1/embed", b).status_code, bad))
    assert all(400 <= s < 500 for s in statuses), statuses
    after = _post(client, "/v1/embed", data).json()["image"]["embedding"]
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert client.app.state.server.slots.used == 0


def test_no_phi_in_logs_or_responses_unless_asked(served: Served, engine, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    dcm = served.dicoms[3]
    ds = pydicom.dcmread(dcm)
    phi = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), str(ds.StudyInstanceUID),
           str(ds.SOPInstanceUID), str(ds.AccessionNumber)]
    assert all(len(v) >= 4 for v in phi)
    name = f"{str(ds.PatientName).replace('^', '_')}.dcm"  # a file name that names the patient
    with caplog.at_level(logging.INFO, logger="mammoclip.serve.access"):
        with TestClient(create_app(config(served), engine)) as c:
            bodies = [c.post(p, files={"file": (name, dcm.read_bytes(), "application/dicom")}).text
                      for p in ("/v1/zeroshot", "/v1/embed", "/v1/explain", "/v1/detect")]
            bodies.append(_post(c, "/v1/zeroshot", dcm.read_bytes()[:600]).text)  # an error message too
            metrics = c.get("/metrics").text
        logged = [r.getMessage() for r in caplog.records if r.name == "mammoclip.serve.access"]
    assert len(logged) == 6 and all(json.loads(line)["route"].startswith("/") for line in logged)
    for text in [*bodies, *logged, metrics]:
        for value in phi:
            assert value not in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mammoclip.serve.access"):
        with TestClient(create_app(config(served, log_phi=True), engine)) as c:
            body = _post(c, "/v1/embed", dcm.read_bytes()).json()
        logged = [r.getMessage() for r in caplog.records if r.name == "mammoclip.serve.access"]
    assert body["dicom"]["patient_id"] == str(ds.PatientID)
    assert json.loads(logged[-1])["phi"]["sop_uid"] == str(ds.SOPInstanceUID)


def test_access_log_and_metrics(client: TestClient, served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mammoclip.serve.access"):
        _post(client, "/v1/zeroshot?task=mass", served.dicoms[0].read_bytes())
        _post(client, "/v1/zeroshot", b"junk", "text/plain")
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mammoclip.serve.access"]
    assert [(r["route"], r["status"], r["code"]) for r in records[-2:]] == [
        ("/v1/zeroshot", 200, None), ("/v1/zeroshot", 415, "UNSUPPORTED_MEDIA")]
    assert records[-2]["bytes_in"] == served.dicoms[0].stat().st_size and records[-2]["ms"] > 0
    text = client.get("/metrics").text
    server = client.app.state.server
    ok = server.metrics.count("/v1/zeroshot", 200)
    assert f'mammoclip_requests_total{{endpoint="/v1/zeroshot",method="POST",status="200"}} {ok}' in text
    assert 'mammoclip_request_duration_seconds_bucket{endpoint="/v1/zeroshot",le="+Inf"}' in text
    assert "mammoclip_queue_depth 0" in text and "# TYPE mammoclip_batch_size histogram" in text


def test_private_folders_are_removed(client: TestClient, served: Served, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*a: object, **k: object) -> str:
        folder = real_mkdtemp(*a, **k)  # type: ignore[arg-type]
        seen.append((folder, Path(folder).stat().st_mode & 0o777))
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    _post(client, "/v1/zeroshot?task=mass", served.dicoms[0].read_bytes())
    _post(client, "/v1/zeroshot", served.dicoms[0].read_bytes()[:500])
    assert len(seen) == 2 and all(mode == 0o700 for _, mode in seen)
    assert list(tmp_path.iterdir()) == []


def test_micro_batcher_groups_requests_and_skips_cancelled() -> None:
    calls: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return batch.flatten(1).sum(1, keepdim=True)  # (B, 1)

    async def scenario() -> list[float]:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(forward, pool, max_size=4, max_wait_ms=200.0)
            batcher.start()
            tasks = [asyncio.ensure_future(batcher.submit(torch.full((1, 1, 2, 2), float(i)))) for i in range(6)]
            await asyncio.sleep(0)
            tasks[5].cancel()
            done = await asyncio.gather(*tasks[:5])
            await batcher.close()
            with pytest.raises(RuntimeError, match="not running"):
                await batcher.submit(torch.zeros(1, 1, 2, 2))
            return [float(t[0]) for t in done]

    assert asyncio.run(scenario()) == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert calls == [4, 1]  # four together, then the fifth (the cancelled sixth is never computed)


def test_batched_and_unbatched_answers_agree(served: Served, engine) -> None:  # noqa: ANN001
    data = [d.read_bytes() for d in served.dicoms]
    results = {}
    for size in (1, 8):
        # A long wait for the batched app: the four requests preprocess in parallel threads, and on a loaded
        # 2-core machine they can reach the queue far apart; 2 s makes sharing a pass near certain.
        wait_ms = 2000.0 if size > 1 else 50.0
        with TestClient(create_app(config(served, batch_max_size=size, batch_max_wait_ms=wait_ms), engine)) as c:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results[size] = list(pool.map(lambda b: _post(c, "/v1/embed", b).json()["image"]["embedding"], data))
            text = c.get("/metrics").text
            if size == 8:
                assert "mammoclip_batch_size_bucket{le=\"1\"} 4" not in text  # some requests shared a pass
    np.testing.assert_allclose(np.array(results[8]), np.array(results[1]), atol=1e-5)


def test_page_and_assets_are_packaged(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "app.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 500
        assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "")  # no CDN
    assert "https://" not in page.text
