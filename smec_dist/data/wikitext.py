"""Wikipedia article text: MediaWiki markup to plain paragraphs, and paragraphs to passages.

:func:`clean_wikitext` turns the source of a page (an XML dump's ``<text>``) into plain
paragraphs; :func:`plain_paragraphs` does the same for text that is already plain (Hugging
Face ``wikimedia/wikipedia``, WikiExtractor). :func:`split_passages` packs the sentences of an
article into passages of ``min_words`` to ``max_words`` words. :func:`is_redirect` and
:func:`is_disambiguation` tell which pages are no articles. The markup names are those of the
largest wikis (English, German, French, Spanish, Italian, Portuguese, Polish, Dutch, Russian,
Japanese, Chinese).

Words are whitespace-separated tokens, except that each Chinese or Japanese character counts as
one word.
"""

from __future__ import annotations

import html
import re

_STOP_SECTIONS = {
    "references", "see also", "external links", "further reading", "notes", "bibliography", "sources",
    "citations", "footnotes", "notes and references", "einzelnachweise", "weblinks", "literatur",
    "siehe auch", "anmerkungen", "références", "liens externes", "voir aussi", "notes et références",
    "bibliographie", "referencias", "enlaces externos", "véase también", "bibliografía", "notas",
    "note", "bibliografia", "collegamenti esterni", "voci correlate", "referências", "ligações externas",
    "примечания", "ссылки", "литература", "脚注", "参考文献", "外部リンク", "関連項目", "参考资料",
    "外部链接", "参见", "参考",
}
# File, image, category and media links in the largest wikis; such links are dropped whole.
_DROP_NAMESPACES = {
    "file", "image", "category", "media", "datei", "bild", "kategorie", "fichier", "catégorie",
    "archivo", "imagen", "categoría", "immagine", "categoria", "ficheiro", "arquivo", "plik",
    "kategoria", "bestand", "categorie", "файл", "изображение", "категория", "ファイル", "画像",
    "カテゴリ", "文件", "图像", "分类",
}
_DISAMBIGUATION_TEMPLATES = {
    "disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "letter disambiguation",
    "begriffsklärung", "homonymie", "desambiguación", "disambigua", "неоднозначность", "曖昧さ回避",
    "消歧义", "desambiguação",
}
_DISAMBIGUATION_TITLE_RE = re.compile(
    r"\((disambiguation|begriffsklärung|homonymie|desambiguación|disambigua|значения|曖昧さ回避|消歧义)\)\s*$",
    re.I)
_REFER_TO_RE = re.compile(r"\b(may|can|might) (also )?(refer to|mean)\s*:", re.I)
_REDIRECT_RE = re.compile(r"^\s*#\s*(redirect|weiterleitung|redirection|redirección|rinvia|"
                          r"перенаправление|転送|重定向)", re.I)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[^\sa-z])|(?<=[。！？])\s*")

_COMMENT_RE = re.compile(r"<!--.*?(-->|$)", re.S)
_DROPPED_TAGS = "ref|math|gallery|timeline|syntaxhighlight|source|pre|score|imagemap|chem|ce|graph|mapframe|" \
                "templatedata|references|hiero|inputbox|categorytree"
_SELF_CLOSING_RE = re.compile(rf"<(?:{_DROPPED_TAGS})\b[^>]*/>", re.I)
_PAIRED_TAG_RE = re.compile(rf"<({_DROPPED_TAGS})\b[^>]*>.*?</\1\s*>", re.S | re.I)
_BR_RE = re.compile(r"<br\s*/?>", re.I)
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][^>]*>")
_BRACES_RE = re.compile(r"\{\{|\}\}")
_TABLE_RE = re.compile(r"(?m)^[ \t]*(\{\||\|\})")
_INNER_LINK_RE = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK_RE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BARE_URL_RE = re.compile(r"https?://[^\s<>\]]+")
_QUOTES_RE = re.compile(r"'{2,5}")
_HEADING_RE = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_MAGIC_RE = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS_RE = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_RE = re.compile(r"\s+([,.])(?=\s|$)")
_KEPT_TEMPLATES = {"lang", "nowrap", "nobr", "transl", "transliteration", "small", "keep together"}


