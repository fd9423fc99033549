"""Guardrails: what stands between untrusted text and a model's prompt, tools and reply.

What it owns: `GuardConfig` (which guards are on, the secrets to protect, the tool allow-list,
the hosts links may point to), `Verdict` (one scan's result), and `Guard`, which implements the
agent loop's hooks (`twofiles.chat.agent.TurnGuard`) so that `chat`, `serve` and `redteam` run
the same guards:

- input: rules over the user's text, and over what it decodes to (base64, rot13, ...);
- classifier: a small learned classifier of injection and jailbreak text;
- spotlight: untrusted content (tool results, documents) delimited and datamarked, so the
  model can tell data from instructions;
- tools: an allow-list and argument checks before a tool runs;
- output: secrets, canaries, and links or images pointing outside, removed from replies.

The package, one concept per file: rules.py (the input rules), decode.py (decode-and-rescan),
classifier.py (the learned classifier and its shipped weights, data/), spotlight.py
(delimiters, datamarking, the system prompt's note), policy.py (tool allow-list and argument
checks), output.py (the streaming output filter); this file is the facade.

What it leaves to others: where untrusted text arrives (chat, serve, rag), the reserved role
tokens that no text can forge (chat.templates), and measuring the guards (twofiles.redteam).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twofiles.chat.agent import GuardAction
from twofiles.errors import BadInputError
from twofiles.guard.decode import decodings, english_ratio
from twofiles.guard.output import OutputFilter
from twofiles.guard.policy import check_call
from twofiles.guard.rules import match_rules
from twofiles.guard.spotlight import datamark, delimit, with_note

if TYPE_CHECKING:
    from twofiles.chat.messages import Message, ToolCall

GUARDS = ("input", "classifier", "spotlight", "tools", "output")

REFUSAL = "I can't help with that: the request was flagged by this assistant's input guard."


def parse_guards(spec: str | Sequence[str] | None) -> frozenset[str]:
    """ "none" / "" -> no guard, "all" -> every guard, else a comma list of GUARDS."""
    names = spec.split(",") if isinstance(spec, str) else list(spec or [])
    names = [n.strip().lower() for n in names if n.strip()]
    if names in ([], ["none"]):
        return frozenset()
    if names == ["all"]:
        return frozenset(GUARDS)
    unknown = [n for n in names if n not in GUARDS]
    if unknown:
        raise BadInputError(
            f"--guard: unknown guard {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(GUARDS)}, all or none"
        )
    return frozenset(names)


@dataclass(frozen=True)
class GuardConfig:
    guards: frozenset[str] = frozenset()  # which of GUARDS are on
    secrets: tuple[
        str, ...
    ] = ()  # strings no reply may contain (a system prompt's secret, canaries)
    allowed_tools: frozenset[str] | None = None  # tools that may run; None: every tool given
    allowed_hosts: tuple[str, ...] = ()  # links and images to these hosts pass the output guard
    # the classifier's score from which input is flagged; None: the one chosen on validation
    threshold: float | None = None
    refusal: str = REFUSAL  # the reply to a blocked input


@dataclass(frozen=True)
class Verdict:
    """One scan: flagged or not, a score in [0, 1], and the reasons (rule names, decodings)."""

    flagged: bool
    score: float
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "flagged": self.flagged,
            "score": round(self.score, 4),
            "reasons": list(self.reasons),
        }


@dataclass
class Guard:
    """The guards of `config`, as the agent loop's hooks (chat.agent.TurnGuard).

    One Guard per conversation (or request): `prepare` records the turn's tool schemas and the
    secrets it finds in the system prompt. Building one is cheap: the classifier is loaded on
    first use and shared by the process (classifier.load_classifier)."""

    config: GuardConfig = field(default_factory=GuardConfig)
    classifier: Any = None  # scores text in [0, 1]: `score(texts) -> list[float]`; None: shipped
    tool_schemas: dict[str, Any] = field(default_factory=dict)  # tool name -> JSON schema
    found_secrets: tuple[str, ...] = ()  # canary-like tokens of the system prompt (prepare)

    @classmethod
    def from_config(cls, config: GuardConfig, classifier_path: str | None = None) -> Guard:
        """A Guard with its classifier loaded now when "classifier" is on (so a missing
        embedder fails before the first turn, not during it)."""
        guard = cls(config)
        if "classifier" in config.guards:
            from twofiles.guard.classifier import load_classifier

            guard.classifier = load_classifier(classifier_path)
            _ = guard.classifier.embedder  # the embedder too: scans are timed without its load
        return guard

    def _classifier(self) -> Any:
        if self.classifier is None:
            from twofiles.guard.classifier import load_classifier

            self.classifier = load_classifier()
        return self.classifier

    @property
    def threshold(self) -> float:
        if self.config.threshold is not None:
            return self.config.threshold
        if "classifier" in self.config.guards:
            return float(getattr(self._classifier(), "threshold", 0.5))
        return 0.5

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.config.secrets, *self.found_secrets)))

    def scan(self, text: str) -> Verdict:
        """Input scanning with the guards that are on: "input" runs the rules over `text` and
        over what it decodes to ("base64>rule:override"); "classifier" scores `text` (and, with
        "input" on, the decodings that read as English)."""
        return self.scan_many([text])[0]

    def scan_many(self, texts: Sequence[str]) -> list[Verdict]:
        """`scan` for a batch: the classifier embeds all texts (and decodings) at once."""
        on = self.config.guards
        reasons: list[list[str]] = [[] for _ in texts]
        scores = [0.0 for _ in texts]
        to_classify: list[tuple[int, str, str]] = []  # (text index, chain, text)
        for i, text in enumerate(texts):
            variants = [("", text)]
            if "input" in on:
                variants += decodings(text)
                for chain, t in variants:
                    hits = match_rules(t)
                    reasons[i] += [f"{chain}>rule:{h}" if chain else f"rule:{h}" for h in hits]
                if reasons[i]:
                    scores[i] = 1.0
            if "classifier" in on:
                to_classify += [(i, "", text)] + [
                    (i, c, t) for c, t in variants[1:] if english_ratio(t) >= 0.2
                ]
        if to_classify:
            threshold = self.threshold
            ps = self._classifier().score([t for _, _, t in to_classify])
            for (i, chain, _), p in zip(to_classify, ps):
                p = float(p)
                if p >= threshold:
                    reasons[i].append(
                        f"{chain}>classifier:{p:.2f}" if chain else f"classifier:{p:.2f}"
                    )
                scores[i] = max(scores[i], p)
        return [Verdict(bool(r), s, tuple(r)) for r, s in zip(reasons, scores)]

    # -- the agent loop's hooks (chat.agent.TurnGuard) --

    def check_input(self, messages: Sequence[Message]) -> tuple[str, list[GuardAction]] | None:
        if not {"input", "classifier"} & self.config.guards:
            return None
        last = next((m for m in reversed(messages) if m.role == "user"), None)
        if last is None:
            return None
        v = self.scan(last.content)
        if not v.flagged:
            return None
        guard = "input" if any("rule:" in r for r in v.reasons) else "classifier"
        return self.config.refusal, [GuardAction(guard, "input", v.reasons, v.score)]

    def prepare(
        self, messages: Sequence[Message], tools: Mapping[str, Any] | None = None
    ) -> list[Message]:
        """Once per turn, before the first round: records the tools' schemas (for argument
        checks) and the canary-like tokens of the system prompt (protected like `secrets`), and
        with "spotlight" adds the note that marked text is data to the system message."""
        if tools:
            self.tool_schemas = {n: getattr(t, "parameters", None) or {} for n, t in tools.items()}
        system = " ".join(m.content for m in messages if m.role == "system")
        found = [next(g for g in m if g) for m in _SYSTEM_SECRET.findall(system)]
        self.found_secrets = tuple(dict.fromkeys(found))
        if "spotlight" in self.config.guards:
            return with_note(messages)
        return list(messages)

    def untrusted(self, text: str, source: str) -> str:
        if "spotlight" not in self.config.guards:
            return text
        return delimit(text, source)

    def mark_document(self, text: str) -> str:
        """A retrieved passage's text as the prompt carries it (rag.grounding's `mark`): marked
        with "spotlight" on, as it is otherwise."""
        return datamark(text) if "spotlight" in self.config.guards else text

    def check_call(self, call: ToolCall) -> GuardAction | None:
        if "tools" not in self.config.guards:
            return None
        why = check_call(
            call.name,
            call.arguments,
            schema=self.tool_schemas.get(call.name),
            allowed_tools=self.config.allowed_tools,
            allowed_hosts=self.config.allowed_hosts,
            secrets=self.secrets,
        )
        return GuardAction("tools", "tool_call", tuple(why)) if why else None

    def output_filter(self) -> OutputFilter | _Passthrough:
        if "output" not in self.config.guards:
            return _Passthrough()
        return OutputFilter(self.secrets, self.config.allowed_hosts)


# a password stated in a system prompt, a code or key with a digit in it ("the key is patience"
# and "the code is written in Python" state no secret), and canary tokens
# (redteam.suite.new_canary: "PLUM-3f9a1c")
_SYSTEM_SECRET = re.compile(
    r"(?i:password|passphrase|secret)(?:\s+is|\s*:)\s+[\"'“]?([^\s\"'”.,;]{4,})"
    r"|(?i:code|key)(?:\s+is|\s*:)\s+[\"'“]?(?=[^\s\"'”.,;]{4,})([^\s\"'”.,;]*\d[^\s\"'”.,;]*)"
    r"|\b([A-Z][A-Z0-9]{2,}-[0-9A-Fa-f]{4,})\b"
)


class _Passthrough:
    def push(self, delta: str) -> str:
        return delta

    def finish(self) -> str:
        return ""

    def actions(self) -> list[GuardAction]:
        return []


__all__ = ["GUARDS", "REFUSAL", "Guard", "GuardConfig", "Verdict", "parse_guards"]
