//! JSON Schemas (draft-07) generated from the Rust types. The same schemas drive the structural
//! pass of `maxions validate`, so what editors see and what validate enforces cannot drift apart.

use std::sync::LazyLock;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::{Blueprint, DaemonConfig, Diagnostic, Task};

/// One schema file of `maxions schema`.
pub struct SchemaFile {
    pub file_name: &'static str,
    pub schema: &'static Value,
}

/// The draft-07 schema of `T`, with `$id` naming its file.
pub fn generate<T: schemars::JsonSchema>(id: &str) -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "$id".into(),
            Value::String(format!("https://maxions.dev/schemas/{id}")),
        );
    }
    value
}

pub static TASK: LazyLock<Value> = LazyLock::new(|| generate::<Task>("task.schema.json"));
pub static BLUEPRINT: LazyLock<Value> =
    LazyLock::new(|| generate::<Blueprint>("blueprint.schema.json"));
pub static DAEMON_CONFIG: LazyLock<Value> =
    LazyLock::new(|| generate::<DaemonConfig>("config.schema.json"));
static DIAGNOSTICS: LazyLock<Value> =
    LazyLock::new(|| generate::<Vec<Diagnostic>>("diagnostics.schema.json"));

/// Every schema maxions publishes, with the file name it is written to.
pub fn all() -> Vec<SchemaFile> {
    vec![
        SchemaFile {
            file_name: "task.schema.json",
            schema: &TASK,
        },
        SchemaFile {
            file_name: "blueprint.schema.json",
            schema: &BLUEPRINT,
        },
        SchemaFile {
            file_name: "config.schema.json",
            schema: &DAEMON_CONFIG,
        },
        SchemaFile {
            file_name: "diagnostics.schema.json",
            schema: &DIAGNOSTICS,
        },
    ]
}
