//! The file as a parsed TOML document: read into the raw structs with every unknown key, wrong
//! type and missing key reported at once, and shown with its secrets hidden.
//!
//! serde stops at the first entry it refuses (`deny_unknown_fields`, a type mismatch). Rather than
//! keep a second copy of the schema to walk, the raw structs stay the only schema: the document is
//! parsed once (with spans), and each refusal is reported, its entry taken out of the document (or,
//! for a missing key, a stand-in put in), and the document read again, until it reads whole. Each
//! round removes an entry or fills a gap, so the rounds are bounded by the file's size.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::raw::{RawConfig, SECRET_KEYS};
use super::{suggest, Checker};

/// Most entries refused before the reading gives up (a file that is not a tandem config at all).
const MAX_REFUSALS: usize = 200;

/// One step from a table into the document: a key, or an index into an array.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where a refusal points: the steps to the entry whose key or value it names.
struct Hit {
    steps: Vec<Step>,
}

impl Hit {
    /// The dotted key as errors name it: `pool[0].backend[1].weight`.
    fn key(&self) -> String {
        let mut key = String::new();
        for step in &self.steps {
            match step {
                Step::Key(name) if key.is_empty() => key.push_str(name),
                Step::Key(name) => {
                    key.push('.');
                    key.push_str(name);
                }
                Step::Index(i) => key.push_str(&format!("[{i}]")),
            }
        }
        key
    }

    /// The table the entry stands in, without indexes (`pool.backend`): where synonyms apply.
    fn table(&self) -> String {
        let names: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|step| match step {
                Step::Key(name) => Some(name.as_str()),
                Step::Index(_) => None,
            })
            .collect();
        names[..names.len().saturating_sub(1)].join(".")
    }

    /// The steps up to the last key: the entry that goes when its value is refused (a wrong
    /// element takes its whole array along, so that the indexes of later errors stay true).
    fn entry(&self) -> &[Step] {
        let last_key = self
            .steps
            .iter()
            .rposition(|step| matches!(step, Step::Key(_)))
            .unwrap_or(0);
        &self.steps[..=last_key]
    }
}

impl Checker<'_> {
    /// Reads the file into the raw structs, recording every syntax, unknown-key, type and
    /// missing-key error. `None` when values cannot be checked: after a syntax error (the parse
    /// stops there), or when a required key was missing (its stand-in would draw errors of its
    /// own); the shape errors found are all recorded then.
    pub(super) fn read(&mut self) -> Option<RawConfig> {
        let text = self.text;
        let mut document = match DeTable::parse(text) {
            Ok(document) => document,
            Err(error) => {
                let key = super::key_of_toml_error(text, error.span());
                self.error(error.span(), key, error.message());
                return None;
            }
        };
        let mut complete = true;
        // Keys whose value was refused: their missing-key error would say the same twice.
        let mut refused = HashSet::new();
        for _ in 0..MAX_REFUSALS {
            let refusal =
                match RawConfig::deserialize(toml::de::Deserializer::from(document.clone())) {
                    Ok(raw) => return complete.then_some(raw),
                    Err(refusal) => refusal,
                };
            let message = refusal.message();
            let span = refusal.span();
            let hit = span
                .clone()
                .and_then(|span| locate(document.get_ref(), span.start, &mut Vec::new()));
            let Some(hit) = hit else {
                self.error(span, "(file)", tidy(message));
                return None;
            };
            if let Some((written, known)) = unknown_field(message) {
                let hint = suggest::did_you_mean(&hit.table(), &written, &known);
                let message = match hint {
                    Some(word) => format!("unknown key `{written}`; did you mean `{word}`?"),
                    None if known.is_empty() => format!("unknown key `{written}`"),
                    None => format!("unknown key `{written}`; known keys: {}", known.join(", ")),
                };
                self.error(span, hit.key(), message);
                remove(document.get_mut(), hit.entry());
            } else if let Some(missing) = missing_field(message) {
                let key = format!("{}.{missing}", hit.key());
                if !refused.contains(&key) {
                    self.error(span.clone(), key, "is required");
                }
                complete = false;
                // A stand-in, so that the rest of the table and the file are still read. Every
                // required key holds text; the stand-in's spans point nowhere, so that no later
                // refusal is taken for it, and a refusal of it ends the reading.
                let nowhere = usize::MAX..usize::MAX;
                let stand_in = Spanned::new(nowhere.clone(), DeValue::String("".into()));
                let Some(DeValue::Table(table)) = value_mut(document.get_mut(), &hit.steps) else {
                    return None;
                };
                table.insert(Spanned::new(nowhere, Cow::Owned(missing)), stand_in);
            } else {
                let entry = Hit {
                    steps: hit.entry().to_vec(),
                };
                refused.insert(entry.key());
                self.error(span, hit.key(), tidy(message));
                remove(document.get_mut(), &entry.steps);
            }
        }
        self.error(None, "(file)", "too many errors; fix these first");
        None
    }
}

