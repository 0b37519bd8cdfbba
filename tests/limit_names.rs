//! A limit's name is written once, in `src/limits.rs` (`Limit::name`); every check and every
//! problem elsewhere names it through `Limit`, so no string literal in the rest of `src/`
//! may spell one. Tests (`tests.rs` files, a file's closing `#[cfg(test)] mod tests`) are
//! left out: they spell names on purpose, to pin what clients see.

use std::path::Path;

use tidelog::limits::Limit;

mod common;

#[test]
fn no_limit_name_is_spelled_outside_limits_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = common::source_files();
    assert!(
        files.len() > 10,
        "found the sources under {}",
        src.display()
    );
    let mut found = Vec::new();
    for file in files {
        if file == src.join("limits.rs") || file.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code = text
            .split("\n#[cfg(test)]\nmod tests {")
            .next()
            .unwrap_or_default();
        for literal in string_literals(code) {
            for limit in Limit::ALL {
                if contains_word(literal, limit.name()) {
                    found.push(format!("{}: {literal:?}", file.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "limit names outside src/limits.rs:\n{}",
        found.join("\n")
    );
}

/// The scan sees what it must: a name alone, inside a longer message, in a raw string; not
/// in comments, identifiers or longer names.
#[test]
fn the_scan_finds_names_in_literals_only() {
    let text = r####"
        // "topics_max" in a comment
        /* "topics_max" in a block comment */
        let a = limits.topics_max; let b = 'x'; let g = '→'; let c: &'static str = "a \" topics_max";
        let d = "group_topics_max"; let e = '"'; let f = r#"raw "partitions_max" "#;
        let h = format!("{topics_max} topics"); let i = "[limits]\ntopics_max = 0";
    "####;
    let literals = string_literals(text);
    assert_eq!(
        literals,
        [
            "a \\\" topics_max",
            "group_topics_max",
            "raw \"partitions_max\" ",
            "{topics_max} topics",
            "[limits]\\ntopics_max = 0",
        ]
    );
    assert!(contains_word(literals[0], "topics_max"));
    assert!(!contains_word(literals[1], "topics_max"));
    assert!(contains_word(literals[2], "partitions_max"));
    assert!(!contains_word(literals[3], "topics_max"));
    assert!(contains_word(literals[4], "topics_max"));
}

/// `word` stands in `text` (a literal as written) with no identifier character on either side
/// (`\n` and `\t` before it are escapes, not part of it), and not as a format argument
/// (`{word}`, `{word:?}`: a variable, not the name).
fn contains_word(text: &str, word: &str) -> bool {
    let text = &text.replace("\\n", "\n").replace("\\t", "\t");
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        let argument = before == Some('{') && matches!(after, Some('}' | ':'));
        !ident(before) && !ident(after) && !argument
    })
}

/// The contents of the string literals of Rust source (plain, byte and raw), skipping
/// comments and char literals; escapes are left as written.
fn string_literals(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (i == 0 || !is_ident(b[i - 1]))
                && matches!(b.get(i + 1), Some(b'"' | b'#')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let open = i + 1 + hashes;
                if b.get(open) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = open + 1;
                let len = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .expect("a raw string ends");
                out.push(&text[start..start + len]);
                i = start + len + close.len();
            }
            b'"' => {
                let start = i + 1;
                i = start;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push(&text[start..i]);
                i += 1;
            }
            // A char literal ('x', '\n', '"'); a lifetime ('a) has no closing quote.
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b'\'' => {
                let after = i + 1 + text[i + 1..].chars().next().map_or(0, char::len_utf8);
                i = if b.get(after) == Some(&b'\'') {
                    after + 1
                } else {
                    i + 1
                };
            }
            c if is_ident(c) => {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
