"""yollava: personalize a vision-language model to your own things (Yo'LLaVA)."""

__version__ = "0.1.0"
