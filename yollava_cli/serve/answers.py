"""An answer as the OpenAI API shapes it: the completion, its streamed chunks and usage, and the
`stop` strings cut out of the text as it streams."""

import json
import time
import uuid


class Stops:
    """Cuts the streamed text at the first `stop` string; text is ready to send once no stop
    string can still begin inside it."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False
        self.held = max((len(s) - 1 for s in stops), default=0)

    def feed(self, piece: str) -> None:
        if self.hit:
            return
        self.text += piece
        found = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.text = True, self.text[: max(self.sent, min(found))]

    def ready(self, everything: bool = False) -> str:
        """The text not sent yet that is safe to send (`everything`: the answer is over)."""
        end = len(self.text) if everything or self.hit else max(self.sent, len(self.text) - self.held)
        out, self.sent = self.text[self.sent : end], end
        return out


class Shapes:
    """The OpenAI JSON of one request's answer: one id and creation time for all its chunks."""

    def __init__(self, model: str):
        self.model, self.id, self.created = model, f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(self, delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return event(body)

    def usage_chunk(self, result: dict) -> str:
        return event({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                      "choices": [], "usage": usage(result)})

    def completion(self, text: str, result: dict, finish: str) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": usage(result), "yollava": extra_fields(result)}


def event(body: dict | str) -> str:
    """One server-sent event."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"


def usage(result: dict) -> dict:
    prompt = (result.get("context") or {}).get("prompt") or 0
    answer = result["timings"]["tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def finish_reason(result: dict, max_tokens: int, stopped: bool) -> str:
    return "length" if not stopped and result["timings"]["tokens"] >= max_tokens else "stop"


def extra_fields(result: dict) -> dict:
    """What `ask --json` says beside the answer: the concepts, the recognizer's verdicts on the
    photo, the fact quoted and the facts left out (clients that do not know the field ignore it)."""
    return {key: result[key] for key in ("concepts", "verdicts", "quoted_note", "notes_left_out")}
