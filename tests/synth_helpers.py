"""A scripted teacher on 127.0.0.1: an OpenAI-compatible chat endpoint (real uvicorn) that
answers each synth prompt by what it asks, right or wrong on purpose, and misbehaves on
demand (`faults`): 429s and 500s, bodies that are not JSON, slowness, off-format text."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.upstream_front import on_loopback

MODEL = "teacher-1"
#: Topics whose consultations cite a law wrongly, and tool topics answered wrongly.
FABRICATED = "虚构"
REPEALED = "旧法"
WRONG = "错"


def _first_sentence(passage: str) -> str:
    body = passage.split("：\n", 1)[-1]
    for sentence in re.split(r"(?<=[。！？])", body):
        if len(sentence.strip()) >= 15:
            return sentence.strip()
    return body.strip()[:60]


def answer(messages: list[dict[str, Any]]) -> str:
    """The scripted teacher's answer to a synth prompt."""
    last = messages[-1]["content"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if "你的回答不是要求的JSON格式" in last:
        return (
            '["还有哪些规定？"]'
            if "OFFFORMAT-FIXABLE" in json.dumps(messages, ensure_ascii=False)
            else "还是不对"
        )
    if "提出" in last and "只凭这段材料" in last:
        if "OFFFORMAT" in last:
            return "好的，我来出题。"  # no questions: re-asked, then off-format
        if "赎回" in last:
            return "1. 持有多久不收赎回费？\n2. 持有不满7天的赎回费率是多少？"  # numbered lines
        return '```json\n["这段材料的要点是什么？", "材料规定了什么？"]\n```'
    if "根据下面的材料回答问题" in last:
        passage = last.split("问题：")[0]
        if "要点" in last:
            return "本材料要点：" + _first_sentence(passage)
        return _first_sentence(passage)
    if "判断下面的回答是否完全由材料支持" in last:
        return '{"supported": true}'
    if "你在扮演一位向" in last:
        topic = last.split("话题是：")[1].split("\n")[0]
        return f"咨询者：你好，我遇到了{topic}的问题，该怎么办？"
    if "普通人在生活中可能遇到" in last:
        return "楼上邻居从窗户扔东西砸坏了我的车，我该找谁赔偿？"
    if "金融计算题" in last:
        topic = re.search(r"关于“(.+?)”", last).group(1)  # type: ignore[union-attr]
        stated = 11576.25 if WRONG not in topic else 12000
        return json.dumps({
            "question": "本金10000元，年利率5%，按年复利，3年后本利和是多少？",
            "steps": [{"tool": "calculator", "arguments": {"expression": "10000*(1+0.05)**3"},
                       "result": stated}],
            "answer": f"3年后本利和约为{stated}元。",
        }, ensure_ascii=False)  # fmt: skip
    if "以下是检索到的可能相关的法条" in system:
        first = re.search(r"\n1\. (《[^》]+》第[^条]+条)", system)
        cited = first.group(1) if first else "《中华人民共和国民法典》第一千二百五十四条"
        return f"根据{cited}的规定，你可以要求侵权人承担赔偿责任，并保留好证据。"
    if system.startswith("你是一名专业、严谨的"):
        talk = json.dumps(messages, ensure_ascii=False)
        if FABRICATED in talk:
            return "根据《中华人民共和国民法典》第九千零一条，对方必须加倍还款。"
        if REPEALED in talk:
            return "依据《中华人民共和国合同法》第五十二条，该合同无效，你可以主张返还财产。"
        return "根据《中华人民共和国民法典》第六百七十五条，借款人应当按照约定的期限返还借款，你可以先催告，再向法院起诉。"
    return "我不太明白。"


def make_app(faults: dict[str, Any]) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse

    app = FastAPI()
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict[str, Any]) -> Any:
        with lock:
            faults["requests"] = faults.get("requests", 0) + 1
            faults.setdefault("bodies", []).append(body)
            for status in (429, 500):
                if faults.get(f"{status}_times", 0) > 0:
                    faults[f"{status}_times"] -= 1
                    headers = {"retry-after": "0"} if status == 429 else {}
                    return JSONResponse({"error": {"message": f"fault {status}"}}, status, headers)
            if faults.get("garbage_times", 0) > 0:
                faults["garbage_times"] -= 1
                return PlainTextResponse("<html>proxy error</html>", 200,
                                         media_type="application/json")  # fmt: skip
        if faults.get("stall"):
            await asyncio.sleep(faults["stall"])
        text = answer(body["messages"])
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                      "completion_tokens": len(text), "total_tokens": 0},
        }  # fmt: skip

    return app


@contextmanager
def scripted_teacher(faults: dict[str, Any] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """The scripted teacher for the block; yields its /v1 URL and the fault settings (which
    the test may change while it runs; `requests` and `bodies` record what came)."""
    faults = faults if faults is not None else {}
    with on_loopback(make_app(faults)) as (url, _, _):
        yield url + "/v1", faults
