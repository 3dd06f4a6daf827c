"""A multi-turn chat session: history, chat template, context-window truncation, streaming.

    from lmforge.infer.chat import ChatSession
    chat = ChatSession(model, tokenizer, params=SamplingParams(temperature=0), system="Be brief.")
    for piece in chat.stream("What is the capital of France?"):
        print(piece, end="", flush=True)
    chat.send("And of Italy?")   # the whole answer at once; the history now holds four messages

Each turn renders the system message, the history and the new user message with the chat template
(`lmforge.tokenizer.chat`) and its generation prompt, and generates until the template's end-of-turn
token (or end-of-text, a stop string, `max_new_tokens`). The prompt plus the answer budget
(`max_new_tokens`) must fit the model's context: when they do not, whole exchanges are dropped from
the oldest on (the system message stays), and they stay dropped. A user message that does not fit
even alone is a `UserError`. An answer that is interrupted (Ctrl-C, `close()` on the stream) is
kept in the history as far as it got, so the history matches what was shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from torch import nn

from lmforge.errors import UserError
from lmforge.infer.generate import stream
from lmforge.infer.sampling import SamplingParams
from lmforge.tokenizer.chat import ChatTemplate, get_chat_template
from lmforge.tokenizer.core import Tokenizer


class ChatSession:
    """A conversation with one model; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        template: ChatTemplate | str | Path | None = None,
        params: SamplingParams | None = None,
        system: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if not isinstance(template, ChatTemplate):
            template = get_chat_template(tokenizer, template)
        self.template = template
        self.params = params or SamplingParams()
        self.system = system or None
        self.history: list[dict[str, str]] = []
        """User and assistant messages, oldest first (the system message is kept apart)."""
        self.dropped = 0
        """Messages dropped so far to fit the context window."""

    @property
    def context(self) -> int:
        return self.model.config.max_seq_len

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as the template sees it: system message (if any), then the history."""
        return self._system() + self.history

    def reset(self) -> None:
        """Forget the history (the system message stays)."""
        self.history = []
        self.dropped = 0

    def set_system(self, text: str | None) -> None:
        """Set the system message; an empty text or None removes it."""
        self.system = text or None

    def prompt(self, text: str) -> str:
        """The rendered prompt for the user message `text`, dropping the oldest exchanges from the
        history until the prompt and `max_new_tokens` fit the context."""
        budget = self.context - self.params.max_new_tokens
        user = {"role": "user", "content": text}
        starts = sorted({0, len(self.history)} | self._user_turns())
        for start in starts:
            kept = self.history[start:]
            rendered = self.template.render([*self._system(), *kept, user], True)
            length = len(self.tokenizer.encode(rendered))
            if length <= budget:
                self.dropped += start
                self.history = kept
                return rendered
        raise UserError(
            f"the message needs {length} tokens with the chat template"
            f"{' and system prompt' if self.system else ''}, and the answer "
            f"{self.params.max_new_tokens} more (max_new_tokens): more than the model's context of "
            f"{self.context} tokens; shorten the message or lower --max-new-tokens"
        )

    def stream(self, text: str) -> Iterator[str]:
        """Answer the user message `text` piece by piece; the exchange joins the history."""
        prompt = self.prompt(text)
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        answer = stream(
            self.model,
            self.tokenizer,
            prompt,
            self.params,
            stop=self.template.stop_strings,
            stop_token_ids=self.template.stop_token_ids,
        )
        try:
            with closing(answer):
                for piece in answer:
                    pieces.append(piece)
                    yield piece
        finally:  # also on Ctrl-C or close(): keep what was shown
            self.history.append({"role": "assistant", "content": "".join(pieces)})

    def send(self, text: str) -> str:
        """Answer the user message `text` (the whole answer at once)."""
        return "".join(self.stream(text))

    def _system(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _user_turns(self) -> set[int]:
        return {i for i, m in enumerate(self.history) if m["role"] == "user"}
