//! Prompt text → CLIP ids and weights: the A1111 attention parser against every doctest of the
//! webui's `prompt_parser.py`, CLIP BPE on hand-made and byte-level vocabularies, tokenizer
//! loading and its errors, A1111 chunking and diffusers' plain tokenisation.

use sdtrace::model::synth::byte_level_vocab;
use sdtrace::text::prompt::{BREAK_TEXT, BREAK_WEIGHT};
use sdtrace::text::tokenizer::{html_unescape, normalize};
use sdtrace::text::{
    CONTEXT_LEN, Chunk, ClipTokenizer, PromptSyntax, PromptTokens, TextError, bytes_to_unicode,
    parse_prompt_attention, tokenize_a1111, tokenize_prompt,
};
use std::collections::HashMap;
use std::path::Path;

fn parsed(text: &str) -> Vec<(String, f64)> {
    parse_prompt_attention(text).unwrap()
}

fn pieces(list: &[(&str, f64)]) -> Vec<(String, f64)> {
    list.iter().map(|&(t, w)| (t.to_string(), w)).collect()
}

// ---------------------------------------------------------------- attention parser

#[test]
fn parser_reproduces_every_webui_doctest() {
    assert_eq!(parsed("normal text"), pieces(&[("normal text", 1.0)]));
    assert_eq!(
        parsed("an (important) word"),
        pieces(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
    );
    assert_eq!(parsed("(unbalanced"), pieces(&[("unbalanced", 1.1)]));
    assert_eq!(parsed(r"\(literal\]"), pieces(&[("(literal]", 1.0)]));
    assert_eq!(
        parsed("(unnecessary)(parens)"),
        pieces(&[("unnecessaryparens", 1.1)])
    );
    assert_eq!(
        parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
        pieces(&[
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ])
    );
}

#[test]
fn parser_weights_follow_python_float_order() {
    let sq = 1.0 / 1.1;
    assert_eq!(parsed("[a]"), pieces(&[("a", sq)]));
    assert_eq!(parsed("[[a]]"), pieces(&[("a", 1.0 * sq * sq)]));
    assert_eq!(parsed("((a))"), pieces(&[("a", 1.0 * 1.1 * 1.1)]));
    // Whitespace around the number is allowed (the current webui pattern); before the colon
    // it is text.
    assert_eq!(parsed("(a : 1.5 )"), pieces(&[("a ", 1.5)]));
    assert_eq!(parsed("(a:\t-.5)"), pieces(&[("a", -0.5)]));
    assert_eq!(parsed("(a:+2.)"), pieces(&[("a", 2.0)]));
    // Python's float() takes decimal digits of any script.
    assert_eq!(parsed("(a:\u{663}.5)"), pieces(&[("a", 3.5)]));
    // A zero weight makes the marker -0.0, equal to its neighbours: all merge into text.
    assert_eq!(parsed("(BREAK:0)"), pieces(&[("BREAK", 0.0)]));
    // Unclosed: round brackets first, then square ones, each from its opening position.
    assert_eq!(
        parsed("[a (b"),
        pieces(&[("a ", sq), ("b", 1.0 * 1.1 * sq)])
    );
    // A weight or closing bracket without an opening one is text.
    assert_eq!(parsed("a:1.5) b] c)"), pieces(&[("a:1.5) b] c)", 1.0)]));
    assert_eq!(parsed("a: b"), pieces(&[("a: b", 1.0)]));
    assert_eq!(parsed("(a:b)"), pieces(&[("a:b", 1.1)]));
    assert_eq!(parsed(""), pieces(&[("", 1.0)]));
    assert_eq!(parsed("()"), pieces(&[("", 1.0)]));
}

#[test]
fn parser_escapes() {
    assert_eq!(parsed(r"\\"), pieces(&[("\\", 1.0)]));
    assert_eq!(parsed(r"a \x"), pieces(&[("a x", 1.0)]));
    assert_eq!(parsed(r"\(a\) \[b\]"), pieces(&[("(a) [b]", 1.0)]));
    assert_eq!(parsed(r"(a\))"), pieces(&[("a)", 1.1)]));
    assert_eq!(parsed(r"\"), pieces(&[("", 1.0)]));
}

#[test]
fn parser_bad_weight_is_an_error_naming_it() {
    let e = parse_prompt_attention("a (b:1.2.3) c").unwrap_err();
    assert!(matches!(e, TextError::Weight { .. }), "{e}");
    assert!(e.to_string().contains(":1.2.3)"), "{e}");
    // Without an open round bracket the webui never converts it: plain text.
    assert_eq!(parsed("b:1.2.3)"), pieces(&[("b:1.2.3)", 1.0)]));
}

#[test]
fn parser_break_markers() {
    let br = (BREAK_TEXT, BREAK_WEIGHT);
    assert_eq!(parsed("a BREAK b"), pieces(&[("a", 1.0), br, ("b", 1.0)]));
    assert_eq!(parsed("BREAK a"), pieces(&[("", 1.0), br, ("a", 1.0)]));
    assert_eq!(parsed("a BREAK"), pieces(&[("a", 1.0), br, ("", 1.0)]));
    assert_eq!(parsed("aBREAK b"), pieces(&[("aBREAK b", 1.0)]));
    assert_eq!(parsed("a break b"), pieces(&[("a break b", 1.0)]));
    assert_eq!(
        parsed("a BREAK BREAK b"),
        pieces(&[("a", 1.0), br, ("", 1.0), br, ("b", 1.0)])
    );
    // Inside brackets the marker is multiplied like any piece and is a marker no more.
    assert_eq!(
        parsed("(a BREAK b)"),
        pieces(&[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)])
    );
}

// ---------------------------------------------------------------- BPE

fn vocab_of(tokens: &[&str]) -> HashMap<String, u32> {
    let mut v: HashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    v.insert("<|startoftext|>".into(), 1000);
    v.insert("<|endoftext|>".into(), 1001);
    v
}

fn merges_of(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|&(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const SMALL: &[&str] = &[
    "h", "e", "l", "o", "h</w>", "e</w>", "l</w>", "o</w>", "he", "ll", "lo</w>", "lo", "a",
    "a</w>", "aa", "aaaa",
];

fn small(merges: &[(&str, &str)]) -> ClipTokenizer {
    ClipTokenizer::from_parts(vocab_of(SMALL), merges_of(merges)).unwrap()
}

fn ids(tok: &ClipTokenizer, tokens: &[&str]) -> Vec<u32> {
    tokens.iter().map(|t| tok.token_id(t).unwrap()).collect()
}

#[test]
fn bpe_merges_lowest_rank_first() {
    let tok = small(&[("l", "o</w>"), ("l", "l"), ("h", "e")]);
    assert_eq!(tok.encode("hello"), ids(&tok, &["he", "l", "lo</w>"]));
    let tok = small(&[("l", "l"), ("h", "e"), ("l", "o</w>")]);
    assert_eq!(tok.encode("hello"), ids(&tok, &["he", "ll", "o</w>"]));
}

#[test]
fn bpe_end_of_word_marks_the_last_symbol_only() {
    let tok = small(&[("l", "o")]);
    // "lo" ends the word: its o is "o</w>", so the ("l", "o") merge does not apply.
    assert_eq!(tok.encode("lo"), ids(&tok, &["l", "o</w>"]));
    assert_eq!(tok.encode("lol"), ids(&tok, &["lo", "l</w>"]));
    assert_eq!(tok.encode("a"), ids(&tok, &["a</w>"]));
}

#[test]
fn bpe_merges_every_occurrence_left_to_right() {
    let tok = small(&[("a", "a"), ("aa", "aa")]);
    assert_eq!(tok.encode("aaaa"), ids(&tok, &["aa", "a", "a</w>"]));
    assert_eq!(tok.encode("aaaaa"), ids(&tok, &["aaaa", "a</w>"]));
    // Cached words give the same ids the second time.
    assert_eq!(tok.encode("aaaaa aaaa"), tok.encode("aaaaa aaaa"));
}

#[test]
fn bpe_unknown_symbols_become_endoftext() {
    let tok = small(&[]);
    assert_eq!(
        tok.encode("hz"),
        vec![tok.token_id("h").unwrap(), tok.eos()]
    );
}

// ---------------------------------------------------------------- byte-level vocabulary

fn byte_level() -> ClipTokenizer {
    let v: HashMap<String, u32> = serde_json::from_value(byte_level_vocab()).unwrap();
    ClipTokenizer::from_parts(v, Vec::new()).unwrap()
}

/// The byte-level vocabulary's id of byte `b`, with `</w>` (+256) when it ends a word.
fn byte_id(b: u8, last: bool) -> u32 {
    let i = bytes_to_unicode()
        .iter()
        .position(|&(x, _)| x == b)
        .unwrap() as u32;
    if last { i + 256 } else { i }
}

fn byte_ids(words: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for w in words {
        let bytes = w.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            out.push(byte_id(b, i + 1 == bytes.len()));
        }
    }
    out
}

#[test]
fn byte_level_vocabulary_gives_one_token_per_byte() {
    let tok = byte_level();
    assert_eq!(tok.encode("a photo"), vec![320, 79, 71, 78, 83, 334]);
    assert_eq!(tok.encode("a photo"), byte_ids(&["a", "photo"]));
    // Pre-tokenisation: letters run together, digits and punctuation split, contractions.
    assert_eq!(
        tok.encode("It's 42 cats!!"),
        byte_ids(&["it", "'s", "4", "2", "cats", "!!"])
    );
    // Multi-byte characters: one token per UTF-8 byte, </w> on the last.
    assert_eq!(tok.encode("café"), byte_ids(&["café"]));
    assert_eq!(tok.encode("日本"), byte_ids(&["日本"]));
    // U+0345 is neither a letter nor "other" to Python's case-insensitive pattern: skipped.
    assert_eq!(tok.encode("the\u{345}the"), byte_ids(&["the", "the"]));
    assert_eq!(tok.vocab_len(), 514);
    assert_eq!(tok.comma_id(), Some(byte_id(b',', true)));
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (49406, 49407, 49407));
}

#[test]
fn special_tokens_in_text_are_their_ids() {
    let tok = byte_level();
    let mut want = byte_ids(&["a"]);
    want.push(49407);
    want.extend(byte_ids(&[","]));
    want.push(49406);
    want.extend(byte_ids(&["b"]));
    assert_eq!(tok.encode("a<|endoftext|>,<|startoftext|>b"), want);
    // Lowercased and unescaped text still finds them (CLIP's pattern and BPE cache).
    assert_eq!(tok.encode("<|ENDOFTEXT|>"), vec![49407]);
    assert_eq!(tok.encode("&lt;|endoftext|&gt;"), vec![49407]);
}

#[test]
fn normalisation_unescapes_collapses_and_lowercases() {
    assert_eq!(normalize("  A\t\nPhoto   OF\u{3000}x  "), "a photo of x");
    assert_eq!(normalize("ΣΑΣ"), "σας");
    assert_eq!(normalize("Tom &amp; Jerry"), "tom & jerry");
    // Twice: &amp;lt; → &lt; → <.
    assert_eq!(normalize("&amp;lt;b&amp;gt;"), "<b>");
    assert_eq!(normalize("&amp;amp;amp;"), "&amp;");
    // U+001C–U+001F are control characters ftfy removes before anything else (without it,
    // str.strip would take them off the ends but regex's \s would keep them inside).
    assert_eq!(normalize("\u{1c}a\u{1f} \t b\u{1c}"), "a b");
    assert_eq!(
        normalize("Don’t “ﬁx” ＡＢＣ\u{1b}[1mx"),
        "don't \"fix\" abcx"
    );
    let tok = byte_level();
    assert_eq!(tok.encode("A  PHOTO"), tok.encode("a photo"));
    assert_eq!(tok.encode("&quot;x&quot;"), tok.encode("\"x\""));
    assert_eq!(tok.encode(" \t "), Vec::<u32>::new());
}

#[test]
fn html_unescape_follows_python() {
    assert_eq!(html_unescape("&lt;&gt;&quot;&apos;&#39;"), "<>\"''");
    assert_eq!(html_unescape("&#65;&#x42;&#X43;&#68"), "ABCD");
    // Legacy names work without ';' and as prefixes; &apos needs its ';'.
    assert_eq!(html_unescape("&ampx &lt3 &apos &AMP;"), "&x <3 &apos &");
    assert_eq!(html_unescape("&#; &#x; & x &"), "&#; &#x; & x &");
    // Python's replacement tables for invalid numeric references.
    assert_eq!(html_unescape("&#0;&#x80;&#x9f;&#13;"), "\u{fffd}€Ÿ\r");
    assert_eq!(html_unescape("&#xD800;&#99999999999;"), "\u{fffd}\u{fffd}");
    assert_eq!(html_unescape("a&#1;b&#x7f;c&#xFFFE;d&#11;e"), "abcde");
}

// ---------------------------------------------------------------- loading

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn small_vocab_json() -> serde_json::Value {
    let v: serde_json::Map<String, serde_json::Value> = vocab_of(SMALL)
        .into_iter()
        .map(|(k, id)| (k, id.into()))
        .collect();
    serde_json::Value::Object(v)
}

const SMALL_MERGES: &[(&str, &str)] = &[("l", "o</w>"), ("h", "e"), ("l", "l"), ("a", "a")];

#[test]
fn tokenizer_json_and_vocab_merges_agree() {
    let texts = ["hello", "hell lol ha", "aaaaa, HELLO!", "", "<|endoftext|>"];
    let base = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        base.path().join("a"),
        base.path().join("b"),
        base.path().join("c"),
    );
    for d in [&a, &b, &c] {
        std::fs::create_dir(d).unwrap();
    }
    write(&a, "vocab.json", &small_vocab_json().to_string());
    let merges: String = SMALL_MERGES
        .iter()
        .map(|(x, y)| format!("{x} {y}\n\n"))
        .collect();
    write(&a, "merges.txt", &format!("#version: 0.2\n{merges}"));
    let as_strings: Vec<String> = SMALL_MERGES
        .iter()
        .map(|(x, y)| format!("{x} {y}"))
        .collect();
    let as_pairs: Vec<[&str; 2]> = SMALL_MERGES.iter().map(|&(x, y)| [x, y]).collect();
    for (dir, merges) in [
        (&b, serde_json::json!(as_strings)),
        (&c, serde_json::json!(as_pairs)),
    ] {
        let json = serde_json::json!({
            "version": "1.0",
            "model": {"type": "BPE", "vocab": small_vocab_json(), "merges": merges,
                      "end_of_word_suffix": "</w>"},
        });
        write(dir, "tokenizer.json", &json.to_string());
    }
    let from_txt = ClipTokenizer::from_dir(&a).unwrap();
    let from_json = ClipTokenizer::from_dir(&b).unwrap();
    let from_pairs = ClipTokenizer::from_dir(&c).unwrap();
    let direct = ClipTokenizer::from_parts(vocab_of(SMALL), merges_of(SMALL_MERGES)).unwrap();
    for t in texts {
        let want = direct.encode(t);
        assert_eq!(from_txt.encode(t), want, "{t}");
        assert_eq!(from_json.encode(t), want, "{t}");
        assert_eq!(from_pairs.encode(t), want, "{t}");
    }
    assert_eq!(direct.encode("hello"), ids(&direct, &["he", "l", "lo</w>"]));
}

#[test]
fn tokenizer_json_added_tokens_fill_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({
        "model": {"type": "BPE", "vocab": {"a</w>": 0}, "merges": []},
        "added_tokens": [{"id": 7, "content": "<|startoftext|>"}, {"id": 8, "content": "<|endoftext|>"}],
    });
    write(dir.path(), "tokenizer.json", &json.to_string());
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (7, 8, 8));
}

