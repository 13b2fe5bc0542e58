//! What the apiextensions server does with a custom resource's `openAPIV3Schema` on every write,
//! in its order: prune fields the schema does not declare (refused instead under
//! `fieldValidation=Strict`), drop non-nullable nulls and fill `default`s (structural
//! defaulting), then validate (type, required, enum, pattern, bounds, lengths, item counts,
//! int-or-string, nullable) and evaluate `x-kubernetes-validations` with kube-cel, transition
//! rules (`oldSelf`) included.

use regex::Regex;
use serde_json::{json, Map, Value};

use super::status::{number_text, FieldError, FieldErrorKind};

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

/// Removes the fields the schema does not declare; returns their paths (`spec.foo`).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    prune_at(schema, obj, "", true, &mut unknown);
    unknown
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
    if flag(schema, "x-kubernetes-int-or-string") && !value.is_object() {
        return;
    }
    match value {
        Value::Object(map) => {
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let props = properties(schema);
            let extra = additional(schema);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = join(path, &key);
                let child_schema = props.and_then(|p| p.get(&key)).or(extra);
                match (child_schema, map.get_mut(&key)) {
                    (Some(s), Some(child)) => prune_at(s, child, &child_path, false, unknown),
                    (None, _)
                        if preserve || schema.get("additionalProperties") == Some(&json!(true)) => {
                    }
                    (None, _) => {
                        map.remove(&key);
                        unknown.push(child_path);
                    }
                    (Some(_), None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item_schema, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

/// Structural defaulting: a missing field (or a null one that is not nullable) gets its
/// `default`, top-down, so defaults inside a defaulted object apply too; other non-nullable
/// nulls are dropped.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = properties(schema) {
                for (key, prop) in props {
                    let missing_or_null = match map.get(key) {
                        None => true,
                        Some(Value::Null) => !flag(prop, "nullable"),
                        Some(_) => false,
                    };
                    if !missing_or_null {
                        continue;
                    }
                    match prop.get("default") {
                        Some(d) => {
                            map.insert(key.clone(), d.clone());
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                }
            }
            let extra = additional(schema);
            for (key, child) in map.iter_mut() {
                if let Some(s) = properties(schema).and_then(|p| p.get(key)).or(extra) {
                    apply_defaults(s, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    apply_defaults(item_schema, item);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, want: &str) -> bool {
    match want {
        "integer" => match v {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        "number" => v.is_number(),
        other => type_name(v) == other,
    }
}

/// Validates a value against its schema (not CEL), adding one error per broken constraint.
pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if !flag(schema, "nullable")
            && (schema.get("type").is_some() || flag(schema, "x-kubernetes-int-or-string"))
        {
            let want = schema
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("integer,string");
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(json!("null")),
                format!("{shown} in body must be of type {want}: \"null\""),
            ));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(is_type(value, "integer") || value.is_string()) {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(json!(type_name(value))),
                format!(
                    "{shown} in body must be of type integer,string: \"{}\"",
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        if !is_type(value, want) {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(json!(type_name(value))),
                format!(
                    "{shown} in body must be of type {want}: \"{}\"",
                    type_name(value)
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let listed: Vec<String> = allowed
                .iter()
                .map(|a| match a {
                    Value::String(s) => format!("{s:?}"),
                    other => other.to_string(),
                })
                .collect();
            errors.push(FieldError::new(
                FieldErrorKind::NotSupported,
                path,
                Some(value.clone()),
                format!("supported values: {}", listed.join(", ")),
            ));
        }
    }
    match value {
        Value::String(s) => validate_string(schema, s, path, shown, errors),
        Value::Number(n) => validate_number(schema, n, path, shown, errors),
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if len > max {
                    errors.push(FieldError::new(
                        FieldErrorKind::TooMany,
                        path,
                        Some(json!(len)),
                        format!("must have at most {max} items"),
                    ));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if len < min {
                    errors.push(FieldError::new(
                        FieldErrorKind::Invalid,
                        path,
                        Some(json!(len)),
                        format!("{shown} in body should have at least {min} items"),
                    ));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for key in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(key) {
                        errors.push(FieldError::new(
                            FieldErrorKind::Required,
                            &join(path, key),
                            None,
                            "",
                        ));
                    }
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
                if map.len() as u64 > max {
                    errors.push(FieldError::new(
                        FieldErrorKind::TooMany,
                        path,
                        Some(json!(map.len())),
                        format!("must have at most {max} items"),
                    ));
                }
            }
            let props = properties(schema);
            let extra = additional(schema);
            for (key, child) in map {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(key)).or(extra) {
                    validate(s, child, &join(path, key), errors);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn validate_string(schema: &Value, s: &str, path: &str, shown: &str, errors: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if chars > max {
            errors.push(FieldError::new(
                FieldErrorKind::TooLong,
                path,
                None,
                format!("may not be more than {max} bytes"),
            ));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if chars < min {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(json!(s)),
                format!("{shown} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        let matched = Regex::new(pattern)
            .map(|re| re.is_match(s))
            .unwrap_or(false);
        if !matched {
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(json!(s)),
                format!("{shown} in body should match '{pattern}'"),
            ));
        }
    }
}

fn validate_number(
    schema: &Value,
    n: &serde_json::Number,
    path: &str,
    shown: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(x) = n.as_f64() else { return };
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    let text = |key: &str| {
        schema
            .get(key)
            .and_then(Value::as_number)
            .map(number_text)
            .unwrap_or_default()
    };
    if let Some(min) = bound("minimum") {
        let exclusive = flag(schema, "exclusiveMinimum");
        if x < min || (exclusive && x == min) {
            let words = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(Value::Number(n.clone())),
                format!("{shown} in body should be {words} {}", text("minimum")),
            ));
        }
    }
    if let Some(max) = bound("maximum") {
        let exclusive = flag(schema, "exclusiveMaximum");
        if x > max || (exclusive && x == max) {
            let words = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errors.push(FieldError::new(
                FieldErrorKind::Invalid,
                path,
                Some(Value::Number(n.clone())),
                format!("{shown} in body should be {words} {}", text("maximum")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["hub"],
                    "properties": {
                        "hub": {
                            "type": "object",
                            "required": ["repoID"],
                            "properties": {
                                "name": {"type": "string", "default": "Huggingface", "enum": ["Huggingface", "ModelScope"]},
                                "repoID": {"type": "string", "pattern": "^[a-z]+/[a-z]+$"}
                            }
                        },
                        "replicas": {"x-kubernetes-int-or-string": true, "nullable": true, "default": 1},
                        "ttl": {"type": "integer", "minimum": 0.0, "nullable": true},
                        "forms": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "selector": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }
            }
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_named() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "T", "metadata": {"name": "a"},
            "spec": {"hub": {"repoID": "a/b", "extra": 1}, "selector": {"k": "v"}}, "top": true});
        let unknown = prune(&schema(), &mut obj);
        assert_eq!(
            unknown,
            vec!["spec.hub.extra".to_string(), "top".to_string()]
        );
        assert_eq!(obj["spec"]["selector"]["k"], "v");
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_fields_and_keep_nullable_nulls() {
        let mut obj = json!({"spec": {"hub": {"repoID": "a/b"}}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["hub"]["name"], "Huggingface");
        assert_eq!(obj["spec"]["replicas"], 1);
        let mut obj = json!({"spec": {"hub": {"repoID": "a/b", "name": null}, "replicas": null}});
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj["spec"]["hub"]["name"], "Huggingface");
        assert_eq!(obj["spec"]["replicas"], Value::Null);
    }

    #[test]
    fn validation_names_each_broken_field_as_the_server_words_it() {
        let obj = json!({"spec": {"hub": {"repoID": "A B", "name": "Other"}, "ttl": -1,
            "forms": ["a", "b", "c"], "replicas": true}});
        let mut errors = Vec::new();
        validate(&schema(), &obj, "", &mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"spec.hub.repoID: Invalid value: \"A B\": spec.hub.repoID in body should match '^[a-z]+/[a-z]+$'".to_string()), "{text:?}");
        assert!(text.contains(&"spec.hub.name: Unsupported value: \"Other\": supported values: \"Huggingface\", \"ModelScope\"".to_string()), "{text:?}");
        assert!(text.contains(&"spec.ttl: Invalid value: -1: spec.ttl in body should be greater than or equal to 0".to_string()), "{text:?}");
        assert!(
            text.contains(&"spec.forms: Too many: 3: must have at most 2 items".to_string()),
            "{text:?}"
        );
        assert!(text.contains(&"spec.replicas: Invalid value: \"boolean\": spec.replicas in body must be of type integer,string: \"boolean\"".to_string()), "{text:?}");
        let mut errors = Vec::new();
        validate(&schema(), &json!({"spec": {"hub": {}}}), "", &mut errors);
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["spec.hub.repoID: Required value"]
        );
    }
}
