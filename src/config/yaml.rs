//! YAML → a generic tree whose every node knows where it came from.
//!
//! The typed model is checked against its JSON Schema on this tree first, so that one pass can
//! report every structural problem of a file (serde stops at the first), each at its line and
//! column. Parsing is bounded: alias bombs, deep nesting and huge documents are refused quickly.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in a source file (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const fn new(line: usize, column: usize) -> Self {
        Self { line, column }
    }

    fn from_location(location: serde_saphyr::Location) -> Self {
        Self {
            line: usize::try_from(location.line()).unwrap_or(0),
            column: usize::try_from(location.column()).unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always a scalar, kept as the text the user wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    /// The name of this value's type, as a user reads it in a message.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn key(&self, key: &str) -> Option<&Key> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(k, _)| k),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A YAML syntax error (or a refused input) with its location when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Option<Pos>,
    pub message: String,
}

/// Limits that keep a hostile file from costing more than a well-formed config ever needs.
fn budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    budget.max_nodes = 100_000;
    budget.max_events = 200_000;
    budget.max_total_scalar_bytes = 16 * 1024 * 1024;
    budget
}

/// Parses one YAML document into a located tree. An empty document parses as `Null`.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget());
    // Replaying aliases is where an alias bomb spends its time and memory: stop it early.
    options.alias_limits.max_total_replayed_events = 50_000;
    match serde_saphyr::from_str_with_options::<Option<Spanned<Value>>>(source, options) {
        Ok(Some(node)) => Ok(spanned(node)),
        Ok(None) => Ok(Node {
            pos: Pos::new(1, 1),
            value: Value::Null,
        }),
        Err(err) => Err(syntax_error(&err)),
    }
}

fn syntax_error(err: &serde_saphyr::Error) -> SyntaxError {
    let pos = err
        .location()
        .filter(|l| l.line() > 0)
        .map(Pos::from_location);
    let mut options = serde_saphyr::RenderOptions::default();
    options.snippets = serde_saphyr::SnippetMode::Off;
    let mut message = err.without_snippet().render_with_options(options);
    // The location is reported separately; drop the crate's " at line X column Y" suffix.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    SyntaxError {
        pos,
        message: message.trim().to_owned(),
    }
}

fn spanned(node: Spanned<Value>) -> Node {
    Node {
        pos: Pos::from_location(node.referenced),
        value: node.value,
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(spanned(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let name = match key.value {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Null => "null".to_owned(),
                Value::Seq(_) | Value::Map(_) => {
                    return Err(de::Error::custom("a mapping key must be a plain scalar"));
                }
            };
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((
                Key {
                    pos: Pos::from_location(key.referenced),
                    name,
                },
                spanned(value),
            ));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_carry_positions() {
        let node = parse("a: 1\nb:\n  - x\n  - \"5\"\nc: |\n  hello\n").unwrap();
        assert_eq!(node.key("b").unwrap().pos, Pos::new(2, 1));
        let b = node.get("b").unwrap();
        let Value::Seq(items) = &b.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos::new(4, 5));
        assert_eq!(items[1].value, Value::Str("5".into()));
        assert_eq!(node.get("a").unwrap().value, Value::Int(1));
        let c = node.get("c").unwrap();
        assert_eq!(c.as_str(), Some("hello\n"));
        eprintln!("block scalar pos {:?}", c.pos);
    }

    #[test]
    fn errors() {
        for src in [
            "a: 1\na: 2\n",
            "a:\n\tb: 1\n",
            "a: \"abc\n",
            "a: [1, 2\n",
            "a: &x [1]\nb: *y\n",
        ] {
            eprintln!("{src:?} => {:?}", parse(src));
        }
        let bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
";
        let t = std::time::Instant::now();
        eprintln!("bomb => {:?} in {:?}", parse(bomb), t.elapsed());
    }
}
