"""Writes the bundled tokenizer files (CLIP BPE, T5 v1.1, Qwen3) from the wheels that carry them.

Run once by a maintainer, never at run time (the results are committed under
`webui/models/tokenizers/`):

    pip download --no-deps open-clip-torch==3.3.0 invokeai==6.14.2 -d /tmp/wheels
    python -m webui.models.tokenizer_bundle --from-wheel /tmp/wheels/open_clip_torch-3.3.0-py3-none-any.whl \\
        --from-wheel /tmp/wheels/invokeai-6.14.2-py3-none-any.whl

Sources (each wheel is recognised by what it holds, so the order does not matter):
- CLIP: `bpe_simple_vocab_16e6.txt.gz`, the merges file of OpenAI's CLIP (MIT, Copyright (c) 2021
  OpenAI) as carried by `open-clip-torch` (MIT) or `clip-anytorch`. `vocab.json` and `merges.txt`
  are derived from it with CLIP's own rule (`SimpleTokenizer.__init__` in openai/CLIP
  `clip/simple_tokenizer.py`): the first 49,152 - 256 - 2 = 48,894 merges after the header line;
  vocabulary = the 256 byte symbols, the same with `</w>`, each merge joined, then
  `<|startoftext|>` and `<|endoftext|>`: 49,408 entries.
- T5 v1.1 (`google/t5-v1_1-xxl`'s tokenizer, Apache-2.0): `invokeai/backend/t5/tokenizer/` in
  the `invokeai` wheel (Apache-2.0): `tokenizer.json` with its config and special tokens.
- Qwen3 (`Qwen/Qwen3-4B`'s tokenizer, Apache-2.0): `invokeai/backend/qwen3/tokenizer/`, kept
  gzip-compressed (`tokenizer.json.gz`, 11 MB unpacked).
Each folder gets the source wheel's licence text (`LICENSE`) and a `NOTICE` naming the wheel, the
member and its SHA-256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CLIP_MERGES_MEMBER = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGE_COUNT = 49152 - 256 - 2  # CLIP's SimpleTokenizer keeps exactly these (openai/CLIP)
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
CLIP_VOCAB_SIZE = 49408
MERGES_HEADER = "#version: 0.2"  # the first line of Hugging Face's merges.txt files
OPENAI_CLIP_NOTICE = """The merges come from OpenAI's CLIP (https://github.com/openai/CLIP,
clip/bpe_simple_vocab_16e6.txt.gz): MIT License, Copyright (c) 2021 OpenAI, under the same terms as
the licence text below.
"""


class BundleSourceError(ValueError):
    """A wheel given to the bundler does not hold the files it was expected to hold."""


@dataclass(frozen=True)
class Copied:
    """A tokenizer folder taken verbatim from a wheel: its member folder and the files kept."""

    name: str
    member_dir: str
    files: tuple[str, ...]
    upstream: str


COPIED = (
    Copied(
        "t5",
        "invokeai/backend/t5/tokenizer",
        ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
        "The T5 v1.1 tokenizer of google/t5-v1_1-xxl (Apache-2.0)",
    ),
    Copied(
        "qwen3",
        "invokeai/backend/qwen3/tokenizer",
        ("tokenizer.json.gz", "tokenizer_config.json", "special_tokens_map.json"),
        "The Qwen3 tokenizer of Qwen/Qwen3-4B (Apache-2.0), gzip-compressed",
    ),
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible table from the 256 byte values to printable characters, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:  # whitespace and control bytes move past 255, in byte order
            printable.append(byte)
            codes.append(256 + shifted)
            shifted += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def clip_merges(merges_gz: bytes) -> list[tuple[str, str]]:
    """The 48,894 merges CLIP uses, from the bytes of `bpe_simple_vocab_16e6.txt.gz`.

    Raises BundleSourceError when the file has fewer merges or a malformed line."""
    lines = gzip.decompress(merges_gz).decode("utf-8").split("\n")[1 : CLIP_MERGE_COUNT + 1]
    pairs = [tuple(line.split()) for line in lines]
    bad = next((i for i, pair in enumerate(pairs) if len(pair) != 2), None)
    if len(pairs) != CLIP_MERGE_COUNT or bad is not None:
        where = f"line {bad + 2} is {lines[bad]!r}" if bad is not None else f"it has {len(pairs)} merge lines"
        raise BundleSourceError(f"{CLIP_MERGES_MEMBER}: expected {CLIP_MERGE_COUNT} merges, {where}")
    return pairs  # type: ignore[return-value]


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary: the byte symbols, the same with `</w>`, the joined merges, then the two special tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges), *CLIP_SPECIAL_TOKENS]
    return {token: index for index, token in enumerate(tokens)}


def write_clip(folder: Path, merges_gz: bytes) -> list[Path]:
    """Write vocab.json and merges.txt (Hugging Face's CLIPTokenizer layout) derived from the gz merges file."""
    merges = clip_merges(merges_gz)
    vocab = clip_vocab(merges)
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise BundleSourceError(f"{CLIP_MERGES_MEMBER}: the derived vocabulary has {len(vocab)} entries, not 49408")
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n", encoding="utf-8")
    return [vocab_path, merges_path]


def _licence(wheel: zipfile.ZipFile) -> str:
    names = [n for n in wheel.namelist() if ".dist-info/" in n and PurePosixPath(n).name in ("LICENSE", "LICENSE.txt")]
    if not names:
        raise BundleSourceError(f"{wheel.filename}: no LICENSE in its .dist-info; refusing to copy files without one")
    return wheel.read(sorted(names, key=len)[0]).decode("utf-8")


def _notice(wheel: zipfile.ZipFile, member: str, what: str, derived: str = "") -> str:
    digest = hashlib.sha256(wheel.read(member)).hexdigest()
    lines = [
        f"{what}.",
        f"Source: {Path(str(wheel.filename)).name}, member {member} (sha256 {digest}).",
        *([derived] if derived else []),
        "Written by `python -m webui.models.tokenizer_bundle`; the licence text is in LICENSE beside this file.",
    ]
    return "\n".join(lines) + "\n"


def _find(wheel: zipfile.ZipFile, suffix: str) -> str | None:
    return next((n for n in sorted(wheel.namelist()) if n == suffix or n.endswith("/" + suffix)), None)


def bundle_from_wheel(wheel_path: Path, out: Path) -> list[Path]:
    """Write every tokenizer folder this wheel can supply under `out`; returns the files written.

    Raises BundleSourceError when the wheel supplies none of them."""
    written: list[Path] = []
    with zipfile.ZipFile(wheel_path) as wheel:
        member = _find(wheel, CLIP_MERGES_MEMBER)
        if member is not None:
            folder = out / "clip"
            written += write_clip(folder, wheel.read(member))
            derived = "vocab.json and merges.txt are derived from it by CLIP's rule (webui/models/tokenizer_bundle.py)"
            what = "The CLIP byte-level BPE tokenizer (OpenAI CLIP ViT-L/14's; every CLIP and OpenCLIP text encoder's)"
            (folder / "NOTICE").write_text(_notice(wheel, member, what, derived), encoding="utf-8")
            (folder / "LICENSE").write_text(OPENAI_CLIP_NOTICE + "\n" + _licence(wheel), encoding="utf-8")
            written += [folder / "NOTICE", folder / "LICENSE"]
        for spec in COPIED:
            if f"{spec.member_dir}/{spec.files[0]}" not in wheel.namelist():
                continue
            folder = out / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            for name in spec.files:
                (folder / name).write_bytes(wheel.read(f"{spec.member_dir}/{name}"))
                written.append(folder / name)
            first = f"{spec.member_dir}/{spec.files[0]}"
            (folder / "NOTICE").write_text(_notice(wheel, first, spec.upstream), encoding="utf-8")
            (folder / "LICENSE").write_text(_licence(wheel), encoding="utf-8")
            written += [folder / "NOTICE", folder / "LICENSE"]
    if not written:
        raise BundleSourceError(
            f"{wheel_path}: holds no tokenizer this script knows ({CLIP_MERGES_MEMBER}, "
            + ", ".join(f"{c.member_dir}/{c.files[0]}" for c in COPIED)
            + "); pass the open-clip-torch or invokeai wheel"
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m webui.models.tokenizer_bundle"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--from-wheel", type=Path, action="append", required=True, help="a wheel (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "tokenizers", help="default: the package's")
    args = parser.parse_args(argv)
    for wheel in args.from_wheel:
        for path in bundle_from_wheel(wheel, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
