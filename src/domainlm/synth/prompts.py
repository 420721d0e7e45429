"""The prompt templates the teacher is given, by name (each row's provenance names the
template it came from, so a changed template shows in the data). `.format()` fields are
in braces; literal braces are doubled."""

from __future__ import annotations

PROMPTS: dict[str, str] = {
    "document_questions.v1": (
        "阅读下面的材料，提出{n}个只凭这段材料就能回答的问题。问题要具体、互不重复，"
        '不要问材料之外的事。只输出一个JSON字符串数组，例如["问题一", "问题二"]。\n\n'
        "材料（{heading}）：\n{passage}"
    ),
    "document_answer.v1": (
        "根据下面的材料回答问题。只使用材料中的信息，不要补充材料没有的内容；"
        "材料中没有答案时，说明材料未提及。直接给出答案。\n\n"
        "材料（{heading}）：\n{passage}\n\n问题：{question}"
    ),
    "reading_row.v1": (
        "阅读下面的材料，回答问题。\n\n材料（{heading}）：\n{passage}\n\n问题：{question}"
    ),
    "grounding_judge.v1": (
        "判断下面的回答是否完全由材料支持（回答中的每个事实都能在材料中找到）。"
        '只输出JSON：{{"supported": true}} 或 {{"supported": false}}。\n\n'
        "材料：\n{passage}\n\n问题：{question}\n\n回答：{answer}"
    ),
    "self_chat_user.v1": (
        "你在扮演一位向{role}咨询的普通人，话题是：{topic}\n"
        "下面是到目前为止的对话。请写出你作为咨询者的下一句话：口语化、具体，"
        "第一句要讲清你遇到的情况，之后可以追问细节。只输出这句话本身，不要加“咨询者：”之类的前缀。\n\n"
        "{history}"
    ),
    "self_chat_expert.v1": (
        "你是一名专业、严谨的{role}。回答要准确、有条理；引用法律时写明法律名称和条号，"
        "不确定的不要编造。"
    ),
    "grounded_question.v1": (
        "下面是一条法律条文。请写一个普通人在生活中可能遇到、需要用这条规定来回答的具体咨询问题。"
        "问题里不要出现法律名称和条号。只输出问题本身。\n\n{citation}：{text}"
    ),
    "tool_problem.v1": (
        "请出一道关于“{topic}”的金融计算题，并用下面的工具一步一步解答。\n"
        "工具：\n{tools}\n\n"
        "只输出一个JSON对象，格式如下：\n"
        '{{"question": "题目（给出全部已知数字）", '
        '"steps": [{{"tool": "工具名", "arguments": {{参数}}, "result": 你算出的结果}}], '
        '"answer": "最终答案，写出数字和单位"}}\n'
        "每一步的 result 必须是该工具对这些参数的计算结果；"
        "参数中的数字必须来自题目或前面步骤的结果。"
    ),
}

#: Asked after an answer that was not in the format the prompt asked for.
CORRECTIONS: dict[str, str] = {
    "json": "你的回答不是要求的JSON格式。请只输出JSON，不要任何其他文字。",
    "text": "请只输出要求的内容本身。",
}

#: Forms of the statute Q&A pairs (no teacher): the question, by direction.
STATUTE_QUESTIONS: dict[str, list[str]] = {
    "forward": [
        "《{law}》{label}规定了什么？",
        "{law}{label}的内容是什么？",
        "请告诉我《{law}》{label}的原文。",
        "《{law}》{label}是怎么规定的？",
    ],
    "reverse": [
        "下面这条规定出自哪部法律的哪一条？\n{text}",
        "“{text}”是哪部法律第几条的规定？",
    ],
}
