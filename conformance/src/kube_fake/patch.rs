//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch
//! (built-in kinds only, as on the real server; approximated, see [`strategic_merge`]) and
//! server-side apply (approximated, see [`apply_merge`]).

use serde_json::{Map, Value};

use super::status::ApiError;

/// The patch types the server takes, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub const CUSTOM_PATCH_TYPES: [&str; 3] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

pub const BUILTIN_PATCH_TYPES: [&str; 4] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

impl PatchType {
    /// The patch type of a `Content-Type`; custom resources take no strategic merge patch
    /// (415, as `apiextensions-apiserver` answers).
    pub fn from_content_type(content_type: &str, custom: bool) -> Result<Self, ApiError> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let accepted: &[&str] = if custom {
            &CUSTOM_PATCH_TYPES
        } else {
            &BUILTIN_PATCH_TYPES
        };
        let t = match essence.as_str() {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" if !custom => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
            _ => return Err(ApiError::unsupported_media_type(accepted)),
        };
        Ok(t)
    }
}

/// Parses a JSON body, or answers 400 as the server does for a body it cannot decode.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Parses an apply body: YAML, of which JSON is a subset.
pub fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: the apply configuration is not an object",
        ));
    }
    Ok(v)
}

/// Applies a JSON, merge or strategic patch to a copy of `current`.
pub fn apply_patch(current: &Value, ty: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match ty {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            for op in &ops.0 {
                if let json_patch::PatchOperation::Test(t) = op {
                    if t.value.is_null() {
                        test_null(&doc, &t.path.to_string())?;
                        continue;
                    }
                }
                json_patch::patch(&mut doc, std::slice::from_ref(op))
                    .map_err(|e| ApiError::unprocessable(e.to_string()))?;
            }
        }
        PatchType::Merge => {
            let p = parse_json(body)?;
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch is an object",
                ));
            }
            json_patch::merge(&mut doc, &p);
        }
        PatchType::Strategic => {
            let p = parse_json(body)?;
            strategic_merge(&mut doc, &p, None);
        }
        PatchType::Apply => {
            let p = parse_apply(body)?;
            apply_merge(&mut doc, &p, true);
        }
    }
    Ok(doc)
}

/// A `test` against `null`, as the server's JSON patch library (evanphx/json-patch) does it:
/// a key missing from an object that exists passes. kube-runtime's `finalizer()` relies on it
/// (`test /metadata/finalizers null`, then `add`) to add the first finalizer.
fn test_null(doc: &Value, path: &str) -> Result<(), ApiError> {
    let (parent, token) = path.rsplit_once('/').unwrap_or(("", path));
    let key = token.replace("~1", "/").replace("~0", "~");
    let container = doc.pointer(parent).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "test operation does not apply: is missing path: {path}"
        ))
    })?;
    let found = match container {
        Value::Object(m) => m.get(&key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    };
    match found {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ApiError::unprocessable(format!(
            "testing value {path} failed: test failed"
        ))),
    }
}

/// The merge key of a built-in list field, from the Go types' `patchMergeKey` tags.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "tolerations" | "taints" => "key",
        _ => return None,
    })
}

/// Primitive lists whose strategy is `merge` (a union), from the Go types' tags.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.as_object().and_then(|m| m.get(key))
}

