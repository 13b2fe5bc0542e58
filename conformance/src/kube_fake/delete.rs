//! DELETE: at once without finalizers; with finalizers, marked (`deletionTimestamp`,
//! `deletionGracePeriodSeconds: 0`, a new generation) until an update takes the last one off
//! (see `ops::commit_update`). DeleteOptions preconditions and `dryRun` are honoured;
//! propagation policies are not (there is no garbage collector).

use serde_json::{json, Value};

use super::clock;
use super::ops::{finalizers, meta_mut, meta_str, present};
use super::resources::ResourceDef;
use super::status::ApiError;
use super::store::State;

/// `DeleteOptions.preconditions`.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// DELETE: gone at once without finalizers (200); marked with `deletionTimestamp` while any
/// remain (202), and gone when an update takes the last one off.
pub fn delete(
    state: &mut State,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<(u16, Value), ApiError> {
    let key = def.storage_key();
    let ns = ns.unwrap_or_default();
    let old = state
        .get(&key, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    if let Some(uid) = &opts.uid {
        let have = meta_str(&old, "uid").unwrap_or_default();
        if uid != have {
            return Err(ApiError::conflict(
                &def.group,
                &def.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                ),
            ));
        }
    }
    if let Some(rv) = &opts.resource_version {
        let have = meta_str(&old, "resourceVersion").unwrap_or_default();
        if rv != have {
            return Err(ApiError::conflict(&def.group, &def.plural, name, &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
            )));
        }
    }
    if opts.dry_run {
        return Ok((200, present(def, &old)));
    }
    if !finalizers(&old).is_empty() {
        if meta_str(&old, "deletionTimestamp").is_some() {
            return Ok((202, present(def, &old)));
        }
        let mut new = old.clone();
        let m = meta_mut(&mut new)?;
        let generation = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
        if generation > 0 {
            m.insert("generation".into(), json!(generation + 1));
        }
        m.insert("deletionTimestamp".into(), json!(clock::now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        let stored = state.put(&key, new, Some(old));
        return Ok((202, present(def, &stored)));
    }
    let gone = state.remove(&key, ns, name).unwrap_or(old);
    if def.is_crd() {
        state.unregister_crd(&gone);
    }
    if def.is_namespace() {
        delete_namespace_contents(state, name);
    }
    if def.returns_deleted_object {
        return Ok((200, present(def, &gone)));
    }
    let mut details = json!({"name": name, "kind": def.plural, "uid": meta_str(&gone, "uid").unwrap_or_default()});
    if !def.group.is_empty() {
        details["group"] = json!(def.group);
    }
    Ok((
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

/// A deleted namespace takes its objects with it, each deleted as a DELETE would (those with
/// finalizers are marked and stay until their finalizers go).
fn delete_namespace_contents(state: &mut State, ns: &str) {
    let defs: Vec<_> = state
        .resources()
        .iter()
        .filter(|r| r.namespaced)
        .cloned()
        .collect();
    for def in defs {
        let names: Vec<String> = state
            .list(&def.storage_key(), Some(ns))
            .iter()
            .filter_map(|o| meta_str(o, "name").map(str::to_string))
            .collect();
        for n in names {
            // Already gone through another version of the same resource: nothing to do.
            let _ = delete(state, &def, Some(ns), &n, &DeleteOpts::default());
        }
    }
}
