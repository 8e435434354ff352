//! The single-pass borrowed extractor: one `serde_json` parse of the line that validates all of it
//! and captures only the leaves the schema set reads, following a trie of simple paths.
//!
//! Captured leaves are taken as raw JSON text, so numbers keep their exact decimal form and
//! strings without escapes are borrowed from the line. Subtrees nobody reads are skipped with
//! `IgnoredAny` (still validated). A key that appears twice counts with its last value, as in
//! most JSON readers: entering a key clears what an earlier copy of it captured.

use super::path::Step;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// A captured leaf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Slot<'a> {
    /// The path does not exist in this event (or runs through a non-container).
    #[default]
    Absent,
    /// JSON `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as its JSON text.
    Num(Cow<'a, str>),
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// An object (its members are reachable through longer paths).
    Object,
    /// An array.
    Array,
    /// A string whose escapes do not form valid Unicode (a lone surrogate), held escaped as
    /// `lone` says: an id reads it, a comparison with a rule's value never matches it.
    Lone(String),
}

impl<'a> Slot<'a> {
    /// Present and not null: the rule for field fallbacks.
    #[must_use]
    pub fn is_present(&self) -> bool {
        !matches!(self, Slot::Absent | Slot::Null)
    }

    fn into_owned(self) -> Slot<'static> {
        match self {
            Slot::Absent => Slot::Absent,
            Slot::Null => Slot::Null,
            Slot::Bool(b) => Slot::Bool(b),
            Slot::Num(n) => Slot::Num(Cow::Owned(n.into_owned())),
            Slot::Str(s) => Slot::Str(Cow::Owned(s.into_owned())),
            Slot::Object => Slot::Object,
            Slot::Array => Slot::Array,
            Slot::Lone(s) => Slot::Lone(s),
        }
    }

    /// Classifies a raw JSON value's text.
    fn from_raw(text: &'a str) -> Slot<'a> {
        match text.as_bytes().first() {
            Some(b'"') => {
                if text.contains('\\') {
                    serde_json::from_str::<String>(text).map_or_else(
                        |_| Slot::Lone(super::lone::decode(text).unwrap_or_default()),
                        |s| Slot::Str(Cow::Owned(s)),
                    )
                } else {
                    Slot::Str(Cow::Borrowed(&text[1..text.len() - 1]))
                }
            }
            Some(b'{') => Slot::Object,
            Some(b'[') => Slot::Array,
            Some(b't') => Slot::Bool(true),
            Some(b'f') => Slot::Bool(false),
            Some(b'n') => Slot::Null,
            _ => Slot::Num(Cow::Borrowed(text)),
        }
    }

    /// Converts a `serde_json::Value` found by a general query.
    #[must_use]
    pub fn from_value(v: &serde_json::Value) -> Slot<'static> {
        use serde_json::Value;
        match v {
            Value::Null => Slot::Null,
            Value::Bool(b) => Slot::Bool(*b),
            Value::Number(n) => Slot::Num(Cow::Owned(n.to_string())),
            Value::String(s) => Slot::Str(Cow::Owned(s.clone())),
            Value::Array(_) => Slot::Array,
            Value::Object(_) => Slot::Object,
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    children: Vec<(Step, usize)>,
    /// Member-name children, for lookup while parsing (most keys of an event are not read).
    by_key: FxHashMap<Box<[u8]>, usize>,
    slot: Option<usize>,
    /// A string here holds a JSON document whose members longer paths may read.
    json_string: bool,
    /// A rule reads this node's own value (not only what is below it).
    read: bool,
    /// Slots of this node and everything below it (slot ids are given in depth-first order).
    subtree: Range<usize>,
}

/// The set of simple paths one schema set reads, as a trie.
#[derive(Debug)]
pub struct Trie {
    nodes: Vec<Node>,
    slots: usize,
}

impl Trie {
    /// Builds the trie; `paths[i]` is captured into the slot returned at index `i`.
    /// `json_strings` name paths whose string values are parsed as JSON for longer paths.
    #[must_use]
    pub fn build(paths: &[&[Step]], json_strings: &[&[Step]]) -> (Trie, Vec<usize>) {
        let mut nodes = vec![Node::default()];
        let mut insert = |steps: &[Step]| {
            let mut n = 0;
            for s in steps {
                n = if let Some(&(_, c)) = nodes[n].children.iter().find(|(k, _)| k == s) {
                    c
                } else {
                    nodes.push(Node::default());
                    let c = nodes.len() - 1;
                    nodes[n].children.push((s.clone(), c));
                    c
                };
            }
            n
        };
        let leaf_nodes: Vec<usize> = paths.iter().map(|p| insert(p)).collect();
        let json_nodes: Vec<usize> = json_strings.iter().map(|p| insert(p)).collect();
        for &n in &leaf_nodes {
            nodes[n].slot = Some(usize::MAX);
            nodes[n].read = true;
        }
        for &n in &json_nodes {
            nodes[n].json_string = true;
            nodes[n].slot = Some(usize::MAX); // the string itself must be captured to be decoded
        }
        for n in &mut nodes {
            n.by_key = n
                .children
                .iter()
                .filter_map(|(s, c)| match s {
                    Step::Key(k) => Some((Box::from(k.as_bytes()), *c)),
                    Step::Index(_) => None,
                })
                .collect();
        }
        let mut next = 0;
        assign(&mut nodes, 0, &mut next);
        let slot_of = leaf_nodes.iter().map(|&n| nodes[n].slot.unwrap_or(0)).collect();
        (Trie { nodes, slots: next }, slot_of)
    }

    /// How many slots one event needs.
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slots
    }

    /// Parses `text` (which must be exactly one JSON value), filling `slots`.
    /// Returns whether the top-level value is an object.
    ///
    /// # Errors
    /// The parser's error when `text` is not valid JSON.
    pub fn walk<'a>(
        &self,
        text: &'a str,
        slots: &mut [Slot<'a>],
    ) -> Result<bool, serde_json::Error> {
        // Fast: containers on the way to leaves are walked as they are parsed. That converts any
        // scalar found where a container was expected, and serde refuses some valid JSON there
        // (1e400, "\ud800"); only then walk again in exact mode, which takes such values raw.
        if let Ok(is_object) = self.walk_nested(0, text, slots, false) {
            return Ok(is_object);
        }
        slots.fill(Slot::Absent);
        self.walk_nested(0, text, slots, true).or_else(|e| {
            // A top-level scalar is converted even in exact mode; it is valid JSON that is
            // merely not an object.
            match serde_json::from_str::<&RawValue>(text) {
                Ok(raw) if !raw.get().starts_with('{') => Ok(false),
                _ => Err(e),
            }
        })
    }
}

