"""The store's rules as schema types, for the files that carry concepts from outside (bundles,
datasets): a concept name as `add` takes it, a fact as `note` takes it, a kind. Imported only by
those readers, not by the store's commands (pydantic costs start-up time; see schema.py)."""

from typing import Annotated, Literal

from pydantic import Field

from yollava_cli.schema import rule
from yollava_cli.store.concepts import KINDS, parse_name
from yollava_cli.store.facts import check_fact

ConceptName = Annotated[str, rule(parse_name)]
Fact = Annotated[str, rule(check_fact)]
Kind = Literal[KINDS]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="a SHA-256 in hex (64 characters 0-9a-f)")]
Fingerprint = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+:[0-9]+:[0-9a-f]+$",
                                   description="a base-model fingerprint (Architecture:vocabulary size:hash)")]
