"""A deterministic toy retrieval dataset in BEIR layout, for smoke runs.

Every topic has its own vocabulary of ordinary English words; each document draws most of
its words from a small "focus" set of its topic (plus other words of the topic and generic
filler shared by all topics), and each query is a few focus words of one document, judged
relevant (grade 2) to that document and (grade 1) to up to two documents of the same topic
whose focus shares at least two of the query's words. So lexical and dense retrievers both
find the relevant documents far better than chance, without the set being trivial: every
topic's documents share its vocabulary, and all documents share the filler.

The same arguments give byte-identical files (one :class:`random.Random` seeded once, no
iteration over sets); a different seed gives different files.

Example:
    >>> root = make_toy_dataset("data/toy", n_docs=200, n_queries=40, seed=0)
    >>> ds = load_beir(root)            # 200 docs, 40 queries, train/test qrels
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Sequence

from ..errors import SmecError
from ..io import atomic_dir
from .beir import QRELS_HEADER

# One entry per topic, ``name: words``, continued on indented lines: a table, not code.
_TOPIC_TABLE = """
astronomy: telescope galaxy nebula comet asteroid orbit planet star supernova quasar eclipse meteor
    lunar solar cosmic pulsar constellation spectrum redshift observatory satellite crater jupiter
    saturn mars venus gravity dwarf exoplanet luminosity parallax zenith
cooking: recipe oven flour butter garlic onion simmer roast pastry dough sauce skillet spice pepper
    vinegar braise bake knead yeast broth caramel dessert marinade saute grill herb lemon noodle
    dumpling omelette custard batter
medicine: patient diagnosis vaccine antibiotic surgery tumor clinic dosage symptom infection therapy
    cardiac insulin diabetes nurse physician fever allergy immune pathogen biopsy chronic lesion
    prescription hospital anesthesia inflammation virus chemotherapy placebo ward stroke
football: goalkeeper striker penalty midfielder referee tackle dribble stadium league tournament
    kickoff offside corner header defender coach transfer derby fixture championship goal pitch
    winger captain substitute foul equaliser volley crossbar supporters relegation halftime
finance: stock bond dividend inflation interest mortgage portfolio equity hedge bank loan currency
    investor broker asset liability revenue profit deficit budget pension credit debt shareholder
    valuation audit tax futures yield merger liquidity recession
music: guitar piano violin melody harmony rhythm chord orchestra symphony concert album lyrics
    drummer singer tempo opera jazz choir composer sonata tune bass trumpet cello band rehearsal
    octave chorus ballad saxophone conductor quartet
gardening: soil compost seedling pruning mulch greenhouse fertilizer weed tomato orchard shovel bulb
    perennial hoe irrigation sprout blossom shrub lawn rake trellis pot cutting rose tulip harvest
    watering aphid vegetable allotment germination topsoil
computing: software compiler processor database algorithm server network kernel memory cache thread
    debugger browser encryption firewall bandwidth keyboard laptop program bug python linux router
    pixel storage cloud query login password backup protocol microchip
ocean: coral reef whale dolphin tide wave seabed plankton shark current salinity lagoon kelp octopus
    jellyfish shipwreck trench estuary seaweed submarine diver turtle anchor harbour coastline surf
    mollusc oyster abyss buoy seagull lighthouse
law: court judge jury verdict lawyer plaintiff defendant statute contract appeal lawsuit testimony
    evidence prosecutor attorney sentence bail tribunal legislation constitution copyright patent
    barrister clause settlement injunction witness subpoena custody parole magistrate arbitration
railways: train locomotive railway platform carriage timetable station track signal freight
    passenger tunnel viaduct signalman diesel steam commuter depot junction sleeper ticket express
    tram metro gauge shunting boiler rail siding terminus coupling derailment
weather: rain thunderstorm hurricane drought forecast humidity snow frost blizzard monsoon tornado
    mist barometer heatwave hail fog wind temperature precipitation cyclone lightning drizzle sleet
    gust rainfall climate meteorologist thermometer breeze flood icicle overcast
architecture: cathedral facade column arch dome skyscraper balcony staircase brick concrete beam
    roof gothic baroque courtyard blueprint architect tower bridge marble window vault pillar
    foundation renovation villa atrium spire cornice mosaic terrace portico
chemistry: molecule atom electron reaction catalyst acid alkali solvent compound polymer isotope
    oxidation enzyme titration beaker crystal ion covalent hydrogen oxygen nitrogen carbon sodium
    chloride ethanol distillation precipitate valence molar reagent electrolysis entropy
