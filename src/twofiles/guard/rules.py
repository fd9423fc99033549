"""The input guard's rules: regular expressions for the text of known attack families.

What it owns: `RULES` (one named pattern per family: instruction override, prompt and secret
extraction, jailbreak personas, refusal suppression, prefix injection, forged role markers,
exfiltration through links and images, many-shot fake dialogue) and `match_rules`, which also
tells an attack from a *mention* of one: a question about "ignore previous instructions" is not
an instruction to ignore them. What it leaves to others: decoding obfuscated text before the
rules see it (decode.py), the learned classifier (classifier.py).

The rules are written for recall on the families and checked for false positives against the
benign look-alikes in tests/test_guard.py (security questions, code, everyday requests).
"""

from __future__ import annotations

import re

_F = re.I | re.S

# name -> pattern; a hit reports "rule:<name>"
RULES: dict[str, re.Pattern[str]] = {
    "override": re.compile(
        r"\b(ignore|disregard|forget|skip|override|bypass|drop|abandon|discard)\b.{0,40}?"
        r"\b(previous|prior|above|earlier|all|any|your|the|system|original|initial|preceding)\b"
        r".{0,40}?\b(instructions?|rules?|prompts?|directions?|guidelines?|programming|"
        r"constraints?|directives?|orders|policies|polic(y|ies)|restrictions?|context)\b"
        r"|\bnew (instructions?|rules?|directives?)\s*:"
        r"|\bfrom now on,? (you|your)\b.{0,30}?\b(will|are|must|shall|only|answer|respond|obey)\b"
        r"|\byour (real|true|new) (instructions|task|purpose|goal) (is|are)\b",
        _F,
    ),
    "extraction": re.compile(
        r"\b(reveal|print|show|repeat|output|tell|give|spell|write( out)?|leak|say|display|dump|"
        r"recite|share|disclose|read( me)?|copy|paste|translate|summari[sz]e|what(?:'s| is| are| was))"
        r"\b.{0,40}?(\b(your|the|this|its)\s+(\w+\s+)?(system|hidden|initial|original|secret|"
        r"developer|pre-?prompt)\s*"
        r"(prompt|message|instructions?|rules|password|passphrase|key|code)|"
        r"\b(your|the)\s+(secret|password|passphrase|system prompt)\b"
        r"(?!\s+(to|of|behind|for a|ingredient|recipe|santa|garden|life))|"
        r"\byour\s+(instructions|rules|prompt|guidelines)\b|"
        r"\b(text|words|everything|messages?) (above|before this)|"
        r"\bverbatim\b)",
        _F,
    ),
    "persona": re.compile(
        r"\bDAN\b|\bSTAN\b|\bDUDE\b|(?i:\bdo anything now\b|\bdeveloper mode\b|\bjail ?broken\b|"
        r"\bjailbreak mode\b|"
        r"\b(you|an? (ai|assistant|model|chatbot|bot))\b.{0,25}?\b(has|have|with|having|had)\s+"
        r"no\s+(restrictions|limits|limitations|filters|rules|guidelines|censorship|ethics|morals|"
        r"boundaries)\b|"
        r"\bwithout (any )?(restrictions|filters|censorship|ethics|morals|ethical guidelines)\b|"
        r"\bfree (of|from) (all |any )?(restrictions|filters|rules|censorship|guidelines)\b|"
        r"\b(unrestricted|uncensored|unfiltered|amoral|unaligned|unbound) (ai|assistant|model|mode|"
        r"version|chatbot|persona)\b|"
        r"\byou are no longer\b|\bbreak (free|out) of\b.{0,20}\b(rules|restrictions|constraints)\b|"
        r"\b(evil|dark|shadow) (twin|confidant|mode|version|assistant)\b|"
        r"\bAIM\b.{0,40}\bmachiavellian\b|\bstay in character\b)",
        re.S,  # the acronyms are case-sensitive ("dan" is a name), the rest not
    ),
    "refusal-suppression": re.compile(
        r"\b(do not|don't|never|must not|mustn't|cannot|can't|won't)\b.{0,15}?\b(refuse|decline|"
        r"apologi[sz]e|say (no|sorry|you can't|you cannot)|include (any )?(warnings?|disclaimers?))"
        r"|\bwithout (any )?(warnings?|disclaimers?|caveats|moralizing|refusing)\b"
        r"|\byou (cannot|can't|are not allowed to|may not) (refuse|say no)\b"
        r"|\brefusing is not an option\b",
        _F,
    ),
    "prefix-injection": re.compile(
        r"\b(start|begin|open|prefix)\b.{0,20}?\b(your|the)\s+(reply|response|answer|output)\b"
        r".{0,10}?\bwith\b.{0,10}?[\"'“](sure|absolutely|of course|certainly|here|yes)"
        r"|\byour (first|opening) (words?|line|sentence) (must|should|will) be\b"
        r"|\b(respond|reply|answer) (only )?with [\"'“](sure|absolutely|yes|here is)",
        _F,
    ),
    "fake-role": re.compile(
        r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|"
        r"end_header_id|assistant_start|assistant_end|user_start|user_end|bos|eos)\|?>"
        r"|\[/?INST\]|<</?SYS>>|</?s>\s*\[INST|"
        r"(^|\n)\s*(#{2,}\s*)?(system|admin|administrator|developer|root)\s*"
        r"(message|prompt|override|notice|update|instruction)?\s*[:\]]"
        r"|(^|\n)\s*\[(system|admin|developer)( message| note| override)?\]"
        r"|<(system|admin|sys)>",
        re.I,
    ),
    "exfiltration": re.compile(
        r"!\[[^\]\n]{0,100}\]\(\s*(https?:)?//[^)\s]*\?[^)\s]*=|"
        r"\[[^\]\n]{0,100}\]\(\s*(https?:)?//[^)\s]*\?[^)\s]*=[^)\s]*(\{|\[|<|%7B|SECRET|PASSWORD|"
        r"DATA|CANARY)|"
        r"<img\b[^>]*\bsrc\s*=|"
        r"\b(append|add|put|include|encode|embed|insert|attach)\b.{0,40}?\b(secret|password|"
        r"conversation|chat history|system prompt|data|canary|token)\b.{0,40}?\b(to|in|into|as)\b"
        r".{0,20}?\b(the )?(url|link|image|query|address|parameter)\b|"
        r"\b(send|email|forward|post|upload|leak|transmit)\b.{0,40}?\b(secret|password|"
        r"conversation|chat history|system prompt|credentials|api key)\b.{0,40}?"
        r"(\bto\b.{0,10}?(@|https?://|attacker|external|this address))",
        _F,
    ),
}