def _template_text(body: str) -> str:
    """What a template shows that is worth keeping: the text of ``{{lang|fr|texte}}`` and the like."""
    parts = body[2:-2].split("|")
    name = parts[0].strip().lower()
    if name in _KEPT_TEMPLATES and len(parts) > 1:
        return _strip_templates(parts[-1])
    if name in ("convert", "cvt") and len(parts) > 2:
        return f"{parts[1].strip()} {parts[2].strip()}"
    return ""


def _strip_templates(text: str) -> str:
    """Removes ``{{...}}`` templates, nested ones too, keeping the text of a few (see above)."""
    out, depth, start, last = [], 0, 0, 0
    for m in _BRACES_RE.finditer(text):
        if m.group() == "{{":
            if depth == 0:
                out.append(text[last:m.start()])
                start = m.start()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                out.append(_template_text(text[start:m.end()]))
                last = m.end()
    if depth == 0:
        out.append(text[last:])  # an unclosed template swallows the rest, as MediaWiki shows it
    return "".join(out)


def _strip_tables(text: str) -> str:
    """Removes ``{| ... |}`` tables, nested ones too."""
    out, depth, last = [], 0, 0
    for m in _TABLE_RE.finditer(text):
        if m.group(1) == "{|":
            if depth == 0:
                out.append(text[last:m.start()])
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                last = m.end()
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


def _link_text(m: re.Match) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    prefix, colon, _ = target.lstrip(":").partition(":")
    if colon and prefix.strip().lower() in _DROP_NAMESPACES and not target.startswith(":"):
        return ""
    if label:
        return label
    target = target.lstrip(":")
    return target.split("#", 1)[0] or target


def _strip_links(text: str) -> str:
    # Innermost links first, so a file caption holding links is removed whole afterwards.
    while True:
        new = _INNER_LINK_RE.sub(_link_text, text)
        if new == text:
            return new
        text = new


def _has_disambiguation_template(wikitext: str) -> bool:
    for m in re.finditer(r"\{\{\s*([^|{}]+?)\s*(\||\}\})", wikitext):
        if m.group(1).lower() in _DISAMBIGUATION_TEMPLATES:
            return True
    return False


def is_redirect(text: str, flagged: bool = False) -> bool:
    """Whether a page is a redirect: flagged so by its dump, or its text opens with ``#REDIRECT``."""
    return flagged or bool(_REDIRECT_RE.match(text))


def is_disambiguation(title: str, text: str, wikitext: bool) -> bool:
    """Whether a page is a disambiguation page, by its title, its templates (``wikitext``) or,
    for plain text, an opening "X may refer to:"."""
    if _DISAMBIGUATION_TITLE_RE.search(title):
        return True
    if wikitext:
        return _has_disambiguation_template(text)
    # Plain text keeps no templates: "X may refer to:" opening the article is the sign.
    return bool(_REFER_TO_RE.search(text[:400]))


def clean_wikitext(wikitext: str) -> list[str]:
    """Turns MediaWiki markup into plain paragraphs.

    Removes comments, references and other non-prose tags, templates (keeping the text of
    ``lang``, ``nowrap`` and ``convert``), tables, file/image/category links, external-link
    URLs, bold and italics, list items (``*`` and ``#`` lines), headings, HTML tags and
    entities, and whole sections such as References or External links; keeps link labels.

    Args:
        wikitext: The page source.

    Returns:
        The paragraphs, each with whitespace collapsed to single spaces.
    """
    text = _COMMENT_RE.sub("", wikitext)
    text = _SELF_CLOSING_RE.sub("", text)
    text = _PAIRED_TAG_RE.sub("", text)
    text = _strip_templates(text)
    text = _strip_tables(text)
    text = _strip_links(text)
    text = _EXTERNAL_LINK_RE.sub(lambda m: m.group(1) or "", text)
    text = _BARE_URL_RE.sub("", text)
    text = _QUOTES_RE.sub("", text)
    text = _MAGIC_RE.sub("", text)
    text = _BR_RE.sub(" ", text)
    text = _HTML_TAG_RE.sub("", text)
    paragraphs: list[str] = []
    current: list[str] = []
    skipping = False

    def end_paragraph() -> None:
        if current:
            paragraphs.append(_tidy(" ".join(current)))
            current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = _HEADING_RE.match(stripped)
        if heading:
            end_paragraph()
            skipping = heading.group(2).strip().lower() in _STOP_SECTIONS
            continue
        if skipping:
            continue
        if not stripped or stripped.startswith("----"):
            end_paragraph()
        elif stripped[0] in "*#|!":
            end_paragraph()  # list items and table leftovers: rarely prose
        else:
            current.append(stripped.lstrip(":;").strip())
    end_paragraph()
    return [p for p in paragraphs if p]


