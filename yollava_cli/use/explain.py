"""What each of a concept's latent tokens describes, in the model's own words (paper appendix K)."""

from collections.abc import Callable

from yollava_cli.models.prompts import Prompt
from yollava_cli.models.vlm import VLM
from yollava_cli.use.ask import GenerationOptions


def explain(vlm: VLM, name: str, options: GenerationOptions,
            on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Ask the model what each latent token stands for (paper appendix K)."""
    k = vlm.tokens.latents(name)
    explanations = []
    for i in range(k):
        prompt = Prompt(f"In a few words, what does <{name}_{i}> describe about <{name}>?", concepts=[name])
        explanations.append({"token": f"<{name}_{i}>", "explanation": vlm.generate(prompt, options.max_tokens, options.temperature, options.seed)})
        if on_progress:
            on_progress(i + 1, k)
    return explanations