fn byte_level_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "vocab.json", &byte_level_vocab().to_string());
    write(dir.path(), "merges.txt", "#version: 0.2\n");
    dir
}

#[test]
fn pad_token_comes_from_the_tokenizer_files() {
    let dir = byte_level_dir();
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad(), 49407);
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"pad_token": {"__type": "AddedToken", "content": "!"}}"#,
    );
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad(), 0);
    // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
    write(
        dir.path(),
        "special_tokens_map.json",
        r#"{"pad_token": "<|endoftext|>"}"#,
    );
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad(), 49407);
    write(
        dir.path(),
        "special_tokens_map.json",
        r#"{"pad_token": null}"#,
    );
    assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad(), 0);
    assert_eq!(byte_level().with_pad_token("!").unwrap().pad(), 0);
}

fn load_err(dir: &Path) -> String {
    ClipTokenizer::from_dir(dir).unwrap_err().to_string()
}

#[test]
fn loading_errors_name_the_file_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains(&dir.path().display().to_string())
            && e.contains("vocab.json + merges.txt")
            && e.contains("tokenizer.json"),
        "{e}"
    );

    write(dir.path(), "vocab.json", "{\"a\": 0,");
    write(dir.path(), "merges.txt", "#version: 0.2\na b\n");
    let e = load_err(dir.path());
    assert!(
        e.contains("vocab.json") && e.contains("invalid JSON"),
        "{e}"
    );

    write(dir.path(), "vocab.json", &byte_level_vocab().to_string());
    write(dir.path(), "merges.txt", "#version: 0.2\na b\n\nc d e\n");
    let e = load_err(dir.path());
    assert!(e.contains("merges.txt:4") && e.contains("c d e"), "{e}");

    write(dir.path(), "vocab.json", r#"{"a": 0, "<|endoftext|>": 1}"#);
    write(dir.path(), "merges.txt", "#version: 0.2\n");
    let e = load_err(dir.path());
    assert!(
        e.contains("vocab.json") && e.contains("<|startoftext|>"),
        "{e}"
    );

    write(dir.path(), "vocab.json", &byte_level_vocab().to_string());
    write(
        dir.path(),
        "special_tokens_map.json",
        r#"{"pad_token": "<pad>"}"#,
    );
    let e = load_err(dir.path());
    assert!(
        e.contains("special_tokens_map.json") && e.contains("<pad>"),
        "{e}"
    );
    write(dir.path(), "special_tokens_map.json", "not json");
    let e = load_err(dir.path());
    assert!(e.contains("special_tokens_map.json"), "{e}");
}

