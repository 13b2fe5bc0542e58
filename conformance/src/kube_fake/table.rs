//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`. Custom resources get Name plus
//! their version's `additionalPrinterColumns` (cells from simple JSONPaths, dates as ages);
//! built-in kinds get the first columns of their real printers.

use serde_json::{json, Value};

use super::clock;
use super::resources::{Printer, ResourceDef};

/// What each row carries in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

fn column(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

fn name_column() -> Value {
    column("Name", "string", "name", NAME_DESCRIPTION, 0)
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    match &def.printer {
        Printer::Columns(cols) => std::iter::once(name_column())
            .chain(cols.iter().map(|c| column(&c.name, &c.type_, &c.format, &c.description, c.priority)))
            .collect(),
        Printer::Node => vec![
            name_column(),
            column("Status", "string", "", "The status of the node", 0),
            column("Roles", "string", "", "The roles of the node", 0),
            column("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            column("Version", "string", "", "Kubelet Version reported by the node.", 0),
        ],
        Printer::Pod => vec![
            name_column(),
            column("Ready", "string", "", "The aggregate readiness state of this pod for accepting traffic.", 0),
            column("Status", "string", "", "The aggregate status of the containers in this pod.", 0),
            column("Restarts", "string", "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            column("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
            column("IP", "string", "", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            column("Node", "string", "", "NodeName is a request to schedule this pod onto a specific node.", 1),
        ],
        Printer::Namespace => vec![
            name_column(),
            column("Status", "string", "", "The status of the namespace", 0),
            column("Age", "string", "", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
        ],
        Printer::Event => vec![
            column("Last Seen", "string", "", "Time when last this event was observed", 0),
            column("Type", "string", "", "Type of this event (Normal, Warning), new types could be added in the future.", 0),
            column("Reason", "string", "", "This should be a short, machine understandable string that gives the reason for this event being generated.", 0),
            column("Object", "string", "", "The object that this event is about.", 0),
            column("Message", "string", "", "A human-readable description of the status of this operation.", 0),
        ],
        Printer::Default => vec![
            name_column(),
            column("Created At", "date", "", "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.", 0),
        ],
    }
}

/// A simple JSONPath (`.status.phase`, `.spec.items[0].name`, `.metadata.labels['a/b']`).
pub fn eval_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut node = obj;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            if !key.is_empty() {
                node = node.get(key)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            let quoted = inner
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
            node = match quoted {
                Some(key) => node.get(key)?,
                None => node.get(inner.parse::<usize>().ok()?)?,
            };
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            node = node.get(&rest[..end])?;
            rest = &rest[end..];
        }
    }
    Some(node)
}

fn age(obj: &Value, field: &str) -> String {
    obj.pointer(field)
        .and_then(Value::as_str)
        .and_then(clock::seconds_since)
        .map(clock::human_duration)
        .unwrap_or_else(|| "<unknown>".into())
}

fn name(obj: &Value) -> Value {
    obj.pointer("/metadata/name").cloned().unwrap_or(json!(""))
}

/// A cell for a printer column, as `cellForJSONValue` makes it.
fn custom_cell(type_: &str, value: Option<&Value>) -> Value {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Value::Null;
    };
    match (type_, v) {
        ("string", Value::String(s)) => json!(s),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(|i| json!(i))
            .or_else(|| n.as_f64().map(|f| json!(f as i64)))
            .unwrap_or(Value::Null),
        ("number", Value::Number(n)) => n.as_f64().map(|f| json!(f)).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => match clock::seconds_since(s) {
            Some(secs) => json!(clock::human_duration(secs)),
            None => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
    let ready = conditions.and_then(|cs| {
        cs.iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            .and_then(|c| c.get("status").and_then(Value::as_str))
    });
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(role) if !role.is_empty() => Some(role.to_string()),
                    _ if k == "kubernetes.io/role" => v.as_str().map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let version = obj
        .pointer("/status/nodeInfo/kubeletVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    vec![
        name(obj),
        json!(status),
        json!(roles),
        json!(age(obj, "/metadata/creationTimestamp")),
        json!(version),
    ]
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let total = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c.get("ready") == Some(&json!(true)))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .sum()
    });
    let mut status = obj
        .pointer("/status/reason")
        .or_else(|| obj.pointer("/status/phase"))
        .and_then(Value::as_str)
        .unwrap_or("Unknown")
        .to_string();
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    let ip = obj
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    let node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("<none>");
    vec![
        name(obj),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        json!(age(obj, "/metadata/creationTimestamp")),
        json!(ip),
        json!(node),
    ]
}

fn event_cells(obj: &Value) -> Vec<Value> {
    let last = [
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
    .and_then(clock::seconds_since)
    .map(clock::human_duration)
    .unwrap_or_else(|| "<unknown>".into());
    let regarding = obj.get("involvedObject").or_else(|| obj.get("regarding"));
    let kind = regarding
        .and_then(|r| r.get("kind"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let rname = regarding
        .and_then(|r| r.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let message = obj
        .get("message")
        .or_else(|| obj.get("note"))
        .and_then(Value::as_str)
        .unwrap_or("");
    vec![
        json!(last),
        obj.get("type").cloned().unwrap_or(json!("")),
        obj.get("reason").cloned().unwrap_or(json!("")),
        json!(format!("{}/{rname}", kind.to_lowercase())),
        json!(message),
    ]
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    match &def.printer {
        Printer::Columns(cols) => std::iter::once(name(obj))
            .chain(
                cols.iter()
                    .map(|c| custom_cell(&c.type_, eval_path(obj, &c.json_path))),
            )
            .collect(),
        Printer::Node => node_cells(obj),
        Printer::Pod => pod_cells(obj),
        Printer::Namespace => vec![
            name(obj),
            obj.pointer("/status/phase").cloned().unwrap_or(json!("")),
            json!(age(obj, "/metadata/creationTimestamp")),
        ],
        Printer::Event => event_cells(obj),
        Printer::Default => vec![
            name(obj),
            obj.pointer("/metadata/creationTimestamp")
                .cloned()
                .unwrap_or(Value::Null),
        ],
    }
}

/// An object as `PartialObjectMetadata`.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The Table of some objects; `headers: false` leaves out the column definitions (as the
/// server does for every watch event after the first).
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    rv: Option<String>,
    include: IncludeObject,
    headers: bool,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(def, o)});
            let object = match include {
                IncludeObject::None => None,
                IncludeObject::Metadata => Some(partial_metadata(o)),
                IncludeObject::Object => Some(o.clone()),
            };
            if let (Some(obj), Some(map)) = (object, row.as_object_mut()) {
                map.insert("object".into(), obj);
            }
            row
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": if headers { Value::Array(columns(def)) } else { Value::Null },
        "rows": rows,
    });
    if let Some(rv) = rv {
        t["metadata"]["resourceVersion"] = json!(rv);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_json_paths_find_fields_or_nothing() {
        let obj = json!({"status": {"phase": "Ready", "items": [{"n": 1}]}, "metadata": {"labels": {"a/b": "x"}}});
        assert_eq!(eval_path(&obj, ".status.phase"), Some(&json!("Ready")));
        assert_eq!(eval_path(&obj, ".status.items[0].n"), Some(&json!(1)));
        assert_eq!(
            eval_path(&obj, ".metadata.labels['a/b']"),
            Some(&json!("x"))
        );
        assert_eq!(eval_path(&obj, "{.status.missing}"), None);
    }
}
