"""Real English corpora for offline runs: the HTML documentation that Debian ships.

Debian's `python3-doc` package (on bookworm: `python3.11-doc`) installs the Python documentation as
Sphinx HTML under `/usr/share/doc/python3.X/html` (about 9 MiB of text). `--sources all` adds the Linux
kernel's documentation (`linux-doc`, 28 MiB without its translations), Django's (`python-django-doc`,
4 MiB) and PostgreSQL's (`postgresql-doc`, 7 MiB): about 48 MiB of English prose and code, some 14M tokens
of an 8,192-id BPE, enough that a 130M-parameter model trained on it sees no token twice (issue 13).
`html_to_text` turns one page into plain text with the standard library's `html.parser` (scripts, styles,
navigation, sidebars, footers, tables of contents and index pages dropped; paragraphs kept, their whitespace
collapsed; code blocks kept line by line), and `build_corpus` writes the pages as a folder of `.txt` files
(or one `.jsonl`) that `bmojo.eval.lm.read_folder` reads. Nothing is fetched from the network.

    apt-get install python3-doc            # or python3.11-doc
    python -m bmojo.eval.corpus --out .corpus/pydoc
    python -m bmojo.eval.lm .corpus/pydoc --tokenizer bpe

    apt-get install python3-doc linux-doc python-django-doc postgresql-doc
    python -m bmojo.eval.corpus --sources all --out .corpus/debian-docs

Documents are written in a fixed pseudo-random order (by a hash of each page's source and path),
numbered so that `read_folder`'s sorted order is that order: the last 10% that `bmojo.eval.lm` holds out
for testing is then a mix of every source and every part of each rather than, say, only the "What's New"
pages.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import sys
from html.parser import HTMLParser

APT_PACKAGE = "python3-doc"  # on Debian 12 it pulls in python3.11-doc
DOC_GLOBS = ("/usr/share/doc/python3/html", "/usr/share/doc/python3.*/html")
# Other Sphinx / DocBook HTML trees Debian installs: source name -> (package, globs of the tree). Measured
# on Debian 12 (2026-12-04): linux-doc-6.1 2,928 pages and 31.4 MiB of text, python-django-doc 529 pages
# and 4.3 MiB, postgresql-doc-15 1,169 pages and 6.8 MiB.
OTHER_SOURCES = {
    "linux": ("linux-doc", ("/usr/share/doc/linux-doc-*/html",)),
    "django": ("python-django-doc", ("/usr/share/doc/python-django-doc/html",)),
    "postgresql": ("postgresql-doc", ("/usr/share/doc/postgresql-doc-*/html",)),
}
SOURCES = ("python",) + tuple(OTHER_SOURCES)
# Pages of a source left out: the kernel's translations (Chinese, Japanese, Korean, Italian; 335 pages,
# 3.5 MiB) are not English, and one Korean page made 70% of the first test run's evaluated tokens (issue 13)
SOURCE_SKIP = {"linux": re.compile(r"^translations/")}
# Pages that are lists of names or links, not prose.
SKIP_PAGES = re.compile(r"(^|/)(genindex[^/]*|py-modindex|search|contents)\.html$")

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr"}
DROP_TAGS = {"script", "style", "head", "nav", "header", "footer", "form", "noscript", "button",
             "select", "textarea", "svg", "iframe", "template"}
DROP_CLASSES = {"sphinxsidebar", "sidebar", "related", "footer", "mobile-nav", "menu-wrapper", "headerlink",
                "toctree-wrapper", "inline-search", "version_switcher_placeholder",
                "language_switcher_placeholder", "linenos", "clearer"}
DROP_ROLES = {"navigation", "search", "banner", "contentinfo"}
BLOCK = {"p", "div", "section", "article", "main", "body", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul",
         "ol", "dl", "dt", "dd", "table", "tr", "td", "th", "thead", "tbody", "blockquote", "figure",
         "figcaption", "caption", "br", "hr", "pre"}


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML page as paragraphs (a list of strings)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # open non-void elements: (tag, dropped)
        self.dropped = 0  # how many open elements drop their content
        self.pre = 0  # how many open <pre> elements (not dropped)
        self.words = []  # inline text of the paragraph being read
        self.code = []  # raw text of the <pre> block being read
        self.paragraphs = []

    def _drops(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        return tag in DROP_TAGS or bool(classes & DROP_CLASSES) or attrs.get("role") in DROP_ROLES

    def _flush(self):
        text = " ".join("".join(self.words).split())
        if text:
            self.paragraphs.append(text)
        self.words = []

    def handle_starttag(self, tag, attrs):
        if self.dropped == 0 and tag in BLOCK:
            self._flush()
        if tag in VOID:
            return
        drop = self.dropped > 0 or self._drops(tag, attrs)
        self.stack.append((tag, drop))
        self.dropped += drop
        if tag == "pre" and not drop:
            self.pre += 1

    def handle_startendtag(self, tag, attrs):
        if self.dropped == 0 and tag in BLOCK:
            self._flush()

    def handle_endtag(self, tag):
        if tag in VOID or not any(t == tag for t, _ in self.stack):
            return  # a stray end tag
        while self.stack:  # close every element left open inside this one (`<p>` without `</p>`...)
            open_tag, drop = self.stack.pop()
            self.dropped -= drop
            if open_tag == "pre" and not drop:
                self.pre -= 1
                if self.pre == 0:
                    self._end_code()
            if open_tag == tag:
                break
        if self.dropped == 0 and tag in BLOCK:
            self._flush()

    def _end_code(self):
        lines = [line.rstrip() for line in "".join(self.code).split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            self.paragraphs.append("\n".join(lines))
        self.code = []

    def handle_data(self, data):
        if self.dropped:
            return
        (self.code if self.pre else self.words).append(data)

    def close(self):
        super().close()
        if self.pre:
            self._end_code()
        self._flush()


def html_to_text(html):
    """Plain text of an HTML page: paragraphs separated by a blank line, each with its whitespace
    collapsed; `<pre>` blocks kept line by line. Scripts, styles, navigation, sidebars, footers,
    header links and tables of contents are dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "\n\n".join(parser.paragraphs)


