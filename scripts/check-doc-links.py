#!/usr/bin/env python3
"""Checks that every relative link in README.md and docs/*.md resolves.

A link to a file must name an existing file or directory; a link with an anchor
(`docs/x.md#some-heading`, or `#some-heading` within the page) must name a heading
of that page, slugged as GitHub does (lower case, punctuation other than `-` and `_`
removed, spaces to `-`, `-1`, `-2`, ... for repeats). External links (http, https,
mailto) are not checked. Links inside fenced code blocks and inline code are ignored.

Usage: scripts/check-doc-links.py [files...]   (default: README.md docs/*.md)
Exit status 1 and one line per broken link when any link does not resolve.
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def prose_lines(text):
    """The lines outside fenced code blocks, with inline code removed."""
    fenced = False
    for number, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", "", line)


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)  # \w keeps letters, digits, _ (Unicode too)
    return s.replace(" ", "-")


def anchors(path):
    seen = {}
    result = set()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def main(files):
    broken = []
    checked = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for number, line in prose_lines(text):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                checked += 1
                file_part, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
                where = f"{os.path.relpath(path, ROOT)}:{number}: {target}"
                if not os.path.exists(dest):
                    broken.append(f"{where}: no such file")
                elif anchor:
                    if not dest.endswith(".md") or os.path.isdir(dest):
                        broken.append(f"{where}: anchor on a non-markdown target")
                    elif anchor not in anchors(dest):
                        broken.append(f"{where}: no heading with anchor #{anchor}")
    for b in broken:
        print(b)
    print(f"{checked} relative links checked, {len(broken)} broken", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    args = sys.argv[1:] or ["README.md"] + sorted(glob.glob("docs/*.md"))
    sys.exit(main([os.path.abspath(a) for a in args]))
