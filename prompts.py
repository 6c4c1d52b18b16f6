"""Prompts: the warm-start and cold-start inputs, and the gold answer as the model should write it.

The paper (Sec. 7) trains from two starts but publishes neither text, so both are written down here,
in one place (they are shown in the README too).

- Warm start: natural prompts with a task description and an answer-format instruction. The model
  knows what to do; P = p(y*|x*) starts moderate, and RL refines.
- Cold start: the "linearized" input, fields in a fixed order with no task description and no format
  instruction. The model has no idea that a bare short answer is wanted, so P starts tiny, which is
  the regime where the paper's amplification matters.

Both go through the model's chat template with thinking on; the assistant turn then starts with
"<think>\\n" and the rationale z is the thinking block. After "</think>" the model writes the answer,
and the gold target is GOLD_PREFIX + answer + EOS: Qwen3 puts a blank line after "</think>".
"""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GOLD_PREFIX = "\n\n"

TASK_DESCRIPTIONS = {
    "finqa": ("Answer the question about a company's financial report (text and a table). "
              "Compute the number the question asks for."),
    "hotpotqa": "Answer the question using the Wikipedia paragraphs. It needs facts from two of them.",
    "musique": "Answer the question using the Wikipedia paragraphs. It needs facts from several of them.",
}
ANSWER_FORMATS = {
    "finqa": ("After thinking, reply with the final answer only: a number, with a % sign if it is a "
              "percentage, rounded to two decimals if needed. No words, no units, no explanation."),
    "hotpotqa": ("After thinking, reply with the final answer only: a short phrase (a name, a date, "
                 "yes or no), as few words as possible. No explanation."),
    "musique": ("After thinking, reply with the final answer only: a short phrase (a name, a place, a "
                "date), as few words as possible. No explanation."),
}

WARM_TEMPLATE = "{description}\n\n{context}\n\nQuestion: {question}\n\n{answer_format}"
# Project choice: "linearized" = the fields, labelled, in a fixed order, with nothing else.
COLD_TEMPLATE = "context: {context}\nquestion: {question}"


def user_message(example: dict, task: str, start: str) -> str:
    """The user turn for one example (a dict from data.load_examples).

    >>> user_message({"question": "Who?", "context": "T: s."}, "hotpotqa", "cold")
    'context: T: s.\\nquestion: Who?'
    """
    if start == "warm":
        if task not in TASK_DESCRIPTIONS:
            raise ValueError(f"no warm-start prompt for task {task!r}; known: {', '.join(TASK_DESCRIPTIONS)}")
        return WARM_TEMPLATE.format(description=TASK_DESCRIPTIONS[task], context=example["context"],
                                    question=example["question"], answer_format=ANSWER_FORMATS[task])
    if start == "cold":
        return COLD_TEMPLATE.format(context=example["context"], question=example["question"])
    raise ValueError(f"--start must be 'warm' or 'cold', got {start!r}")


def build_prompt(tokenizer, example: dict, task: str, start: str) -> str:
    """Chat-formatted prompt text, ending with the opened thinking block "<think>\\n".

    The thinking block is opened here rather than left to the model so that every token the model
    samples belongs to the rationale z (Qwen3 opens it itself with probability ~1 in thinking mode;
    SmolLM2 and the tiny model would not).
    """
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_message(example, task, start)}],
                                         tokenize=False, add_generation_prompt=True, enable_thinking=True)
    opened = THINK_OPEN + "\n"
    return text if text.endswith(opened) else text + opened  # some templates open it themselves


def gold_text(answer: str) -> str:
    """What the model should write after "</think>" for gold answer y* (EOS is appended as a token)."""
    return GOLD_PREFIX + answer


def prompt_ids(tokenizer, example: dict, task: str, start: str) -> list[int]:
    """Token ids of build_prompt (the chat template already holds any special tokens the model needs)."""
    return tokenizer(build_prompt(tokenizer, example, task, start), add_special_tokens=False).input_ids


def gold_ids(tokenizer, answer: str) -> list[int]:
    """Token ids of y*, the answer GARL and PAFT teacher-force after a rationale: gold_text + EOS."""
    return tokenizer(gold_text(answer), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
