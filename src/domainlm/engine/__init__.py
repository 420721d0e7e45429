"""Engine: one base model, many LoRA experts chosen per request, generation, tools and
retrieval-grounded answers.

In: a base model, expert folders, optionally a knowledge base and a toolset. Out:
`Assistant.reply()` answers with verified citations and a tool trace.
"""