birds: sparrow eagle owl falcon heron nest feather wingspan migration beak songbird parrot penguin
    hawk robin swallow pelican flamingo woodpecker plumage hatchling egg flock birdwatching talon
    crow raven kingfisher warbler gull stork aviary
painting: canvas brush easel palette portrait landscape watercolour pigment fresco sketch gallery
    museum impressionist oil acrylic lithograph varnish charcoal pastel mural exhibition masterpiece
    curator hue perspective painter studio abstract frame gouache etching restoration
"""


def _word_table(text: str) -> dict[str, tuple[str, ...]]:
    """``name: words ...`` entries (continued on indented lines) -> name -> the words, in order."""
    table = {}
    for entry in re.split(r"\n(?=\S)", text.strip()):
        name, _, words = entry.partition(":")
        table[name.strip()] = tuple(words.split())
    return table


#: Topic name -> 32 words that only that topic uses (disjoint across topics; tested).
TOPIC_WORDS: dict[str, tuple[str, ...]] = _word_table(_TOPIC_TABLE)

#: Words every topic's documents use, so that no document is a pure bag of topic words.
FILLER_WORDS: tuple[str, ...] = (
    "study", "report", "new", "recent", "several", "important", "general", "common",
    "approach", "result", "effect", "case", "review", "analysis", "early", "large", "small",
    "local", "modern", "public", "history", "practice", "example", "question", "detail",
    "change", "process", "system", "method", "role", "factor", "group", "level", "period",
    "area", "source", "view", "idea", "issue", "work",
)

_QUERY_TEMPLATES: tuple[str, ...] = (
    "{0} {1} {2}",
    "how does {0} affect {1} and {2}",
    "what is the role of {0} in {1} {2}",
    "{0} and {1} {2}",
    "why {0} matters for {1} and {2}",
)

_FOCUS = 8  # distinct topic words a document is mostly about
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _check_count(flag: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SmecError(f"{flag} must be a positive integer, got {value!r}")
    return value


def _check_args(n_docs, n_queries, n_topics, seed, splits) -> list[str]:
    _check_count("--docs (n_docs)", n_docs)
    _check_count("--queries (n_queries)", n_queries)
    _check_count("--topics (n_topics)", n_topics)
    if n_topics > len(TOPIC_WORDS):
        raise SmecError(f"--topics (n_topics) must be at most {len(TOPIC_WORDS)} "
                        f"(the built-in topic vocabularies), got {n_topics}")
    if n_topics > n_docs:
        raise SmecError(f"--topics (n_topics) must be at most --docs ({n_docs}): "
                        f"every topic needs a document, got {n_topics}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SmecError(f"--seed (seed) must be an integer, got {seed!r}")
    if isinstance(splits, str):
        splits = [splits]
    splits = list(splits)
    if not splits:
        raise SmecError("splits: at least one qrels split is needed")
    for split in splits:
        if not isinstance(split, str) or not _SPLIT_RE.match(split):
            raise SmecError(f"splits: {split!r} is not a plain split name (letters, digits, '_', '.', '-')")
    if len(set(splits)) != len(splits):
        raise SmecError(f"splits: repeated split name in {splits}")
    if n_queries < len(splits):
        raise SmecError(
            f"--queries (n_queries) must be at least the number of splits ({len(splits)}), got {n_queries}"
        )
    return splits


def _sentence(words: list[str]) -> str:
    return " ".join(words).capitalize() + "."


def _document(rng: random.Random, focus: list[str], topic: tuple[str, ...]) -> tuple[str, str]:
    """A title (focus words) and a text of 3-5 sentences of focus, topic and filler words."""
    title = " ".join(w.capitalize() for w in rng.sample(focus, rng.randint(2, 4)))
    sentences = []
    for _ in range(rng.randint(3, 5)):
        words = []
        for _ in range(rng.randint(6, 10)):
            draw = rng.random()
            pool = focus if draw < 0.55 else topic if draw < 0.7 else FILLER_WORDS
            words.append(rng.choice(pool))
        sentences.append(_sentence(words))
    return title, " ".join(sentences)


def _write_lines(path: Path, lines: list[str]) -> None:
    # newline="\n": byte-identical files on every platform
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def make_toy_dataset(
    out_dir: str | Path,
    *,
    n_docs: int = 200,
    n_queries: int = 40,
    n_topics: int = 8,
    seed: int = 0,
    splits: Sequence[str] = ("train", "test"),
) -> Path:
    """Writes a toy BEIR dataset that :func:`smec_dist.data.load_beir` loads.

    Documents are spread evenly over the topics (a seeded shuffle), queries likewise; query
    ``i`` goes to split ``splits[i % len(splits)]``. Each query is judged relevant to 1-3
    documents of its topic: grade 2 for the document it was drawn from, grade 1 for the
    others. The folder is written under a temporary name beside ``out_dir`` and renamed,
    so an interrupted call leaves no half-written dataset.

    Args:
        out_dir: The dataset folder to create; it must not exist (an empty folder is
            replaced).
        n_docs: Documents (``--docs``).
        n_queries: Queries (``--queries``), at least one per split.
        n_topics: Topics (``--topics``), at most ``min(n_docs, 16)``.
        seed: The seed (``--seed``): the same arguments give byte-identical files.
        splits: The qrels splits to write.

    Returns:
        ``out_dir``.

    Raises:
        SmecError: A count that is not a positive integer, more topics than documents or
            than built-in vocabularies, fewer queries than splits, a bad split name, an
            existing non-empty ``out_dir``, or a missing parent folder.
    """
    splits = _check_args(n_docs, n_queries, n_topics, seed, splits)
    out = Path(out_dir).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise SmecError(f"--output {out}: already exists (remove it or choose another folder)")
    if not out.parent.is_dir():
        raise SmecError(f"--output {out}: parent folder {out.parent} not found")

    rng = random.Random(seed)
    topic_names = rng.sample(sorted(TOPIC_WORDS), n_topics)
    doc_topic = [i % n_topics for i in range(n_docs)]
    rng.shuffle(doc_topic)
    width = len(str(n_docs - 1))
    docs = []  # (id, topic index, focus words, title, text)
    for i, t in enumerate(doc_topic):
        vocab = TOPIC_WORDS[topic_names[t]]
        focus = rng.sample(vocab, _FOCUS)
        title, text = _document(rng, focus, vocab)
        docs.append((f"doc{i:0{width}d}", t, focus, title, text))
    by_topic = [[d for d in docs if d[1] == t] for t in range(n_topics)]

    query_topic = [j % n_topics for j in range(n_queries)]
    rng.shuffle(query_topic)
    unused = [rng.sample(group, len(group)) for group in by_topic]  # primaries without repeats while they last
    qwidth = len(str(n_queries - 1))
    queries, judged = [], []  # judged: (query id, [(doc id, grade)])
    for j, t in enumerate(query_topic):
        if not unused[t]:
            unused[t] = rng.sample(by_topic[t], len(by_topic[t]))
        primary = unused[t].pop()
        words = rng.sample(primary[2], 3)
        qid = f"q{j:0{qwidth}d}"
        queries.append((qid, rng.choice(_QUERY_TEMPLATES).format(*words)))
        # Other documents of the topic whose focus holds at least two of the query's words
        # are relevant too (grade 1): a retriever ranking them high is not wrong.
        overlaps = [(-sum(w in d[2] for w in words), d[0]) for d in by_topic[t] if d is not primary]
        close = sorted(o for o in overlaps if o[0] <= -2)
        extra = [did for _, did in close[: rng.randint(0, 2)]]
        judged.append((qid, [(primary[0], 2)] + [(did, 1) for did in extra]))

    try:
        with atomic_dir(out) as tmp:  # renamed over the empty folder allowed above, removed on failure
            _write_lines(tmp / "corpus.jsonl", [
                json.dumps({"_id": did, "title": title, "text": text, "metadata": {"topic": topic_names[t]}})
                for did, t, _, title, text in docs
            ])
            _write_lines(tmp / "queries.jsonl", [json.dumps({"_id": qid, "text": text}) for qid, text in queries])
            (tmp / "qrels").mkdir()
            header = "\t".join(QRELS_HEADER)
            for s, split in enumerate(splits):
                rows = [f"{qid}\t{did}\t{grade}" for qid, rel in judged[s::len(splits)] for did, grade in rel]
                _write_lines(tmp / "qrels" / f"{split}.tsv", [header] + rows)
            tmp.chmod(0o755)  # mkdtemp makes it 0700; a dataset folder is meant to be shared
    except OSError as exc:
        raise SmecError(f"--output {out}: cannot write ({exc.strerror or exc})") from exc
    return out


def write_toy(output: str | Path, *, docs: int = 200, queries: int = 40, topics: int = 8, seed: int = 0) -> str:
    """``smec toy``: writes the dataset (:func:`make_toy_dataset`) and returns the line to print."""
    out = make_toy_dataset(output, n_docs=docs, n_queries=queries, n_topics=topics, seed=seed)
    return f"{out}: {docs} docs, {queries} queries, {topics} topics (seed {seed})"
