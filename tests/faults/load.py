"""A deterministic load for the fault cases: several hundred markdown documents across a few
tenants, produced in waves, with updates (changed, added and vanished sections) and deletes
(some documents later come back) mixed in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tests.pipeline_support import event

TENANTS = ("acme", "globex", "initech")

# Plain English words: about one model token each, so a section's size in tokens is predictable.
_WORD_LIST = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her all she there would their we him been has when who will no "
    "more if out so said what up its about into than them can only other new some could time "
    "these two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because each "
    "just those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three system water river stone "
    "signal market garden window engine paper light music forest valley bridge station harbor "
    "winter summer letter morning island village meadow thunder silver copper canvas ladder"
)
WORDS = tuple(_WORD_LIST.split())


@dataclass
class Section:
    heading: str
    paragraphs: list[str]


@dataclass
class Document:
    tenant: str
    doc_id: str
    title: str
    sections: list[Section] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for section in self.sections:
            parts.append(f"## {section.heading}")
            parts.extend(section.paragraphs)
        return "\n\n".join(parts) + "\n"


def _sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(6, 14))
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(2, 4)))


def _section(rng: random.Random, number: int) -> Section:
    heading = f"Part {number}: {' '.join(rng.choices(WORDS, k=3))}"
    return Section(heading, [_paragraph(rng) for _ in range(rng.randint(1, 2))])


def _document(rng: random.Random, tenant: str, number: int) -> Document:
    doc = Document(tenant, f"doc-{number:04d}", f"Document {number} {rng.choice(WORDS)}")
    doc.sections = [_section(rng, i) for i in range(rng.randint(7, 10))]
    return doc


def _update(rng: random.Random, doc: Document) -> None:
    """Change two sections; sometimes drop the last one (its chunks vanish), sometimes add one."""
    for section in rng.sample(doc.sections, min(2, len(doc.sections))):
        section.paragraphs[rng.randrange(len(section.paragraphs))] = _paragraph(rng)
    roll = rng.random()
    if roll < 0.3 and len(doc.sections) > 3:
        doc.sections.pop()
    elif roll < 0.6:
        doc.sections.append(_section(rng, len(doc.sections)))


@dataclass(frozen=True)
class Load:
    seed: int
    waves: list[list[dict[str, Any]]]

    @property
    def events(self) -> int:
        return sum(len(w) for w in self.waves)

    def final_documents(self) -> dict[tuple[str, str], str | None]:
        """(tenant, doc_id) -> the markdown its last event left, None if that was a DELETE."""
        final: dict[tuple[str, str], str | None] = {}
        for wave in self.waves:
            for e in wave:
                final[(e["tenant"], e["doc_id"])] = (
                    None if e.get("op") == "DELETE" else e["content"]
                )
        return final

    def summary(self) -> dict[str, int]:
        ops = [e.get("op", "UPSERT") for w in self.waves for e in w]
        return {
            "waves": len(self.waves),
            "events": len(ops),
            "upserts": ops.count("UPSERT"),
            "deletes": ops.count("DELETE"),
        }


def build_load(seed: int = 11, documents: int = 300, waves: int = 10) -> Load:
    """`documents` new documents spread over the first waves; from the third wave on each wave
    also updates earlier documents and deletes a few (bringing some deleted ones back later)."""
    rng = random.Random(seed)
    docs = [_document(rng, TENANTS[i % len(TENANTS)], i) for i in range(documents)]
    creating = max(1, waves * 6 // 10)
    per_wave = -(-documents // creating)
    live: list[Document] = []
    deleted: list[Document] = []
    out: list[list[dict[str, Any]]] = []
    for wave in range(waves):
        batch: list[dict[str, Any]] = []
        new = docs[wave * per_wave : (wave + 1) * per_wave]
        if wave >= 2 and live:
            for doc in rng.sample(live, min(len(live), documents // 20)):
                _update(rng, doc)
                batch.append(event(doc.tenant, doc.doc_id, doc.markdown()))
        if wave >= 3 and deleted:
            for doc in rng.sample(deleted, min(len(deleted), 2)):
                deleted.remove(doc)
                _update(rng, doc)
                live.append(doc)
                batch.append(event(doc.tenant, doc.doc_id, doc.markdown()))
        if wave >= 2 and len(live) > documents // 10:
            for doc in rng.sample(live, documents // 60):
                live.remove(doc)
                deleted.append(doc)
                batch.append(event(doc.tenant, doc.doc_id, None, op="DELETE"))
        for doc in new:
            live.append(doc)
            batch.append(event(doc.tenant, doc.doc_id, doc.markdown()))
        rng.shuffle(batch)
        out.append(batch)
    return Load(seed, out)