/// The innermost entry of `table` whose key or value covers `at`, children before parents.
fn locate(table: &DeTable<'_>, at: usize, steps: &mut Vec<Step>) -> Option<Hit> {
    for (key, value) in table.iter() {
        steps.push(Step::Key(key.get_ref().to_string()));
        if covers(&key.span(), at) {
            return Some(Hit {
                steps: steps.clone(),
            });
        }
        if let Some(hit) = locate_value(value, at, steps) {
            return Some(hit);
        }
        steps.pop();
    }
    None
}

fn locate_value(value: &Spanned<DeValue<'_>>, at: usize, steps: &mut Vec<Step>) -> Option<Hit> {
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some(hit) = locate(table, at, steps) {
                return Some(hit);
            }
        }
        DeValue::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                steps.push(Step::Index(i));
                if let Some(hit) = locate_value(element, at, steps) {
                    return Some(hit);
                }
                steps.pop();
            }
        }
        _ => {}
    }
    covers(&value.span(), at).then(|| Hit {
        steps: steps.clone(),
    })
}

/// Whether `span` covers offset `at` (an empty span covers its start).
fn covers(span: &Range<usize>, at: usize) -> bool {
    span.contains(&at) || span.start == at
}

/// The value the steps lead to.
fn value_mut<'a, 'i>(table: &'a mut DeTable<'i>, steps: &[Step]) -> Option<&'a mut DeValue<'i>> {
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    let mut value = table.get_mut(first.as_str())?.get_mut();
    for step in rest {
        value = match (step, value) {
            (Step::Key(name), DeValue::Table(table)) => table.get_mut(name.as_str())?.get_mut(),
            (Step::Index(i), DeValue::Array(array)) => array.get_mut(*i)?.get_mut(),
            _ => return None,
        };
    }
    Some(value)
}

/// Takes the entry the steps (ending in a key) lead to out of the document.
fn remove(table: &mut DeTable<'_>, steps: &[Step]) {
    let Some((Step::Key(name), parent)) = steps.split_last() else {
        return;
    };
    if parent.is_empty() {
        table.remove(name.as_str());
    } else if let Some(DeValue::Table(parent)) = value_mut(table, parent) {
        parent.remove(name.as_str());
    }
}

/// The unknown name and the known ones, from serde's "unknown field `x`, expected one of `a`,
/// `b`" (the names are the odd pieces between backquotes).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    if !message.starts_with("unknown field `") {
        return None;
    }
    let mut names = message.split('`').skip(1).step_by(2).map(str::to_string);
    let written = names.next()?;
    Some((written, names.collect()))
}

