"""The one thread that owns the loaded model: it takes requests from a bounded queue and answers
them one at a time through `use.ask.ask`, the same path `yollava ask` takes, so a request gets the
answer bytes `ask` gives. Every model-path state (the concept head's active set, the photo switch,
M-RoPE's offset, the oneDNN switch) is set and restored inside one answer on this thread, and the
sampling seed is the answer's own (decoding forks the RNG), so no request sees another's state.

Why one thread, one answer at a time: torch's own threads already use every core for one answer,
and the shared state above would need to move into each pass's arguments before two answers could
run side by side; decoding several answers in one batch would need a second decoding path beside
`ask`'s."""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from yollava_cli.errors import UserError
from yollava_cli.models.decoding import Sampling
from yollava_cli.models.vlm import VLM
from yollava_cli.serve.chat_request import ApiError, ChatRequest
from yollava_cli.store.concepts import current_checkpoint_file, get_concept
from yollava_cli.store.facts import prompt_notes
from yollava_cli.store.registry import Registry
from yollava_cli.store.states import ConceptStatus
from yollava_cli.use.ask import ask
from yollava_cli.use.find import recognize


@dataclass
class Job:
    request: ChatRequest
    on_text: Callable[[str], None]  # called on the worker thread as the answer streams
    stop: threading.Event = field(default_factory=threading.Event)  # set when the client has gone
    result: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class Busy(Exception):
    """The queue is full: the client is told to come back after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after


class Worker:
    def __init__(self, vlm: VLM, home: Path, depth: int = 16):
        self.vlm, self.home = vlm, home
        self.jobs: queue.Queue[Job | None] = queue.Queue(depth)
        self.loaded: dict[str, str] = {}  # concept name -> the checkpoint file its rows came from
        self.seconds = 1.0  # a recent answer's time, for Retry-After
        self.thread = threading.Thread(target=self.run, name="yollava-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy(max(1, round(self.seconds * self.jobs.qsize()))) from None
        return job

    def close(self) -> None:
        try:
            self.jobs.put(None, timeout=5)
        except queue.Full:
            return  # a daemon thread: it ends with the process
        self.thread.join(timeout=30)

    def run(self) -> None:
        registry = Registry(self.home)  # SQLite connections stay on the thread that opened them
        while (job := self.jobs.get()) is not None:
            if job.stop.is_set() or not job.result.set_running_or_notify_cancel():
                continue  # its client left while it waited
            started = time.perf_counter()
            try:
                job.result.set_result(self.answer(registry, job))
            except Exception as e:  # noqa: BLE001 - the HTTP layer turns it into one error response
                job.result.set_exception(e)
            self.seconds = 0.8 * self.seconds + 0.2 * (time.perf_counter() - started)

    def answer(self, registry: Registry, job: Job) -> dict:
        """`yollava ask`'s steps for this request: its concepts loaded, their facts, the
        recognizer's verdicts on the photo, then the answer."""
        r = job.request
        for name in r.concepts:
            self.load(registry, name)
        options = Sampling(r.max_tokens, r.temperature, r.seed)
        return ask(self.vlm, r.concepts, r.question, r.images, r.keys, options, job.on_text, history=r.history,
                   stop=job.stop, notes=prompt_notes(registry, r.concepts),
                   verdicts=recognize(registry, self.vlm, r.concepts, r.images, r.keys))

    def load(self, registry: Registry, name: str) -> None:
        """The concept's current checkpoint in the model, reloaded when it was retrained (or
        removed and added again) since it was last loaded."""
        try:
            concept = get_concept(registry, name)
        except UserError as e:
            raise ApiError(400, str(e), "messages", "unknown_concept") from None
        file = current_checkpoint_file(registry, concept) if concept.status == ConceptStatus.TRAINED else None
        if file is None:
            raise ApiError(400, f"<{name}> is not trained yet: run `yollava train {name}`", "messages", "concept_not_trained")
        if self.loaded.get(name) == str(file) and name in self.vlm.tokens:
            return
        if name in self.vlm.tokens:
            self.vlm.tokens.remove(name)
        self.vlm.tokens.load(file, name)  # a concept trained on another base model: a UserError
        self.loaded[name] = str(file)
