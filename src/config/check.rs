//! The structural pass: walks a located YAML tree against a generated JSON Schema and reports
//! every unknown key, missing key, wrong type and malformed value, each at its position.
//!
//! This understands the subset of JSON Schema that schemars emits for our types (`$ref`,
//! `anyOf`/`oneOf`, `type`, `properties`, `additionalProperties`, `required`, `items`, `const`,
//! `enum`, numeric and length bounds) plus our own `format`s, checked by [`super::formats`].

use serde_json::{Map, Value as Json};

use super::diagnostic::{Diagnostic, did_you_mean, token_width};
use super::formats;
use super::yaml::{Node, Pos, Value};

/// Checks `node` against `schema` (a root schema with `definitions`), describing the top level
/// as `what` ("task", "blueprint", ...).
pub fn check(node: &Node, schema: &Json, what: &str, source: &str) -> Vec<Diagnostic> {
    let mut checker = Checker {
        root: schema,
        source,
        found: Vec::new(),
    };
    let owner = Owner {
        name: what.to_owned(),
        pos: Pos::new(1, 1),
        width: 1,
    };
    checker.walk(node, schema, &owner);
    checker.found
}

struct Checker<'a> {
    root: &'a Json,
    source: &'a str,
    found: Vec<Diagnostic>,
}

/// The key (or list item) that holds the node being checked: where "missing field" points.
#[derive(Clone)]
struct Owner {
    name: String,
    pos: Pos,
    width: usize,
}

