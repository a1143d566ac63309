"""HAP (hate, abuse, profanity), prompt injection / jailbreak, and bias detectors.

Each scores sentences, not whole documents, so that one abusive line in a 2 kB document is found and its span
reported. Scores are probabilities in [0, 1].
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from functools import cached_property
from typing import Any

from kaip.guardrails.detectors.base import BaseDetector, Detection

SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def sentences(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence, stripped of surrounding spaces; short texts are one sentence."""
    if len(text) <= 200:
        stripped = text.strip()
        return [(text.index(stripped), text.index(stripped) + len(stripped))] if stripped else []
    out = []
    for m in SENTENCE.finditer(text):
        chunk = m.group()
        lead = len(chunk) - len(chunk.lstrip())
        body = chunk.strip()
        if body:
            out.append((m.start() + lead, m.start() + lead + len(body)))
    return out


class HapDetector(BaseDetector):
    """Profanity from `alt-profanity-check`'s model (shipped in its wheel), hate and abuse without swear words
    from the project's own classifier (`models/hap.json`); the score is the larger of the two."""

    default_threshold = 0.5

    @cached_property
    def _profanity(self) -> Any:
        from kaip.guardrails.detectors.profanity import ProfanityModel

        return ProfanityModel().probabilities

    @cached_property
    def _abuse(self) -> Any:
        from kaip.guardrails.detectors.textclf import TextClassifier

        return TextClassifier.load("hap")

    def scores(self, texts: list[str]) -> list[tuple[float, float]]:
        profane = self._profanity(texts)
        abusive = self._abuse.probabilities(texts)
        return [(float(p), float(a)) for p, a in zip(profane, abusive, strict=True)]

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        spans = sentences(text)
        if not spans:
            return []
        out = []
        for (start, end), (profane, abusive) in zip(spans, self.scores([text[s:e] for s, e in spans]), strict=True):
            score = max(profane, abusive)
            if score >= 0.05:
                detection = "profanity" if profane >= abusive else "abuse"
                out.append(Detection(detection, "hap", score, start, end, text[start:end],
                                     metadata={"profanity": round(profane, 4), "abuse": round(abusive, 4)}))
        return out


# ---- prompt injection -----------------------------------------------------------------------------------

_PATTERNS: list[tuple[str, str, float]] = [
    ("instruction_override", r"\b(?:ignore|disregard|forget|override|bypass|skip|cancel|drop|abandon|"
                             r"(?:do not|don't|stop) (?:follow|obey)(?:ing)?)\b[^.\n]{0,40}\b(?:previous|prior|"
                             r"above|earlier|preceding|all|any|your|the)\b[^.\n]{0,20}\b(?:instructions?|rules|"
                             r"directives?|prompts?|guidelines|polic(?:y|ies)|context|system prompt)\b", 0.95),
    ("instruction_override", r"\b(?:new|updated|real|actual) (?:instructions?|task|rules)\b[^.\n]{0,15}"
                             r"(?::|\b(?:is|are|override))", 0.85),
    ("instruction_override", r"\b(?:you (?:now )?have no|without any|free of all|no longer have any) "
                             r"(?:restrictions|rules|limits|guidelines|filters?)\b", 0.9),
    ("instruction_override", r"</?\s*(?:system|user|assistant|im_start|im_end)\s*>|^\s*#{2,}\s*system\b", 0.9),
    ("instruction_override", r"\badmin(?:istrator)? (?:override|mode|code)\b", 0.85),
    ("role_play", r"\b(?:DAN|do anything now|jailbr(?:eak|oken) (?:persona|mode|ai|model|version)|evil ?bot|"
                  r"unfiltered (?:persona|mode|ai|assistant|one)|unrestricted (?:ai|mode|assistant|hacker))\b|"
                  r"\b(?:enter|enable|activate|switch to|you are (?:now )?in|you're (?:now )?in) (?:developer|sudo|"
                  r"god|dev|admin) mode\b", 0.9),
    ("role_play", r"\b(?:act|pretend|roleplay|role-play|play) (?:as|to be) my (?:deceased|dead|late|old) "
                  r"(?:grandmother|grandma|grandfather|grandpa|mother|father)\b", 0.85),
    ("role_play", r"\bif you (?:had|have) no (?:rules|guidelines|restrictions|filters?|polic(?:y|ies))\b", 0.85),
    ("role_play", r"\b(?:pretend|imagine|act as if|roleplay as|role-play as) (?:you are|you're|to be)? ?(?:an? )?"
                  r"(?:ai|model|assistant|chatbot)\b[^.\n]{0,40}\b(?:no|without|never|any)\b[^.\n]{0,20}"
                  r"\b(?:rules|polic(?:y|ies)|restrictions|guidelines|filters?|refuses?)\b", 0.9),
    ("system_prompt_extraction", r"\b(?:print|reveal|show|repeat|output|dump|leak|tell me|copy|summari[sz]e|"
                                 r"translate|list)\b[^.\n]{0,40}\b(?:system (?:prompt|message)|(?:initial|hidden|"
                                 r"secret|confidential|original) (?:instructions|rules|prompt)|your (?:full )?"
                                 r"prompt|developer prompt)\b", 0.95),
    ("system_prompt_extraction", r"\brepeat the (?:text|words) above\b|\beverything (?:before|above) this\b|"
                                 r"\bwhat (?:were|are) your (?:initial|original) instructions\b", 0.9),
]
PATTERNS = [(name, re.compile(p, re.IGNORECASE | re.MULTILINE), score) for name, p, score in _PATTERNS]
B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{20,}={0,2}(?![A-Za-z0-9+/=])")
_ROT13_CUES = re.compile(r"\b(?:vtaber|cerivbhf|vafgehpgvbaf|flfgrz|cebzcg|qvfertneq|ehyrf)\b", re.IGNORECASE)


