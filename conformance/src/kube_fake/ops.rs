//! The verbs' semantics, on a locked [`State`]: what the generic registry store and each kind's
//! strategy do on create, update, patch and delete (server-owned metadata, `generation`, the
//! status subresource, finalizers and `deletionTimestamp`, optimistic concurrency, no-op writes).

use serde_json::{json, Map, Value};

use super::cel;
use super::clock;
use super::patch::{self, PatchType};
use super::resources::{self, ResourceDef};
use super::schema;
use super::status::{ApiError, FieldError, FieldErrorKind};
use super::store::State;

/// `fieldValidation`: what an unknown field in a custom resource does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

/// The query parameters of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub validation: FieldValidation,
    pub dry_run: bool,
}

/// A write's outcome: the object, the `Warning` headers, and whether it was created.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    let m = map.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

pub(crate) fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(key)).and_then(Value::as_str)
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The object as served at this resource's version (no conversion: versions share a schema).
pub fn present(def: &ResourceDef, obj: &Value) -> Value {
    let mut out = obj.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("apiVersion".into(), json!(def.api_version()));
        map.insert("kind".into(), json!(def.kind));
    }
    out
}

/// `apiVersion` and `kind` of a body: filled when absent, refused (400) when another kind's.
fn check_type_meta(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = def.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(want_av));
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(def.kind));
        }
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: the kind in the data ({k}) does not match the expected kind ({})",
                def.kind, def.version, def.kind, def.kind
            )))
        }
    }
    Ok(())
}

fn valid_name(name: &str, label_only: bool) -> Option<FieldError> {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = if label_only {
        label(name)
    } else {
        name.len() <= 253 && name.split('.').all(label)
    };
    if ok {
        return None;
    }
    let detail = if label_only {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    };
    Some(FieldError::new(
        FieldErrorKind::Invalid,
        "metadata.name",
        Some(json!(name)),
        detail,
    ))
}

/// Prunes (or, under Strict, refuses) unknown fields and fills defaults.
fn admit(
    def: &ResourceDef,
    obj: &mut Value,
    opts: &WriteOpts,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Some(schema) = &def.schema else {
        return Ok(());
    };
    let unknown = schema::prune(schema, obj);
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        match opts.validation {
            FieldValidation::Strict => {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    def.kind,
                    def.version,
                    def.kind,
                    listed.join(", ")
                )))
            }
            FieldValidation::Warn => warnings.extend(listed),
            FieldValidation::Ignore => {}
        }
    }
    schema::apply_defaults(schema, obj);
    Ok(())
}

/// Schema and CEL validation: 422 naming every broken field.
fn validate(
    state: &State,
    def: &ResourceDef,
    obj: &Value,
    old: Option<&Value>,
    mut errors: Vec<FieldError>,
) -> Result<(), ApiError> {
    if let Some(schema) = &def.schema {
        schema::validate(schema, obj, "", &mut errors);
        errors.extend(cel::validate(
            &state.cel,
            schema,
            obj,
            old,
            (&def.group, &def.version, &def.kind),
        ));
    }
    if errors.is_empty() {
        return Ok(());
    }
    let name = meta_str(obj, "name").unwrap_or_default();
    Err(ApiError::invalid(&def.group, &def.kind, name, &errors))
}

fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// POST: a new object.
pub fn create(
    state: &mut State,
    def: &ResourceDef,
    ns: Option<&str>,
    mut obj: Value,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    check_type_meta(def, &mut obj)?;
    let now = clock::now();
    let m = meta_mut(&mut obj)?;
    if def.namespaced {
        let ns = ns.ok_or_else(ApiError::method_not_allowed)?;
        match m.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    let mut name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        if let Some(prefix) = m
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            name = format!("{prefix}{}", generated_suffix());
        }
    }
    m.insert("name".into(), json!(name));
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(now));
    m.insert("generation".into(), json!(1));
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        m.remove(server_owned);
    }
    if def.is_namespace() {
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    if def.is_custom() && def.status_subresource {
        map.remove("status");
    }
    if def.group.is_empty() && def.plural == "pods" {
        map.insert("status".into(), json!({"phase": "Pending"}));
    }
    if def.is_namespace() {
        map.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
        map.insert("status".into(), json!({"phase": "Active"}));
    }
    if def.is_crd() {
        resources::default_and_validate_crd(&mut obj)?;
        let status = resources::crd_status(&obj, &now);
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), status);
        }
    }
    let mut warnings = Vec::new();
    admit(def, &mut obj, opts, &mut warnings)?;
    let mut errors = Vec::new();
    if name.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            "metadata.name",
            None,
            "name or generateName is required",
        ));
    } else if let Some(e) = valid_name(&name, def.is_namespace()) {
        errors.push(e);
    }
    validate(state, def, &obj, None, errors)?;
    let ns = ns.filter(|_| def.namespaced).unwrap_or_default();
    if def.namespaced {
        let ns_key = (String::new(), "namespaces".to_string());
        match state.get(&ns_key, "", ns) {
            None => return Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if meta_str(n, "deletionTimestamp").is_some() => {
                return Err(ApiError::forbidden_namespace_terminating(ns))
            }
            Some(_) => {}
        }
    }
    let key = def.storage_key();
    if state.get(&key, ns, &name).is_some() {
        return Err(ApiError::already_exists(&def.group, &def.plural, &name));
    }
    if opts.dry_run {
        return Ok(Written {
            object: obj,
            warnings,
            created: true,
        });
    }
    let stored = state.put(&key, obj, None);
    if def.is_crd() {
        state.register_crd(&stored);
    }
    Ok(Written {
        object: stored,
        warnings,
        created: true,
    })
}

/// Everything but metadata (and status, where it is a subresource): what `generation` counts.
fn spec_part(def: &ResourceDef, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        for k in ["metadata", "apiVersion", "kind"] {
            map.remove(k);
        }
        if def.status_subresource {
            map.remove("status");
        }
    }
    v
}

