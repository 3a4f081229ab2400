"""An OpenAI chat-completions request read into what `use.ask.ask` takes: the concepts, the
question, the earlier turns, the photos and the generation options; anything it cannot answer is an
ApiError with OpenAI's error type, status and the parameter at fault."""

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from yollava_cli.learning.train_config import RANGES
from yollava_cli.store.concepts import mentioned_concepts
from yollava_cli.store.photos import STORE_MAX_SIDE, BadPhoto, decode, read_photo

MAX_TOKENS = 4096  # `ask --max-tokens`' own cap
MAX_IMAGES = 4
MAX_STOPS = 4  # OpenAI's own limit
DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)


class ApiError(Exception):
    """A request refused, in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}
        self.detail = message  # what the log says (a server failure's own message, kept from the client)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str
    concepts: list[str]  # the model's concept (if it is one), then every <name> the conversation writes
    question: str
    history: list[tuple[str, str]]
    images: list[Image.Image]
    keys: list[str]
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


@dataclass
class Limits:
    image_bytes: int = 20 * 2**20
    local_images: bool = False  # image_url parts may name a file on the server's disk


def read_request(body: object, base: str, limits: Limits) -> ChatRequest:
    """The request `body` (parsed JSON) for a server whose base model is called `base`; the model
    named is checked against the registry by the caller."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required: the base model or a concept (GET /v1/models lists them)", "model")
    turns, images, keys = read_messages(body.get("messages"), limits)
    question, history = turns[-1][1], pair_turns(turns[:-1])
    written = " ".join(text for _, text in turns)
    named = [] if model == base else [model]
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    options = body.get("stream_options") or {}
    return ChatRequest(model, mentioned_concepts(written, named), question, history, images, keys,
                       max_tokens=number(body, ("max_completion_tokens", "max_tokens"), int, 1, MAX_TOKENS, 256),
                       temperature=number(body, ("temperature",), float, 0.0, 2.0, 0.0),
                       seed=number(body, ("seed",), int, *RANGES["seed"], 0),
                       stop=read_stop(body.get("stop")), stream=body.get("stream") is True,
                       include_usage=isinstance(options, dict) and options.get("include_usage") is True)


def number(body: dict, names: tuple[str, ...], kind: type, low, high, default):
    """The first of `names` the body sets (null counts as unset), checked to lie in [low, high]."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ApiError(400, f"`{name}` must be {'an integer' if kind is int else 'a number'}", name)
        if not low <= value <= high:
            raise ApiError(400, f"`{name}` must be between {low} and {high}", name)
        return kind(value)
    return default


def read_stop(stop: object) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"`stop` must be a string or a list of up to {MAX_STOPS} non-empty strings", "stop")
    return stops


def read_messages(messages: object, limits: Limits) -> tuple[list[tuple[str, str]], list[Image.Image], list[str]]:
    """(role, text) for each user and assistant message (system messages are not part of `ask`'s
    prompt: its own chat template says who it is), and the photos of the last user message that
    has any: a conversation stays about its photo, as `chat --image` does."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list", "messages")
    turns, images, keys = [], [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"{where} needs a role of system, user or assistant", where)
        text, found = read_content(message.get("content"), where, limits)
        if found and message["role"] != "user":
            raise ApiError(400, f"{where}: only user messages may hold images", where)
        if found:
            images, keys = [image for image, _ in found], [key for _, key in found]
        if message["role"] in ("user", "assistant"):
            turns.append((message["role"], text))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be a user message with a question", "messages")
    return turns, images, keys


def read_content(content: object, where: str, limits: Limits) -> tuple[str, list[tuple[Image.Image, str]]]:
    """A message's text (its text parts joined) and its photos, each with its bytes' hash."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list of parts", where)
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if len(images) == MAX_IMAGES:
                raise ApiError(400, f"at most {MAX_IMAGES} images a message", f"{where}.content[{j}]")
            images.append(read_image(url, f"{where}.content[{j}]", limits))
        else:
            raise ApiError(400, f"{where}.content[{j}]: parts are text or image_url", f"{where}.content[{j}]")
    return "\n".join(texts), images


def read_image(url: object, where: str, limits: Limits) -> tuple[Image.Image, str]:
    """A data URL's photo (or, when the server allows it, a file on its disk), decoded as `ask`
    decodes a photo, with the hash of its bytes (the image-feature cache's key)."""
    if not isinstance(url, str):
        raise ApiError(400, f"{where}: image_url.url must be a string", where)
    if match := DATA_URL.fullmatch(url.strip()):
        if len(match.group(1)) > limits.image_bytes * 4 // 3 + 4:
            raise ApiError(413, f"{where}: image is over {limits.image_bytes // 2**20} MB", where, "image_too_large")
        try:
            data = base64.b64decode(match.group(1), validate=True)
            return decode(data, STORE_MAX_SIDE), hashlib.sha256(data).hexdigest()
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data URL is not valid base64", where, "invalid_image") from None
        except BadPhoto as e:
            raise ApiError(400, f"{where}: {e}", where, "invalid_image") from None
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"{where}: send the image as a data URL (data:image/jpeg;base64,...): this server "
                            f"fetches nothing", where, "invalid_image")
    if not limits.local_images:
        raise ApiError(400, f"{where}: send the image as a data URL; a file path works only when the server "
                            f"runs with --allow-local-images", where, "invalid_image")
    path = Path(url.removeprefix("file://")).expanduser()
    try:
        if path.stat().st_size > limits.image_bytes:
            raise ApiError(413, f"{where}: {path}: image is over {limits.image_bytes // 2**20} MB", where, "image_too_large")
        photo = read_photo(path)
    except (OSError, BadPhoto) as e:
        raise ApiError(400, f"{where}: {path}: {getattr(e, 'strerror', None) or e}", where, "invalid_image") from None
    return photo.image, photo.sha256


def pair_turns(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Earlier turns as `ask`'s history, (question, answer) pairs: consecutive messages of one role
    are joined; an answer with no question before it pairs with an empty one."""
    pairs: list[list[str]] = []
    for role, text in turns:
        if role == "user":
            if pairs and pairs[-1][1] == "":
                pairs[-1][0] += "\n" + text
            else:
                pairs.append([text, ""])
        elif pairs:
            pairs[-1][1] += ("\n" if pairs[-1][1] else "") + text
        else:
            pairs.append(["", text])
    return [(q, a) for q, a in pairs]