fn assign(nodes: &mut [Node], n: usize, next: &mut usize) {
    let start = *next;
    if nodes[n].slot.is_some() {
        nodes[n].slot = Some(*next);
        *next += 1;
    }
    let kids: Vec<usize> = nodes[n].children.iter().map(|&(_, c)| c).collect();
    for c in kids {
        assign(nodes, c, next);
    }
    nodes[n].subtree = start..*next;
}

struct NodeSeed<'t, 's, 'a> {
    trie: &'t Trie,
    node: usize,
    slots: &'s mut [Slot<'a>],
    exact: bool,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let node = &self.trie.nodes[self.node];
        if node.slot.is_none() && !self.exact {
            let Self { trie, node, slots, .. } = self;
            d.deserialize_any(Interior { trie, node, slots, exact: false })?;
            return Ok(());
        }
        let raw = <&'de RawValue>::deserialize(d)?;
        let Some(slot) = node.slot else {
            // Exact mode: a container on the way to read leaves, taken raw first so that a
            // scalar here (a huge number, a lone surrogate) is skipped as the reference parser
            // skips it, not refused by a conversion nobody needs.
            if matches!(raw.get().as_bytes().first(), Some(b'{' | b'[')) {
                let _ = self.trie.walk_nested(self.node, raw.get(), self.slots, true);
            }
            return Ok(());
        };
        let text = raw.get();
        if node.json_string && !node.read && text.starts_with('"') && !node.may_hold_children(text)
        {
            // No member read below can be in this string: skip unescaping and parsing it.
            return Ok(());
        }
        let value = Slot::from_raw(text);
        if !node.children.is_empty() {
            match (&value, node.json_string) {
                (Slot::Object | Slot::Array, _) => {
                    // Already validated by the outer parse; exactness as the caller asked.
                    let _ = self.trie.walk_nested(self.node, text, self.slots, self.exact);
                }
                (Slot::Str(Cow::Borrowed(s)), true) => {
                    let _ = self.trie.walk_nested(self.node, s, self.slots, true);
                }
                (Slot::Str(Cow::Owned(s)) | Slot::Lone(s), true) => {
                    let mut tmp = vec![Slot::Absent; self.slots.len()];
                    if self.trie.walk_nested(self.node, s, &mut tmp, true).is_ok() {
                        for i in node.subtree.clone() {
                            self.slots[i] = std::mem::take(&mut tmp[i]).into_owned();
                        }
                    }
                }
                _ => {}
            }
        }
        self.slots[slot] = value;
        Ok(())
    }
}

