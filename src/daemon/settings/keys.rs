//! Reading TOML tables key by key. Each `Raw*` struct is the only list of its keys (read from
//! its derived `Deserialize`), a bad or unknown key is a problem of its own at its own line,
//! and the rest of the table is still read, so that every problem is reported at once.

use super::*;
use serde::de::{self, DeserializeOwned, Visitor};
use std::collections::HashMap;
use toml::de::{DeTable, DeValue};

/// The keys a derived `Deserialize` struct accepts: its field names, as serde hands them to
/// a deserializer (the struct's own declaration is the only list).
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only struct field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only struct field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// `table` read as `T`: unknown keys and keys whose value does not fit are each reported as
/// `label.key` and left out, and what remains is read (the defaults when even that fails).
pub(crate) fn read_table<T: DeserializeOwned + Default>(
    mut table: toml::Table,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> T {
    reject_unknown_keys(&mut table, fields_of::<T>(), label, line, problems);
    read_known_keys(table, label, line, problems)
}

/// Like [`read_table`] for a table whose unknown keys were already reported.
pub(crate) fn read_known_keys<T: DeserializeOwned + Default>(
    mut table: toml::Table,
    label: &str,
    line: usize,
    problems: &mut Problems,
) -> T {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), table[&key].clone());
        if let Err(e) = toml::Value::Table(alone).try_into::<T>() {
            let message = e.message().trim().to_string();
            // Read alone, a key cannot bring the struct's other required keys.
            if !message.starts_with("missing field") {
                problems.push(format!("{label}.{key}"), Some(line), message);
                table.remove(&key);
            }
        }
    }
    toml::Value::Table(table)
        .try_into()
        .unwrap_or_else(|e: toml::de::Error| {
            problems.push(
                label.to_string(),
                Some(line),
                e.message().trim().to_string(),
            );
            T::default()
        })
}

/// The line of every key of a config text, by its path: `daemon.workers`, `rule[1].size`,
/// `models.photo.tile`, `[daemon]` itself as `daemon`.
#[derive(Debug, Default)]
pub(crate) struct KeyLines(HashMap<String, usize>);

impl KeyLines {
    pub(crate) fn of(text: &str) -> KeyLines {
        let mut lines = HashMap::new();
        if let Ok(document) = DeTable::parse(text) {
            let line_of = |offset: usize| {
                text[..offset.min(text.len())]
                    .bytes()
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1
            };
            index_table(document.get_ref(), "", &line_of, &mut lines);
        }
        KeyLines(lines)
    }

    /// The line of the key a problem names. Rule labels carry the rule's name
    /// (`rule[1] 'photos'.size`), which the path leaves out.
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        let mut path = String::with_capacity(key.len());
        let mut rest = key;
        while let Some(start) = rest.find(" '") {
            path.push_str(&rest[..start]);
            match rest[start + 2..].find('\'') {
                Some(end) => rest = &rest[start + 2 + end + 1..],
                None => {
                    rest = "";
                    break;
                }
            }
        }
        path.push_str(rest);
        self.0.get(&path).copied()
    }
}

fn index_table(
    table: &DeTable<'_>,
    prefix: &str,
    line_of: &dyn Fn(usize) -> usize,
    lines: &mut HashMap<String, usize>,
) {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        lines
            .entry(path.clone())
            .or_insert(line_of(key.span().start));
        match value.get_ref() {
            DeValue::Table(inner) => index_table(inner, &path, line_of, lines),
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        let item_path = format!("{path}[{index}]");
                        lines
                            .entry(item_path.clone())
                            .or_insert(line_of(item.span().start));
                        index_table(inner, &item_path, line_of, lines);
                    }
                }
            }
            _ => {}
        }
    }
}