#[test]
fn tokenizer_json_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut json = serde_json::json!({
        "model": {"type": "BPE", "vocab": small_vocab_json(), "merges": ["h e", "l"]},
    });
    write(dir.path(), "tokenizer.json", &json.to_string());
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("model.merges[1]"),
        "{e}"
    );
    json["model"]["merges"] = serde_json::json!([["h", "e"], ["l", 3]]);
    write(dir.path(), "tokenizer.json", &json.to_string());
    assert!(load_err(dir.path()).contains("model.merges[1]"));
    json["model"]["type"] = "WordPiece".into();
    write(dir.path(), "tokenizer.json", &json.to_string());
    assert!(load_err(dir.path()).contains("model.type"));
    write(
        dir.path(),
        "tokenizer.json",
        r#"{"model": {"vocab": [], "merges": []}}"#,
    );
    assert!(load_err(dir.path()).contains("model.vocab"));
    write(dir.path(), "tokenizer.json", "[");
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

// ---------------------------------------------------------------- chunking

const A: u32 = 320; // "a</w>"
const B: u32 = 321; // "b</w>"
const BOS: u32 = 49406;
const EOS: u32 = 49407;

fn comma() -> u32 {
    byte_id(b',', true)
}

fn a1111(prompt: &str) -> PromptTokens {
    tokenize_prompt(&byte_level(), prompt, PromptSyntax::A1111).unwrap()
}

