"""`yollava serve`: one warm model behind an OpenAI-compatible HTTP API. `requests` reads an OpenAI
chat request into the arguments of `use.ask.ask`, `worker` owns the model and answers one request
at a time from a bounded queue, `app` is the HTTP layer (routes, auth, errors, streaming, logs)."""
