"""Presidio's PII recognizers with the gateway's precision fixes (phones, cards, SSNs, IPs...)."""

from __future__ import annotations

import string
from contextvars import ContextVar

import phonenumbers
import regex as re
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsBankRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)

from egress_gateway.detection.recognizers.base import make_result
from egress_gateway.detection.recognizers.filters import letters_in_enclosing_token

#: The context words the analyzer is given beside a text (its JSON key's words), set by the
#: caller around each analysis: Presidio's context enhancer counts them as surrounding words.
outside_context: ContextVar[tuple[str, ...]] = ContextVar("outside_context", default=())


class GatewayPhoneRecognizer(PhoneRecognizer):
    """python-phonenumbers matching (Presidio) plus a context-gated grouped-digits pattern.

    * Numbers inside identifiers (``claude-sonnet-4-5-20250929``, ``order-2025080512``,
      UUIDs) are dropped: the enclosing token contains letters.
    * Bare digit runs (no separators, no ``+``) are epoch timestamps and ids far more often
      than phone numbers: they keep only 0.3 and need a context word to pass the threshold.
    * International formats that phonenumbers rejects for the configured regions
      (``0490 75 40 81``, ``60-56-85-91``) are found by ``GROUPED`` at 0.3 and likewise need
      a context word (phone, call, mobile, fax, ...). Presidio's UK_NHS recognizer is not
      loaded at all (it scores 1.0 on US numbers like 415-555-2671).
    """

    CONTEXT = [
        "phone", "phones", "telephone", "tel", "mobile", "cell", "cellphone", "fax", "desk",
        "office", "call", "calls", "calling", "dial", "text", "sms", "whatsapp", "reach",
        "contact", "answering", "messages", "message", "landline", "extension",
    ]  # fmt: skip
    SUPPORTED_REGIONS = ("US", "UK", "GB", "DE", "FR", "IL", "IN", "CA", "BR", "AU", "ES", "IT")
    FORMATTED_SCORE = 0.6
    BARE_SCORE = 0.3
    #: Anything phonenumbers could match: 7+ digits with phone punctuation in between.
    CANDIDATE = re.compile(r"[+(]?\d(?:[\d ().\-/]|\s(?=\d)){5,28}\d(?:[ ]?(?:x|ext\.?)[ ]?\d{1,5})?")
    GROUPED = re.compile(
        r"(?<![\w+\-.])(?:(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}"
        r"(?:[ .\-]\d{2,6}){1,4}(?:[ ]?x\d{1,5})?|\+\d{10,14})(?!\w)(?!-\d)"
    )

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__(context=list(self.CONTEXT), supported_regions=self.SUPPORTED_REGIONS)
        #: a bare run scores BARE_SCORE, plus the context factor only with a context word
        self._bare_needs_context = threshold > self.BARE_SCORE

    def _context_possible(self, text: str) -> bool:
        """True if Presidio's context enhancer could find a context word for a match in
        `text`: it compares lower-case words around the match and the outside context words
        by substring, so a context word absent from the whole lower-cased text and from the
        outside words can never raise a score."""
        where = [text.lower(), *(w.lower() for w in outside_context.get())]
        return any(c in w for c in self.context for w in where)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        context: bool | None = None  # _context_possible(text), computed when first needed
        # python-phonenumbers scans the whole text once per region (75% of the engine's time
        # on a 20 KB text). Run it only on windows around digit runs that could be a number.
        for m in self.CANDIDATE.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if not 7 <= digits <= 15 or letters_in_enclosing_token(text, m.start(), m.end()):
                continue
            if (self._bare_needs_context and m.group().isdigit()
                    and "+" not in text[max(0, m.start() - 2) : m.start()]):
                # A bare run (an id, a timestamp; no "+ " before it) can only score
                # BARE_SCORE, below the threshold unless a context word raises it. Without
                # one, skip the matcher (12 regions: ~0.5 ms per run).
                if context is None:
                    context = self._context_possible(text)
                if not context:
                    continue
            s0 = max(0, m.start() - 2)
            window = text[s0 : m.end() + 2]
            for region in self.supported_regions:  # first region that parses it wins
                hits = list(phonenumbers.PhoneNumberMatcher(window, region, leniency=self.leniency))
                for hit in hits:
                    start, end = hit.start + s0, hit.end + s0
                    score = self._score(text, start, end)
                    if score:
                        results.append(
                            make_result(self, self.supported_entities[0], start, end, score)
                        )
                if hits:
                    break
        found = {(r.start, r.end) for r in results}
        for m in self.GROUPED.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if not 7 <= digits <= 15 or (m.start(), m.end()) in found:
                continue
            if self.SSN_SHAPE.fullmatch(m.group()) or self.TABLE_ROW.search(m.group()):
                continue  # the US SSN layout, or a row of a table of small numbers
            if letters_in_enclosing_token(text, m.start(), m.end()):
                continue
            if re.fullmatch(r"\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4}|\d{4}[./\-]\d{1,2}[./\-]\d{1,2}",
                            m.group()):
                continue  # dates
            if self._date_time(text, m.start(), m.end()):
                continue  # an ISO date and the hour after it
            results.append(
                make_result(self, self.supported_entities[0], m.start(), m.end(), self.BARE_SCORE)
            )
        return EntityRecognizer.remove_duplicates(results)

    #: 3-2-4 digits with one separator (``078-05-1123``, ``078.05.1123``, ``078 05 1123``):
    #: the US SSN layout, never a phone grouping.
    SSN_SHAPE = re.compile(r"\d{3}([-. ])\d{2}\1\d{4}")
    #: Rows of small numbers (sports tables, scores, lottery draws): four or more groups of
    #: one or two digits of which one is a single digit (``12 9 2 1 27``), or six or more
    #: such groups (``07 19 23 31 42 48``). No numbering plan writes a phone number that way;
    #: French-style pairs (``06 12 34 56 78``: five pairs) still are phone numbers. Three or
    #: more pairs and a 3-digit group are a golf card (``68 71 69 208``).
    TABLE_ROW = re.compile(
        r"(?<!\d)(?=(?:\d{1,2}[ \t]+){3}\d{1,2}(?!\d))(?:\d\d[ \t]+)*\d(?:[ \t]|(?!\d))"
        r"|(?<!\d)(?:\d{1,2}[ \t]+){5,}\d{1,2}(?!\d)"
        r"|(?<!\d)(?:\d\d[ \t]+){3,}\d{3}(?!\d)"  # golf: three rounds and the total
    )

    #: An ISO date, with an hour (and minutes, seconds) after it: ``2025-11-30 14:05``. The
    #: phone matcher reads ``2025-11-30 14`` as a number; no numbering plan starts with a date.
    DATE_TIME = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?:[ T]\d{1,2}(?::\d\d){0,2})?")

    def _date_time(self, text: str, start: int, end: int) -> bool:
        """The match [start, end) lies inside an ISO date or date-time written at `start`."""
        m = self.DATE_TIME.match(text, start)
        return m is not None and m.end() >= end

    def _score(self, text: str, start: int, end: int) -> float:
        value = text[start:end]
        if letters_in_enclosing_token(text, start, end) or self.SSN_SHAPE.fullmatch(value) or (
            self.TABLE_ROW.search(value) or self._date_time(text, start, end)
        ):
            return 0.0
        value = text[start:end]
        if value.isdigit():
            return self.BARE_SCORE
        return self.FORMATTED_SCORE


class GatewayEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, minus the ``password@host`` part of a URL's userinfo
    (``https://user:s3cret@db.example.com`` is a URL_PASSWORD, not an address)."""

    USERINFO = re.compile(r"://[^\s/@:]*:[^\s/@]*$")

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [
            r for r in results if not self.USERINFO.search(text[max(0, r.start - 200) : r.end])
            or "://" not in text[max(0, r.start - 200) : r.start]
        ]


class InternalEmailRecognizer(PatternRecognizer):
    """E-mail addresses on internal and reserved domains (``ops@payments.internal``,
    ``x@corp.example``, ``bot@ci.local``, ``a@eng.corp``, ``k@home.lan``), which Presidio's
    recognizer rejects because their top-level domain is not on the public suffix list. They
    are exactly the addresses internal services return. Scored like a validated address."""

    #: Reserved (RFC 2606, RFC 6761, RFC 6762) and customary private top-level domains.
    TLDS = ("example", "internal", "local", "localdomain", "corp", "lan", "home", "intranet",
            "private", "test", "invalid", "localhost", "home.arpa")  # fmt: skip
    PATTERNS = [
        Pattern(
            "internal_email",
            r"(?<![\w.+\-])[A-Za-z0-9](?:[\w.+\-]{0,62}[\w+\-])?@"
            r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*"
            r"(?i:" + "|".join(re.escape(t) for t in TLDS) + r")(?![\w\-]|\.\w)",
            1.0,
        )
    ]
    CONTEXT: list[str] = []

    def __init__(self) -> None:
        super().__init__(supported_entity="EMAIL_ADDRESS", name="InternalEmailRecognizer",
                         patterns=self.PATTERNS)  # fmt: skip

    def validate_result(self, pattern_text: str) -> bool | None:  # noqa: D102
        local = pattern_text.split("@", 1)[0]
        return False if ".." in local else None


class _TokenGuardMixin:
    """Drop matches that are digits inside a larger identifier (model ids, order ids)."""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not letters_in_enclosing_token(text, r.start, r.end)]


