//! A YAML document as a tree whose every node knows its location, and the reader the
//! policy compiler walks it with. Reading the tree ourselves, instead of deserializing
//! straight into structs, lets one pass report every problem of a file: each unknown key
//! (with a did-you-mean), each wrong type or value, each repeated key, each missing key.

use serde::{
    Deserialize,
    de::{MapAccess, SeqAccess, Visitor},
};
use serde_saphyr::{Spanned, budget::BudgetBreach};

use super::{PolicyError, file::invalid};

/// One YAML node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Entries in file order; repeated keys are kept (and reported by `Fields::finish`).
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl Node {
    /// What the node is, for "must be X, not Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Map(_) => "a mapping",
            Node::Seq(_) => "a list",
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Bool(_) => "a boolean",
            Node::Null => "empty",
        }
    }

    /// The scalar as text (strings, numbers, booleans), `None` for collections and null.
    pub fn text(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v).map(Node::Int).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            v.push(item);
        }
        Ok(Node::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut v = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Key>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            v.push((Spanned::new(k.value.0, k.referenced, k.defined), value));
        }
        Ok(Node::Map(v))
    }
}

/// A mapping key: any scalar, as text (`12: x` has key "12").
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = Node::deserialize(d)?;
        Ok(Key(n.text().unwrap_or_else(|| format!("<{}>", n.kind()))))
    }
}

/// Most documents one policy file may hold, and the deepest nesting (a policy needs 5).
pub const MAX_DOCUMENTS: usize = 256;
pub const MAX_DEPTH: usize = 16;

/// Every document of `text`; null (empty) documents are left out. A YAML error, or a file
/// past the limits, is one error in our words.
pub fn documents(path: &str, text: &str) -> Result<Vec<Spanned<Node>>, PolicyError> {
    let budget = serde_saphyr::budget! { max_documents: MAX_DOCUMENTS, max_depth: MAX_DEPTH };
    let options = serde_saphyr::options! {
        budget: budget,
        // Repeated keys reach us, so each is reported with both places.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    let docs = serde_saphyr::from_str_multiple_with_options::<Spanned<Node>, Vec<_>>(text, options);
    match docs.as_ref().map_err(|e| e.without_snippet()) {
        Ok(_) => Ok(docs.unwrap_or_default().into_iter().filter(|d| d.value != Node::Null).collect()),
        Err(serde_saphyr::Error::Budget { breach, location }) => {
            let message = match breach {
                BudgetBreach::Documents { .. } => format!("more than {MAX_DOCUMENTS} YAML documents in one file"),
                BudgetBreach::Depth { .. } => format!("nested deeper than {MAX_DEPTH} levels (a policy needs 5)"),
                _ => "too large or too repetitive to be a policy file (YAML limits exceeded)".to_owned(),
            };
            let (line, column) = (location.line() as usize, location.column() as usize);
            Err(PolicyError::Syntax { path: path.to_owned(), line, column, message })
        }
        Err(_) => Err(super::file::syntax(path, &docs.err().map(|e| e.to_string()).unwrap_or_default())),
    }
}

/// Where errors go while a document is read.
pub struct Ctx<'e> {
    pub path: String,
    pub errors: &'e mut Vec<PolicyError>,
}

impl Ctx<'_> {
    pub fn error<T>(&mut self, at: &Spanned<T>, field: &str, message: String) {
        self.errors.push(invalid(&self.path, at, field, message));
    }

    /// `field` of a mapping: its entries, or an error saying what it is instead.
    pub fn map<'a>(&mut self, n: &'a Spanned<Node>, field: &str) -> Option<Fields<'a>> {
        match &n.value {
            Node::Map(entries) => Some(Fields { field: field.to_owned(), at: n, entries, taken: Vec::new() }),
            other => {
                self.error(n, field, format!("must be a mapping, not {}", other.kind()));
                None
            }
        }
    }

    pub fn string<'a>(&mut self, n: &'a Spanned<Node>, field: &str) -> Option<&'a str> {
        match &n.value {
            Node::Str(s) => Some(s),
            other => {
                self.error(n, field, format!("must be a string, not {}", other.kind()));
                None
            }
        }
    }

    pub fn int(&mut self, n: &Spanned<Node>, field: &str) -> Option<i128> {
        match &n.value {
            Node::Int(i) => Some(*i),
            other => {
                self.error(n, field, format!("must be an integer, not {}", other.kind()));
                None
            }
        }
    }

    pub fn bool(&mut self, n: &Spanned<Node>, field: &str) -> Option<bool> {
        match &n.value {
            Node::Bool(b) => Some(*b),
            other => {
                self.error(n, field, format!("must be true or false, not {}", other.kind()));
                None
            }
        }
    }

    pub fn list<'a>(&mut self, n: &'a Spanned<Node>, field: &str) -> Option<&'a [Spanned<Node>]> {
        match &n.value {
            Node::Seq(v) => Some(v),
            other => {
                self.error(n, field, format!("must be a list, not {}", other.kind()));
                None
            }
        }
    }

    /// A string that must be one of `choices`; a near miss gets a did-you-mean.
    pub fn choice<T: Copy>(&mut self, n: &Spanned<Node>, field: &str, choices: &[(&str, T)]) -> Option<T> {
        let s = self.string(n, field)?;
        if let Some((_, v)) = choices.iter().find(|(c, _)| *c == s) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
        let hint = did_you_mean(s, &names).map(|c| format!(": did you mean `{c}`?")).unwrap_or_default();
        self.error(n, field, format!("`{}` is not one of {}{hint}", echo(s), names.join(", ")));
        None
    }
}

