"""Model families from installed packages (issue #36): a package that names a module in the
`yollava.models` entry-point group adds a family, loaded like any other; a family that takes a
name already taken, or loads something that is not what models.families.BaseModel and Processor
say a family provides, is a one-line error naming it."""

import sys

import pytest
from PIL import Image

from yollava_cli.errors import UserError
from yollava_cli.models import families
from yollava_cli.models.prompts import Prompt

FAMILY = '''
from tiny import tiny_llava
from yollava_cli.models.families import Family, register

def load(ref, cache_dir, policy):
    model, processor = tiny_llava(seed=3)
    return {model}, processor

register(Family(name={name!r}, summary="a tiny LLaVA, from a plugin", load=load, handles=lambda ref: ref == {name!r}))
'''


@pytest.fixture
def install(tmp_path, monkeypatch):
    """`install(module, name, model=...)`: a package as pip leaves one (its module, and a dist-info
    whose entry_points.txt names it), on sys.path; the registry and the discovery as they were after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("YOLLAVA_HOME", str(tmp_path / "home"))
    families._discover()  # the shipped families first, as in any command
    before = list(families._registered)
    families._discover.cache_clear()
    installed = []

    def install(module: str, name: str, model: str = "model"):
        (tmp_path / f"{module}.py").write_text(FAMILY.format(name=name, model=model))
        dist = tmp_path / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[{families.ENTRY_POINTS}]\n{name} = {module}\n")
        installed.append(module)

    yield install
    families._registered[:] = before
    families._discover.cache_clear()
    for module in installed:
        sys.modules.pop(module, None)


def test_an_installed_family_is_listed_and_loads_a_model(install):
    from yollava_cli.models.loading import load_vlm

    install("yollava_toy_family", "toyfam")
    assert [f.name for f in families.families()][-2:] == ["toyfam", "transformers"]  # the generic one stays last
    assert families.for_ref("toyfam").summary == "a tiny LLaVA, from a plugin"
    vlm = load_vlm("toyfam")
    assert vlm.family.name == "toyfam" and vlm.ref == "toyfam"
    probability = vlm.yes_probabilities([Prompt("Is it here?", [Image.new("RGB", (32, 32), (200, 30, 30))], [None])])[0]
    assert 0.0 < probability < 1.0


def test_a_family_name_is_taken_once(install):
    install("yollava_impostor", "pocket")
    with pytest.raises(UserError, match=r"model plugin 'pocket' \(yollava_impostor\): model family 'pocket' is registered twice; fix or uninstall it"):
        families.families()
    with pytest.raises(ValueError, match="model family 'pocket' is registered twice"):
        families.register(families.Family(name="pocket", summary="", load=None, handles=lambda ref: False))
    assert [f.name for f in families._registered].count("pocket") == 1


def test_a_family_that_loads_something_else_than_a_model_is_one_line(install):
    from yollava_cli.models.loading import load_vlm

    install("yollava_broken_family", "broken", model="object()")
    with pytest.raises(UserError, match="model family 'broken' loaded a model without config, dtype, base_model"):
        load_vlm("broken")