def find_doc_dir():
    """The installed Python HTML documentation (the newest version found), or None."""
    found = {os.path.realpath(d) for pattern in DOC_GLOBS for d in glob.glob(pattern)
             if os.path.isfile(os.path.join(d, "index.html"))}  # realpath: python3.11-dev -> python3.11

    def version(path):
        m = re.search(r"python3\.(\d+)", path)
        return int(m.group(1)) if m else -1

    return max(sorted(found), key=version) if found else None


def find_source_dir(source):
    """The HTML tree of a source of `SOURCES` (the newest version found), or None."""
    if source == "python":
        return find_doc_dir()
    if source not in OTHER_SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    found = sorted(d for pattern in OTHER_SOURCES[source][1] for d in glob.glob(pattern)
                   if os.path.isfile(os.path.join(d, "index.html")))
    return found[-1] if found else None


def parse_sources(text):
    """The source names of `--sources`: comma-separated names of `SOURCES`, or "all"."""
    names = SOURCES if text == "all" else tuple(n for n in text.split(",") if n)
    bad = [n for n in names if n not in SOURCES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"--sources must be 'all' or distinct names among {', '.join(SOURCES)}, "
                         f"got {text!r}")
    return names


def missing_source_message(missing):
    packages = " ".join(APT_PACKAGE if n == "python" else OTHER_SOURCES[n][0] for n in missing)
    return (f"the HTML documentation of {', '.join(missing)} is not installed. Install Debian's "
            f"documentation packages: `sudo apt-get install {packages}`")


def missing_docs_message(html_dir=None):
    where = f"no HTML documentation under {html_dir!r}" if html_dir else \
        f"the Python HTML documentation is not installed (looked for {' and '.join(DOC_GLOBS)})"
    return (f"{where}. Install Debian's documentation package: `sudo apt-get install {APT_PACKAGE}` "
            "(on Debian 12 it is python3.11-doc; Ubuntu has the same names), or pass --html-dir "
            "with a folder of HTML pages.")


def html_pages(html_dir):
    """Relative paths of the prose pages of an HTML tree, sorted; Sphinx's `_static`, `_sources`...
    folders and the index / search / contents pages are left out."""
    pages = []
    for root, dirs, files in os.walk(html_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), html_dir).replace(os.sep, "/")
            if name.endswith((".html", ".htm")) and not SKIP_PAGES.search(rel):
                pages.append(rel)
    return sorted(pages)


def _order_key(rel):
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()


def _tree_pages(trees):
    """[(path of the page, its name in the corpus)] of every tree of {source: folder}; a page's name starts
    with its source's, unless the source is "" (a single tree given as a folder)."""
    pages = []
    for source, html_dir in trees.items():
        found = html_pages(html_dir) if os.path.isdir(html_dir) else []
        if not found:
            raise FileNotFoundError(missing_docs_message(html_dir))
        skip = SOURCE_SKIP.get(source)
        pages += [(os.path.join(html_dir, rel), f"{source}/{rel}" if source else rel) for rel in found
                  if skip is None or not skip.search(rel)]
    return pages