fn words(word: &str, n: usize) -> String {
    vec![word; n].join(" ")
}

/// A chunk: BOS, `tokens`, EOS-padded to 77.
fn framed(tokens: &[u32]) -> Vec<u32> {
    let mut v = vec![BOS];
    v.extend_from_slice(tokens);
    v.resize(CONTEXT_LEN, EOS);
    v
}

fn ids_of(p: &PromptTokens) -> Vec<Vec<u32>> {
    p.chunks.iter().map(|c| c.ids.clone()).collect()
}

fn check_shapes(p: &PromptTokens) {
    for Chunk { ids, weights } in &p.chunks {
        assert_eq!((ids.len(), weights.len()), (CONTEXT_LEN, CONTEXT_LEN));
        assert_eq!((ids[0], weights[0], weights[76]), (BOS, 1.0, 1.0));
    }
}

#[test]
fn chunking_74_75_76_tokens() {
    let p = a1111(&words("a", 74));
    check_shapes(&p);
    assert_eq!(ids_of(&p), [framed(&[A; 74])]);
    assert_eq!(p.token_count, 74);

    let p = a1111(&words("a", 75));
    assert_eq!(ids_of(&p), [framed(&[A; 75])]);
    assert_eq!(p.token_count, 75);

    let p = a1111(&words("a", 76));
    check_shapes(&p);
    assert_eq!(ids_of(&p), [framed(&[A; 75]), framed(&[A])]);
    assert_eq!((p.token_count, p.truncated), (76, 0));
}