/// Strategic merge patch, approximated: maps merge as in a merge patch; lists with a merge key
/// in the built-in types (containers by name, conditions by type, …) merge element-wise, with
/// `$patch: delete` removing an element; `finalizers` is a union, less
/// `$deleteFromPrimitiveList/finalizers`; other lists are replaced; `$setElementOrder`,
/// `$retainKeys` and other directives are dropped, not honoured.
pub fn strategic_merge(doc: &mut Value, patch: &Value, field: Option<&str>) {
    let (Some(target), Some(p)) = (doc.as_object_mut(), patch.as_object()) else {
        if let (Some(f), Value::Array(items)) = (field, patch) {
            merge_list(doc, items, f, true);
            return;
        }
        *doc = strip_directives(patch);
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *doc = strip_directives(patch);
        return;
    }
    for (k, v) in p {
        if let Some(list) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(existing)), Some(gone)) = (target.get_mut(list), v.as_array())
            {
                existing.retain(|e| !gone.contains(e));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(_) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                strategic_merge(slot, v, Some(k));
            }
            Value::Array(items) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                merge_list(slot, items, k, true);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list(slot: &mut Value, items: &[Value], field: &str, strategic: bool) {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(existing) = slot else { return };
    if merges_primitives(field) && strategic {
        for item in items {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field) else {
        *existing = items.iter().map(strip_directives).collect();
        return;
    };
    for item in items {
        let Some(k) = key_of(item, key) else {
            existing.push(strip_directives(item));
            continue;
        };
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match existing.iter().position(|e| key_of(e, key) == Some(k)) {
            Some(i) if delete => {
                existing.remove(i);
            }
            Some(i) => {
                if strategic {
                    strategic_merge(&mut existing[i], item, None);
                } else {
                    apply_merge(&mut existing[i], item, false);
                }
            }
            None if delete => {}
            None => existing.push(strip_directives(item)),
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Server-side apply, approximated without managed fields: the applied configuration is merged
/// into the live object (maps recursively; lists with a built-in merge key element-wise; other
/// lists replaced, as `atomic` lists are). Fields an earlier apply by the same manager set and
/// this one omits are kept, where the real server would remove them; conflicts with other
/// managers never happen (as with `force=true`).
pub fn apply_merge(doc: &mut Value, applied: &Value, top: bool) {
    let (Some(target), Some(p)) = (doc.as_object_mut(), applied.as_object()) else {
        *doc = applied.clone();
        return;
    };
    for (k, v) in p {
        if top && k == "metadata" {
            let slot = target
                .entry(k.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let (Some(meta), Some(applied_meta)) = (slot.as_object_mut(), v.as_object()) {
                for (mk, mv) in applied_meta {
                    // The server owns these; an apply cannot set them.
                    if matches!(
                        mk.as_str(),
                        "resourceVersion"
                            | "uid"
                            | "creationTimestamp"
                            | "generation"
                            | "managedFields"
                    ) {
                        continue;
                    }
                    let mslot = meta.entry(mk.clone()).or_insert(Value::Null);
                    if mslot.is_null() {
                        *mslot = mv.clone();
                    } else {
                        apply_merge(mslot, mv, false);
                    }
                }
            }
            continue;
        }
        match v {
            Value::Object(_) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                apply_merge(slot, v, false);
            }
            Value::Array(items) => {
                let slot = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                merge_list(slot, items, k, false);
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_patch_merges_containers_by_name_and_unions_finalizers() {
        let mut pod = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i:1", "ports": [{"containerPort": 80}]}]}});
        let patch = json!({"metadata": {"finalizers": ["b"], "labels": {"x": null, "y": "2"}},
            "spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "image": "i:2"}]}});
        strategic_merge(&mut pod, &patch, None);
        assert_eq!(
            pod,
            json!({"metadata": {"finalizers": ["a", "b"], "labels": {"y": "2"}},
            "spec": {"containers": [{"name": "c", "image": "i:2", "ports": [{"containerPort": 80}]}]}})
        );
        strategic_merge(
            &mut pod,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            None,
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn custom_resources_refuse_strategic_merge_patch_with_415() {
        let e = PatchType::from_content_type("application/strategic-merge-patch+json", true)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (415, "UnsupportedMediaType"));
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json", false).unwrap(),
            PatchType::Strategic
        );
    }

    #[test]
    fn a_failed_json_patch_test_is_422() {
        let doc = json!({"spec": {"a": 1}});
        let e = apply_patch(
            &doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/spec/a","value":2}]"#,
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        let ok = apply_patch(&doc, PatchType::Json,
            br#"[{"op":"test","path":"/spec/a","value":1},{"op":"add","path":"/spec/l","value":[]},{"op":"add","path":"/spec/l/-","value":3}]"#).unwrap();
        assert_eq!(ok, json!({"spec": {"a": 1, "l": [3]}}));
    }

    #[test]
    fn a_test_against_null_passes_on_a_missing_key_as_kube_runtimes_finalizer_needs() {
        let doc = json!({"metadata": {"name": "a"}});
        let add_first = br#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["f"]}]"#;
        let out = apply_patch(&doc, PatchType::Json, add_first).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        // Once there, the same patch fails: someone else added a finalizer meanwhile.
        let e = apply_patch(&out, PatchType::Json, add_first).unwrap_err();
        assert_eq!(e.code, 422);
        let e = apply_patch(
            &doc,
            PatchType::Json,
            br#"[{"op":"test","path":"/spec/x","value":null}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 422, "the parent must exist");
    }

    #[test]
    fn apply_takes_yaml_and_merges_into_the_live_object() {
        let doc = json!({"metadata": {"name": "a", "uid": "u"}, "spec": {"a": 1, "b": 2}});
        let out = apply_patch(
            &doc,
            PatchType::Apply,
            b"metadata:\n  uid: x\n  labels: {k: v}\nspec:\n  b: 3\n",
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"name": "a", "uid": "u", "labels": {"k": "v"}}, "spec": {"a": 1, "b": 3}})
        );
    }
}