def build_corpus(html_dirs, out_dir, fmt="txt", max_bytes=None, min_chars=200):
    """Converts the pages of `html_dirs` (one folder, or {source name: folder}) to text documents in
    `out_dir`: one `NNNNN_<page>.txt` each, or a single `corpus.jsonl` of {"text", "source"} lines
    (`fmt="jsonl"`).

    Pages are taken in a fixed order (sha1 of their name: the relative path, after the source's name when
    there are several trees), so the held-out tail of `bmojo.eval.lm` mixes every part of every tree;
    pages with fewer than `min_chars` characters of text are skipped, and once `max_bytes` bytes of UTF-8
    text are written the rest are left out. Returns {"documents", "bytes", "pages", "skipped_short",
    "left_out", "html_dir", "out"}."""
    if fmt not in ("txt", "jsonl"):
        raise ValueError(f"fmt must be 'txt' or 'jsonl', got {fmt!r}")
    trees = {"": html_dirs} if isinstance(html_dirs, str) else dict(html_dirs)
    if not trees:
        raise ValueError("html_dirs must name at least one HTML tree")
    pages = _tree_pages(trees)
    os.makedirs(out_dir, exist_ok=True)
    stale = [n for n in os.listdir(out_dir) if n.endswith((".txt", ".jsonl"))]
    if stale:
        raise FileExistsError(f"{out_dir!r} already holds {len(stale)} .txt/.jsonl files; "
                              "write the corpus to an empty folder")
    docs, total, short, left_out = 0, 0, 0, 0
    jsonl = open(os.path.join(out_dir, "corpus.jsonl"), "w", encoding="utf-8") if fmt == "jsonl" else None
    try:
        for path, rel in sorted(pages, key=lambda page: _order_key(page[1])):
            if max_bytes is not None and total >= max_bytes:
                left_out += 1
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                text = html_to_text(f.read())
            if len(text) < min_chars:
                short += 1
                continue
            size = len(text.encode("utf-8"))
            if jsonl is not None:
                jsonl.write(json.dumps({"text": text, "source": rel}, ensure_ascii=False) + "\n")
            else:
                slug = re.sub(r"[^A-Za-z0-9.-]+", "_", rel[: rel.rfind(".")])
                with open(os.path.join(out_dir, f"{docs:05d}_{slug}.txt"), "w", encoding="utf-8") as f:
                    f.write(text)
            docs += 1
            total += size
    finally:
        if jsonl is not None:
            jsonl.close()
    return dict(documents=docs, bytes=total, pages=len(pages), skipped_short=short, left_out=left_out,
                html_dir=", ".join(trees.values()), out=out_dir)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m bmojo.eval.corpus",
                                description="Write the HTML documentation installed by Debian's "
                                            f"packages ({APT_PACKAGE} by default) as a plain-text corpus "
                                            "for bmojo.eval.lm (offline).")
    p.add_argument("--out", required=True, help="folder to write (must hold no .txt/.jsonl yet)")
    p.add_argument("--html-dir", default=None,
                   help="HTML tree to convert (default: the newest /usr/share/doc/python3.X/html)")
    p.add_argument("--sources", default=None,
                   help=f"instead of --html-dir: Debian documentation trees to join, comma-separated among "
                        f"{', '.join(SOURCES)}, or 'all' (about 48 MiB of text)")
    p.add_argument("--format", choices=("txt", "jsonl"), default="txt",
                   help="one .txt per page (default) or a single corpus.jsonl")
    p.add_argument("--max-mib", type=float, default=0.0,
                   help="stop after this many MiB of text (default 0: no limit)")
    p.add_argument("--min-chars", type=int, default=200, help="skip pages with less text than this")
    return p


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.sources and ns.html_dir:
        parser.error("give --html-dir or --sources, not both")
    if ns.sources:
        try:
            names = parse_sources(ns.sources)
        except ValueError as e:
            parser.error(str(e))
        html_dir = {name: find_source_dir(name) for name in names}
        missing = [name for name, d in html_dir.items() if d is None]
        if missing:
            print(f"error: {missing_source_message(missing)}", file=sys.stderr)
            return 2
    else:
        html_dir = ns.html_dir or find_doc_dir()
        if html_dir is None or not os.path.isdir(html_dir):
            print(f"error: {missing_docs_message(ns.html_dir)}", file=sys.stderr)
            return 2
    max_bytes = int(ns.max_mib * 2**20) if ns.max_mib > 0 else None
    try:
        info = build_corpus(html_dir, ns.out, ns.format, max_bytes, ns.min_chars)
    except (FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"corpus: {info['documents']} documents, {info['bytes']:,} bytes ({info['bytes'] / 2**20:.1f} MiB) "
          f"of text in {info['out']} from {info['html_dir']} ({info['pages']} pages; "
          f"{info['skipped_short']} too short, {info['left_out']} left out by --max-mib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