#[test]
fn empty_prompt_is_one_padding_chunk() {
    for prompt in ["", "   ", "()"] {
        let p = a1111(prompt);
        assert_eq!(ids_of(&p), [framed(&[])], "{prompt:?}");
        assert_eq!(p.chunks[0].weights, vec![1.0; CONTEXT_LEN]);
        assert_eq!(p.token_count, 0);
    }
}

/// `n_a` a's, a comma, `n_b` b's.
fn comma_prompt(n_a: usize, n_b: usize) -> (String, Vec<u32>) {
    let mut tokens = vec![A; n_a];
    tokens.push(comma());
    tokens.extend(vec![B; n_b]);
    (format!("{}, {}", words("a", n_a), words("b", n_b)), tokens)
}

#[test]
fn comma_backtrack_inside_the_window_moves_the_tail() {
    // The comma is 5 tokens before the chunk's end: the 4 b's after it move on.
    let (prompt, t) = comma_prompt(70, 10);
    let p = a1111(&prompt);
    check_shapes(&p);
    assert_eq!(ids_of(&p), [framed(&t[..71]), framed(&t[71..])]);
    assert_eq!(p.token_count, 75 + 10);
    // Exactly 20 back still moves.
    let (prompt, t) = comma_prompt(55, 30);
    assert_eq!(
        ids_of(&a1111(&prompt)),
        [framed(&t[..56]), framed(&t[56..])]
    );
}

