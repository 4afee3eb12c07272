"""The bundled tokenizers: CLIP ids equal an independent CLIP BPE, T5/Qwen3 round trips, lookup order."""

from __future__ import annotations

import html
import json
import random
import unicodedata
from functools import cache
from pathlib import Path

import ftfy
import pytest
import regex

from webui.engine.prompts import parse_prompt_attention
from webui.models.tokenizers import (
    BUNDLED_DIR,
    OPEN_CLIP_PAD,
    CLIPPromptTokenizer,
    TokenizerKind,
    TokenizerNotFoundError,
    clean_clip_text,
    find_tokenizer,
    load_clip_tokenizer,
    load_qwen3_tokenizer,
    load_t5_tokenizer,
)
from webui.testing.tiny_tokenizer import tiny_vocab_size, write_tokenizer_files

CLIP_DIR = BUNDLED_DIR / "clip"


class ReferenceClipBpe:
    """OpenAI CLIP's `clip/simple_tokenizer.py` algorithm, written again from its description: the
    byte-to-unicode table, ftfy + double HTML unescape + whitespace clean + lower case, CLIP's regex,
    and the greedy lowest-rank merge loop. Its vocabulary is built from merges.txt by CLIP's rule, so
    vocab.json is checked too."""

    PATTERN = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self, merges_txt: Path) -> None:
        lines = merges_txt.read_text(encoding="utf-8").split("\n")
        assert lines[0].startswith("#version")
        merges = [tuple(line.split()) for line in lines[1:] if line]
        byte_table = self._bytes_to_unicode()
        symbols = [byte_table[b] for b in sorted(byte_table, key=list(byte_table).index)]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {token: index for index, token in enumerate(vocab)}
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.byte_table = byte_table
        self.cache = {"<|startoftext|>": ("<|startoftext|>",), "<|endoftext|>": ("<|endoftext|>",)}

    @staticmethod
    def _bytes_to_unicode() -> dict[int, str]:
        keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        table = {b: chr(b) for b in keep}
        extra = 0
        for b in range(256):
            if b not in table:
                table[b] = chr(256 + extra)
                extra += 1
        return table

    def bpe(self, token: str) -> tuple[str, ...]:
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for piece in self.PATTERN.findall(text):
            symbols = "".join(self.byte_table[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[token] for token in self.bpe(symbols)]
        return ids


WORDS = """masterpiece best quality ultra detailed 8k photo portrait of a young woman with long flowing hair
standing in a misty forest at dawn cinematic lighting volumetric fog depth of field bokeh sharp focus
intricate armor dragon castle ruins overgrown moss neon cyberpunk city rain reflections oil painting
by greg rutkowski trending on artstation unreal engine octane render hdr film grain kodak portra 400
anime style cel shading watercolor ink sketch charcoal low poly isometric diorama miniature tilt shift
cute fluffy kitten golden retriever puppy steampunk airship victorian ballroom baroque rococo gothic
lowres bad anatomy bad hands text error missing fingers extra digit fewer digits cropped worst quality
jpeg artifacts signature watermark username blurry deformed disfigured mutated ugly duplicate morbid
don't it's we'll they're you've i'm she'd O'Brien rock'n'roll""".split()

UNICODE = [
    "café naïve résumé façade coöperate", "cafe\u0301 nai\u0308ve", "Ångström Øresund Æsir œuvre", "straße STRASSE Maß",
    "ΟΔΟΣ Σίσυφος ΣΟΦΟΣ σοφός", "İstanbul ıspanak KIRMIZI", "Москва Санкт-Петербург ёжик", "Ελληνικά", "Ǆ ǅ ǆ",
    "日本語のテキスト", "東京タワー、夜景", "中文提示词，高质量", "한국어 프롬프트", "ภาษาไทย", "हिन्दी में", "العربية",
    "עברית", "Tiếng Việt có dấu", "Português: coração, ação", "Español: niño, añejo", "Zürich Köln München",
    "ﬁne ﬂour ﬀ ligatures", "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ １２３", "ｶﾀｶﾅ halfwidth", "Ⅻ ⅻ ① ² ½ ¾",
    "math 𝐛𝐨𝐥𝐝 𝔣𝔯𝔞𝔨𝔱𝔲𝔯", "™ © ® ° ± × ÷", "€100 £50 ¥1000 ₹20", "ᴀ ꜱᴍᴀʟʟ ᴄᴀᴘꜱ",
]
EMOJI = [
    "🐱", "🐱🐶🐭", "a cat 🐱 on a hat 🎩", "👍🏽 👍🏿 👋🏻", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇯🇵 🇺🇸 🇫🇷",
    "1️⃣ 2️⃣ #️⃣", "❤️ ♥ 💖", "🔥🔥🔥 fire", "✨sparkles✨", "🧑‍🚀 astronaut", "🌸🌺🌼 flowers", "😀😃😄😁",
]
NUMBERS = [
    "0", "7", "42", "1234567890", "3.14159", "1,000,000", "1e10", "-5", "+12", "50%", "16:9", "3:2 aspect",
    "1girl 2boys", "8k uhd 4K", "f/1.8 85mm", "ISO 100", "1920x1080", "2024-05-17", "v1.5", "sd_xl_base_1.0",
    "score_9, score_8_up", "0.5 0.75 1.25", "#ff00aa", "x2 x4", "10th 21st 3rd",
]
PUNCTUATION = [
    "", " ", "  leading and trailing  ", ",", "...", "!!!", "??", "a, b, c", "(a) [b] {c} <d>", "a:b;c",
    "semi;colon", "slash/back\\slash", "under_score-dash", "@mention #tag $5 ^caret &and *star",
    "quote \"double\" 'single'", "tab\tseparated", "new\nline", "crlf\r\nline", "a\u00a0b\u2003c\u3000d",
    "a\x1cb\x1dc", "<|startoftext|>hi<|endoftext|>", "it’s “curly” ‘quotes’", "&amp; &lt;3 &gt; &#39; &quot;",
    "&amp;amp; double", "cafÃ© mojibake", "em—dash en–dash", "ellipsis…", "«guillemets»", "„low quotes“",
    "MiXeD CaSe WoRdS", "ALL CAPS PROMPT", "'s 't 're 've 'm 'll 'd", "e&#769;tude",
]


@cache
def corpus() -> list[str]:
    rng = random.Random(11)
    texts = [*WORDS, *UNICODE, *EMOJI, *NUMBERS, *PUNCTUATION]
    texts += [" ".join(rng.choices(WORDS, k=rng.randint(2, 12))) for _ in range(120)]
    texts += [", ".join(rng.choices(WORDS + NUMBERS + UNICODE + EMOJI, k=rng.randint(3, 8))) for _ in range(60)]
    texts += [", ".join(rng.choices(WORDS, k=160)) for _ in range(6)]  # 300+ token prompts
    return texts


A1111_PROMPTS = [
    "a (cat:1.2) on a [hat], ((masterpiece)), (best quality:1.4)",
    "portrait of a woman BREAK (red dress:0.8), [[blurry]], \\(escaped\\) parentheses",
    "(émigré café:1.3), (🐱 cat emoji:1.1), [ΣΟΦΟΣ]",
    "(&amp; entities:1.5) it’s (“curly”:0.9)",
    ", ".join(["(detailed:1.1)", "[lowres]", "((8k))", "(1girl:1.3)"] * 20),
]


@pytest.fixture(scope="module")
def bundled_clip():
    return load_clip_tokenizer(Path("/nonexistent-models-dir"))


@pytest.fixture(scope="module")
def reference_clip():
    return ReferenceClipBpe(CLIP_DIR / "merges.txt")


def test_bundled_clip_ids_equal_an_independent_clip_bpe_over_the_corpus(bundled_clip, reference_clip):
    texts = corpus()
    assert len(texts) >= 400
    ours = bundled_clip(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    different = [(t, o, r) for t, o in zip(texts, ours, strict=True) if o != (r := reference_clip.encode(t))]
    assert not different, f"{len(different)} of {len(texts)} differ, first: {different[0]}"
    assert max(len(ids) for ids in ours) > 300  # the long prompts really are long


def test_bundled_clip_ids_equal_the_reference_for_a1111_prompts_after_parsing(bundled_clip, reference_clip):
    pieces = [text for prompt in A1111_PROMPTS for text, _ in parse_prompt_attention(prompt)]
    assert len(pieces) > 30
    ours = bundled_clip(pieces, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    assert ours == [reference_clip.encode(piece) for piece in pieces]


def test_bundled_clip_vocabulary_is_clips_rule_over_its_merges(reference_clip):
    vocab = json.loads((CLIP_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == reference_clip.encoder
    assert len(vocab) == 49408
    merges = (CLIP_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    # Ids every SD user has seen in A1111's token inspector and in diffusers' tokenizer/vocab.json.
    assert [vocab[t] for t in ("!", "a</w>", "photo</w>", "cat</w>", ",</w>")] == [0, 320, 1125, 2368, 267]
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)


@pytest.mark.parametrize(("pad", "pad_id"), [("<|endoftext|>", 49407), (OPEN_CLIP_PAD, 0)])
def test_bundled_clip_pads_to_77_with_the_encoders_pad_token(pad, pad_id):
    tokenizer = load_clip_tokenizer(Path("/nonexistent-models-dir"), pad_token=pad)
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77 and set(ids[7:]) == {pad_id}


def test_clip_text_cleaning_is_clips():
    assert clean_clip_text("It’s  “Big”\n&amp; ﬁne") == 'it\'s "big" & fine'
    assert clean_clip_text("ΟΔΟΣ") == "οδος"  # word-final sigma, as Python lower-cases (and CLIP did)
    assert clean_clip_text("cafe\u0301") == unicodedata.normalize("NFC", "café")
    assert clean_clip_text("  ") == ""


def test_t5_round_trips_and_gives_the_files_own_ids():
    tokenizer = load_t5_tokenizer(Path("/nonexistent-models-dir"), max_length=256)
    pieces = [piece for piece, _ in json.loads((BUNDLED_DIR / "t5/tokenizer.json").read_text())["model"]["vocab"]]
    index = {piece: i for i, piece in enumerate(pieces)}
    assert len(pieces) == 32100 and tokenizer.model_max_length == 256
    texts = ["a photo of a cat", "A red fox, 35mm film, f/1.8.", "Über den Wolken", "c'est la vie", "1234 and 3.14"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids[-1] == tokenizer.eos_token_id == index["</s>"] == 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    expected = [index[p] for p in ("▁", "a", "▁photo", "▁of", "▁", "a", "▁cat", "</s>")]
    assert tokenizer("a photo of a cat").input_ids == expected
    assert tokenizer("Hello world").input_ids == [index["▁Hello"], index["▁world"], 1]
    padded = tokenizer("a cat", padding="max_length", max_length=256, truncation=True).input_ids
    assert len(padded) == 256 and padded[-1] == tokenizer.pad_token_id == index["<pad>"] == 0
    with pytest.raises(ValueError, match="max_length"):
        load_t5_tokenizer(Path("/nonexistent-models-dir"), max_length=0)


def test_qwen3_bundled_tokenizer_loads_and_round_trips():
    tokenizer = load_qwen3_tokenizer(Path("/nonexistent-models-dir"))
    assert len(tokenizer) == 151669
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    for text in ("a photo of a cat", "Ünïcödé 🐱 日本語", "  spaces\tand\nlines "):
        assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_users_clip_folder_wins_over_the_bundled_one(tmp_path):
    write_tokenizer_files(tmp_path / "tokenizers/clip")
    source = find_tokenizer(tmp_path, TokenizerKind.CLIP)
    assert (source.folder, source.bundled) == (tmp_path / "tokenizers/clip", False)
    tokenizer = load_clip_tokenizer(tmp_path)
    assert isinstance(tokenizer, CLIPPromptTokenizer) and len(tokenizer) == tiny_vocab_size()


def test_empty_user_folder_falls_back_to_the_bundled_copy(tmp_path):
    for kind in TokenizerKind:
        (tmp_path / "tokenizers" / kind.value).mkdir(parents=True)
        source = find_tokenizer(tmp_path, kind)
        assert (source.folder, source.bundled) == (BUNDLED_DIR / kind.value, True)
    assert len(load_clip_tokenizer(tmp_path)) == 49408


def test_half_filled_user_folder_is_an_error_naming_the_missing_file(tmp_path):
    folder = tmp_path / "tokenizers/clip"
    write_tokenizer_files(folder)
    (folder / "merges.txt").unlink()
    with pytest.raises(TokenizerNotFoundError, match=r"tokenizers/clip: has vocab\.json but not merges\.txt"):
        load_clip_tokenizer(tmp_path)


def test_unreadable_user_vocab_names_the_file(tmp_path):
    folder = tmp_path / "tokenizers/clip"
    write_tokenizer_files(folder)
    (folder / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerNotFoundError, match=r"vocab\.json: unreadable"):
        load_clip_tokenizer(tmp_path)


def test_malformed_user_merges_name_the_line(tmp_path):
    folder = tmp_path / "tokenizers/clip"
    write_tokenizer_files(folder)
    (folder / "merges.txt").write_text("#version: 0.2\na b\nnot-a-pair\n", encoding="utf-8")
    with pytest.raises(TokenizerNotFoundError, match=r"one pair per line \(found 'not-a-pair'\)"):
        load_clip_tokenizer(tmp_path)


def test_users_t5_folder_wins(tmp_path):
    folder = tmp_path / "tokenizers/t5"
    folder.mkdir(parents=True)
    data = json.loads((BUNDLED_DIR / "t5/tokenizer.json").read_text())
    data["model"]["vocab"][1712][0] = "▁zorblax"  # a made-up word in place of "▁cat": the user's file is used
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    tokenizer = load_t5_tokenizer(tmp_path, max_length=512)
    assert tokenizer("zorblax").input_ids == [1712, 1]


# --- the bundling script -------------------------------------------------------------------------


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def test_bundle_script_derives_the_shipped_clip_files_from_clips_gz(tmp_path):
    import gzip

    from webui.models.tokenizer_bundle import main

    merges = (CLIP_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    # The real file's layout: a quoted header line, the merges CLIP uses, then more that it ignores.
    original = "\n".join(['"bpe_simple_vocab_16e6.txt#version: 0.2', *merges, "ignored merge</w>", ""])
    wheel = _wheel(
        tmp_path / "open_clip_torch-0-py3-none-any.whl",
        {
            "open_clip/bpe_simple_vocab_16e6.txt.gz": gzip.compress(original.encode("utf-8")),
            "open_clip_torch-0.dist-info/licenses/LICENSE": b"MIT licence text",
        },
    )
    assert main(["--from-wheel", str(wheel), "--out", str(tmp_path / "out")]) == 0
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "out/clip" / name).read_bytes() == (CLIP_DIR / name).read_bytes(), name
    assert "MIT licence text" in (tmp_path / "out/clip/LICENSE").read_text()
    assert "Copyright (c) 2021 OpenAI" in (tmp_path / "out/clip/LICENSE").read_text()
    assert "open_clip/bpe_simple_vocab_16e6.txt.gz (sha256 " in (tmp_path / "out/clip/NOTICE").read_text()


def test_bundle_script_copies_t5_and_qwen3_with_their_licence(tmp_path):
    from webui.models.tokenizer_bundle import COPIED, main

    members = {"invokeai-0.dist-info/licenses/LICENSE": b"Apache License 2.0"}
    for spec in COPIED:
        members |= {f"{spec.member_dir}/{name}": (BUNDLED_DIR / spec.name / name).read_bytes() for name in spec.files}
    wheel = _wheel(tmp_path / "invokeai-0-py3-none-any.whl", members)
    assert main(["--from-wheel", str(wheel), "--out", str(tmp_path / "out")]) == 0
    for spec in COPIED:
        for name in spec.files:
            assert (tmp_path / "out" / spec.name / name).read_bytes() == (BUNDLED_DIR / spec.name / name).read_bytes()
        assert (tmp_path / "out" / spec.name / "LICENSE").read_text() == "Apache License 2.0"
    assert not (tmp_path / "out/clip").exists()


def test_bundle_script_refuses_a_wheel_without_tokenizers_or_licence(tmp_path):
    import gzip

    from webui.models.tokenizer_bundle import BundleSourceError, bundle_from_wheel

    empty = _wheel(tmp_path / "other-0-py3-none-any.whl", {"other/__init__.py": b""})
    with pytest.raises(BundleSourceError, match="holds no tokenizer"):
        bundle_from_wheel(empty, tmp_path / "out")
    gz = "x/bpe_simple_vocab_16e6.txt.gz"
    short = _wheel(tmp_path / "short-0-py3-none-any.whl", {gz: gzip.compress(b"header\na b\n")})
    with pytest.raises(BundleSourceError, match="expected 48894 merges"):
        bundle_from_wheel(short, tmp_path / "out")
    merges = (CLIP_DIR / "merges.txt").read_bytes()
    unlicensed = _wheel(tmp_path / "nolicence-0-py3-none-any.whl", {gz: gzip.compress(merges)})
    with pytest.raises(BundleSourceError, match="no LICENSE"):
        bundle_from_wheel(unlicensed, tmp_path / "out")


def test_package_data_globs_carry_every_bundled_tokenizer_file():
    """A non-editable install ships what pyproject's package-data names (checked: the built wheel lists them)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    package = BUNDLED_DIR.parents[1]  # the webui package folder
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["webui"]
    shipped = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    data = {p for p in BUNDLED_DIR.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert len(data) == 14 and data <= shipped