/// A mapping being read: `get` takes known keys, `finish` reports the rest.
pub struct Fields<'a> {
    field: String,
    at: &'a Spanned<Node>,
    entries: &'a [(Spanned<String>, Spanned<Node>)],
    taken: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// The full path of a child key (`spec` + `mode` = `spec.mode`).
    pub fn child(&self, key: &str) -> String {
        if self.field.is_empty() { key.to_owned() } else { format!("{}.{key}", self.field) }
    }

    /// The value of `key` (its first occurrence).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Spanned<Node>> {
        self.taken.push(key);
        self.entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    /// Whether `key` is present (without taking it).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.value == key)
    }

    /// Like `get`, and a missing key is an error at the mapping.
    pub fn require(&mut self, ctx: &mut Ctx, key: &'static str) -> Option<&'a Spanned<Node>> {
        let v = self.get(key);
        if v.is_none() {
            let field = if self.field.is_empty() { "document".to_owned() } else { self.field.clone() };
            ctx.error(self.at, &field, format!("`{key}` is missing"));
        }
        v
    }

    /// The mapping itself (for errors about it as a whole).
    pub fn node(&self) -> &'a Spanned<Node> {
        self.at
    }

    /// Reports every key not taken (with a did-you-mean among the taken ones) and every
    /// repeated key.
    pub fn finish(self, ctx: &mut Ctx) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            let field = self.child(&k.value);
            if let Some((first, _)) = self.entries[..i].iter().find(|(e, _)| e.value == k.value) {
                let (l, c) = (first.referenced.line(), first.referenced.column());
                ctx.error(k, &field, format!("given twice (first at line {l} column {c})"));
            } else if !self.taken.contains(&k.value.as_str()) {
                let hint =
                    did_you_mean(&k.value, &self.taken).map(|c| format!("did you mean `{c}`? ")).unwrap_or_default();
                ctx.error(k, &field, format!("unknown key: {hint}expected one of {}", self.taken.join(", ")));
            }
        }
    }
}

/// The closest of `names` to `s`, if it is close: an edit distance (case-insensitive) of at
/// most a third of the longer name, at least 1, at most 3.
pub fn did_you_mean<'n>(s: &str, names: &[&'n str]) -> Option<&'n str> {
    let s = s.to_ascii_lowercase();
    names
        .iter()
        .map(|n| (edit_distance(&s, &n.to_ascii_lowercase()), *n))
        .filter(|(d, n)| *d <= (n.len().max(s.len()) / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Edit distance over chars where swapping two neighbours counts one (optimal string
/// alignment): `moed` is one edit from `mode`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A value echoed in a message, cut to a readable length.
pub fn echo(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_are_suggested_far_ones_not() {
        assert_eq!(did_you_mean("moed", &["mode", "selector"]), Some("mode"));
        assert_eq!(did_you_mean("Selecter", &["mode", "selector"]), Some("selector"));
        assert_eq!(did_you_mean("maxServiceLatncy", &["maxServiceLatency", "levels"]), Some("maxServiceLatency"));
        assert_eq!(did_you_mean("frist", &["first", "second"]), Some("first"));
        assert_eq!(did_you_mean("bus", &["name", "pci", "driver"]), None);
        assert_eq!(did_you_mean("x", &["pci"]), None);
        assert_eq!((edit_distance("kitten", "sitting"), edit_distance("moed", "mode")), (3, 1));
    }

    #[test]
    fn the_tree_keeps_locations_types_and_repeats() {
        let docs = documents("t.yaml", "a: 1\nb: [x, 2.5, true, ~]\na: {c: d}\n").unwrap();
        let [doc] = docs.as_slice() else { panic!("one document") };
        let Node::Map(entries) = &doc.value else { panic!("a map") };
        let keys: Vec<(&str, u64, u64)> =
            entries.iter().map(|(k, _)| (k.value.as_str(), k.referenced.line(), k.referenced.column())).collect();
        assert_eq!(keys, [("a", 1, 1), ("b", 2, 1), ("a", 3, 1)]);
        assert_eq!(entries[0].1.value, Node::Int(1));
        let Node::Seq(items) = &entries[1].1.value else { panic!("a list") };
        let kinds: Vec<&str> = items.iter().map(|i| i.value.kind()).collect();
        assert_eq!(kinds, ["a string", "a number", "a boolean", "empty"]);
    }

    #[test]
    fn limits_are_reported_in_our_words() {
        let deep = format!("{}x{}\n", "[".repeat(40), "]".repeat(40));
        let e = documents("t.yaml", &deep).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:1:") && e.ends_with("nested deeper than 16 levels (a policy needs 5)"), "{e}");
        let many = "a: 1\n---\n".repeat(MAX_DOCUMENTS + 1);
        let e = documents("t.yaml", &many).unwrap_err().to_string();
        assert!(e.ends_with("more than 256 YAML documents in one file"), "{e}");
    }
}