#[test]
fn comma_backtrack_outside_the_window_or_disabled_does_not() {
    // 21 back: out of the window, the chunk is cut at 75.
    let (prompt, t) = comma_prompt(54, 30);
    assert_eq!(
        ids_of(&a1111(&prompt)),
        [framed(&t[..75]), framed(&t[75..])]
    );
    let (prompt, t) = comma_prompt(70, 10);
    let p = tokenize_a1111(&byte_level(), &prompt, 0).unwrap();
    assert_eq!(ids_of(&p), [framed(&t[..75]), framed(&t[75..])]);
    // A comma exactly at the 76th token starts the next chunk without backtracking.
    let (prompt, t) = comma_prompt(75, 3);
    assert_eq!(
        ids_of(&a1111(&prompt)),
        [framed(&t[..75]), framed(&t[75..])]
    );
}

#[test]
fn break_at_start_middle_end() {
    let p = a1111("BREAK a");
    assert_eq!(ids_of(&p), [framed(&[]), framed(&[A])]);
    assert_eq!(p.token_count, 76);

    let p = a1111("a BREAK b");
    assert_eq!(ids_of(&p), [framed(&[A]), framed(&[B])]);
    assert_eq!(p.token_count, 76);

    let p = a1111("a BREAK");
    assert_eq!(ids_of(&p), [framed(&[A])]);
    assert_eq!(p.token_count, 75);

    let p = a1111("BREAK");
    assert_eq!(ids_of(&p), [framed(&[])]);
    assert_eq!(p.token_count, 75);

    let p = a1111("a BREAK BREAK b");
    assert_eq!(ids_of(&p), [framed(&[A]), framed(&[]), framed(&[B])]);

    // A BREAK right after a full chunk: the full chunk is closed only by the BREAK.
    let p = a1111(&format!("{} BREAK b", words("a", 75)));
    assert_eq!(ids_of(&p), [framed(&[A; 75]), framed(&[B])]);
}