def decoded_payloads(text: str) -> list[tuple[int, int, str, str]]:
    """(start, end, encoding, decoded text) for base64 runs that decode to readable text, and for rot13."""
    out = []
    for m in B64.finditer(text):
        token = m.group()
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if decoded and sum(c.isprintable() or c.isspace() for c in decoded) / len(decoded) > 0.95 \
                and sum(c.isalpha() or c == " " for c in decoded) / len(decoded) > 0.6:
            out.append((m.start(), m.end(), "base64", decoded))
    if _ROT13_CUES.search(text):
        out.append((0, len(text), "rot13", codecs.decode(text, "rot13")))
    return out


class PromptInjectionDetector(BaseDetector):
    """Patterns for the known shapes (instruction overrides, role-play escapes, system-prompt extraction), a
    classifier the project trained (`models/prompt_injection.json`) for the phrasings the patterns miss, and
    decoding of base64 / rot13 payloads, which are then checked in the same two ways."""

    default_threshold = 0.5

    @cached_property
    def classifier(self) -> Any:
        from kaip.guardrails.detectors.textclf import TextClassifier

        return TextClassifier.load("prompt_injection")

    def _check(self, texts: list[str]) -> list[tuple[str, float]]:
        probs = self.classifier.probabilities(texts)
        out = []
        for text, prob in zip(texts, probs, strict=True):
            best = ("classifier", float(prob))
            for name, pattern, score in PATTERNS:
                if score > best[1] and pattern.search(text):
                    best = (name, max(score, float(prob)))
            out.append(best)
        return out

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        if not text.strip():
            return []
        spans = [(0, len(text))] if len(text) <= 600 else sentences(text)
        out = []
        for (start, end), (name, score) in zip(spans, self._check([text[s:e] for s, e in spans]), strict=True):
            if score >= 0.05:
                out.append(Detection(name, "prompt_injection", score, start, end, text[start:end]))
        payloads = decoded_payloads(text)
        if payloads:
            for (start, end, encoding, _), (name, score) in zip(payloads, self._check([p[3] for p in payloads]),
                                                                  strict=True):
                if score >= 0.5:
                    out.append(Detection("encoded_payload", "prompt_injection", score, start, end, text[start:end],
                                         metadata={"encoding": encoding, "decoded_detection": name}))
        return out


# ---- bias -----------------------------------------------------------------------------------------------

_GROUP_WORDS = {
    "race": r"black|white|asian|asians|hispanics?|latin[oa]s?|latinx|native americans?|arabs?|africans?|"
            r"caucasians?|people of colou?r",
    "gender": r"women|men|girls|boys|females?|males?|ladies|guys|trans(?:gender)? (?:people|women|men)|"
              r"non-binary people|wives|husbands|mothers|fathers",
    "religion": r"muslims?|christians?|jews|jewish people|hindus?|atheists?|catholics?|buddhists?|sikhs?|"
                r"mormons?|evangelicals?",
    "age": r"old people|elderly(?: \w+)?|boomers|young people|teenagers|teens|millennials|gen z|seniors|"
           r"old folks|the old|the young|kids these days",
    "disability": r"disabled(?: \w+)?|autistic(?: \w+)?|blind(?: \w+)?|deaf(?: \w+)?|wheelchair users|"
                  r"people with (?:disabilities|schizophrenia|autism|down syndrome|mental illness)|"
                  r"the mentally ill|cripples",
    "nationality": r"mexicans|indians|chinese(?: people)?|nigerians|russians|immigrants|germans|filipinos|"
                   r"foreigners|americans|french(?: people)?|italians|poles|irish(?: people)?|japanese(?: people)?|"
                   r"koreans|vietnamese(?: people)?|refugees|migrants",
}
GROUPS = {cat: re.compile(rf"\b(?:{words})\b", re.IGNORECASE) for cat, words in _GROUP_WORDS.items()}
_ANY_GROUP = re.compile(r"\b(?:" + "|".join(_GROUP_WORDS.values()) + r")\b", re.IGNORECASE)


def mask_groups(text: str) -> str:
    """Replace every group mention by one token, so that the classifier learns the shape of a sweeping claim
    ("X are lazy", "never hire X") rather than which groups its training sentences happened to name."""
    return _ANY_GROUP.sub("GROUP", text)


class BiasDetector(BaseDetector):
    """Generalisations about protected groups: a mention of a group (race, gender, religion, age, disability,
    nationality) in a sentence the project's classifier (`models/bias.json`) reads as a sweeping claim."""

    default_threshold = 0.5

    @cached_property
    def classifier(self) -> Any:
        from kaip.guardrails.detectors.textclf import TextClassifier

        return TextClassifier.load("bias")

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        spans = []
        for start, end in sentences(text):
            sentence = text[start:end]
            cats = [cat for cat, rx in GROUPS.items() if rx.search(sentence)]
            if cats:
                spans.append((start, end, cats))
        if not spans:
            return []
        probs = self.classifier.probabilities([mask_groups(text[s:e]) for s, e, _ in spans])
        out = []
        for (start, end, cats), prob in zip(spans, probs, strict=True):
            if prob >= 0.05:
                out.append(Detection(f"generalisation:{cats[0]}", "bias", float(prob), start, end, text[start:end],
                                     metadata={"groups": cats}))
        return out
