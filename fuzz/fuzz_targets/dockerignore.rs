//! Any .dockerignore text and any path: reading, compiling, per-path matching
//! and the tree-walk shortcut return Ok or Err, never panic.
//!
//! The two answers are not asserted equal: in moby/patternmatcher itself
//! `MatchesOrParentMatches` and `MatchesUsingParentResults` disagree on some
//! exception patterns (`["d/f", "!d"]`), and we match each API as Docker has it.
#![no_main]

use estiba_frontend::dockerignore::{parse_ignore_file, path_match, MatchInfo, Matcher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (patterns, path) = text.split_once('\0').unwrap_or((&text, "a/b/c.txt"));
    let lines = parse_ignore_file(patterns);
    if let Some(first) = lines.first() {
        let _ = path_match(first, path);
    }
    let Ok(matcher) = Matcher::new(&lines) else {
        return;
    };
    let plain = matcher.matches_or_parent_matches(path);
    // Walk the path's components as a tree walk would.
    let mut info = MatchInfo::default();
    let mut walked = Ok(false);
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        match matcher.matches_using_parent(&prefix, info) {
            Ok((m, next)) => {
                walked = Ok(m);
                info = next;
            }
            Err(e) => {
                walked = Err(e);
                break;
            }
        }
    }
    let _ = (plain, walked);
});
