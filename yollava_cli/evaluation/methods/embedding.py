"""Cosine similarity of image embeddings to the subject's train photos."""

from yollava_cli.evaluation.methods import Method, register


@register
class Embedding(Method):
    name, order, language, cut_at_half = "embedding", 50, False, False

    def scores(self, run, subject, photos):
        return run.similarities(subject, photos)

    def threshold(self, run, subject, concept):
        return run.embedding_threshold(subject, concept)
