//! Byte-level BPE word splitting by `tokenizer.ggml.pre`, as llama.cpp's llama-vocab.cpp chooses it.
//!
//! Each entry is a list of regular expressions applied one after the other; every expression
//! splits each piece from the one before into its matches and the text between them (both kept),
//! which is what llama.cpp's `unicode_regex_split` and HF tokenizers' `Split(.., "isolated")` do.
//! Where llama.cpp rewrote a model's expression for `std::regex`, the model's own expression is
//! used here (Oniguruma runs it as written).

/// A pre-tokenizer: the expressions and what the `pre` value implies besides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// The canonical name (llama.cpp's type).
    pub name: &'static str,
    /// The split expressions, in order.
    pub regexes: &'static [&'static str],
    /// A word found whole in the vocabulary is one token, merges or not (Llama 3, Tekken).
    pub ignore_merges: bool,
    /// The family's default for `add_bos_token` when the file does not say.
    pub add_bos: bool,
}

/// GPT-2's expression, as llama.cpp lists it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's expression (Meta's tokenizer.json).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's expression: Llama 3's with single digits.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral's Tekken expression (Mistral Nemo).
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const fn pre(
    name: &'static str,
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
) -> PreTokenizer {
    PreTokenizer {
        name,
        regexes,
        ignore_merges,
        add_bos,
    }
}

/// llama.cpp's `default`: punctuation runs first, then GPT-2's expression, then digits.
const DEFAULT: PreTokenizer = pre(
    "default",
    &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    false,
    false,
);
const GPT2_PRE: PreTokenizer = pre("gpt-2", &[GPT2], false, false);
const LLAMA3_PRE: PreTokenizer = pre("llama3", &[LLAMA3], true, true);
const LLAMA3_REGEX: PreTokenizer = pre("dbrx", &[LLAMA3], false, false);
const SMOLLM: PreTokenizer = pre("smollm", &[r"\p{N}", GPT2], false, false);
const QWEN2_PRE: PreTokenizer = pre("qwen2", &[QWEN2], false, false);
const TEKKEN_PRE: PreTokenizer = pre("tekken", &[TEKKEN], true, true);
// DeepSeek's expressions spell their letter ranges code point by code point: several of these
// characters (Kelvin sign, Ohm sign, Greek with oxia) have canonical equivalents that an editor's
// normalisation would silently swap in.
const DEEPSEEK_LLM: PreTokenizer = pre(
    "deepseek-llm",
    &[
        "[\r\n]",
        "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
        "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
        "\\s+$",
        "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
        "\\p{N}+",
    ],
    false,
    false,
);
const DEEPSEEK_CODER: PreTokenizer = pre(
    "deepseek-coder",
    &[
        "[\r\n]",
        r"\s?\p{L}+",
        r"\s?\p{P}+",
        "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
        r"\p{N}",
    ],
    false,
    false,
);

/// Every `tokenizer.ggml.pre` value understood, and what it selects.
const TABLE: &[(&str, PreTokenizer)] = &[
    ("default", DEFAULT),
    ("gpt-2", GPT2_PRE),
    ("phi-2", GPT2_PRE),
    ("mpt", GPT2_PRE),
    ("olmo", GPT2_PRE),
    ("llama3", LLAMA3_PRE),
    ("llama-v3", LLAMA3_PRE),
    ("llama-bpe", LLAMA3_PRE),
    ("falcon3", LLAMA3_PRE),
    ("pixtral", LLAMA3_PRE),
    ("dbrx", LLAMA3_REGEX),
    ("smaug-bpe", LLAMA3_REGEX),
    ("smollm", SMOLLM),
    ("starcoder", SMOLLM),
    ("refact", SMOLLM),
    ("codeshell", SMOLLM),
    ("qwen2", QWEN2_PRE),
    ("stablelm2", QWEN2_PRE),
    ("deepseek-r1-qwen", QWEN2_PRE),
    ("tekken", TEKKEN_PRE),
    ("deepseek-llm", DEEPSEEK_LLM),
    ("deepseek-coder", DEEPSEEK_CODER),
];

/// The understood `pre` values, for error messages.
pub fn names() -> Vec<&'static str> {
    TABLE.iter().map(|(n, _)| *n).collect()
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, or `None` when it is not known.
pub fn lookup(pre: &str) -> Option<PreTokenizer> {
    TABLE.iter().find(|(n, _)| *n == pre).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_name() {
        assert!(names().contains(&"smollm"));
        assert_eq!(lookup("smollm").unwrap().regexes, &[r"\p{N}", GPT2]);
        assert!(lookup("llama-bpe").unwrap().ignore_merges);
        assert!(lookup("no-such-pre").is_none());
    }
}