impl Trie {
    /// Walks `text` (a decoded JSON string) as if it were the value at `node`.
    fn walk_nested<'a>(
        &self,
        node: usize,
        text: &'a str,
        slots: &mut [Slot<'a>],
        exact: bool,
    ) -> Result<bool, serde_json::Error> {
        // Exact mode reads keys as unvalidated bytes, which lets a raw control character in a
        // key through: refuse those first, with serde's own message.
        if exact
            && raw_control_in_string(text)
            && let Err(e) = serde_json::from_str::<IgnoredAny>(text)
        {
            return Err(e);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let is_object = de.deserialize_any(Interior { trie: self, node, slots, exact })?;
        de.end()?;
        Ok(is_object)
    }
}

/// Whether a string literal of `text` holds a raw U+0000..=U+001F, which JSON forbids.
fn raw_control_in_string(text: &str) -> bool {
    let (mut in_str, mut esc) = (false, false);
    for &b in text.as_bytes() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            } else if b < 0x20 {
                return true;
            }
        } else if b == b'"' {
            in_str = true;
        }
    }
    false
}

impl Node {
    /// Whether a JSON document held in the string `raw` (still escaped) may contain a member
    /// this node's children read. Conservative: an escaped name (`\u…`) or an index always may.
    fn may_hold_children(&self, raw: &str) -> bool {
        let plain =
            |k: &str| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        self.by_key.len() < self.children.len()
            || !self.by_key.keys().all(|k| std::str::from_utf8(k).is_ok_and(plain))
            || raw.contains("\\u")
            || self.by_key.keys().any(|k| std::str::from_utf8(k).is_ok_and(|k| raw.contains(k)))
    }
}

/// Walks a container whose own value is not captured.
struct Interior<'t, 's, 'a> {
    trie: &'t Trie,
    node: usize,
    slots: &'s mut [Slot<'a>],
    exact: bool,
}

