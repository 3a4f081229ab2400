"""What an imported bundle (or a model folder) cannot do: run code, exhaust memory, crash a verb
later. Ends with a fuzzer over a real exported bundle."""

import json
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from conftest import REPO, invoke, run_cli, snapshot
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_safetensors
from test_trust import fresh_home, rebuild, reseal, tampered_head, world  # noqa: F401 (world: a fixture)

from yollava_cli.use.bundles import safe_metadata

# -- a model folder's own code ----------------------------------------------------------------

EVIL_CODE = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def evil_folder(root: Path, model_dir: Path, marker: Path) -> Path:
    """A copy of a real model folder that asks transformers to import its own module (`auto_map`),
    under a model type transformers does not know; the module leaves `marker` if it ever runs."""
    folder = root / "evil-model"
    folder.mkdir()
    for item in model_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_vlm", auto_map={"AutoConfig": "evil.EvilConfig",
                                                  "AutoModelForImageTextToText": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_model_folder_never_runs_its_own_code_nor_prompts(world, tmp_path):
    marker = tmp_path / "RAN"
    folder = evil_folder(tmp_path, world["model"], marker)
    result = run_cli("ask", "hi", "--model", folder, home=tmp_path / "h", input="y\ny\n")
    assert result.returncode == 1 and "auto_map" in result.stderr and str(folder) in result.stderr, result.stderr
    said = [line for line in result.stderr.strip().splitlines() if not line.startswith("Loading ")]  # the status line
    assert len(said) == 1 and "[y/N]" not in result.stdout + result.stderr and not marker.exists()
    # a supported type whose processor files name code: transformers' own classes load, the code never runs
    known = tmp_path / "known"
    known.mkdir()
    for item in world["model"].iterdir():
        (known / item.name).write_bytes(item.read_bytes())
    (known / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        if (known / name).exists():
            data = json.loads((known / name).read_text())
            data["auto_map"] = {"AutoProcessor": "evil.EvilProcessor", "AutoTokenizer": ["evil.EvilTokenizer", None],
                                "AutoImageProcessor": "evil.EvilImageProcessor"}
            (known / name).write_text(json.dumps(data))
    result = run_cli("ask", "hi", "--model", known, "--max-tokens", "2", home=tmp_path / "h", input="y\ny\n")
    assert "Traceback" not in result.stderr and "[y/N]" not in result.stdout + result.stderr, result.stderr
    assert not marker.exists()


def test_a_bundles_base_model_is_a_name_never_loaded(world, tmp_path):
    """A bundle naming a code-running folder as its base: import compares against the user's model."""
    marker = tmp_path / "RAN"
    folder = evil_folder(tmp_path, world["model"], marker)
    home = fresh_home(world, tmp_path)
    (home / "config.json").write_text(json.dumps({"model": str(world["model"])}))
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0

    def point_at_folder(members):
        members["manifest.json"] = json.dumps({**json.loads(members["manifest.json"]), "base_model": str(folder)}).encode()
    crafted = rebuild(bundle, tmp_path, point_at_folder)
    result = run_cli("import", crafted, "--as", "bo2", home=home, input="y\ny\n")
    assert result.returncode == 0, result.stderr
    assert not marker.exists() and "[y/N]" not in result.stdout + result.stderr


# -- memory ----------------------------------------------------------------------------------

# the peak is read from /proc (VmHWM, this process's own); ru_maxrss would carry the forking parent's peak
PEAK_SCRIPT = """
import json, re, sys
from pathlib import Path
from yollava_cli.errors import UserError
from yollava_cli.store.registry import Registry
from yollava_cli.use.bundles import import_concept

peak_mb = lambda: int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) // 1024
registry, out = Registry(Path(sys.argv[1])), []
import_concept(registry, Path(sys.argv[2]), "warmup")  # every lazy import done: the baseline is steady
before = peak_mb()
for i, path in enumerate(sys.argv[3:]):
    try:
        import_concept(registry, Path(path), f"case{i}")
        outcome = "imported"
    except UserError as e:
        outcome = str(e)
    except Exception as e:
        outcome = f"TRACEBACK {type(e).__name__}: {e}"
    out.append({"path": path, "outcome": outcome, "grew_mb": peak_mb() - before})
print(json.dumps(out))
"""


def import_in_a_fresh_process(home: Path, good: Path, paths: list[Path]) -> list[dict]:
    """Import each bundle in one new process; how far its peak memory grew past a steady baseline."""
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(home), str(good), *map(str, paths)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def with_members(bundle: Path, extra: dict[str, bytes], out: Path) -> Path:
    """The bundle with `extra` members added, deflated, its checksums right: only sizes can give it away."""
    with zipfile.ZipFile(bundle) as z:
        members = {n: z.read(n) for n in z.namelist()} | extra
    reseal(members)
    out.write_bytes(zip_of(members))
    return out


def test_a_bundle_that_inflates_is_refused_before_it_is_read(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0
    zeros = bytes(64 * 2**20)
    some_noise = lambda i: random.Random(i).randbytes(200_000) + bytes(2 * 2**20)  # inflates 11x: within the ratio
    bombs = [with_members(bundle, {f"photos/{i}.jpg": zeros for i in range(5)}, tmp_path / "zeros.yollava"),
             with_members(bundle, {f"photos/{i}.jpg": some_noise(i) for i in range(150)}, tmp_path / "many.yollava")]
    assert all(p.stat().st_size < 40 * 2**20 for p in bombs)
    zeros = None
    results = import_in_a_fresh_process(home, bundle, bombs)
    assert "times (over 20x)" in results[0]["outcome"] and "photos/0.jpg" in results[0]["outcome"], results[0]
    assert "unpacked, over the 256 MB bundle limit" in results[1]["outcome"], results[1]
    assert all(r["grew_mb"] < 48 for r in results), results


# -- the zip layer ---------------------------------------------------------------------------


def patched(data: bytes, member: str, flags: int = 0, method: int | None = None, crc_xor: int = 0) -> bytes:
    """The zip's bytes with one member's headers (local and central) edited."""
    out, at = bytearray(data), data.find(b"PK\x01\x02")
    while at != -1:
        length = int.from_bytes(out[at + 28 : at + 30], "little")
        if out[at + 46 : at + 46 + length] == member.encode():
            local = int.from_bytes(out[at + 42 : at + 46], "little")
            for header, field in ((at + 8, "central"), (local + 6, "local")):
                flag = int.from_bytes(out[header : header + 2], "little") | flags
                out[header : header + 2] = flag.to_bytes(2, "little")
                if method is not None:
                    out[header + 2 : header + 4] = method.to_bytes(2, "little")
                crc = int.from_bytes(out[header + 8 : header + 12], "little") ^ crc_xor
                out[header + 8 : header + 12] = crc.to_bytes(4, "little")
        at = data.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def test_malformed_zip_members_are_one_line_naming_the_bundle_and_member(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0
    data = bundle.read_bytes()
    cases = {
        "bad CRC": (patched(data, "concept.safetensors", crc_xor=0x5A5A), "Bad CRC"),
        "encrypted": (patched(data, "concept.safetensors", flags=0x1), "is encrypted"),
        "deflate64": (patched(data, "concept.safetensors", method=9), "zip method 9"),
        "bzip2 over deflate data": (patched(data, "manifest.json", method=12), "zip method 12"),
    }
    before = snapshot(home)
    for description, (content, message) in cases.items():
        path = tmp_path / f"{description}.yollava"
        path.write_bytes(content)
        result = invoke("import", path, "--as", "evil", "--skip-model-check", home=home)
        assert result.returncode == 1 and message in result.stderr, (description, result.stderr)
        assert str(path) in result.stderr and ("concept.safetensors" in result.stderr or "manifest.json" in result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (description, result.stderr)
        assert snapshot(home) == before, description


# -- tensors against what reads them -----------------------------------------------------------


def test_tensors_that_do_not_fit_what_reads_them_are_refused_at_import(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, home=home).returncode == 0

    def narrow_head(members):
        for name in ("head.positives", "head.negatives"):
            tampered_head(bundle, name, torch.rand(4, 7))(members)
    head = rebuild(bundle, tmp_path, narrow_head, "head.yollava")
    before = snapshot(home)
    result = invoke("import", head, "--as", "bo2", "--skip-model-check", home=home)
    assert result.returncode == 1 and "7-wide embeddings, but efficientnet-lite0 gives 1280" in result.stderr, result.stderr
    assert snapshot(home) == before

    def narrow_rows(members):
        data = members["concept.safetensors"]
        tensors = load_tensors(data)
        tensors["input_rows"], tensors["output_row"] = torch.rand(tensors["input_rows"].shape[0], 7), torch.rand(7)
        members["concept.safetensors"] = save_safetensors(tensors, metadata=safe_metadata(data))
        reseal(members)
    rows = rebuild(bundle, tmp_path, narrow_rows, "rows.yollava")
    result = invoke("import", rows, "--as", "bo2", "--model", world["model"], home=home)
    assert result.returncode == 1 and "token rows are 7 wide" in result.stderr, result.stderr
    assert snapshot(home) == before


# -- the fuzzer ------------------------------------------------------------------------------

CASES, SEED, MEMORY_BUDGET_MB = 120, 33, 96
ODD_VALUES = [None, -1, 0, 2**63, 1e308, float("nan"), "", "x" * 5000, [], {}, True, "<|im_end|>", "../../etc/passwd",
              {"a": [1, {"b": None}]}, "\u202e", "bo"]


def zip_of(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def edited_manifest(members: dict, rng: random.Random) -> None:
    manifest = json.loads(members["manifest.json"])
    node = manifest
    while True:  # walk down to a random key (or list item) and give it an odd value
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.6:
            node = node[key]
            continue
        node[key] = rng.choice(ODD_VALUES)
        break
    members["manifest.json"] = json.dumps(manifest).encode()


def edited_tensors(members: dict, rng: random.Random) -> None:
    data = members["concept.safetensors"]
    tensors, meta = load_tensors(data), safe_metadata(data)
    name = rng.choice(list(tensors))
    shape = [rng.choice([0, 1, 3, 7, 1280]) for _ in range(rng.randint(0, 3))]
    tensors[name] = torch.zeros(shape, dtype=rng.choice([torch.float32, torch.float16, torch.int64]))
    if rng.random() < 0.3:
        meta = {"yollava": rng.choice(["{", "[]", json.dumps({"recognizer": rng.choice(ODD_VALUES)})])}
    members["concept.safetensors"] = save_safetensors(tensors, metadata=meta)


def fuzzed(original: bytes, members: dict[str, bytes], rng: random.Random) -> bytes:
    """One random corruption of a real bundle: of its bytes, its members, its manifest, its
    tensors, its zip headers, or an added member that inflates; checksums resealed or not."""
    kind = rng.choice(["flip", "truncate", "swap", "rename", "manifest", "tensors", "header", "inflate"])
    if kind == "flip":
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        return bytes(data)
    if kind == "truncate":
        return original[: rng.randrange(len(original))]
    if kind == "header":
        name = rng.choice(list(members))
        return patched(original, name, flags=rng.choice([0, 0x1, 0x40]), method=rng.choice([None, 1, 9, 12, 14, 99]),
                       crc_xor=rng.choice([0, 1, 0xFFFF]))
    members = dict(members)
    names = list(members)
    if kind == "swap":
        a, b = rng.sample(names, 2)
        members[a], members[b] = members[b], members[a]
    elif kind == "rename":
        members[rng.choice(["concept.safetensors", "photos/x.jpg", "photos/../../x", "/abs", "photos/"])] = members.pop(rng.choice(names))
    elif kind == "manifest":
        edited_manifest(members, rng)
    elif kind == "tensors":
        edited_tensors(members, rng)
    else:  # deflated: stored, these would be a big bundle, not a bomb
        members.update({f"photos/z{i}.jpg": bytes(rng.choice([8, 48]) * 2**20) for i in range(rng.randint(1, 4))})
    if rng.random() < 0.7:
        try:
            reseal(members)
        except (KeyError, ValueError, TypeError):  # no manifest, or not one JSON object: as it is, then
            pass
    return zip_of(members, rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED] if kind != "inflate" else [zipfile.ZIP_DEFLATED]))


def test_bundle_fuzzer_one_line_or_success_within_a_memory_budget(world, tmp_path):
    home = fresh_home(world, tmp_path)
    bundle = tmp_path / "bo.yollava"
    assert invoke("export", "bo", bundle, "--with-photos", home=home).returncode == 0
    original = bundle.read_bytes()
    with zipfile.ZipFile(bundle) as z:
        members = {n: z.read(n) for n in z.namelist()}
    rng, paths = random.Random(SEED), []
    for i in range(CASES):
        path = tmp_path / f"fuzz-{i}.yollava"
        path.write_bytes(fuzzed(original, members, rng))
        paths.append(path)
    results = import_in_a_fresh_process(home, bundle, paths)  # a traceback fails the subprocess, and the test
    assert len(results) == CASES
    for r in results:
        assert not r["outcome"].startswith("TRACEBACK") and "\n" not in r["outcome"], r
        assert r["grew_mb"] <= MEMORY_BUDGET_MB, r
    assert len({r["outcome"] for r in results}) > 20  # the corruptions reached many different checks