# "User: ...\nAssistant: ..." lines: three or more exchanges in one message is many-shot
# (Anil et al. 2024, "Many-shot jailbreaking": faked turns that show the assistant complying)
_TURN = re.compile(r"(^|\n)\s*(user|human|q|you|assistant|ai|a|bot|model)\s*:", re.I)
MANY_SHOT_TURNS = 6

# Text that talks *about* attacks: a question, or the phrase in quotes with words of discussion
# around it. A mention is judged by what remains outside the quotes.
_QUOTED = re.compile(r"\"[^\"]{3,200}\"|“[^”]{3,200}”|'[^'\n]{3,200}'|`[^`]{3,200}`")
_META = re.compile(
    r"\b(what|why|how|explain|mean|means|meaning|define|definition|example|examples|defend|"
    r"defen[cs]e|detect|detection|protect|prevent|mitigat\w*|attack|attacks|attacker|attackers|"
    r"injection|jailbreak(s|ing)?|paper|article|research|classif\w*|filter\w*|phrase|sentence|"
    r"pattern|called|known as|is it safe|should i worry|security|lecture|essay|write about)\b",
    re.I,
)
_QUESTION_START = re.compile(
    r"^\s*(what|why|how|is|are|can|could|should|does|do|which|explain|describe|tell me about|"
    r"give me an overview|i'?m (writing|studying|reading)|in (my|our|the) (paper|course|class))\b",
    re.I,
)
# the rules that a mention may excuse: the ones matching phrases people quote and discuss
_MENTIONABLE = {"override", "extraction", "persona", "refusal-suppression", "prefix-injection"}


def _is_mention(text: str, span: tuple[int, int]) -> bool:
    """Whether the hit at `span` is quoted or discussed rather than addressed to the model."""
    for q in _QUOTED.finditer(text):
        if q.start() <= span[0] and span[1] <= q.end():
            outside = text[: q.start()] + " " + text[q.end() :]
            return bool(_META.search(outside))
    # unquoted: a question about attacks ("How do attackers use 'ignore previous instructions'?")
    return bool(
        (_QUESTION_START.search(text) or text.rstrip().endswith("?"))
        and re.search(r"\b(attack|attacker|injection|jailbreak|security|defen[cs]e)", text, re.I)
    )


def match_rules(text: str) -> list[str]:
    """The names of the rules `text` hits, in RULES order (mentions excused), then "many-shot"."""
    hits = []
    for name, rx in RULES.items():
        for m in rx.finditer(text):
            if name in _MENTIONABLE and _is_mention(text, m.span()):
                continue
            hits.append(name)
            break
    if len(_TURN.findall(text)) >= MANY_SHOT_TURNS:
        hits.append("many-shot")
    return hits


__all__ = ["MANY_SHOT_TURNS", "RULES", "match_rules"]
