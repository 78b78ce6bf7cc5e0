"""Values under keys inside a text: ``key: value`` lines, ``key=value`` pairs, CSV columns."""

from __future__ import annotations

import regex as re
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from egress_gateway.detection.fields import FIELD_SCORE, classify_key, typed_span
from egress_gateway.detection.recognizers.base import make_result

#: ``first_name: Lena``, ``"city": "Porto"``, ``customer = Ana Souza``,
#: ``Maintainer: Priya Raman <priya@...>`` (one per line or separated by ``,``/``;``/``&``;
#: the value may be followed by ``<`` or ``(``), the key at most 40 characters.
_PAIR = re.compile(
    r"(?:^|(?<=[\s,;&{(]))[\"']?(?P<key>[A-Za-z_][\w.\-]{0,39})[\"']?[ \t]*(?:=|:(?!//))[ \t]*"
    r"[\"']?(?P<value>[^\"'\n,;&{}\[\]<>=:()]{1,60}?)[\"']?[ \t]*(?=$|[\n,;&}\]<(])",
    re.MULTILINE,
)


_COLUMN = re.compile(r"[A-Za-z_][\w .\-]{0,39}")


class KeyedValueRecognizer(EntityRecognizer):
    """PERSON/LOCATION for values whose key says so, inside one text: the text-level twin of
    ``fields.py`` (which sees keys of JSON bodies and forms the walker took apart).

    * ``first_name: Aisling`` / ``city = Galway`` / ``"customer": "Ana Souza"``: the pair's
      key decides, through ``fields.classify_key``; the value must be shaped like a name or
      place (``fields.typed_span``);
    * CSV: a header line of 2+ comma- or tab-separated keys, one of them a person or place
      key; each following row's cell in that column is typed the same way.

    Scored 0.9 (``fields.FIELD_SCORE``). Thing keys are not handled here (nothing is added).
    """

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON", "LOCATION"], name="KeyedValueRecognizer")

    def load(self) -> None:  # noqa: D102
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        out: list[RecognizerResult] = []
        if ":" in text or "=" in text:
            pairs = list(_PAIR.finditer(text))
            keys = frozenset(m.group("key") for m in pairs)
            for m in pairs:
                key = m.group("key")
                self._typed(out, key, m.group("value"), m.start("value"), entities, keys - {key})
        if "\n" in text and ("," in text or "\t" in text):
            self._csv(out, text, entities)
        return out

    def _typed(
        self, out: list, key: str, value: str, start: int, entities: list[str],
        siblings: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        kind = classify_key(key, siblings)
        if kind not in ("PERSON", "LOCATION") or kind not in entities:
            return
        span = typed_span(value, kind)
        if span is not None:
            out.append(make_result(self, kind, start + span[0], start + span[1], FIELD_SCORE))

    def _csv(self, out: list, text: str, entities: list[str]) -> None:
        lines = text.split("\n")
        pos = 0
        header: list[str] | None = None
        sep = ","
        for line in lines:
            if header is None:
                sep = "\t" if "\t" in line else ","
                cells = [c.strip().strip("\"'") for c in line.split(sep)]
                names = len(cells) >= 2 and all(_COLUMN.fullmatch(c) for c in cells)
                if names and any(classify_key(c, set(cells)) in ("PERSON", "LOCATION") for c in cells):
                    header = cells
            elif line.strip():
                col = 0
                offset = pos
                for cell in line.split(sep):
                    if col < len(header):
                        quoted = 1 if cell[:1] in "\"'" else 0
                        siblings = frozenset(header) - {header[col]}
                        self._typed(out, header[col], cell.strip("\"'"), offset + quoted, entities,
                                    siblings)  # fmt: skip
                    offset += len(cell) + 1
                    col += 1
            else:
                header = None
            pos += len(line) + 1
