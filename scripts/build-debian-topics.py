#!/usr/bin/env python3
"""Builds examples/debian-topics/: a labelled set of real short documents nobody in this project
wrote, for `labelmill eval` and `labelmill tune`.

Each document is the one-line description of a Debian 12 (bookworm) package, as its maintainers
wrote it; its label is the package's archive section. Eight topical sections, packages shuffled
by a hash of their name (deterministic), descriptions deduplicated (a description that occurs in
two sections is dropped), split into a test set of 50 per section and a training set of the rest
(no package and no description in both).

Input: `apt-cache dumpavail` (the package lists apt keeps; run `apt-get update` first on a
machine without them). Usage: python3 scripts/build-debian-topics.py [OUT_DIR]
"""
import hashlib
import json
import os
import subprocess
import sys

SECTIONS = ["games", "graphics", "sound", "science", "mail", "database", "editors", "video"]
TEST_PER_SECTION = 50
TRAIN_PER_SECTION = 250


def packages():
    text = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            fields[k] = v.strip()
        if "Package" in fields and "Description" in fields and "Section" in fields:
            yield fields["Package"], fields["Section"].split("/")[-1], fields["Description"]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "examples/debian-topics"
    by_desc = {}
    for name, section, desc in packages():
        if section not in SECTIONS or len(desc.split()) < 3:
            continue
        key = desc.lower()
        by_desc.setdefault(key, set()).add(section)
    seen = set()
    rows = {s: [] for s in SECTIONS}
    for name, section, desc in sorted(packages()):
        key = desc.lower()
        if section not in SECTIONS or key not in by_desc or len(by_desc[key]) > 1 or key in seen:
            continue
        seen.add(key)
        rows[section].append((hashlib.sha256(name.encode()).hexdigest(), name, desc))
    os.makedirs(out, exist_ok=True)
    test, train = [], []
    for s in SECTIONS:
        ranked = sorted(rows[s])
        if len(ranked) < TEST_PER_SECTION + 50:
            sys.exit(f"section {s}: only {len(ranked)} usable packages")
        for i, (_, name, desc) in enumerate(ranked[: TEST_PER_SECTION + TRAIN_PER_SECTION]):
            rec = {"id": f"deb-{name}", "text": desc, "label": s}
            (test if i < TEST_PER_SECTION else train).append(rec)
    # Interleave sections so that any prefix of a file holds every label.
    key = lambda r: hashlib.sha256(r["id"].encode()).hexdigest()
    for fname, recs in (("test.jsonl", test), ("train.jsonl", train)):
        with open(os.path.join(out, fname), "w") as f:
            for r in sorted(recs, key=key):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts = {s: sum(r["label"] == s for r in recs) for s in SECTIONS}
        print(f"{fname}: {len(recs)} documents {counts}")


if __name__ == "__main__":
    main()
