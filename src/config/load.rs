//! Reading the configuration file: YAML text to a validated [`Config`].
//!
//! Called at start-up, on SIGHUP and by `rampart check`. It reads one file (and, through
//! validation, the certificate files it names) and writes nothing. Serde stops at the first
//! structural error (bad YAML, a wrong type, an unknown key), so that one is reported alone,
//! with its line, column and key path; everything else is left to `config::validate`, which
//! reports every problem at once.

use std::fmt;
use std::fs;
use std::path::{self, Path};

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, MessageFormatter, Options, Spanned, UserMessageFormatter};

use crate::config::error::{Problem, Problems, closest, position};
use crate::config::raw::RawConfig;
use crate::config::{Config, ConfigError, validate};

/// Reads, parses and validates the configuration file at `path`.
///
/// Relative paths inside the file resolve against the file's directory, and
/// [`Config::source`] is the file's absolute path.
///
/// # Errors
/// `Read` when the file cannot be read (or is not UTF-8), `Invalid` with every problem found.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let source = path::absolute(path).map_err(read_error)?;
    let text = fs::read_to_string(&source).map_err(read_error)?;
    parse(&text, &source)
}

/// Parses and validates configuration `text` as if it had been read from `source`, which
/// names the file in problems and anchors relative paths.
///
/// # Errors
/// `Invalid` with the first structural error, or with every semantic problem found.
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    // Only an empty path or a missing working directory fail here; the given path then still
    // names the file well enough in messages.
    let source = path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
    let raw = deserialize(text)
        .map_err(|problem| ConfigError::Invalid(Problems::new(&source, vec![problem])))?;
    validate::validate(&raw, &source)
        .map_err(|problems| ConfigError::Invalid(Problems::new(&source, problems)))
}

/// Turns YAML into the raw shape, or describes the first structural error.
fn deserialize(text: &str) -> Result<RawConfig, Problem> {
    let mut strict = Options::default();
    strict.with_snippet = false;
    let error = match serde_saphyr::from_str_with_options::<RawConfig>(text, strict) {
        Ok(raw) => return Ok(raw),
        Err(error) => error,
    };
    // Only when the typed pass fails (parsing is most of a reload's time with many sites): the
    // bare shape of the document (any YAML parses into it), to find the key path of what it
    // tripped on. A failure here is a YAML syntax error, reported as this pass words it.
    let mut lenient = Options::default();
    // Keep repeated keys, so the strict pass's complaint about one can be located.
    lenient.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    lenient.with_snippet = false;
    let shape = serde_saphyr::from_str_with_options::<Spanned<Shape>>(text, lenient)
        .map_err(|error| structural_problem(&error, None))?;
    Err(structural_problem(&error, Some(&shape)))
}

/// Describes a serde-saphyr error as a [`Problem`], with the key path found in `shape`.
fn structural_problem(error: &serde_saphyr::Error, shape: Option<&Spanned<Shape>>) -> Problem {
    let at = error
        .location()
        .map_or((1, 1), |location| position(&location));
    let error = error.without_snippet();
    let target = match error {
        serde_saphyr::Error::SerdeUnknownField { field, .. } => Target::Key(field),
        serde_saphyr::Error::SerdeMissingField { .. } => Target::Mapping,
        _ => Target::Value,
    };
    let path = shape
        .map(|shape| key_path(shape, at, &target))
        .unwrap_or_default();
    Problem::new(at.0, at.1, path, structural_reason(error))
}

/// Our wording for the structural errors users meet most; the library's for the rest.
fn structural_reason(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    match error {
        E::SerdeUnknownField {
            field, expected, ..
        } => match closest(field, expected.iter().copied()) {
            Some(guess) => format!("unknown key `{field}`; did you mean `{guess}`?"),
            None if expected.is_empty() => {
                format!("unknown key `{field}`; no keys are allowed here")
            }
            None => format!(
                "unknown key `{field}`; expected one of: {}",
                expected.join(", ")
            ),
        },
        E::SerdeMissingField { field, .. } => format!("missing key `{field}`"),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        E::Unexpected { expected, .. } => format!("expected {}", plain_kind(expected)),
        E::InvalidScalar { ty, .. } => format!("expected {}", plain_kind(ty)),
        E::NullIntoString { .. } => "expected a value, found nothing".to_string(),
        E::DuplicateMappingKey { key: Some(key), .. } => format!("key `{key}` appears twice"),
        E::DuplicateMappingKey { key: None, .. } => "a key appears twice".to_string(),
        other => UserMessageFormatter.format_message(other).into_owned(),
    }
}

/// Translates the library's names of YAML and Rust kinds into words for operators.
fn plain_kind(kind: &str) -> &str {
    match kind {
        "sequence start" | "seq" => "a list",
        "mapping start" | "map" => "a mapping (key: value)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" => {
            "an integer"
        }
        "bool" | "boolean" => "true or false",
        "string scalar" | "string" => "a string",
        other => other,
    }
}

/// What a structural error's position points at.
enum Target<'a> {
    /// A value of the wrong type or shape.
    Value,
    /// A key that is not allowed: the error sits on the key itself.
    Key(&'a str),
    /// A mapping that lacks a required key: the error sits on the mapping or its first key.
    Mapping,
}

/// The key path of what `target` at `at` refers to, found by walking `shape` down to it.
fn key_path(shape: &Spanned<Shape>, at: (u64, u64), target: &Target<'_>) -> String {
    let mut path = String::new();
    let mut node = shape;
    loop {
        // A block mapping starts where its first key does, so "starts at the error" names the
        // mapping itself unless we are looking for a key.
        if !matches!(target, Target::Key(_)) && position(&node.referenced) == at {
            return path;
        }
        match &node.value {
            Shape::Map(entries) => {
                let key_at = entries
                    .iter()
                    .find(|(key, _)| position(&key.referenced) == at);
                match (target, key_at) {
                    (Target::Key(name), Some((key, _))) if key.value == *name => {
                        push_key(&mut path, &key.value);
                        return path;
                    }
                    (Target::Mapping, Some(_)) => return path,
                    _ => {}
                }
                // Entries are in file order: the error lies under the last one that starts before it.
                let Some((key, value)) = entries
                    .iter()
                    .rev()
                    .find(|(key, _)| position(&key.referenced) <= at)
                else {
                    return path;
                };
                push_key(&mut path, &key.value);
                node = value;
            }
            Shape::Seq(items) => {
                let Some((index, item)) = items
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, item)| position(&item.referenced) <= at)
                else {
                    return path;
                };
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
                node = item;
            }
            Shape::Scalar => return path,
        }
    }
}

/// Appends `.key`, or `["key"]` when the key would not read as one path segment.
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plain, path.is_empty()) {
        (true, true) => path.push_str(key),
        (true, false) => {
            path.push('.');
            path.push_str(key);
        }
        (false, _) => path.push_str(&format!("[{key:?}]")),
    }
}

/// The bare shape of a YAML document with positions: enough to name a key path.
#[derive(Debug)]
enum Shape {
    /// A mapping's keys (as text) and values, in file order.
    Map(Vec<(Spanned<String>, Spanned<Shape>)>),
    /// A sequence's items.
    Seq(Vec<Spanned<Shape>>),
    /// Any scalar or null.
    Scalar,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

/// Accepts any YAML node.
struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        Shape::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Shape::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Shape::Map(entries))
    }
}