def _tidy(text: str) -> str:
    text = " ".join(html.unescape(text).split())
    text = _EMPTY_PARENS_RE.sub("", text)  # "(; )" left by removed templates
    text = _SPACE_BEFORE_RE.sub(r"\1", text)
    return " ".join(text.split())


def plain_paragraphs(text: str) -> list[str]:
    """Paragraphs of already-plain article text (Hugging Face ``wikimedia/wikipedia``, WikiExtractor).

    Short lines without closing punctuation are section headings there: they end a paragraph
    and are dropped, and a heading such as "References" ends the article.
    """
    paragraphs = []
    for line in text.split("\n"):
        line = " ".join(line.split())
        if not line:
            continue
        if len(line.split()) <= 12 and line[-1] not in ".!?:;\"'”»)]。！？":
            if line.lower() in _STOP_SECTIONS:
                break
            continue
        paragraphs.append(line)
    return paragraphs


def sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences (cut after ``.!?`` before a non-lower-case start, and after ``。！？``)."""
    return [s for s in _SENTENCE_RE.split(paragraph) if s.strip()]


def count_words(text: str) -> int:
    """Whitespace-separated words, each Chinese or Japanese character counting as one."""
    return sum(1 for _ in _TOKEN_RE.finditer(text))


def _join(pieces: list[str]) -> str:
    text = ""
    for piece in pieces:
        if text and not (re.match(rf"[{_CJK}。、！？]", text[-1]) or re.match(rf"[{_CJK}]", piece[0])):
            text += " "
        text += piece
    return text


def split_passages(paragraphs: list[str], min_words: int, max_words: int) -> tuple[list[str], int]:
    """Packs sentences into passages of ``min_words`` to ``max_words`` words.

    A passage ends at a paragraph end once it holds ``min_words``, else at the sentence
    boundary before it would pass ``max_words``; a sentence longer than ``max_words`` is cut
    between words. A last piece shorter than ``min_words`` joins the previous passage when
    that stays within ``max_words``, and is dropped otherwise.

    Args:
        paragraphs: Whitespace-normalised paragraphs of one article.
        min_words: The fewest words in a passage.
        max_words: The most words in a passage.

    Returns:
        The passages, and 1 if a short tail was dropped, else 0.
    """
    passages: list[str] = []
    counts: list[int] = []
    current: list[str] = []
    n = 0

    def flush() -> None:
        nonlocal n
        passages.append(_join(current))
        counts.append(n)
        current.clear()
        n = 0

    for paragraph in paragraphs:
        for sentence in sentences(paragraph):
            spans = [m.span() for m in _TOKEN_RE.finditer(sentence)]
            while spans:
                room = max_words - n
                if len(spans) <= room:
                    current.append(sentence[spans[0][0]:spans[-1][1]])
                    n += len(spans)
                    break
                if n >= min_words:
                    flush()
                    continue
                head, spans = spans[:room], spans[room:]
                current.append(sentence[head[0][0]:head[-1][1]])
                n += len(head)
                flush()
        if n >= min_words:
            flush()
    if not current:
        return passages, 0
    if passages and counts[-1] + n <= max_words:
        passages[-1] = _join([passages[-1], *current])
        return passages, 0
    return passages, 1
