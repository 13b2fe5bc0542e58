//! `x-kubernetes-validations`, evaluated with kube-cel (its `Validator` walks the schema, binds
//! `self` and `oldSelf`, and skips transition rules where there is no old value).
//!
//! kube-cel 0.8 (on the `cel` crate 0.13) lacks CEL's `type()` and type identifiers (`int`,
//! `string`, …), which a rule like `type(self) == int ? self >= 1 : self == 'All'` uses. Such a
//! rule is evaluated again here, on the same `cel` interpreter with kube-cel's library plus
//! `type()` and the type identifiers (each a value equal only to itself and to what `type()`
//! answers for a value of that type). A rule that still cannot be evaluated is an error,
//! never a pass.

use std::collections::HashMap;
use std::sync::Arc;

use kube_cel::cel::{self, objects::Key, Context, Program};
use kube_cel::KubeCelExt;
use serde_json::{json, Value};

use super::status::{FieldError, FieldErrorKind};

/// Type values: `type(1) == int`. A string no field can hold, so no value compares equal.
fn type_value(name: &str) -> cel::Value {
    cel::Value::String(Arc::new(format!("\u{0}type:{name}")))
}

fn type_of(
    cel::extractors::This(v): cel::extractors::This<cel::Value>,
) -> Result<cel::Value, cel::ExecutionError> {
    let name = match v {
        cel::Value::List(_) => "list",
        cel::Value::Map(_) => "map",
        cel::Value::Function(_, _) | cel::Value::Opaque(_) => "type",
        cel::Value::Int(_) => "int",
        cel::Value::UInt(_) => "uint",
        cel::Value::Float(_) => "double",
        cel::Value::String(_) => "string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Bool(_) => "bool",
        cel::Value::Duration(_) => "google.protobuf.Duration",
        cel::Value::Timestamp(_) => "google.protobuf.Timestamp",
        cel::Value::Null => "null_type",
    };
    Ok(type_value(name))
}

/// JSON as the apiserver hands it to CEL: integers are `int`.
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (_, Some(u), _) => cel::Value::UInt(u),
            (_, _, f) => cel::Value::Float(f.unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, cel::Value> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

fn value_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.find('[') {
            Some(i) => (
                &part[..i],
                part[i + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        if !name.is_empty() {
            node = node.get(name)?;
        }
        if let Some(i) = index {
            node = node.get(i)?;
        }
    }
    Some(node)
}

/// The outcome of one rule the fallback evaluated.
enum Outcome {
    Pass,
    Fail(String),
    Skipped,
}

fn evaluate(rule: &Value, value: &Value, old: Option<&Value>) -> Outcome {
    let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
    let message = rule
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("failed rule: {text}"));
    let program = match Program::compile(text) {
        Ok(p) => p,
        Err(e) => return Outcome::Fail(format!("rule {text:?} does not compile: {e}")),
    };
    let transition = program.references().has_variable("oldSelf");
    let optional_old = rule.get("optionalOldSelf") == Some(&json!(true));
    if transition && old.is_none() && !optional_old {
        return Outcome::Skipped;
    }
    let mut ctx = Context::default().with_all();
    ctx.add_function("type", type_of);
    for t in [
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
    ] {
        ctx.add_variable_from_value(t, type_value(t));
    }
    ctx.add_variable_from_value("self", to_cel(value));
    ctx.add_variable_from_value("oldSelf", old.map(to_cel).unwrap_or(cel::Value::Null));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(true)) => Outcome::Pass,
        Ok(cel::Value::Bool(false)) => Outcome::Fail(message),
        Ok(_) => Outcome::Fail(format!("rule {text:?} did not evaluate to bool")),
        Err(e) => Outcome::Fail(format!("rule {text:?} could not be evaluated: {e}")),
    }
}

/// The schema node at a kube-cel field path (`spec.hub`, `spec.forms[1]`).
fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexed) = match part.find('[') {
            Some(i) => (&part[..i], true),
            None => (part, false),
        };
        if !name.is_empty() {
            node = node
                .get("properties")
                .and_then(|p| p.get(name))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?;
        }
        if indexed {
            node = node.get("items")?;
        }
    }
    Some(node)
}

/// Every rule that fails, as an Invalid field error (`spec.hub: Invalid value: "object": hub
/// is immutable`).
pub fn validate(
    validator: &kube_cel::Validator,
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
    gvk: (&str, &str, &str),
) -> Vec<FieldError> {
    let (group, version, kind) = gvk;
    let root = kube_cel::RootContext {
        api_version: if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        },
        api_group: group.to_string(),
        kind: kind.to_string(),
    };
    let Err(errors) = validator.validate_with_context(schema, obj, old, Some(&root)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in errors.iter() {
        let node = schema_at(schema, &e.field_path);
        let ty = node
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let detail = match e.kind {
            kube_cel::ErrorKind::ValidationFailure => Some(e.message.clone()),
            kube_cel::ErrorKind::UnsupportedReference => {
                let rule = node
                    .and_then(|s| s.get("x-kubernetes-validations"))
                    .and_then(Value::as_array)
                    .and_then(|rules| {
                        rules.iter().find(|r| {
                            r.get("rule").and_then(Value::as_str) == Some(e.rule.as_str())
                        })
                    });
                let value = value_at(obj, &e.field_path);
                match (rule, value) {
                    (Some(rule), Some(value)) => {
                        match evaluate(rule, value, old.and_then(|o| value_at(o, &e.field_path))) {
                            Outcome::Pass | Outcome::Skipped => None,
                            Outcome::Fail(m) => Some(m),
                        }
                    }
                    _ => Some(format!(
                        "rule {:?} could not be evaluated: {}",
                        e.rule, e.message
                    )),
                }
            }
            _ => Some(format!(
                "rule {:?} could not be evaluated: {}",
                e.rule, e.message
            )),
        };
        if let Some(detail) = detail {
            out.push(FieldError::new(
                FieldErrorKind::Invalid,
                &e.field_path,
                Some(json!(ty)),
                detail,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_rules_see_the_old_object_and_type_rules_are_evaluated() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "hub": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "hub is immutable"}]},
            "replicas": {"x-kubernetes-int-or-string": true, "x-kubernetes-validations": [
                {"rule": "type(self) == int ? self >= 1 : self == 'All'", "message": "replicas is a number of at least 1, or All"}]}
        }}}});
        let v = kube_cel::Validator::new();
        let gvk = ("manta.io", "v1alpha1", "Torrent");
        let new = json!({"spec": {"hub": "b", "replicas": 1}});
        assert!(validate(&v, &schema, &new, None, gvk).is_empty());
        let errors = validate(&v, &schema, &new, Some(&json!({"spec": {"hub": "a"}})), gvk);
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["spec.hub: Invalid value: \"string\": hub is immutable"]
        );
        for (replicas, ok) in [
            (json!("All"), true),
            (json!(3), true),
            (json!(0), false),
            (json!("Some"), false),
        ] {
            let obj = json!({"spec": {"hub": "b", "replicas": replicas}});
            assert_eq!(
                validate(&v, &schema, &obj, None, gvk).is_empty(),
                ok,
                "{replicas}"
            );
        }
    }
}
