"""Personal data: structured identifiers found by pattern plus checksum, phone numbers by `phonenumbers`,
person names by the project's own name model, and redaction with typed placeholders or masks.

Each pattern is narrow and, where the format has one, confirmed by its check digit (Luhn for cards, ISO 7064
mod 97 for IBANs, the SSA's reserved ranges for SSNs), so that order numbers and look-alikes are left alone.
Dates count as dates of birth only next to a birth cue ("DOB", "born", "date of birth").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import phonenumbers

from kaip.guardrails.detectors.base import BaseDetector, Detection

PII = "pii"

PLACEHOLDERS = {
    "email_address": "[EMAIL]", "phone_number": "[PHONE]", "social_security_number": "[SSN]",
    "credit_card": "[CREDIT_CARD]", "iban": "[IBAN]", "ip_address": "[IP_ADDRESS]",
    "date_of_birth": "[DATE_OF_BIRTH]", "street_address": "[ADDRESS]", "member_id": "[MEMBER_ID]",
    "medical_record_number": "[MRN]", "person": "[NAME]",
}
# Names used in detector_params `entities` (and in the evaluation set) for each detection.
ENTITY_NAMES = {
    "email": "email_address", "phone": "phone_number", "ssn": "social_security_number",
    "credit_card": "credit_card", "iban": "iban", "ip_address": "ip_address", "date_of_birth": "date_of_birth",
    "street_address": "street_address", "member_id": "member_id", "medical_record_number": "medical_record_number",
    "person": "person",
}

EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b")
SSN = re.compile(r"(?<![\d\-])(?!000|666|9\d\d)(\d{3})([- ])(?!00)(\d{2})\2(?!0000)(\d{4})(?![\d\-])")
SSN_BARE = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?|social)\b[^\d\n]{0,20}"
                      r"(?<!\d)(?!000|666|9\d\d)(\d{3}(?!00)\d{2}(?!0000)\d{4})(?!\d)")
CARD = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")
IBAN = re.compile(r"\b([A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30})\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                  r"(?![\d.]*\d)")
IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
          r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
DATE = re.compile(r"\b(?:\d{1,2}[/\-.]\d{1,2}[/\-.](?:19|20)\d{2}|(?:19|20)\d{2}-\d{2}-\d{2}|"
                  rf"{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d{{2}}|"
                  rf"\d{{1,2}} {_MONTH}\.?,? (?:19|20)\d{{2}})\b")
BIRTH_CUE = re.compile(r"(?i)(?:\bdob\b|d\.o\.b\.?|date of birth|birth ?date|birthday|\bborn\b)[^.\n]{0,25}$")
_STREET_TYPES = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
                 r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl)")
ADDRESS = re.compile(
    rf"\b\d{{1,6}} (?:[NSEW]\.? )?(?:[A-Z][a-z]+ ){{1,3}}{_STREET_TYPES}\b\.?"
    r"(?:,? (?:Apt|Apartment|Suite|Ste|Unit|#) ?\w+)?"
    r"(?:, [A-Z][a-z]+(?: [A-Z][a-z]+)*(?:, [A-Z]{2}(?: \d{5}(?:-\d{4})?)?))?")
MEMBER_ID = re.compile(r"\bEVM-\d{6}\b")
MRN = re.compile(r"(?i)\b(?:MRN|medical record (?:number|no\.?|#))[ :#\-]*\d{6,10}\b")

_IBAN_LENGTHS = {"AD": 24, "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18,
                 "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18,
                 "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24}


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 1:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    n = len(digits)
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if n == 16 and (51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720):
        return "mastercard"
    if n == 15 and digits[:2] in ("34", "37"):
        return "amex"
    if n in (16, 19) and (digits.startswith("6011") or digits.startswith("65")):
        return "discover"
    if n == 14 and digits[:2] in ("36", "38", "30"):
        return "diners"
    if n == 16 and 3528 <= int(digits[:4]) <= 3589:
        return "jcb"
    return None


def iban_valid(value: str) -> bool:
    compact = value.replace(" ", "")
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


Finder = Callable[[str], Iterable[tuple[int, int, str, float]]]


def _regex(pattern: re.Pattern[str], entity: str, score: float, group: int = 0) -> Finder:
    def find(text: str) -> Iterable[tuple[int, int, str, float]]:
        for m in pattern.finditer(text):
            yield m.start(group), m.end(group), entity, score
    return find


def _ssn(text: str) -> Iterable[tuple[int, int, str, float]]:
    for m in SSN.finditer(text):
        yield m.start(), m.end(), "social_security_number", 0.95
    for m in SSN_BARE.finditer(text):
        yield m.start(1), m.end(1), "social_security_number", 0.85


def _cards(text: str) -> Iterable[tuple[int, int, str, float]]:
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and card_brand(digits):
            yield m.start(), m.end(), "credit_card", 0.99


def _ibans(text: str) -> Iterable[tuple[int, int, str, float]]:
    for m in IBAN.finditer(text):
        value = m.group(1).rstrip()
        # The greedy pattern may take a following word: shorten until the checksum holds.
        while len(value.replace(" ", "")) >= 15:
            if iban_valid(value):
                yield m.start(1), m.start(1) + len(value), "iban", 0.99
                break
            value = value[:-1].rstrip()


def _ips(text: str) -> Iterable[tuple[int, int, str, float]]:
    for m in IPV4.finditer(text):
        yield m.start(), m.end(), "ip_address", 0.9
    for m in IPV6.finditer(text):
        if m.group().count(":") >= 2:
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            yield m.start(), m.end(), "ip_address", 0.9


def _dates_of_birth(text: str) -> Iterable[tuple[int, int, str, float]]:
    for m in DATE.finditer(text):
        if BIRTH_CUE.search(text[max(0, m.start() - 40):m.start()]):
            yield m.start(), m.end(), "date_of_birth", 0.9


def _phones(text: str) -> Iterable[tuple[int, int, str, float]]:
    if sum(c.isdigit() for c in text) < 7:
        return
    for match in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.VALID):
        yield match.start, match.end, "phone_number", 0.85


STRUCTURED: dict[str, Finder] = {
    "email_address": _regex(EMAIL, "email_address", 0.99),
    "social_security_number": _ssn,
    "credit_card": _cards,
    "iban": _ibans,
    "member_id": _regex(MEMBER_ID, "member_id", 0.99),
    "medical_record_number": _regex(MRN, "medical_record_number", 0.95),
    "ip_address": _ips,
    "date_of_birth": _dates_of_birth,
    "street_address": _regex(ADDRESS, "street_address", 0.85),
    "phone_number": _phones,  # last: numbers already claimed by the checksummed types are not phones
}


def _resolve(found: list[Detection]) -> list[Detection]:
    """Drop a finding that overlaps an earlier-ranked one: pattern-and-checksum types first (a capitalised street
    or city inside an address is the address, not a person), then higher score, then longer."""
    found.sort(key=lambda d: (d.detection == "person", -d.score, -((d.end or 0) - (d.start or 0)), d.start or 0))
    kept: list[Detection] = []
    for d in found:
        if all((d.end or 0) <= (k.start or 0) or (d.start or 0) >= (k.end or 0) for k in kept):
            kept.append(d)
    return sorted(kept, key=lambda d: d.start or 0)


class PiiDetector(BaseDetector):
    """detector_params: `entities` (list of detection names to look for; default all)."""

    default_threshold = 0.5

    def __init__(self, *, names: bool = True) -> None:
        self.names = names

    @cached_property
    def name_model(self) -> Any:
        from kaip.guardrails.detectors.names import NameModel

        return NameModel.load()

    def detect(self, text: str, params: dict[str, Any]) -> list[Detection]:
        wanted = params.get("entities")
        wanted_set = {ENTITY_NAMES.get(e, e) for e in wanted} if isinstance(wanted, list) else None
        found: list[Detection] = []
        for entity, finder in STRUCTURED.items():
            if wanted_set is not None and entity not in wanted_set:
                continue
            for start, end, detection, score in finder(text):
                found.append(Detection(detection, PII, score, start, end, text[start:end]))
        if self.names and (wanted_set is None or "person" in wanted_set):
            for start, end, score in self.name_model.find(text):
                found.append(Detection("person", PII, round(score, 6), start, end, text[start:end]))
        return _resolve(found)


def redact(text: str, detections: Iterable[Detection], *, style: str = "placeholder", mask_char: str = "*") -> str:
    """Replace each span by its typed placeholder (`[SSN]`) or by a mask of the same length.

    Overlapping spans are merged; spans are applied right to left so that earlier offsets stay valid.
    """
    spans = sorted(((d.start, d.end, d.detection) for d in detections if d.start is not None and d.end is not None),
                   key=lambda s: (s[0], -s[1]))
    merged: list[tuple[int, int, str]] = []
    for start, end, det in spans:
        if merged and start < merged[-1][1]:
            prev = merged[-1]
            merged[-1] = (prev[0], max(prev[1], end), prev[2])
        else:
            merged.append((start, end, det))
    out = text
    for start, end, det in reversed(merged):
        if style == "mask":
            replacement = "".join(c if c in " -@." else mask_char for c in text[start:end])
        else:
            replacement = PLACEHOLDERS.get(det, f"[{det.upper()}]")
        out = out[:start] + replacement + out[end:]
    return out
