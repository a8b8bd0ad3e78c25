"""The prompt template, kept out of the code in templates/<name>.json (as tloen/alpaca-lora does).

Rendering returns the prompt and the response apart, so that training can mask the prompt from the loss
and evaluation can feed the prompt alone to the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alpaca_qlora.errors import UserError

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
REQUIRED_KEYS = ("prompt_input", "prompt_no_input", "response_marker")


class TemplateError(UserError, ValueError):
    """A template named in params.yaml that is missing, or a template file that cannot be used."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    prompt_input: str
    prompt_no_input: str
    response_marker: str

    @classmethod
    def load(cls, name: str, directory: Path = TEMPLATES_DIR) -> "PromptTemplate":
        path = directory / f"{name}.json"
        shown = path.relative_to(directory.parent) if directory.is_absolute() else path  # stable in messages
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in directory.glob("*.json")))
            raise TemplateError(f"params.yaml: format.template={name!r}: {shown} does not exist; set it to one of "
                                f"the templates in {directory.name}/ ({known}), or add {shown}")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TemplateError(f"{shown}: not valid UTF-8 JSON ({error}); fix it") from None
        missing = [key for key in REQUIRED_KEYS if not isinstance(spec, dict) or key not in spec]
        if missing:
            raise TemplateError(f"{shown}: missing key(s) {', '.join(missing)}; a template needs "
                                f"{', '.join(REQUIRED_KEYS)}")
        return cls.from_dict({**spec, "name": name})

    @classmethod
    def from_dict(cls, spec: dict[str, str]) -> "PromptTemplate":
        """The inverse of as_dict: a template recorded beside an adapter (metadata.json) back in use."""
        return cls(name=spec["name"], **{key: spec[key] for key in REQUIRED_KEYS})

    def render_prompt(self, record: dict[str, str], *, input_free_variant: bool) -> str:
        """The prompt for one record, ending with the response marker.

        With `input_free_variant`, a record whose input is empty (or only whitespace) gets the template
        without an "### Input:" block, as Stanford Alpaca did; otherwise every record gets the with-input
        template, empty input included, as the Unsloth notebook does.
        """
        if input_free_variant and not record["input"].strip():
            return self.prompt_no_input.format(instruction=record["instruction"])
        return self.prompt_input.format(instruction=record["instruction"], input=record["input"])

    def instruction_marker(self) -> str:
        """The line that opens the instruction ("### Instruction:"): where a model that ran on would start a
        new turn, so inference stops there (with EOS)."""
        return self.prompt_input.split("{instruction}")[0].rstrip().splitlines()[-1].strip()

    def go_template(self, *, input_free_variant: bool) -> str:
        """The same prompt as a Go text/template for Ollama, `.Prompt` the instruction and `.System` the input.

        Go's `if` is false only for an empty string, so with `input_free_variant` an input of spaces alone
        gets the with-input prompt here where render_prompt strips it and uses the without-input one.
        """
        with_input = self.prompt_input.format(instruction="{{ .Prompt }}", input="{{ .System }}")
        without_input = self.prompt_no_input.format(instruction="{{ .Prompt }}")
        for text in (with_input, without_input):
            if text.replace("{{ .Prompt }}", "").replace("{{ .System }}", "").count("{{"):
                raise ValueError(f"template {self.name!r}: '{{{{' in its text would start a Go template action")
        body = f"{{{{ if .System }}}}{with_input}{{{{ else }}}}{without_input}{{{{ end }}}}" if input_free_variant \
            else with_input
        return body + "{{ .Response }}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "prompt_input": self.prompt_input,
                "prompt_no_input": self.prompt_no_input, "response_marker": self.response_marker}
