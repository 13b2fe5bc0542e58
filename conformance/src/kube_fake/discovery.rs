//! Discovery as clients read it: `/version`, `/api`, `/apis`, `/apis/<group>`, and the
//! resource lists of each group/version (the plain, unaggregated form: kubectl asks for the
//! aggregated `apidiscovery.k8s.io/v2` first and falls back when the answer is plain JSON).
//! Also the OpenAPI v3 index and one small document per group/version that says each PATCH
//! takes `fieldValidation`, which is how kubectl decides to leave validation to the server.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::resources::ResourceDef;

pub const SERVER_VERSION: (&str, &str) = ("1", "37");

pub fn version() -> Value {
    json!({
        "major": SERVER_VERSION.0,
        "minor": SERVER_VERSION.1,
        "emulationMajor": SERVER_VERSION.0,
        "emulationMinor": SERVER_VERSION.1,
        "gitVersion": format!("v{}.{}.0-manta-fake", SERVER_VERSION.0, SERVER_VERSION.1),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

/// Group → versions, in the order the resources were registered (built-ins first).
fn groups(resources: &[Arc<ResourceDef>]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        let vs = out.entry(r.group.clone()).or_default();
        if !vs.contains(&r.version) {
            vs.push(r.version.clone());
        }
    }
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(json!({}));
    json!({"name": name, "versions": vs, "preferredVersion": preferred})
}

pub fn api_group_list(resources: &[Arc<ResourceDef>]) -> Value {
    let groups: Vec<Value> = groups(resources)
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(resources: &[Arc<ResourceDef>], group: &str) -> Option<Value> {
    let groups = groups(resources);
    let vs = groups.get(group)?;
    let mut g = group_json(group, vs);
    if let Some(map) = g.as_object_mut() {
        map.insert("kind".into(), json!("APIGroup"));
        map.insert("apiVersion".into(), json!("v1"));
    }
    Some(g)
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The APIResourceList of a group/version, `None` when nothing is served there.
pub fn resource_list(resources: &[Arc<ResourceDef>], group: &str, version: &str) -> Option<Value> {
    let here: Vec<&Arc<ResourceDef>> = resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if here.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in here {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        if r.status_subresource {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group/version's document is.
pub fn openapi_index(resources: &[Arc<ResourceDef>]) -> Value {
    let mut paths = serde_json::Map::new();
    for r in resources {
        let p = gv_path(&r.group, &r.version);
        let hash = format!(
            "{:x}",
            fnv(
                &serde_json::to_string(&openapi_gv(resources, &r.group, &r.version))
                    .unwrap_or_default()
            )
        );
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `/openapi/v3/<gv>`: the object paths with their PATCH operations (GVK extension and the
/// `fieldValidation` parameter, no request body types), and the custom resources' schemas:
/// kubectl then computes apply patches from its compiled-in types (built-ins) or as merge
/// patches (custom resources), and `kubectl explain` reads a custom resource's schema.
pub fn openapi_gv(resources: &[Arc<ResourceDef>], group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        if let Some(mut schema) = r.schema.clone() {
            // What `kubectl explain` reads; no patch strategies, so apply still merge-patches.
            if let Some(map) = schema.as_object_mut() {
                map.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": group, "version": version, "kind": r.kind}]),
                );
            }
            let reversed: Vec<&str> = group.split('.').rev().collect();
            schemas.insert(
                format!("{}.{version}.{}", reversed.join("."), r.kind),
                schema,
            );
        }
        let base = format!("/{}", gv_path(group, version));
        let prefix = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            format!("{prefix}/{{name}}"),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
        paths.insert(prefix, json!({"get": op("list"), "post": op("post")}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", SERVER_VERSION.0, SERVER_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