impl<'a> Checker<'a> {
    fn resolve(&self, mut schema: &'a Json) -> &'a Json {
        for _ in 0..32 {
            let Some(reference) = schema.get("$ref").and_then(Json::as_str) else {
                break;
            };
            let Some(name) = reference.strip_prefix("#/definitions/") else {
                break;
            };
            match self.root.pointer(&format!("/definitions/{name}")) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn report(&mut self, diagnostic: Diagnostic) {
        self.found.push(diagnostic);
    }

    fn value_diag(&self, node: &Node, code: &'static str, message: String) -> Diagnostic {
        Diagnostic::error(code, message)
            .at(node.pos)
            .width(token_width(self.source, node.pos))
    }

    fn walk(&mut self, node: &Node, schema: &'a Json, owner: &Owner) {
        let schema = self.resolve(schema);
        // schemars wraps a `$ref` that has a default or description in `allOf`.
        if let Some(all) = schema.get("allOf").and_then(Json::as_array) {
            for part in all {
                self.walk(node, part, owner);
            }
            return;
        }
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Json::as_array)
        {
            self.walk_alternatives(node, branches, owner);
            return;
        }
        if let Some(allowed) = enum_values(schema) {
            self.check_enum(node, &allowed, owner);
            return;
        }
        if !self.check_type(node, schema, owner) {
            return;
        }
        match &node.value {
            Value::Map(entries) => self.walk_map(entries, schema, owner),
            Value::Seq(items) => self.walk_seq(items, schema, owner),
            Value::Str(text) => self.check_string(node, text, schema, owner),
            Value::Int(_) | Value::Float(_) => self.check_number(node, schema),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn walk_alternatives(&mut self, node: &Node, branches: &'a [Json], owner: &Owner) {
        let branches: Vec<&Json> = branches.iter().map(|b| self.resolve(b)).collect();
        // `Option<T>` is `anyOf: [T, null]`: a null goes to the null branch, anything else to T.
        let non_null: Vec<&Json> = branches
            .iter()
            .copied()
            .filter(|b| b.get("type").and_then(Json::as_str) != Some("null"))
            .collect();
        if non_null.len() < branches.len() {
            if node.value == Value::Null {
                return;
            }
            if let [only] = non_null.as_slice() {
                self.walk(node, only, owner);
                return;
            }
        }
        // Unit enums with documented variants come out as `oneOf` of `const`s.
        let consts: Option<Vec<String>> = non_null
            .iter()
            .map(|b| b.get("const").and_then(Json::as_str).map(str::to_owned))
            .collect();
        if let Some(allowed) = consts {
            self.check_enum(node, &allowed, owner);
            return;
        }
        // Externally tagged enums: each branch is an object with exactly one required key.
        let tags: Option<Vec<(&str, &Json)>> = non_null
            .iter()
            .map(|b| {
                let required = b.get("required")?.as_array()?;
                let [tag] = required.as_slice() else {
                    return None;
                };
                let tag = tag.as_str()?;
                Some((tag, b.pointer(&format!("/properties/{tag}"))?))
            })
            .collect();
        if let Some(tags) = tags {
            self.walk_tagged(node, &tags, owner);
            return;
        }
        // Otherwise: fine if any branch accepts the node.
        let mut best: Option<Vec<Diagnostic>> = None;
        for branch in &non_null {
            let mut sub = Checker {
                root: self.root,
                source: self.source,
                found: Vec::new(),
            };
            sub.walk(node, branch, owner);
            if sub.found.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|b| sub.found.len() < b.len()) {
                best = Some(sub.found);
            }
        }
        self.found.extend(best.unwrap_or_default());
    }

    fn walk_tagged(&mut self, node: &Node, tags: &[(&str, &'a Json)], owner: &Owner) {
        let names: Vec<&str> = tags.iter().map(|(t, _)| *t).collect();
        let expected = one_of(&names);
        let Value::Map(entries) = &node.value else {
            let d = self
                .value_diag(
                    node,
                    "invalid-type",
                    format!(
                        "expected a mapping with one key ({expected}) for {}, found {}",
                        owner.name,
                        node.value.type_name()
                    ),
                )
                .hint(format!("write e.g. `{}: ...`", names[0]));
            self.report(d);
            return;
        };
        if entries.len() != 1 {
            let d = Diagnostic::error(
                "invalid-value",
                format!(
                    "{} takes exactly one of {expected}, found {} keys",
                    owner.name,
                    entries.len()
                ),
            )
            .at(owner.pos)
            .width(owner.width);
            self.report(d);
        }
        for (key, value) in entries {
            match tags.iter().find(|(t, _)| *t == key.name) {
                Some((_, schema)) => {
                    let owner = Owner {
                        name: format!("`{}`", key.name),
                        pos: key.pos,
                        width: key.name.chars().count(),
                    };
                    self.walk(value, schema, &owner);
                }
                None => self.unknown_key(key, &names, owner),
            }
        }
    }

    fn unknown_key(&mut self, key: &super::yaml::Key, known: &[&str], owner: &Owner) {
        let hint = match did_you_mean(&key.name, known.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None if known.is_empty() => "this mapping takes no keys".to_owned(),
            None => format!("expected {}", one_of(known)),
        };
        let d = Diagnostic::error(
            "unknown-field",
            format!("unknown field `{}` in {}", key.name, owner.name),
        )
        .at(key.pos)
        .width(key.name.chars().count())
        .hint(hint);
        self.report(d);
    }

    fn check_enum(&mut self, node: &Node, allowed: &[String], owner: &Owner) {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Null => String::new(),
            other => {
                let d = self.value_diag(
                    node,
                    "invalid-type",
                    format!(
                        "expected one of {} for {}, found {}",
                        quoted(allowed),
                        owner.name,
                        other.type_name()
                    ),
                );
                self.report(d);
                return;
            }
        };
        if allowed.contains(&text) {
            return;
        }
        let hint = did_you_mean(&text, allowed.iter().map(String::as_str))
            .map(|best| format!("did you mean `{best}`?"))
            .unwrap_or_else(|| format!("expected {}", quoted(allowed)));
        let d = self
            .value_diag(
                node,
                "invalid-value",
                format!("`{text}` is not a valid value for {}", owner.name),
            )
            .hint(hint);
        self.report(d);
    }

    /// Returns whether the node has an acceptable type (and so should be looked into).
    fn check_type(&mut self, node: &Node, schema: &Json, owner: &Owner) -> bool {
        let types: Vec<&str> = match schema.get("type") {
            Some(Json::String(t)) => vec![t.as_str()],
            Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
            _ => return true,
        };
        let actual = &node.value;
        let ok = types.iter().any(|t| match (*t, actual) {
            ("null", Value::Null)
            | ("boolean", Value::Bool(_))
            | ("integer", Value::Int(_))
            | ("number", Value::Int(_) | Value::Float(_))
            | ("string", Value::Str(_))
            | ("array", Value::Seq(_))
            | ("object", Value::Map(_)) => true,
            // `push:` with nothing after it means an empty mapping, as `push: {}` does.
            ("object", Value::Null) => schema
                .get("required")
                .and_then(Json::as_array)
                .is_none_or(Vec::is_empty),
            _ => false,
        });
        if ok {
            return true;
        }
        // `Option<T>` allows null, but "expected a string or nothing" only adds noise.
        let expected: Vec<&str> = types
            .iter()
            .filter(|t| **t != "null" || types.len() == 1)
            .map(|t| json_type_name(t))
            .collect();
        let found = match actual {
            Value::Null => "nothing".to_owned(),
            other => other.type_name().to_owned(),
        };
        let hint = match (types.as_slice(), actual) {
            (["boolean"], Value::Str(_)) => {
                Some("write `true` or `false` without quotes".to_owned())
            }
            (["integer"] | ["number"], Value::Str(_)) => {
                Some("write the number without quotes".to_owned())
            }
            (["string"], Value::Int(_) | Value::Float(_) | Value::Bool(_)) => {
                Some(match schema.get("format").and_then(Json::as_str) {
                    Some("maxions-duration") => super::units::DURATION_HINT.to_owned(),
                    Some("maxions-size") => super::units::SIZE_HINT.to_owned(),
                    _ => "put it in quotes to make it a string".to_owned(),
                })
            }
            (["array"], Value::Str(s)) => Some(format!("write a list: `[{s}]`")),
            (_, Value::Null) => Some(format!("give {} a value", owner.name)),
            _ => None,
        };
        let pos = if *actual == Value::Null {
            owner.pos
        } else {
            node.pos
        };
        let width = if *actual == Value::Null {
            owner.width
        } else {
            token_width(self.source, node.pos)
        };
        let d = Diagnostic::error(
            "invalid-type",
            format!(
                "expected {} for {}, found {found}",
                expected.join(" or "),
                owner.name
            ),
        )
        .at(pos)
        .width(width)
        .maybe_hint(hint);
        self.report(d);
        false
    }

    fn walk_map(&mut self, entries: &[(super::yaml::Key, Node)], schema: &'a Json, owner: &Owner) {
        static EMPTY: std::sync::LazyLock<Map<String, Json>> = std::sync::LazyLock::new(Map::new);
        let properties = schema
            .get("properties")
            .and_then(Json::as_object)
            .unwrap_or(&EMPTY);
        let additional = schema.get("additionalProperties");
        let known: Vec<&str> = properties.keys().map(String::as_str).collect();
        for (key, value) in entries {
            let child = Owner {
                name: format!("`{}`", key.name),
                pos: key.pos,
                width: key.name.chars().count(),
            };
            if let Some(property) = properties.get(&key.name) {
                self.walk(value, property, &child);
            } else {
                match additional {
                    Some(Json::Bool(false)) => self.unknown_key(key, &known, owner),
                    Some(schema @ Json::Object(_)) => self.walk(value, schema, &child),
                    _ => {}
                }
            }
        }
        if let Some(names) = schema.get("propertyNames") {
            for (key, _) in entries {
                self.check_key_format(key, names);
            }
        }
        for required in schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
        {
            if !entries.iter().any(|(k, _)| k.name == required) {
                let d = Diagnostic::error(
                    "missing-field",
                    format!("missing field `{required}` in {}", owner.name),
                )
                .at(owner.pos)
                .width(owner.width)
                .hint(format!("add `{required}:`"));
                self.report(d);
            }
        }
    }

    fn check_key_format(&mut self, key: &super::yaml::Key, schema: &Json) {
        if let Some(format) = schema.get("format").and_then(Json::as_str)
            && format == "maxions-env-name"
            && let Err(problem) = formats::check(format, &key.name)
        {
            let d = Diagnostic::error(problem.code, problem.message)
                .at(key.pos)
                .width(key.name.chars().count())
                .maybe_hint(problem.hint);
            self.report(d);
        }
    }

    fn walk_seq(&mut self, items: &[Node], schema: &'a Json, owner: &Owner) {
        if let Some(min) = schema.get("minItems").and_then(Json::as_u64)
            && (items.len() as u64) < min
        {
            let d = Diagnostic::error(
                "invalid-value",
                format!("{} needs at least {min} item{}", owner.name, plural(min)),
            )
            .at(owner.pos)
            .width(owner.width);
            self.report(d);
        }
        let Some(item_schema) = schema.get("items") else {
            return;
        };
        for (index, item) in items.iter().enumerate() {
            let name = match item.get("id").and_then(Node::as_str) {
                Some(id) => format!("{} item `{id}`", owner.name),
                None => format!("item {} of {}", index + 1, owner.name),
            };
            let child = Owner {
                name,
                pos: item.pos,
                width: 1,
            };
            self.walk(item, item_schema, &child);
        }
    }

    fn check_string(&mut self, node: &Node, text: &str, schema: &Json, owner: &Owner) {
        if let Some(min) = schema.get("minLength").and_then(Json::as_u64)
            && (text.chars().count() as u64) < min
        {
            let d = self.value_diag(
                node,
                "invalid-value",
                format!("{} cannot be empty", owner.name),
            );
            self.report(d);
            return;
        }
        if let Some(format) = schema.get("format").and_then(Json::as_str)
            && let Err(problem) = formats::check(format, text)
        {
            let d = self
                .value_diag(node, problem.code, problem.message)
                .maybe_hint(problem.hint);
            self.report(d);
        }
    }

    fn check_number(&mut self, node: &Node, schema: &Json) {
        let value = match node.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => return,
        };
        let min = schema.get("minimum").and_then(Json::as_f64);
        let max = schema.get("maximum").and_then(Json::as_f64);
        let out_of_range = min.is_some_and(|m| value < m) || max.is_some_and(|m| value > m);
        if out_of_range {
            let range = match (min, max) {
                (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
                (Some(lo), None) => format!("at least {lo}"),
                (None, Some(hi)) => format!("at most {hi}"),
                (None, None) => unreachable!("out of range needs a bound"),
            };
            let d = self
                .value_diag(node, "invalid-value", format!("{value} is out of range"))
                .hint(format!("use a value {range}"));
            self.report(d);
        }
    }
}

fn enum_values(schema: &Json) -> Option<Vec<String>> {
    let values = schema.get("enum")?.as_array()?;
    values
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn json_type_name(t: &str) -> &str {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "null" => "nothing",
        other => other,
    }
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("one of {}, {last}", init.join(", ")),
    }
}

fn quoted(names: &[String]) -> String {
    one_of(&names.iter().map(String::as_str).collect::<Vec<_>>())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