/// The key named by serde's "missing field `x`".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// serde's words for types, and the raw structs' names, in the words of a TOML file.
const TYPE_WORDS: &[(&str, &str)] = &[
    ("expected i64", "expected an integer"),
    ("expected f64", "expected a number"),
    ("expected a sequence", "expected an array"),
    ("invalid type: sequence", "invalid type: array"),
    ("invalid type: map", "invalid type: table"),
    ("invalid type: floating point", "invalid type: float"),
    (
        "data did not match any variant of untagged enum RawSize",
        "expected a size: a number of bytes, or text such as \"64KiB\"",
    ),
    (
        "data did not match any variant of untagged enum RawSecure",
        "expected true, false or \"auto\"",
    ),
];

/// A serde type error, said as a TOML file's reader would say it.
fn tidy(message: &str) -> String {
    let mut tidy = TYPE_WORDS
        .iter()
        .fold(message.to_string(), |text, (from, to)| {
            text.replace(from, to)
        });
    if let Some(at) = tidy.find("expected struct Raw") {
        tidy.replace_range(at.., "expected a table");
    }
    tidy
}

/// `source` with the value of every key named in [`SECRET_KEYS`] replaced by `"(hidden)"`,
/// wherever TOML puts it (a table, an inline table, a dotted key, an array of tables); the rest
/// stays as written, comments and all.
pub fn hide_secrets(source: &str) -> String {
    let Ok(document) = DeTable::parse(source) else {
        return "# (this config cannot be parsed, so it is not shown)\n".to_string();
    };
    let mut spans = Vec::new();
    for (key, value) in document.get_ref().iter() {
        secret_spans(
            value,
            SECRET_KEYS.contains(&key.get_ref().as_ref()),
            &mut spans,
        );
    }
    spans.sort_by_key(|span| span.start);
    let mut shown = String::with_capacity(source.len());
    let mut from = 0;
    for span in spans {
        if span.start < from || span.end > source.len() {
            continue;
        }
        shown.push_str(&source[from..span.start]);
        shown.push_str("\"(hidden)\"");
        from = span.end;
    }
    shown.push_str(&source[from..]);
    shown
}

/// The spans of every value under `value` that is a secret: all its plain values when `secret`,
/// else those of the keys named in [`SECRET_KEYS`].
fn secret_spans(value: &Spanned<DeValue<'_>>, secret: bool, spans: &mut Vec<Range<usize>>) {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, value) in table.iter() {
                let named = SECRET_KEYS.contains(&key.get_ref().as_ref());
                secret_spans(value, secret || named, spans);
            }
        }
        DeValue::Array(array) => {
            for element in array.iter() {
                secret_spans(element, secret, spans);
            }
        }
        _ if secret => spans.push(value.span()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_are_read_and_said_in_toml_words() {
        let (written, known) =
            unknown_field("unknown field `balanse`, expected one of `name`, `balance`").unwrap();
        assert_eq!(written, "balanse");
        assert_eq!(known, ["name", "balance"]);
        let (_, known) = unknown_field("unknown field `x`, expected `a` or `b`").unwrap();
        assert_eq!(known, ["a", "b"]);
        assert!(unknown_field("missing field `name`").is_none());
        assert_eq!(
            missing_field("missing field `name`").as_deref(),
            Some("name")
        );
        assert_eq!(
            tidy("invalid type: string \"x\", expected i64"),
            "invalid type: string \"x\", expected an integer"
        );
        assert_eq!(
            tidy("invalid type: string \"x\", expected struct RawSticky"),
            "invalid type: string \"x\", expected a table"
        );
    }

    #[test]
    fn secrets_are_hidden_in_every_spelling_and_the_rest_stays() {
        let source = "# tokens\nadmin.token = \"t1\"\n[cluster]\nsecret = '''\ns2'''\n[[pool]]\nsticky = { mode = \"insert\", secret = \"s3\" }\nname = \"token\"\n";
        assert_eq!(
            hide_secrets(source),
            "# tokens\nadmin.token = \"(hidden)\"\n[cluster]\nsecret = \"(hidden)\"\n[[pool]]\nsticky = { mode = \"insert\", secret = \"(hidden)\" }\nname = \"token\"\n"
        );
    }
}
