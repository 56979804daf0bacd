"""The inputs of the Constitutional-AI loop (constitution.py), read and checked before anything runs.

Principles: a UTF-8 text file, one principle per line. Blank lines and lines starting with "#" are
skipped; a principle that appears twice is an error (it would be drawn twice as often).

    Prefer the answer that is honest about what it does not know.
    # a comment
    Prefer the answer that is kind and avoids insults.

Prompts: a .jsonl (or .json) file holds one JSON object per line, {"prompt": "text"} or {"messages": [{"role",
"content"}, ...]} ending with a user turn (other keys are ignored); any other file is text, one
prompt per line (blank and "#" lines skipped, as for principles). A prompt becomes a chat: a text
prompt is the single user message [{"role": "user", "content": text}].

Templates: the four steps' user messages, with named placeholders in braces (str.format; a literal
brace is doubled, {{ or }}):

    answer      {prompt}                                     the first reply's request (default: the prompt)
    critique    {answer} {principle}, optional {prompt}      ask for a critique of the answer
    revision    {answer} {critique}, optional {prompt} {principle}
    judgement   {answer_a} {answer_b} {principle}, optional {prompt}   ends asking for the letter A or B

The defaults are minillm/assets/constitution_templates.json; a --templates JSON file overrides any
of the four (the others keep their default). An unknown placeholder, a missing required one, an
unknown step or a malformed brace is a ConstitutionFileError naming the file and the step.

Every error is a ConstitutionFileError (a ValueError) whose message starts with "file:line:" where
a line is at fault.
"""
import json
import os
import string

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_TEMPLATES = os.path.join(ASSETS, "constitution_templates.json")

# step -> (placeholders it must use, placeholders it may use)
PLACEHOLDERS = {
    "answer": ({"prompt"}, set()),
    "critique": ({"answer", "principle"}, {"prompt"}),
    "revision": ({"answer", "critique"}, {"prompt", "principle"}),
    "judgement": ({"answer_a", "answer_b", "principle"}, {"prompt"}),
}
STEPS = tuple(PLACEHOLDERS)
ROLES = ("system", "user", "assistant")


class ConstitutionFileError(ValueError):
    """A principles, prompts or templates file cannot be used; the message names the file (and line)."""


def _lines(path):
    """[(line number, text)] of the file's lines that are neither blank nor comments, stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as error:
        raise ConstitutionFileError(f"{path}: not UTF-8 text ({error})") from None
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]


def read_principles(path):
    """The principles of a text file (see the module docstring), in file order."""
    principles, seen = [], {}
    for number, text in _lines(path):
        if text in seen:
            raise ConstitutionFileError(f"{path}:{number}: the principle repeats line {seen[text]}; keep one of them")
        seen[text] = number
        principles.append(text)
    if not principles:
        raise ConstitutionFileError(f"{path}: no principles (one per line; blank lines and '#' comments are skipped)")
    return principles


def _check_messages(messages, where):
    if not isinstance(messages, list) or not messages:
        raise ConstitutionFileError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}}")
    for k, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ConstitutionFileError(f"{where}: message {k} must be {{\"role\": one of {', '.join(ROLES)}, "
                                        "\"content\": str}")
    if messages[-1]["role"] != "user":
        raise ConstitutionFileError(f"{where}: the last message must be the user's (the turn the model answers), "
                                    f"got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise ConstitutionFileError(f"{where}: the last user message is empty")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_prompts(path):
    """[{"messages": chat ending with a user turn, "source": "file:line"}] of a prompts file."""
    prompts = []
    if path.endswith((".jsonl", ".json")):
        try:
            with open(path, encoding="utf-8") as f:
                lines = [(n, line) for n, line in enumerate(f.read().splitlines(), 1) if line.strip()]
        except UnicodeDecodeError as error:
            raise ConstitutionFileError(f"{path}: not UTF-8 text ({error})") from None
        for number, line in lines:
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ConstitutionFileError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
                raise ConstitutionFileError(f"{where}: a record is a JSON object with one of 'prompt' (a string) or "
                                            "'messages' (a chat)")
            if "prompt" in record:
                if not isinstance(record["prompt"], str) or not record["prompt"].strip():
                    raise ConstitutionFileError(f"{where}: 'prompt' must be a non-empty string")
                messages = [{"role": "user", "content": record["prompt"]}]
            else:
                messages = _check_messages(record["messages"], where)
            prompts.append({"messages": messages, "source": where})
    else:
        prompts = [{"messages": [{"role": "user", "content": text}], "source": f"{path}:{number}"}
                   for number, text in _lines(path)]
    if not prompts:
        raise ConstitutionFileError(f"{path}: no prompts (a .jsonl file of {{\"prompt\"}} or {{\"messages\"}} "
                                    "records, or text with one prompt per line)")
    return prompts


def placeholders_of(template, where):
    """The set of placeholder names in a str.format template; ConstitutionFileError if malformed."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConstitutionFileError(f"{where}: {error} (write a literal brace as {{{{ or }}}})") from None
    names = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConstitutionFileError(f"{where}: {{{name}{'!' + conversion if conversion else ''}"
                                        f"{':' + spec if spec else ''}}} is not a plain named placeholder such as "
                                        "{answer} (write a literal brace as {{ or }})")
        names.add(name)
    return names


def check_template(step, template, where):
    """template, checked to use the step's required placeholders and no unknown one."""
    if not isinstance(template, str) or not template.strip():
        raise ConstitutionFileError(f"{where}: template {step!r} must be a non-empty string")
    required, optional = PLACEHOLDERS[step]
    names = placeholders_of(template, f"{where}: template {step!r}")
    unknown, missing = names - required - optional, required - names
    allowed = ", ".join("{" + n + "}" for n in sorted(required | optional))
    if unknown:
        raise ConstitutionFileError(f"{where}: template {step!r} has unknown placeholder "
                                    f"{{{sorted(unknown)[0]}}}; it may use {allowed}")
    if missing:
        raise ConstitutionFileError(f"{where}: template {step!r} lacks the placeholder {{{sorted(missing)[0]}}}; "
                                    f"it must use {', '.join('{' + n + '}' for n in sorted(required))}")
    return template


def _read_template_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as error:
        raise ConstitutionFileError(f"{path}: not UTF-8 text ({error})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConstitutionFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(values, dict):
        raise ConstitutionFileError(f"{path}: templates are a JSON object {{\"step\": \"template\", ...}} with steps "
                                    f"among {', '.join(STEPS)}")
    for step in values:
        if step not in PLACEHOLDERS:
            raise ConstitutionFileError(f"{path}: unknown step {step!r}; the steps are {', '.join(STEPS)}")
    return values


def read_templates(path=None):
    """{step: template} of the four steps: the bundled defaults, overridden by path's (if given)."""
    templates = {step: check_template(step, text, DEFAULT_TEMPLATES)
                 for step, text in _read_template_file(DEFAULT_TEMPLATES).items()}
    if path is not None:
        templates.update({step: check_template(step, text, path) for step, text in _read_template_file(path).items()})
    return templates


def fill(template, **values):
    """The template with its placeholders replaced (values it does not use are ignored)."""
    return template.format(**values)
