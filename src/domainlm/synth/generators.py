"""The generators: each plans its items (an article, a chunk, a topic, a question) under
stable keys, and makes training rows from one item, asking the teacher where it needs one.

A row is `{"record": Conversation record with provenance in meta, "source": the text the
answer must be grounded in (or None), "flags": {check: reason}}`; flags are set where a
generator checks as it goes (a tool result that differs, a judge's "not supported"), and
`synth.checks` drops the rows they mark, counted with the other filters.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.kb.laws import short_forms
from domainlm.kb.numerals import article_label
from domainlm.kb.store import CURRENT, Chunk
from domainlm.synth.prompts import CORRECTIONS, PROMPTS, STATUTE_QUESTIONS
from domainlm.synth.recipe import DocumentQA, Grounded, SelfChat, StatuteQA, SynthRecipe
from domainlm.synth.teacher import Teacher, Usage, extract_json

#: Statute articles shorter than this are not asked in reverse (本法自公布之日起施行).
MIN_REVERSE_CHARS = 30
QUESTION_FIELDS = ("question", "instruction", "input", "query", "prompt", "问题")


@dataclass
class Item:
    key: str
    generator: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    recipe: SynthRecipe
    kb: Any = None  # the statute KnowledgeBase
    teacher: Teacher | None = None

    def rng(self, key: str) -> random.Random:
        """A generator of its own per item: a resumed run draws what the first one did."""
        return random.Random(f"{self.recipe.seed}:{key}")


def row(
    messages: list[dict[str, Any]],
    meta: dict[str, Any],
    source: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    flags: dict[str, str] | None = None,
    dedup: str | None = None,
    known: list[list[Any]] | None = None,
    distinct: bool = False,
) -> dict[str, Any]:
    """A made row; `dedup` is the text near-duplicates are found by, where the row's own
    text would mislead (two questions about one passage both hold the passage); `known`
    are the [law, article, sub] the row cites knowing their status (a repealed article
    recited as repealed), which the citation check lets pass; a `distinct` row is never a
    near-duplicate (it is made from a source no other row has)."""
    record: dict[str, Any] = {"messages": messages}
    if tools:
        record["tools"] = tools
    record["meta"] = meta
    made: dict[str, Any] = {"record": record, "source": source, "flags": flags or {}}
    if dedup is not None:
        made["dedup"] = dedup
    if known:
        made["known"] = known
    if distinct:
        made["distinct"] = True
    return made


def _system(spec: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "system", "content": spec.system}, *messages] if spec.system else messages


def _provenance(ctx: Context, spec: Any, item: Item, template: str, **source: Any) -> dict:
    teacher = ctx.recipe.teacher.model if ctx.teacher and ctx.recipe.teacher else None
    return {
        "generator": spec.label(),
        "type": spec.type,
        "item": item.key,
        "teacher": teacher if spec.type != "statute_qa" else None,
        "template": template,
        "source": source,
    }


# -- statute Q&A, no teacher ---------------------------------------------------------------
def _laws(ctx: Context, names: list[str]) -> list[str]:
    resolved = []
    held = set(ctx.kb.store.law_names()) if names else set()
    for name in names:
        law = ctx.kb.laws.resolve(name)
        if law is None:
            raise DomainLMError(f"law {name!r}: not in the KB {ctx.kb.folder}")
        if law not in held:
            raise DomainLMError(
                f"law {name!r}: the KB {ctx.kb.folder} knows {law} only from the clause that "
                "repealed it (it holds none of its articles)"
            )
        resolved.append(law)
    return resolved


def _article_ids(ctx: Context, laws: list[str], current: bool) -> list[int]:
    query = "SELECT id FROM chunks WHERE law IS NOT NULL AND article_num IS NOT NULL"
    args: list[Any] = []
    if laws:
        query += f" AND law IN ({','.join('?' * len(laws))})"
        args += laws
    if current:
        query += f" AND (status IS NULL OR status IN ({','.join('?' * len(CURRENT))}))"
        args += CURRENT
    return [r[0] for r in ctx.kb.store.conn.execute(query + " ORDER BY id", args)]


def _sample(ids: list[Any], limit: int | None, rng: random.Random) -> list[Any]:
    """`limit` of `ids` drawn by `rng`, in their order (all of them without a limit)."""
    if limit is None or limit >= len(ids):
        return ids
    return [ids[i] for i in sorted(rng.sample(range(len(ids)), limit))]


def _status_line(chunk: Chunk) -> str:
    if chunk.is_current:
        since = f"，现行文本自{chunk.effective_date}起施行" if chunk.effective_date else ""
        return f"（该条现行有效{since}。）"
    if chunk.status == "已废止":
        return "（该法已废止，这一条已不再适用。）"
    dated = f"{chunk.version_date}版本" if chunk.version_date else "历史版本"
    return f"（这是该条{dated}的文本，已被修改，不再是现行规定。）"


class StatuteGenerator:
    needs_teacher = False

    def __init__(self, spec: StatuteQA):
        self.spec = spec
        self._shared_texts: set[str] | None = None

    def plan(self, ctx: Context) -> list[Item]:
        ids = _article_ids(ctx, _laws(ctx, self.spec.laws), not self.spec.past_versions)
        if not ids:
            raise DomainLMError(f"{self.spec.label()}: the KB holds no statute articles")
        chosen = _sample(ids, self.spec.limit, ctx.rng(self.spec.label()))
        label = self.spec.label()
        ways = ("forward", "reverse") if self.spec.reverse else ("forward",)
        return [Item(f"{label}:{i}:{way}", label, {"chunk": i, "way": way})
                for i in chosen for way in ways]  # fmt: skip

    def make(self, item: Item, ctx: Context, usage: Usage) -> list[dict[str, Any]]:
        chunk = ctx.kb.store.chunks([item.payload["chunk"]])[item.payload["chunk"]]
        rng = ctx.rng(item.key)
        label = article_label(chunk.article_num or 0, chunk.article_sub)
        way = item.payload["way"]
        form = rng.choice(short_forms(chunk.law or "")[:2])
        text = chunk.text.strip()
        if way == "reverse":
            if not chunk.is_current or len(text) < MIN_REVERSE_CHARS or self._shared(ctx, text):
                return []  # a text several articles share cannot name one of them
            question = rng.choice(STATUTE_QUESTIONS[way]).format(text=text)
            answer = f"出自《{chunk.law}》{label}。{_status_line(chunk)}"
        else:
            question = rng.choice(STATUTE_QUESTIONS[way]).format(law=form, label=label)
            answer = f"《{chunk.law}》{label}规定：\n{text}\n{_status_line(chunk)}"
        messages = _system(
            self.spec,
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        )
        meta = _provenance(ctx, self.spec, item, f"statute_{way}.v1", chunk_id=chunk.id,
                           citation=chunk.citation, status=chunk.status)  # fmt: skip
        # An article no longer in force, recited with that status, is not a bad citation.
        known = None if chunk.is_current else [[chunk.law, chunk.article_num, chunk.article_sub]]
        # Each comes from its own article: forward and reverse pairs of one article share
        # its text but are different tasks, and MinHash would merge them.
        return [row(messages, meta, known=known, distinct=True)]

    def _shared(self, ctx: Context, text: str) -> bool:
        """Whether several laws hold `text` (one query for the whole run, not a scan of
        the chunks per item)."""
        if self._shared_texts is None:
            self._shared_texts = {
                r[0] for r in ctx.kb.store.conn.execute(
                    "SELECT text FROM chunks GROUP BY text HAVING count(DISTINCT law) > 1"
                )
            }  # fmt: skip
        return text in self._shared_texts


# -- document Q&A --------------------------------------------------------------------------
def _questions(text: str) -> list[str]:
    """Questions from a teacher's answer: a JSON array of strings, or else its lines that
    read as questions (numbered or ending in ？/?)."""
    try:
        value = extract_json(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, list)), None)
    if isinstance(value, list):
        found = [str(v).strip() for v in value if isinstance(v, str | int | float)]
    else:
        lines = [
            re.sub(r"^\s*(?:[-*•]|\d+[.、)）]|[（(]\d+[)）])\s*", "", x) for x in text.splitlines()
        ]
        found = [x.strip() for x in lines if x.strip().endswith(("？", "?"))]
    found = [q for q in dict.fromkeys(found) if len(q) >= 4]
    if not found:
        raise ValueError("no questions in the answer")
    return found


def document_chunks(ctx: Context, spec: DocumentQA) -> list[dict[str, Any]]:
    """The passages the generator reads: a KB's document chunks or a folder's files."""
    from domainlm.kb.base import MANIFEST, KnowledgeBase
    from domainlm.kb.sources import Unreadable, read_files

    where = ctx.recipe.path(spec.documents) if spec.documents else None
    passages: list[dict[str, Any]] = []
    if where is None or (where / MANIFEST).is_file():
        kb = ctx.kb if where is None else KnowledgeBase.open(where)
        if kb is None:
            raise DomainLMError(f"{spec.label()}: give `documents` or a recipe `kb`")
        query = (
            "SELECT c.id, c.text, c.heading, d.source FROM chunks c JOIN docs d ON d.id = c.doc_id"
        )
        query += " WHERE c.law IS NULL ORDER BY c.id"
        for chunk_id, text, heading, source in kb.store.conn.execute(query):
            passages.append({"chunk": chunk_id, "text": text, "heading": heading or "",
                             "document": source})  # fmt: skip
    else:
        if not where.exists():
            raise DomainLMError(f"{spec.label()}: documents {where}: no such file or folder")
        for doc in read_files(where):
            if isinstance(doc, Unreadable):
                continue  # counted by kb build/stats; here only readable text matters
            for ordinal, chunk in enumerate(doc.chunks):
                passages.append({"chunk": f"{Path(doc.source).name}#{ordinal}",
                                 "text": chunk.text, "heading": chunk.heading or doc.title,
                                 "document": doc.source})  # fmt: skip
    passages = [p for p in passages if len(p["text"].strip()) >= spec.min_chunk_chars]
    if not passages:
        raise DomainLMError(
            f"{spec.label()}: no passages of at least {spec.min_chunk_chars} characters in "
            f"{where or ctx.recipe.kb}"
        )
    return passages


class DocumentGenerator:
    needs_teacher = True

    def __init__(self, spec: DocumentQA):
        self.spec = spec

    def plan(self, ctx: Context) -> list[Item]:
        passages = document_chunks(ctx, self.spec)
        label = self.spec.label()
        chosen = _sample(list(range(len(passages))), self.spec.limit, ctx.rng(label))
        return [Item(f"{label}:{passages[i]['chunk']}", label, passages[i]) for i in chosen]

    def make(self, item: Item, ctx: Context, usage: Usage) -> list[dict[str, Any]]:
        assert ctx.teacher is not None
        passage, heading = item.payload["text"], item.payload["heading"] or "无标题"
        asked = PROMPTS["document_questions.v1"].format(
            n=self.spec.questions_per_chunk, heading=heading, passage=passage
        )
        questions = ctx.teacher.ask(
            [{"role": "user", "content": asked}], _questions, usage, CORRECTIONS["json"]
        )[: self.spec.questions_per_chunk]
        rows = []
        for question in questions:
            prompt = PROMPTS["document_answer.v1"].format(
                heading=heading, passage=passage, question=question
            )
            answer = ctx.teacher.chat([{"role": "user", "content": prompt}], usage)
            flags = {}
            if ctx.recipe.checks.grounding == "judge" and not _supported(
                ctx, passage, question, answer, usage
            ):
                flags["grounding"] = "the teacher judged it not supported by the passage"
            shown = (
                PROMPTS["reading_row.v1"].format(
                    heading=heading, passage=passage, question=question
                )
                if self.spec.with_passage
                else question
            )
            messages = _system(self.spec, [{"role": "user", "content": shown},
                                           {"role": "assistant", "content": answer}])  # fmt: skip
            meta = _provenance(
                ctx, self.spec, item, "document_questions.v1+document_answer.v1",
                document=item.payload["document"], chunk=item.payload["chunk"],
            )  # fmt: skip
            rows.append(row(messages, meta, passage, None, flags, f"{question}\n{answer}"))
        return rows


def _supported(ctx: Context, passage: str, question: str, answer: str, usage: Usage) -> bool:
    assert ctx.teacher is not None
    prompt = PROMPTS["grounding_judge.v1"].format(passage=passage, question=question, answer=answer)

    def verdict(text: str) -> bool:
        value = extract_json(text) if "{" in text else None
        if isinstance(value, dict) and isinstance(value.get("supported"), bool):
            return bool(value["supported"])
        if text.strip().lower() in ("true", "false", "是", "否"):
            return text.strip().lower() in ("true", "是")
        raise ValueError("no verdict")

    return ctx.teacher.ask([{"role": "user", "content": prompt}], verdict, usage,
                           CORRECTIONS["json"], temperature=0.0)  # fmt: skip


# -- self-chat consultations ---------------------------------------------------------------
_SPEAKER = re.compile(r"^\s*(?:咨询者|用户|我|User|Client)\s*[:：]\s*", re.I)


def _lines(path: Path) -> list[str]:
    from domainlm.data.records import read_texts

    if not path.is_file():
        raise DomainLMError(f"{path}: no such file")
    if path.suffix.lower() in (".txt", ".md", ""):
        return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [x.strip() for x in read_texts(path, QUESTION_FIELDS)]


class SelfChatGenerator:
    needs_teacher = True

    def __init__(self, spec: SelfChat):
        self.spec = spec

    def plan(self, ctx: Context) -> list[Item]:
        topics = list(self.spec.topics)
        if self.spec.topics_file:
            topics += _lines(ctx.recipe.path(self.spec.topics_file))
        topics = list(dict.fromkeys(t for t in topics if t.strip()))
        if not topics:
            raise DomainLMError(f"{self.spec.label()}: no topics (give topics or topics_file)")
        label = self.spec.label()
        chosen = _sample(list(range(len(topics))), self.spec.limit, ctx.rng(label))
        return [Item(f"{label}:{i}", label, {"topic": topics[i]}) for i in chosen]

    def make(self, item: Item, ctx: Context, usage: Usage) -> list[dict[str, Any]]:
        assert ctx.teacher is not None
        role, topic = self.spec.role, item.payload["topic"]
        expert = self.spec.system or PROMPTS["self_chat_expert.v1"].format(role=role)
        turns: list[dict[str, Any]] = []
        for _ in range(self.spec.turns):
            history = (
                "\n".join(
                    f"{'咨询者' if t['role'] == 'user' else role}：{t['content']}" for t in turns
                )
                or "（对话还没有开始）"
            )
            prompt = PROMPTS["self_chat_user.v1"].format(role=role, topic=topic, history=history)
            said = _SPEAKER.sub("", ctx.teacher.chat([{"role": "user", "content": prompt}], usage))
            turns.append({"role": "user", "content": said.strip()})
            answer = ctx.teacher.chat([{"role": "system", "content": expert}, *turns], usage)
            turns.append({"role": "assistant", "content": answer})
        meta = _provenance(ctx, self.spec, item, "self_chat_user.v1+self_chat_expert.v1",
                           topic=topic)  # fmt: skip
        return [row([{"role": "system", "content": expert}, *turns], meta)]


# -- retrieval-grounded answers ------------------------------------------------------------
class GroundedGenerator:
    needs_teacher = True

    def __init__(self, spec: Grounded):
        self.spec = spec
        self._current: list[int] | None = None

    def plan(self, ctx: Context) -> list[Item]:
        label = self.spec.label()
        rng = ctx.rng(label)
        if self.spec.questions_file:
            questions = list(dict.fromkeys(_lines(ctx.recipe.path(self.spec.questions_file))))
            if not questions:
                raise DomainLMError(f"{self.spec.label()}: {self.spec.questions_file} is empty")
            chosen = _sample(list(range(len(questions))), self.spec.limit, rng)
            return [Item(f"{label}:q{i}", label, {"question": questions[i]}) for i in chosen]
        ids = _article_ids(ctx, _laws(ctx, self.spec.laws), current=True)
        chosen = _sample(ids, self.spec.limit or 20, rng)
        return [Item(f"{label}:a{i}", label, {"article": i}) for i in chosen]

    def make(self, item: Item, ctx: Context, usage: Usage) -> list[dict[str, Any]]:
        from domainlm.engine.assistant import DEFAULT_SYSTEM, with_articles

        assert ctx.teacher is not None
        rng = ctx.rng(item.key)
        seed_article = None
        question = item.payload.get("question")
        template = "grounded_answer.v1"
        if question is None:
            seed_article = ctx.kb.store.chunks([item.payload["article"]])[item.payload["article"]]
            prompt = PROMPTS["grounded_question.v1"].format(
                citation=seed_article.citation, text=seed_article.text
            )
            question = ctx.teacher.chat([{"role": "user", "content": prompt}], usage).strip()
            template = "grounded_question.v1+" + template
        found = ctx.kb.search(question[-2000:], k=self.spec.top_k)
        distractors = self._distractors(ctx, rng, {c.id for c in found}, {c.law for c in found})
        articles = found + distractors
        rng.shuffle(articles)
        system = with_articles(self.spec.system or DEFAULT_SYSTEM, articles)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        answer = ctx.teacher.chat(messages, usage)
        # The unrelated articles are there to be left out: a row citing one teaches the
        # opposite (its other citations are checked with every row's).
        mixed = {(c.law, c.article_num, c.article_sub) for c in distractors}
        cited = [c for c in ctx.kb.verify(answer) if (c.law, c.article, c.sub) in mixed]
        flags = (
            {"distractor": f"cites {cited[0].text}, an unrelated article mixed in"} if cited else {}
        )
        meta = _provenance(
            ctx, self.spec, item, template,
            retrieved=[c.id for c in found], distractors=[c.id for c in distractors],
            article=seed_article.id if seed_article else None,
            seed_in_prompt=bool(seed_article and seed_article.id in {c.id for c in found}),
        )  # fmt: skip
        return [row([*messages, {"role": "assistant", "content": answer}], meta, flags=flags)]

    def _distractors(
        self, ctx: Context, rng: random.Random, taken: set[Any], laws: set[Any]
    ) -> list[Chunk]:
        """Current articles of other laws than those retrieved (Lawyer LLaMA mixed in
        unrelated articles so the model learns to leave them out)."""
        if not self.spec.distractors:
            return []
        if self._current is None:
            self._current = _article_ids(ctx, [], current=True)
        candidates = self._current
        picked: list[Chunk] = []
        for chunk_id in rng.sample(candidates, min(len(candidates), 50 * self.spec.distractors)):
            if chunk_id in taken:
                continue
            chunk = ctx.kb.store.chunks([chunk_id])[chunk_id]
            if chunk.law in laws or len(chunk.text) < MIN_REVERSE_CHARS:
                continue
            picked.append(chunk)
            if len(picked) == self.spec.distractors:
                break
        return picked


def make_generator(spec: Any) -> Any:
    from domainlm.synth.tooluse import ToolGenerator

    kinds = {"statute_qa": StatuteGenerator, "document_qa": DocumentGenerator,
             "self_chat": SelfChatGenerator, "grounded": GroundedGenerator,
             "tool_use": ToolGenerator}  # fmt: skip
    return kinds[spec.type](spec)
