"""synth: training data from documents and statutes with a teacher model, every row checked.

In: a recipe (`synth.recipe`) naming the statute KB, documents, a teacher endpoint and the
generators; out: Conversation JSONL that `domainlm train` takes, each row with its
provenance, plus a report of what every check removed. `domainlm synth RECIPE.yaml`.
"""