fn without_rv(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// Writes `new` over `old`: for a status write `new` is `old` with another status; otherwise
/// the server-owned metadata and (with a status subresource) the status are kept from `old`.
fn commit_update(
    state: &mut State,
    def: &ResourceDef,
    old: Value,
    mut new: Value,
    status_write: bool,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    if status_write {
        new = present(def, &new);
    } else {
        check_type_meta(def, &mut new)?;
    }
    let mut errors = Vec::new();
    if !status_write {
        let old_meta = meta(&old).cloned().unwrap_or_default();
        let m = meta_mut(&mut new)?;
        for kept in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
            "generation",
            "managedFields",
        ] {
            match old_meta.get(kept) {
                Some(v) => m.insert(kept.into(), v.clone()),
                None => m.remove(kept),
            };
        }
        if old_meta.contains_key("deletionTimestamp") {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                errors.push(FieldError::new(
                    FieldErrorKind::Forbidden,
                    "metadata.finalizers",
                    None,
                    format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                ));
            }
        }
        if def.status_subresource || def.is_crd() {
            let map = new
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
            match old.get("status") {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
        if def.is_crd() {
            resources::default_and_validate_crd(&mut new)?;
        }
    }
    let mut warnings = Vec::new();
    admit(def, &mut new, opts, &mut warnings)?;
    validate(state, def, &new, Some(&old), errors)?;
    if !status_write && spec_part(def, &new) != spec_part(def, &old) {
        let generation = meta(&old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut new)?.insert("generation".into(), json!(generation + 1));
    }
    if without_rv(&new) == without_rv(&old) {
        // A write that changes nothing is no write: same resourceVersion, no event.
        return Ok(Written {
            object: old,
            warnings,
            created: false,
        });
    }
    if opts.dry_run {
        return Ok(Written {
            object: new,
            warnings,
            created: false,
        });
    }
    let key = def.storage_key();
    let ns = meta_str(&new, "namespace").unwrap_or_default().to_string();
    let name = meta_str(&new, "name").unwrap_or_default().to_string();
    let deleting = meta_str(&new, "deletionTimestamp").is_some() && finalizers(&new).is_empty();
    let stored = state.put(&key, new, Some(old));
    if def.is_crd() {
        state.register_crd(&stored);
    }
    if deleting {
        // The last finalizer is gone from an object being deleted: it goes now.
        let gone = state
            .remove(&key, &ns, &name)
            .unwrap_or_else(|| stored.clone());
        if def.is_crd() {
            state.unregister_crd(&gone);
        }
        return Ok(Written {
            object: stored,
            warnings,
            created: false,
        });
    }
    Ok(Written {
        object: stored,
        warnings,
        created: false,
    })
}

fn check_body_identity(body: &Value, name: &str, ns: Option<&str>) -> Result<(), ApiError> {
    match meta_str(body, "name") {
        Some(n) if !n.is_empty() && n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        _ => {}
    }
    match (meta_str(body, "namespace"), ns) {
        (Some(b), Some(u)) if !b.is_empty() && b != u => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

fn with_status_of(old: &Value, from: &Value) -> Value {
    let mut new = old.clone();
    if let Some(map) = new.as_object_mut() {
        match from.get("status") {
            Some(s) => map.insert("status".into(), s.clone()),
            None => map.remove("status"),
        };
    }
    new
}

/// PUT on an object or its status.
pub fn update(
    state: &mut State,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    body: Value,
    status_write: bool,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    check_body_identity(&body, name, ns)?;
    let key = def.storage_key();
    let old = state
        .get(&key, ns.unwrap_or_default(), name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    match meta_str(&body, "resourceVersion") {
        Some(rv) if !rv.is_empty() && Some(rv) != meta_str(&old, "resourceVersion") => {
            return Err(ApiError::stale(&def.group, &def.plural, name));
        }
        Some(rv) if !rv.is_empty() => {}
        _ if def.is_custom() => {
            let e = FieldError::new(
                FieldErrorKind::Invalid,
                "metadata.resourceVersion",
                Some(json!("0x0")),
                "must be specified for an update",
            );
            return Err(ApiError::invalid(&def.group, &def.kind, name, &[e]));
        }
        _ => {}
    }
    let new = if status_write {
        with_status_of(&old, &body)
    } else {
        body
    };
    commit_update(state, def, old, new, status_write, opts)
}

/// PATCH on an object or its status; an apply to an object that is not there creates it.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    state: &mut State,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    ty: PatchType,
    body: &[u8],
    status_write: bool,
    opts: &WriteOpts,
) -> Result<Written, ApiError> {
    let key = def.storage_key();
    let applied = if ty == PatchType::Apply {
        let a = patch::parse_apply(body)?;
        let av = a
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if av != def.api_version() {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {av}, expected: {}",
                def.api_version()
            )));
        }
        let kind = a.get("kind").and_then(Value::as_str).unwrap_or_default();
        if kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "Incorrect kind specified in apply patch. Specified patch kind: {kind}, expected: {}",
                def.kind
            )));
        }
        check_body_identity(&a, name, ns)?;
        Some(a)
    } else {
        None
    };
    let Some(old) = state.get(&key, ns.unwrap_or_default(), name).cloned() else {
        return match applied {
            Some(mut a) if !status_write => {
                meta_mut(&mut a)?.insert("name".into(), json!(name));
                create(state, def, ns, a, opts)
            }
            _ => Err(ApiError::not_found(&def.group, &def.plural, name)),
        };
    };
    let current = present(def, &old);
    let new = match (&applied, status_write) {
        // The operator is the only status writer: its applied status is the status.
        (Some(a), true) => with_status_of(&old, a),
        _ => {
            let patched = patch::apply_patch(&current, ty, body)?;
            if ty != PatchType::Apply {
                if let Some(rv) = meta_str(&patched, "resourceVersion") {
                    if Some(rv) != meta_str(&old, "resourceVersion") {
                        return Err(ApiError::stale(&def.group, &def.plural, name));
                    }
                }
            }
            check_body_identity(&patched, name, ns)?;
            if status_write {
                with_status_of(&old, &patched)
            } else {
                patched
            }
        }
    };
    commit_update(state, def, old, new, status_write, opts)
}