class GatewayUsBankRecognizer(_TokenGuardMixin, UsBankRecognizer):
    """Presidio's 8-17 digit pattern scores 0.05: it only passes the threshold with a context
    word (account, bank, routing...). Digits inside identifiers are dropped."""


class GatewayUsPassportRecognizer(_TokenGuardMixin, UsPassportRecognizer):
    """9 digits / letter + 8 digits at 0.05-0.1: needs a context word (passport...)."""


class GatewayUsSsnRecognizer(_TokenGuardMixin, UsSsnRecognizer):
    """Presidio's SSN patterns (known sample SSNs such as 078-05-1120 are rejected by design)."""


class GatewayCreditCardRecognizer(_TokenGuardMixin, CreditCardRecognizer):
    """Luhn-validated card numbers; digits inside identifiers are dropped.

    Presidio's patterns cover the 3/4/5/6 (and 1) prefixes only; JCB (2131, 35), Mastercard
    2-series and 12-19 digit Maestro numbers are added by ``ANY_LENGTH``: Luhn-valid, but at
    0.3, so they need a context word (card, cc, visa...) - one random 12-19 digit number in
    ten passes Luhn (epoch-millisecond timestamps, order numbers).
    """

    #: Presidio's patterns, plus Mastercard's 2-series (2221-2720), scored like them (Luhn-valid
    #: numbers of a known issuer prefix score 1.0 without a context word).
    PATTERNS = [
        *CreditCardRecognizer.PATTERNS,
        Pattern(
            "mastercard_2_series",
            r"(?<![\w\-.])2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)([ \-]?)\d{4}\1\d{4}\1\d{4}"
            r"(?![\w\-])",
            0.3,
        ),
    ]
    ANY_LENGTH = re.compile(r"(?<![\w\-.])\d{4}(?:[ \-]?\d{2,4}){2,4}(?:[ \-]?\d{1,3})?(?![\w\-])")
    CONTEXT = [
        "credit", "card", "cards", "cc", "visa", "mastercard", "amex", "discover", "jcb",
        "diners", "maestro", "debit", "payment", "expiring", "expires",
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__(patterns=list(self.PATTERNS), context=list(self.CONTEXT))

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        taken = [(r.start, r.end) for r in results]
        for m in self.ANY_LENGTH.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            if not 12 <= len(digits) <= 19 or any(s < m.end() and m.start() < e for s, e in taken):
                continue
            if self.validate_result(m.group()) and not letters_in_enclosing_token(
                text, m.start(), m.end()
            ):
                results.append(make_result(self, "CREDIT_CARD", m.start(), m.end(), 0.3))
        return results


class GatewayIpRecognizer(IpRecognizer):
    """IPv4/IPv6 (validated by ``ipaddress``). Drops C++/Rust paths such as ``std::vector``
    and ``a::b`` that the IPv6 pattern matches, and dotted quads preceded by ``v``/``version``
    (``v1.2.3.4`` is a version, not an address)."""

    def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):  # noqa: D102
        kept = []
        for r in super().analyze(text, entities, nlp_artifacts, regex_flags):
            value = text[r.start : r.end]
            if ":" in value and sum(c in string.hexdigits for c in value) < 4:
                continue
            before = text[max(0, r.start - 9) : r.start].lower()
            if re.search(r"(?:\bv|version[ :=]*)$", before):
                continue
            kept.append(r)
        return kept



#: Pattern-based PII recognizers per entity (NER entities come from ``names.py``).
PII_RECOGNIZERS: tuple[tuple[str, type[EntityRecognizer]], ...] = (
    ("EMAIL_ADDRESS", GatewayEmailRecognizer),
    ("EMAIL_ADDRESS", InternalEmailRecognizer),
    ("PHONE_NUMBER", GatewayPhoneRecognizer),
    ("CREDIT_CARD", GatewayCreditCardRecognizer),
    ("US_SSN", GatewayUsSsnRecognizer),
    ("IBAN_CODE", IbanRecognizer),
    ("IP_ADDRESS", GatewayIpRecognizer),
    ("US_BANK_NUMBER", GatewayUsBankRecognizer),
    ("US_PASSPORT", GatewayUsPassportRecognizer),
)


def pii_recognizers(entities: set[str], phone_threshold: float = 0.0) -> list[EntityRecognizer]:
    """Presidio recognizers for the PII entities requested (pattern based; NER is separate);
    `phone_threshold`: the PHONE_NUMBER threshold (what a bare digit run must reach)."""
    return [cls(phone_threshold) if cls is GatewayPhoneRecognizer else cls()
            for entity, cls in PII_RECOGNIZERS if entity in entities]
