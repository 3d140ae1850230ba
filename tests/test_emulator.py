"""The emulator's chat completions, through the real `openai` SDK: answers, auth, validation."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from conftest import make_prepared_dir
from emulator_support import MODEL, answer_label, assert_spec, chat_body, data_url, rows_and_labels
from vlm_classify.backends.openai import tokens
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.emulator.oracle import GroundTruth, Oracle


def client(emu: Emulator, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, **kw)


@pytest.fixture
def start(small_prepared: Path):
    """Start emulators over `small_prepared`; every response they sent must match the spec."""
    running: list[Emulator] = []

    def _start(**kw) -> Emulator:
        kw.setdefault("manifests", [small_prepared])
        emu = Emulator(EmulatorConfig(check_responses=True, **kw)).start()
        running.append(emu)
        return emu

    yield _start
    for emu in running:
        emu.stop()
        assert emu.stats.schema_errors == []


def test_accuracy_one_always_right_zero_never(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    right = client(start(accuracy=1.0))
    wrong = client(start(accuracy=0.0))
    for row in rows:
        body = chat_body(small_prepared, row, labels)
        resp = right.chat.completions.create(**body)
        assert answer_label(resp.choices[0].message.content) == row.label
        assert_spec("CreateChatCompletionResponse", resp)
        bad = answer_label(wrong.chat.completions.create(**body).choices[0].message.content)
        assert bad in labels and bad != row.label


def test_answers_are_deterministic_and_marked_emulated(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared)
    c = client(start(accuracy=0.5))
    first = [
        c.chat.completions.create(**chat_body(small_prepared, r, labels)).choices[0].message.content
        for r in rows
    ]
    raw = c.chat.completions.with_raw_response.create(**chat_body(small_prepared, rows[0], labels))
    assert raw.headers["x-emulated"] == "vlm-classify"
    assert raw.headers["x-emulated-image"] == "known"
    resp = raw.parse()
    assert resp.system_fingerprint == "fp_emulated"
    assert resp.model == MODEL
    # A second emulator with the same seed gives the very same answers.
    c2 = client(start(accuracy=0.5))
    again = [
        c2.chat.completions.create(**chat_body(small_prepared, r, labels))
        .choices[0]
        .message.content
        for r in rows
    ]
    assert first == again
    assert 0 < sum(answer_label(a) == r.label for a, r in zip(first, rows, strict=True)) < len(rows)


def test_accuracy_close_to_requested_over_many_images(tmp_path: Path) -> None:
    labels = [
        "Toy Terrier",
        "Yorkshire Terrier",
        "Golden Retriever",
        "Labrador Retriever",
        "Beagle",
    ]
    prepared = make_prepared_dir(tmp_path / "many", labels, {"test": 40}, size=(32, 24))
    rows, labels = rows_and_labels(prepared)
    with Emulator(EmulatorConfig(manifests=[prepared], accuracy=0.7, class_effect=0.0)) as emu:
        c = client(emu)
        bodies = [chat_body(prepared, r, labels) for r in rows]
        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(
                    lambda b: answer_label(
                        c.chat.completions.create(**b).choices[0].message.content
                    ),
                    bodies,
                )
            )
    assert all(a in labels for a in answers)
    accuracy = sum(a == r.label for a, r in zip(answers, rows, strict=True)) / len(rows)
    assert abs(accuracy - 0.7) < 0.08
    # Mistakes go to confusable neighbours: a terrier is mostly mistaken for the other terrier.
    confusions = Counter((r.label, a) for a, r in zip(answers, rows, strict=True) if a != r.label)
    terrier_errors = [(t, a) for (t, a) in confusions.elements() if t == "Toy Terrier"]
    assert terrier_errors
    assert Counter(a for _, a in terrier_errors).most_common(1)[0][0] == "Yorkshire Terrier"


def test_free_text_answers_include_messy_ones(small_prepared: Path) -> None:
    truth = GroundTruth.load([small_prepared])
    oracle = Oracle(truth, invalid_rate=0.5)
    texts = []
    for sha in truth.by_sha:
        d = oracle.decide(sha, "base", 1.0)
        texts.append((d.label, oracle.free_text(d, sha, "base")))
    messy = [t for label, t in texts if t != label]
    assert 0 < len(messy) < len(texts)
    assert oracle.free_text(d, sha, "base") == texts[-1][1]  # deterministic


def test_usage_tokens_and_logprobs(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    c = client(start(accuracy=0.5))
    body = chat_body(small_prepared, rows[0], labels, logprobs=True, top_logprobs=3)
    resp = c.chat.completions.create(**body)
    text_tokens = tokens.count_chat_tokens(body["messages"])
    schema = tokens.schema_tokens(body["response_format"]["json_schema"]["schema"])
    assert schema > 10  # structured output: the schema is billed as prompt tokens too
    assert resp.usage.prompt_tokens == text_tokens + schema + 85  # one image at detail low
    content = resp.choices[0].message.content
    assert resp.usage.completion_tokens == tokens.count_text(content)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    lp = resp.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == content
    confidence = math.exp(sum(t.logprob for t in lp))
    assert 0.2 < confidence < 1.0
    assert all(len(t.top_logprobs) <= 3 for t in lp)
    assert any(len(t.top_logprobs) > 1 for t in lp)
    # detail high costs tiles: a 64x48 image is one tile (85 + 170).
    body_high = chat_body(small_prepared, rows[0], labels)
    body_high["messages"][1]["content"][0]["image_url"]["detail"] = "high"
    high = c.chat.completions.create(**body_high)
    assert high.usage.prompt_tokens == text_tokens + schema + 255


def test_unknown_image_gets_a_label_and_is_flagged(
    start, small_prepared: Path, tmp_path: Path
) -> None:
    from conftest import make_jpeg

    rows, labels = rows_and_labels(small_prepared)
    c = client(start())
    body = chat_body(small_prepared, rows[0], labels)
    body["messages"][1]["content"][0]["image_url"]["url"] = data_url(
        make_jpeg(tmp_path / "x.jpg", seed=999)
    )
    raw = c.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-emulated-image"] == "unknown"
    assert answer_label(raw.parse().choices[0].message.content) in labels


def test_max_tokens_truncates_with_length(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared)
    c = client(start())
    resp = c.chat.completions.create(
        **chat_body(small_prepared, rows[0], labels, max_completion_tokens=2)
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 2


def test_wrong_or_missing_key_is_401(start) -> None:
    emu = start()
    bad = openai.OpenAI(base_url=emu.base_url, api_key="sk-wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.body["code"] == "invalid_api_key"
    assert "sk-wrong-key-123" not in e.value.message
    assert emu.stats.auth_failures == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["messages"][1]["content"][0]["image_url"].update(detail="medium"), "detail"),
        (lambda b: b.pop("messages"), "messages"),
        (lambda b: b.update(temperature="hot"), "temperature"),
        (lambda b: b.update(max_completion_token=5), "max_completion_token"),
    ],
)
def test_invalid_body_is_400_naming_the_field(
    start, small_prepared: Path, change, field: str
) -> None:
    rows, labels = rows_and_labels(small_prepared)
    c = client(start())
    body = chat_body(small_prepared, rows[0], labels)
    change(body)
    with pytest.raises(openai.BadRequestError) as e:
        c.post("/chat/completions", body=body, cast_to=object)
    assert field in e.value.message
    assert e.value.body["type"] == "invalid_request_error"
    assert field in (e.value.body["param"] or "")


def test_bad_json_and_unknown_routes(start) -> None:
    emu = start()
    c = client(emu)
    with pytest.raises(openai.NotFoundError):
        c.get("/nowhere", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("ft:gpt-4o-2024-08-06:nobody::abc")
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(
            model="ft:gpt-4o-2024-08-06:nobody::abc", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.body["code"] == "model_not_found"
    import httpx2

    r = httpx2.post(
        f"{emu.base_url}/chat/completions",
        content=b"{nope",
        headers={"Authorization": f"Bearer {emu.api_key}"},
    )
    assert r.status_code == 400 and "parse the JSON" in r.json()["error"]["message"]
    assert r.headers["x-emulated"] == "vlm-classify"


def test_models_list_and_retrieve(start) -> None:
    c = client(start())
    models = c.models.list()
    assert_spec(
        "ListModelsResponse", {"object": "list", "data": [m.model_dump() for m in models.data]}
    )
    assert MODEL in [m.id for m in models.data]
    assert all(m.owned_by == "vlm-classify-emulator" for m in models.data)
    assert c.models.retrieve(MODEL).id == MODEL


# --- faults -------------------------------------------------------------------------------------


def _one(emu: Emulator | openai.OpenAI, small_prepared: Path, **kw):
    rows, labels = rows_and_labels(small_prepared)
    c = emu if isinstance(emu, openai.OpenAI) else client(emu, **kw)
    return c.chat.completions.create(**chat_body(small_prepared, rows[0], labels))


def test_fault_429_has_retry_headers(start, small_prepared: Path) -> None:
    emu = start(faults={"rate_429": 1.0}, retry_after_ms=150)
    with pytest.raises(openai.RateLimitError) as e:
        _one(emu, small_prepared)
    assert e.value.response.headers["retry-after-ms"] == "150"
    assert e.value.response.headers["retry-after"] == "1"
    assert emu.stats.faults["429"] == 1


def test_fault_500_and_503(start, small_prepared: Path) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        _one(start(faults={"rate_500": 1.0}), small_prepared)
    assert e.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as e:
        _one(start(faults={"rate_503": 1.0}), small_prepared)
    assert e.value.status_code == 503


def test_fault_timeout_and_drop(start, small_prepared: Path) -> None:
    emu = start(faults={"timeout": 1.0}, timeout_hold=5.0)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _one(emu, small_prepared, timeout=0.3)
    assert time.monotonic() - t0 < 2
    emu = start(faults={"drop": 1.0})
    with pytest.raises(openai.APIConnectionError) as e:
        _one(emu, small_prepared)
    assert not isinstance(e.value, openai.APITimeoutError)
    assert emu.stats.faults["drop"] == 1


def test_faults_are_deterministic_and_sdk_retries_through_them(start, small_prepared: Path) -> None:
    rates = {"rate_429": 0.3, "rate_500": 0.1}

    def outcomes(emu: Emulator) -> list[str]:
        out = []
        c = client(emu)
        for _ in range(30):
            try:
                _one(c, small_prepared)
                out.append("ok")
            except openai.APIStatusError as e:
                out.append(str(e.status_code))
        return out

    a, b = outcomes(start(faults=rates)), outcomes(start(faults=rates))
    assert a == b
    assert {"ok", "429", "500"} <= set(a)
    emu = start(faults={"rate_429": 0.3}, retry_after_ms=5)
    c = client(emu, max_retries=8)
    for _ in range(10):
        _one(c, small_prepared)
    assert emu.stats.faults["429"] > 0
    assert emu.stats.answered == 10


# --- latency ------------------------------------------------------------------------------------


def test_latency_profile_replayed_concurrently(start, small_prepared: Path, tmp_path: Path) -> None:
    profile = tmp_path / "lat.csv"
    profile.write_text(
        "model,latency_ms,error\n"
        + "".join(f"base,{1000 + i},\n" for i in range(20))
        + "fine_tuned,400,\n",
        encoding="utf-8",
    )
    emu = start(latency_profile=profile, latency_scale=0.1)
    rows, labels = rows_and_labels(small_prepared)
    c = client(emu)
    body = chat_body(small_prepared, rows[0], labels)
    c.chat.completions.create(**body)  # warm up (spec validators, encoder)

    def timed(_: int) -> float:
        t0 = time.monotonic()
        c.chat.completions.create(**body)
        return time.monotonic() - t0

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        each = list(pool.map(timed, range(16)))
    wall = time.monotonic() - t0
    assert min(each) >= 0.099  # every request slept a sample x 0.1 (>= 100 ms)
    assert wall < 16 * 0.1 / 2  # side by side, not one after another


def test_stop_releases_held_requests(small_prepared: Path) -> None:
    emu = Emulator(
        EmulatorConfig(manifests=[small_prepared], faults={"timeout": 1.0}, timeout_hold=60)
    ).start()
    errors: list[Exception] = []

    def call() -> None:
        try:
            _one(emu, small_prepared, timeout=30)
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    emu.stop()
    t.join(10)
    assert time.monotonic() - t0 < 5
    assert errors and isinstance(errors[0], openai.APIConnectionError)


def test_structured_answers_over_json_object_and_free_text(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    c = client(start(accuracy=1.0, invalid_rate=0.0))
    resp = c.chat.completions.create(**chat_body(small_prepared, rows[0], labels, structured=False))
    assert resp.choices[0].message.content == rows[0].label
    body = chat_body(
        small_prepared, rows[0], labels, structured=False, response_format={"type": "json_object"}
    )
    assert json.loads(c.chat.completions.create(**body).choices[0].message.content) == {
        "label": rows[0].label
    }


def test_fine_tuned_names_minted_by_an_emulator_survive_a_restart(
    start, small_prepared: Path
) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    emu = start(accuracy=0.0, ft_accuracy=1.0)
    c = client(emu)
    name = "ft:gpt-4o-2024-08-06:emulated:dogs:AbCd1234"
    resp = c.chat.completions.create(**chat_body(small_prepared, rows[0], labels, model=name))
    assert answer_label(resp.choices[0].message.content) == rows[0].label
    azure = openai.AzureOpenAI(
        azure_endpoint=emu.azure_endpoint,
        api_key=emu.api_key,
        api_version="2024-10-21",
        max_retries=0,
    )
    deployment = "gpt-4o-2024-08-06.ft-" + "0" * 32 + "-dogs"
    resp = azure.chat.completions.create(
        **chat_body(small_prepared, rows[0], labels, model=deployment)
    )
    assert answer_label(resp.choices[0].message.content) == rows[0].label
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(
            **chat_body(
                small_prepared, rows[0], labels, model="ft:gpt-4o-2024-08-06:other-org::AbCd1234"
            )
        )


def test_top_logprobs_needs_logprobs_and_faults_take_text(start, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    emu = start(faults="500=1")
    assert emu.config.faults.rate_500 == 1.0
    c = client(start())
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(**chat_body(small_prepared, rows[0], labels, top_logprobs=2))
    assert e.value.body["param"] == "top_logprobs"
