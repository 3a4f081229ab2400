"""The floors' import rules: each floor imports only the floors below it, with no cycle (imports
under TYPE_CHECKING or in a function count too); cli/ and store/ import no torch (so commands that
load no model start fast); nothing outside models/pocket/ names the offline model or branches on it
(every family plugs in through models.families)."""

import ast
import importlib.util
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_data

PACKAGE = Path(__file__).resolve().parents[1] / "yollava_cli"
HEAVY = ("torch", "transformers", "fastapi", "uvicorn")  # the server's stack loads only for `yollava serve`


def counts_module():
    """bench/architecture_counts.py: the floor table and the import reader the counts use."""
    spec = importlib.util.spec_from_file_location("architecture_counts", PACKAGE.parent / "bench" / "architecture_counts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_floor_imports_only_the_floors_below():
    counts = counts_module().count(PACKAGE)
    assert counts["upward"] == []
    assert counts["cycles"] == []


def test_sql_stays_in_the_store():
    assert counts_module().count(PACKAGE)["sql_outside_store"] == []


def test_progress_travels_as_events_not_callbacks():
    """Deep code reports typed events to the current reporter (yollava_cli.reporting) instead of
    on_status/on_progress/on_event callbacks threaded through every layer (206 mentions before; 0 now)."""
    assert counts_module().count(PACKAGE)["callback_mentions"] <= 10


def test_the_cli_decides_where_work_runs_in_one_place():
    """Only cli/options.py turns --ray into an executor; the commands pass the executor on."""
    mentions = [f"{path.name}:{line}: {text}" for path in sorted((PACKAGE / "cli").glob("*.py")) if path.name != "options.py"
                for line, text in names_outside_docstrings(path.read_text())
                if text in ("ray_address", "Workers", "RayEmbedder", "RayExecutor") or "scale" in text]
    assert mentions == []


def test_the_floor_order_is_the_one_docs_design_states():
    floors = counts_module().FLOORS
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    stated = " → ".join(name for name in sorted(floors, key=floors.get, reverse=True) if name != "__main__")
    assert f"Imports go downwards only: {stated} " in " ".join(design.split()), stated


def test_the_floor_checker_sees_hidden_and_lazy_imports():
    """An import under TYPE_CHECKING or inside a function is a dependency all the same."""
    counts = counts_module()
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from yollava_cli.cli.app import app\n"
              "def f():\n    from ..scale import driver\n    from yollava_cli.store.registry import Registry\n")
    known = {"yollava_cli.cli.app", "yollava_cli.scale.driver", "yollava_cli.store.registry", "yollava_cli.models.vlm"}
    found = counts.imports(ast.parse(source), "yollava_cli.models.vlm", False, known)
    assert sorted((target, top, counts.upward("yollava_cli.models.vlm", target)) for target, _, top in found) == [
        ("yollava_cli.cli.app", True, True), ("yollava_cli.scale.driver", False, True), ("yollava_cli.store.registry", False, False)]
    assert counts.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def loaded_heavy_modules(code: str, home: Path) -> list[str]:
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={"YOLLAVA_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


def test_cli_and_store_modules_import_no_torch(tmp_path):
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                     for floor in ("cli", "store") for p in (PACKAGE / floor).rglob("*.py"))
    assert len(modules) > 5
    assert loaded_heavy_modules("\n".join(f"import {m}" for m in modules), tmp_path) == []