impl<'de> Visitor<'de> for Interior<'_, '_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let node = &self.trie.nodes[self.node];
        while let Some(child) = map.next_key_seed(KeySeed { node, exact: self.exact })? {
            match child {
                Some(c) => {
                    for s in &mut self.slots[self.trie.nodes[c].subtree.clone()] {
                        *s = Slot::Absent;
                    }
                    map.next_value_seed(NodeSeed {
                        trie: self.trie,
                        node: c,
                        slots: &mut *self.slots,
                        exact: self.exact,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let node = &self.trie.nodes[self.node];
        let mut i = 0usize;
        loop {
            let child = node.children.iter().find(|(s, _)| *s == Step::Index(i)).map(|&(_, c)| c);
            let more = match child {
                Some(c) => seq
                    .next_element_seed(NodeSeed {
                        trie: self.trie,
                        node: c,
                        slots: &mut *self.slots,
                        exact: self.exact,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(false);
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Resolves an object key to the child node that reads it, if any.
struct KeySeed<'t> {
    node: &'t Node,
    exact: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        // Exact mode reads keys as bytes: a key with a lone surrogate escape is valid JSON (it
        // just never names a path), but not a Rust string. The fast path's string scan is
        // quicker on short keys.
        if self.exact { d.deserialize_bytes(self) } else { d.deserialize_str(self) }
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_bytes<E>(self, key: &[u8]) -> Result<Option<usize>, E> {
        Ok(self.node.by_key.get(key).copied())
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.node.by_key.get(key.as_bytes()).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Step {
        Step::Key(k.into())
    }

    fn run<'a>(trie: &Trie, text: &'a str) -> Result<(bool, Vec<Slot<'a>>), serde_json::Error> {
        let mut slots = vec![Slot::Absent; trie.slot_count()];
        let obj = trie.walk(text, &mut slots)?;
        Ok((obj, slots))
    }

    #[test]
    fn captures_leaves_exactly() {
        let a = [key("id")];
        let b = [key("user"), key("id")];
        let c = [key("ts")];
        let (trie, slot) = Trie::build(&[&a, &b, &c], &[]);
        let (obj, s) = run(&trie, r#"{"id": 7000763757, "user": {"id": "11\"2"}, "ts": 1709548836.027, "x": [1,{"id":2}]}"#).unwrap();
        assert!(obj);
        assert_eq!(s[slot[0]], Slot::Num(Cow::Borrowed("7000763757")));
        assert_eq!(s[slot[1]], Slot::Str(Cow::Owned("11\"2".into())));
        assert_eq!(s[slot[2]], Slot::Num(Cow::Borrowed("1709548836.027")));
    }

    #[test]
    fn path_through_non_object_is_absent() {
        let b = [key("user"), key("id")];
        let (trie, slot) = Trie::build(&[&b], &[]);
        let (_, s) = run(&trie, r#"{"user": "guest"}"#).unwrap();
        assert_eq!(s[slot[0]], Slot::Absent);
        let (_, s) = run(&trie, r#"{"user": null}"#).unwrap();
        assert_eq!(s[slot[0]], Slot::Absent);
    }

    #[test]
    fn last_duplicate_key_wins_whole() {
        let b = [key("user"), key("id")];
        let (trie, slot) = Trie::build(&[&b], &[]);
        let (_, s) = run(&trie, r#"{"user": {"id": "1"}, "user": "guest"}"#).unwrap();
        assert_eq!(s[slot[0]], Slot::Absent);
        let (_, s) = run(&trie, r#"{"user": {"id": "1"}, "user": {"id": "2"}}"#).unwrap();
        assert_eq!(s[slot[0]], Slot::Str(Cow::Borrowed("2")));
    }

    #[test]
    fn json_strings_are_decoded_for_longer_paths() {
        let props = [key("props")];
        let ch = [key("props"), key("channel")];
        let (trie, slot) = Trie::build(&[&ch], &[&props]);
        for (line, want) in [
            (r#"{"props": "{\"channel\": \"phone\"}"}"#, Slot::Str(Cow::Borrowed("phone"))),
            (r#"{"props": {"channel": "phone"}}"#, Slot::Str(Cow::Borrowed("phone"))),
            (r#"{"props": "{channel: phone}"}"#, Slot::Absent),
            (r#"{"props": "[1]"}"#, Slot::Absent),
            (r#"{"props": 5}"#, Slot::Absent),
        ] {
            let (_, s) = run(&trie, line).unwrap();
            assert_eq!(s[slot[0]], want, "{line}");
        }
    }

    #[test]
    fn array_indexes() {
        let p = [key("a"), Step::Index(1), key("b")];
        let (trie, slot) = Trie::build(&[&p], &[]);
        let (_, s) = run(&trie, r#"{"a": [{"b": 1}, {"b": true}, {"b": 3}]}"#).unwrap();
        assert_eq!(s[slot[0]], Slot::Bool(true));
    }

    #[test]
    fn validates_everything_even_unread_parts() {
        let a = [key("id")];
        let (trie, _) = Trie::build(&[&a], &[]);
        for bad in [
            r#"{"id": 1, "x": [1, 2,]}"#,
            r#"{"id": 1, "x": "a\qb"}"#,
            "{\"id\": 1, \"x\": \"a\u{1}b\"}",
            r#"{"id": 1, "x": NaN}"#,
            r#"{"id": 1}{"id": 2}"#,
            r#"{"id": 1"#,
            r#"{"id": 01}"#,
            "\u{feff}{\"id\": 1}",
        ] {
            assert!(run(&trie, bad).is_err(), "{bad}");
        }
        let (obj, _) = run(&trie, " [1, {\"id\": 2}] \r\n").unwrap();
        assert!(!obj);
        let (obj, _) = run(&trie, "\"ping\"").unwrap();
        assert!(!obj);
    }
}
