"""Masking personal data before a text leaves the machine, and putting it back into the answer.

Emails, Chinese resident ID-card numbers and phone numbers (mobile, with or without +86, and landlines
with an area code) become numbered placeholders such as [EMAIL_1], [ID_1], [PHONE_1]. One `Redaction`
serves one record: the same value gets the same placeholder wherever it occurs, so the teacher can copy a
placeholder into its answer and `restore` turns it back into the original.
"""

from __future__ import annotations

import re

from smalltune.tasks.text import EMAIL

# Order matters: an email may hold a phone number (13812345678@163.com) and an ID number holds digit runs.
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("EMAIL", EMAIL),
    ("ID", re.compile(
        r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]"
        r"(?![0-9A-Za-z])")),
    ("PHONE", re.compile(
        r"(?<![0-9])(?:(?:\+|00)86[- ]?)?1[3-9][0-9](?:[- ]?[0-9]{4}){2}(?![0-9])"  # mobile: 138 1234 5678
        r"|(?<![0-9])(?:\(0[0-9]{2,3}\)|0[0-9]{2,3}[- ])[0-9]{7,8}(?![0-9])")),  # landline: 010-12345678
)
_PLACEHOLDER = re.compile(r"\[(?:EMAIL|ID|PHONE)_[0-9]+\]")


class Redaction:
    """The placeholders of one record: mask texts on the way out, restore answers on the way back."""

    def __init__(self) -> None:
        self.originals: dict[str, str] = {}  # placeholder -> value
        self._placeholders: dict[str, str] = {}  # value -> placeholder
        self._counts: dict[str, int] = {}

    def _placeholder(self, kind: str, value: str) -> str:
        if value not in self._placeholders:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            placeholder = f"[{kind}_{self._counts[kind]}]"
            self._placeholders[value] = placeholder
            self.originals[placeholder] = value
        return self._placeholders[value]

    def mask(self, text: str) -> str:
        """The text with every email, ID-card number and phone number replaced by its placeholder."""
        for kind, pattern in _KINDS:
            text = pattern.sub(lambda match: self._placeholder(kind, match.group()), text)
        return text

    def restore(self, text: str) -> str:
        """The text with this record's placeholders replaced by the original values (others left as they are)."""
        return _PLACEHOLDER.sub(lambda match: self.originals.get(match.group(), match.group()), text)
