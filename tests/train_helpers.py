"""Small datasets and recipes for training tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

QA = [
    ("定金的数额有上限吗？", "不得超过主合同标的额的百分之二十。"),
    ("诉讼时效多长？", "普通诉讼时效期间为三年。"),
    ("成年人是多少岁？", "十八周岁以上的自然人为成年人。"),
    ("合同何时成立？", "承诺生效时合同成立。"),
    ("法定婚龄是多少？", "男不得早于二十二周岁，女不得早于二十周岁。"),
    ("试用期最长多久？", "试用期最长不得超过六个月。"),
    ("加班费怎么算？", "工作日延长工作时间支付不低于工资百分之一百五十的报酬。"),
    ("遗嘱有几种形式？", "自书、代书、打印、录音录像、口头和公证遗嘱。"),
]

#: LoRA on every projection and the output layer: the tiny random model's frozen output
#: layer cannot produce confident logits on its own.
ALL_AND_HEAD = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "lm_head",
]


def write_qa(path: Path, pairs: list[tuple[str, str]] = QA) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for question, answer in pairs:
            record = {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_recipe(folder: Path, **sections: Any) -> Path:
    """A recipe for the tiny model on the QA set in `folder`, with `sections` merged in."""
    data_path = write_qa(folder / "train.jsonl")
    recipe: dict[str, Any] = {
        "name": "law",
        "base": {"path": "tiny", "chat_format": "chatglm3"},
        "datasets": [{"path": str(data_path)}],
        "optim": {"max_steps": 6, "batch_size": 2, "max_seq_len": 128, "lr": 1e-3},
        "save_steps": 3,
        "output_dir": str(folder / "experts"),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def losses(expert: Path) -> list[float]:
    rows = [json.loads(line) for line in (expert / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]