@pytest.mark.parametrize("args", [["--help"], ["list"], ["show", "bo"], ["note", "bo"], ["pool", "list"]])
def test_commands_that_load_no_model_import_no_torch(tmp_path, args):
    shared_data()
    home = tmp_path / "home"
    added = subprocess.run([sys.executable, "-m", "yollava_cli", "add", "bo", str(SHARED_DATA / "concepts" / "dog" / "train"), "--no-train"],
                           capture_output=True, text=True, env={"YOLLAVA_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert added.returncode == 0, added.stderr
    code = f"import sys\nsys.argv = ['yollava', *{args!r}]\nfrom yollava_cli.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    assert loaded_heavy_modules(code, home) == []


def bundle_named(path: Path, name: str) -> Path:
    """A well-formed bundle of concept `name` (zero token rows: a refusal never reads them)."""
    import hashlib
    import json
    import zipfile

    import torch
    from safetensors.torch import save

    tensors = save({"input_rows": torch.zeros(17, 8), "output_row": torch.zeros(8)})
    manifest = {"format": "yollava-concept-bundle/1", "name": name, "k": 16, "base_model": "tiny",
                "base_fingerprint": "Tiny:8:ab", "checksums": {"concept.safetensors": hashlib.sha256(tensors).hexdigest()}}
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("manifest.json", json.dumps(manifest))
        bundle.writestr("concept.safetensors", tensors)
    return path


@pytest.fixture(scope="module")
def one_concept(tmp_path_factory) -> Path:
    """A data dir holding the concept <bo> (untrained), beside a file named `taken` and a bundle of a <bo>."""
    home = tmp_path_factory.mktemp("refusals") / "home"
    added = subprocess.run([sys.executable, "-m", "yollava_cli", "add", "bo", str(shared_data() / "concepts" / "dog" / "train"), "--no-train"],
                           capture_output=True, text=True, env={"YOLLAVA_HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert added.returncode == 0, added.stderr
    (home.parent / "taken").write_text("mine")
    bundle_named(home.parent / "bo.yollava", "bo")
    return home


@pytest.mark.parametrize("args, refusal", [
    (["export", "bo", "{dir}/taken"], "exists already"),
    (["import", "{dir}/bo.yollava"], "concept 'bo' exists already"),
    (["import", "{dir}/missing.yollava"], "no such file"),
    (["ask", "nosuch", "hello"], "unknown concept 'nosuch'"),
    (["ask", "is <nosuch> here?"], "unknown concept 'nosuch'"),
    (["find", "nosuch", "{dir}/taken"], "unknown concept 'nosuch'"),
    (["ask", "bo", "hello", "--no-train"], "<bo> is not trained yet"),
    (["find", "bo", "{dir}/taken", "--no-train"], "<bo> is not trained yet"),
])
def test_refusals_that_need_no_model_import_no_torch(one_concept, args, refusal):
    """A refusal the registry or the file system decides costs what `list` costs: no torch."""
    args = [a.replace("{dir}", str(one_concept.parent)) for a in args]
    code = (f"import sys\nsys.argv = ['yollava', *{args!r}]\nfrom yollava_cli.cli import main\ntry:\n    main()\n"
            f"except SystemExit as e:\n    assert e.code == 1, e.code")
    assert loaded_heavy_modules(code, one_concept) == []
    result = subprocess.run([sys.executable, "-m", "yollava_cli", *args], capture_output=True, text=True, timeout=120,
                            env={"YOLLAVA_HOME": str(one_concept), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and refusal in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def names_outside_docstrings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every name, string and comment token that is not a docstring."""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    found, previous = [], tokenize.NEWLINE
    for token in tokens:
        docstring = token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        if token.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) and not docstring:
            found.append((token.start[0], token.string))
        if token.type not in (tokenize.NL, tokenize.COMMENT):
            previous = token.type
    return found


def test_only_models_pocket_names_the_offline_model():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "pocket" not in path.relative_to(PACKAGE).parts
                 for line, text in names_outside_docstrings(path.read_text()) if "pocket" in text.lower()]
    assert offenders == []


def test_the_rule_checker_sees_code_but_not_docstrings():
    source = '"""pocket in a docstring"""\nx = "pocket"  # pocket\ndef f():\n    """pocket"""\n    return POCKET\n'
    assert [line for line, _ in names_outside_docstrings(source) if "pocket" in _.lower()] == [2, 2, 5]


def test_without_the_ray_switch_ray_is_never_imported(tmp_path):
    """Ray (and yollava_cli.scale) load only for --ray or the config's "ray": a pool add, which
    loads the embedder, imports neither."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted((shared_data() / "concepts" / "dog" / "train").glob("*.jpg"))[:2]:
        (pool / photo.name).write_bytes(photo.read_bytes())
    args = ["pool", "add", "p", str(pool), "--embedder", "efficientnet-lite0"]
    code = (f"import sys\nsys.argv = ['yollava', *{args!r}]\nfrom yollava_cli.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n"
            f"    assert not e.code, e.code\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'ray' or m.startswith('yollava_cli.scale')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"YOLLAVA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