#[test]
fn weights_are_carried_per_token() {
    let p = a1111("a (b:1.5) [ab] (a BREAK b)");
    check_shapes(&p);
    let w = &p.chunks[0].weights;
    let ab = [byte_id(b'a', false), byte_id(b'b', true)];
    let want_ids = [A, B, ab[0], ab[1], A]
        .into_iter()
        .chain(byte_ids(&["break"]))
        .chain([B]);
    assert_eq!(p.chunks[0].ids, framed(&want_ids.collect::<Vec<_>>()));
    let sq = (1.0f64 / 1.1) as f32;
    let mut want = vec![1.0f32, 1.0, 1.5, sq, sq, 1.1];
    want.extend([-1.1f32; 5]);
    want.push(1.1);
    want.resize(CONTEXT_LEN, 1.0);
    assert_eq!(w, &want);
}

#[test]
fn weights_move_with_backtracked_tokens() {
    let (prompt, _) = comma_prompt(70, 10);
    let p = a1111(&prompt.replace("b b b b b b b b b b", "(b b b b b b b b b b)"));
    let (c0, c1) = (&p.chunks[0], &p.chunks[1]);
    assert!(c0.weights.iter().all(|&w| w == 1.0));
    assert_eq!(&c1.weights[1..11], &[1.1f32; 10]);
    assert!(c1.weights[11..].iter().all(|&w| w == 1.0));
}

#[test]
fn sd2_pad_follows_the_first_eos() {
    let tok = byte_level().with_pad_token("!").unwrap();
    let p = tokenize_prompt(&tok, "a", PromptSyntax::A1111).unwrap();
    let mut want = vec![BOS, A, EOS];
    want.resize(CONTEXT_LEN, 0);
    assert_eq!(ids_of(&p), [want.clone()]);
    let plain = tokenize_prompt(&tok, "a", PromptSyntax::Plain).unwrap();
    assert_eq!(ids_of(&plain), [want]);
    // A full chunk keeps its final EOS.
    let p = tokenize_prompt(&tok, &words("a", 75), PromptSyntax::A1111).unwrap();
    assert_eq!(ids_of(&p), [framed(&[A; 75])]);
}

#[test]
fn plain_truncates_and_keeps_brackets() {
    let tok = byte_level();
    let p = tokenize_prompt(&tok, &words("a", 80), PromptSyntax::Plain).unwrap();
    assert_eq!(ids_of(&p), [framed(&[A; 75])]);
    assert_eq!((p.token_count, p.truncated), (80, 5));
    let p = tokenize_prompt(&tok, "(a) BREAK", PromptSyntax::Plain).unwrap();
    let want: Vec<u32> = byte_ids(&["(", "a", ")", "break"]);
    assert_eq!(ids_of(&p), [framed(&want)]);
    assert!(p.chunks[0].weights.iter().all(|&w| w == 1.0));
    assert_eq!((p.token_count, p.truncated), (want.len(), 0));
}

#[test]
fn a1111_bad_weight_is_an_error() {
    let e = tokenize_prompt(&byte_level(), "(a:..)", PromptSyntax::A1111).unwrap_err();
    assert!(e.to_string().contains(":..)"), "{e}");
}

// ---------------------------------------------------------------- built-in vocabulary

/// The built-in vocabulary gives OpenAI CLIP's ids: expected ids from OpenAI's SimpleTokenizer
/// (open_clip's copy; `tests/data/gen_clip_token_ids.py` wrote them).
#[test]
fn builtin_vocabulary_matches_openai_clip() {
    let tok = ClipTokenizer::openai().unwrap();
    assert_eq!(tok.vocab_len(), 49_408);
    assert_eq!((tok.bos(), tok.eos(), tok.pad()), (49_406, 49_407, 49_407));
    assert_eq!(tok.token_id("!"), Some(0));
    assert_eq!(tok.comma_id(), Some(267));
    let data: serde_json::Value =
        serde_json::from_str(include_str!("data/clip_openai_token_ids.json")).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(text), want, "{text:?}");
    }
    // SD 2.x pads with '!'.
    assert_eq!(tok.with_pad_token("!").unwrap().pad(), 0);
}
