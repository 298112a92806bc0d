"""Smart routing for `model: "auto"`: classify the prompt, score the models of a pool, pick one, fall back."""
