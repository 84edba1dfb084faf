//! Any word through the shell-word lexer, with either escape character and
//! every option: expansion returns Ok or Err, never panics.
#![no_main]

use estiba_frontend::shell::Lexer;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let word = String::from_utf8_lossy(rest);
    let escape = if flags & 1 == 0 { '\\' } else { '`' };
    let lexer = Lexer::new(escape)
        .raw_quotes(flags & 2 != 0)
        .raw_escapes(flags & 4 != 0)
        .skip_unset_env(flags & 8 != 0)
        .skip_process_quotes(flags & 16 != 0);
    let env: BTreeMap<String, String> = [
        ("A", "a b"),
        ("EMPTY", ""),
        ("PWD", "/home"),
        ("U", "한국어"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let _ = lexer.expand_word(&word, &env);
    let _ = lexer.expand_words(&word, &env);
    let _ = lexer.expand_word_with_matches(&word, &env);
});
