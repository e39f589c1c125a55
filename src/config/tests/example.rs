//! `config/rampart.yaml` tells operators the defaults in its comments; these tests hold every
//! such claim to what the loader does, so the example cannot drift from the code.
//!
//! A claim is a key line whose comment (or the comment lines under it) says `(default X)`,
//! `; default X)` or `these are the defaults`. For each, the example with the key set to the
//! claimed value must load to the same [`Config`] as the example without the key.

use regex::Regex;

use super::*;

const EXAMPLE: &str = include_str!("../../../config/rampart.yaml");

/// One stated default.
#[derive(Debug)]
struct Claim {
    /// 0-based index of the key's line.
    line: usize,
    /// The key's line with the key set to its claimed default (uncommented).
    with_default: String,
    /// The key is commented out in the example, so the example as is lacks it.
    commented: bool,
}

/// Every claim in `text`, and how many stated defaults could not be checked (a key under a
/// commented-out parent, or two defaults on one line).
fn claims(text: &str) -> (Vec<Claim>, Vec<String>) {
    let key = Regex::new(r"^(?<indent> *)(?<hash># +)?(?<key>[a-z_0-9]+):(?<rest>\s.*)?$")
        .expect("key pattern");
    let list_item = Regex::new(r"^(?<indent> *)(?<hash># +)?- ").expect("list pattern");
    let stated = Regex::new(r"[(;] ?default (?<value>[^\s):;,][^);]*)\)").expect("default pattern");
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut unchecked = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let values: Vec<&str> = stated
            .captures_iter(line)
            .map(|c| c.name("value").map_or("", |m| m.as_str()).trim())
            .collect();
        let whole = line.contains("these are the defaults");
        if values.is_empty() && !whole {
            continue;
        }
        // The claim belongs to this line's key, or to the key of the comment it continues.
        let Some(at) = (0..=index).rev().find(|&i| key.is_match(lines[i])) else {
            unchecked.push(format!("line {}: no key", index + 1));
            continue;
        };
        let caps = key.captures(lines[at]).expect("matched above");
        // Where the key stands once its line is uncommented (`# ` removed).
        let hash = caps.name("hash").map_or(0, |m| m.len());
        let indent = caps["indent"].len() + hash.saturating_sub(2);
        let commented = hash > 0;
        if values.len() > 1 {
            unchecked.push(format!("line {}: more than one default", index + 1));
            continue;
        }
        if commented && parent_is_commented(&lines[..at], [&key, &list_item], indent) {
            unchecked.push(format!("line {}: under a commented-out key", index + 1));
            continue;
        }
        let name = &caps["key"];
        let with_default = match values.first() {
            Some(value) => format!("{:indent$}{name}: {value}", ""),
            None => {
                let rest = caps.name("rest").map_or("", |m| m.as_str());
                format!("{:indent$}{name}:{rest}", "")
            }
        };
        found.push(Claim {
            line: at,
            with_default,
            commented,
        });
    }
    (found, unchecked)
}

/// Whether the last line of `above` that opens a key or a list item less indented than `indent`
/// is commented out.
fn parent_is_commented(above: &[&str], openers: [&Regex; 2], indent: usize) -> bool {
    for line in above.iter().rev() {
        let caps = openers.iter().find_map(|opener| opener.captures(line));
        if let Some(caps) = caps
            && caps["indent"].len() + caps.name("hash").map_or(0, |m| m.len().saturating_sub(2))
                < indent
        {
            return line.trim_start().starts_with('#');
        }
    }
    false
}

/// `text` with line `index` replaced (or removed, with `None`).
fn edited(text: &str, index: usize, replacement: Option<&str>) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = if i == index { replacement } else { Some(line) };
        if let Some(line) = line {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn load(text: &str, what: &str) -> String {
    match parse(text, Path::new(SOURCE)) {
        Ok(config) => format!("{config:#?}"),
        Err(error) => panic!("{what}: the example no longer loads:\n{error}"),
    }
}

#[test]
fn every_default_the_example_states_is_the_loaders() {
    let (claims, unchecked) = claims(EXAMPLE);
    // A pattern gone wrong would check nothing and pass: the example states about 30 defaults.
    assert!(
        claims.len() >= 25,
        "found only {} stated defaults: {claims:#?}",
        claims.len()
    );
    assert!(
        unchecked.len() <= 3,
        "stated defaults this test cannot check: {unchecked:#?}"
    );
    for claim in &claims {
        let what = format!(
            "config/rampart.yaml:{} `{}`",
            claim.line + 1,
            claim.with_default.trim()
        );
        let without = if claim.commented {
            EXAMPLE.to_string()
        } else {
            edited(EXAMPLE, claim.line, None)
        };
        let with = edited(EXAMPLE, claim.line, Some(&claim.with_default));
        let (with, without) = (load(&with, &what), load(&without, &what));
        if with != without {
            let (a, b) = with
                .lines()
                .zip(without.lines())
                .find(|(a, b)| a != b)
                .unwrap_or(("(longer)", "(shorter)"));
            panic!("{what} is not the default: written, `{a}`; left out, `{b}`");
        }
    }
}

#[test]
fn a_wrong_stated_default_is_caught() {
    // The check above must be able to fail: a claim that 11s is the default handshake timeout.
    let text = EXAMPLE.replace("(default 10s)", "(default 11s)");
    let (claims, _) = claims(&text);
    let claim = claims
        .iter()
        .find(|c| c.with_default.trim() == "handshake_timeout: 11s")
        .expect("the handshake_timeout claim");
    let with = load(
        &edited(&text, claim.line, Some(&claim.with_default)),
        "with",
    );
    let without = load(&edited(&text, claim.line, None), "without");
    assert_ne!(with, without);
}
