//! The resources served: the built-in kinds the operator and its users touch, and one resource
//! per served version of each registered CustomResourceDefinition.

use std::sync::Arc;

use serde_json::{json, Value};

use super::status::{ApiError, FieldError, FieldErrorKind};

/// How `kubectl get` prints a kind (the server-side table of its `TableConvertor`).
#[derive(Debug, Clone, PartialEq)]
pub enum Printer {
    /// A custom resource: Name plus the version's `additionalPrinterColumns`.
    Columns(Vec<PrinterColumn>),
    Node,
    Pod,
    Namespace,
    Event,
    /// The default convertor: Name, Created At.
    Default,
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One resource of one group/version.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `/status` is served, and so whether writes to the object leave `.status` alone.
    pub status_subresource: bool,
    /// The version's `openAPIV3Schema` (custom resources only).
    pub schema: Option<Value>,
    pub printer: Printer,
    /// The CRD that serves it; `None` for a built-in.
    pub crd: Option<String>,
    /// Whether DELETE answers the deleted object (else a `Success` Status).
    pub returns_deleted_object: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn is_custom(&self) -> bool {
        self.crd.is_some()
    }

    /// The key objects are stored under: every version of a resource shares one store.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.plural == "customresourcedefinitions"
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    categories: &[&str],
    status_subresource: bool,
    printer: Printer,
    returns_deleted_object: bool,
) -> Arc<ResourceDef> {
    Arc::new(ResourceDef {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status_subresource,
        schema: None,
        printer,
        crd: None,
        returns_deleted_object,
    })
}

/// Kinds stored and served like any object, with no behaviour of their own (no controller acts
/// on them here, RBAC is not enforced): what a chart installs besides them.
/// group, plural, kind, namespaced, status subresource, short names, categories.
type Stored = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    &'static [&'static str],
    &'static [&'static str],
);

#[rustfmt::skip]
const STORED_ONLY: &[Stored] = &[
    // group, plural, kind, namespaced, status subresource, short names, categories
    ("", "serviceaccounts", "ServiceAccount", true, false, &["sa"], &[]),
    ("", "secrets", "Secret", true, false, &[], &[]),
    ("", "configmaps", "ConfigMap", true, false, &["cm"], &[]),
    ("", "services", "Service", true, true, &["svc"], &["all"]),
    ("apps", "daemonsets", "DaemonSet", true, true, &["ds"], &["all"]),
    ("apps", "deployments", "Deployment", true, true, &["deploy"], &["all"]),
    ("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", false, false, &[], &[]),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", false, false, &[], &[]),
    ("rbac.authorization.k8s.io", "roles", "Role", true, false, &[], &[]),
    ("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", true, false, &[], &[]),
    ("networking.k8s.io", "networkpolicies", "NetworkPolicy", true, false, &["netpol"], &[]),
    ("coordination.k8s.io", "leases", "Lease", true, false, &[], &[]),
];

/// The built-in resources: namespaces, nodes, pods, events (core and events.k8s.io), CRDs, and
/// the kinds in [`STORED_ONLY`].
pub fn builtins() -> Vec<Arc<ResourceDef>> {
    let stored = STORED_ONLY.iter().map(
        |(group, plural, kind, namespaced, status, short, categories)| {
            builtin(
                group,
                "v1",
                plural,
                kind,
                *namespaced,
                short,
                categories,
                *status,
                Printer::Default,
                true,
            )
        },
    );
    let mut all = vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            &[],
            true,
            Printer::Namespace,
            true,
        ),
        builtin(
            "",
            "v1",
            "nodes",
            "Node",
            false,
            &["no"],
            &[],
            true,
            Printer::Node,
            false,
        ),
        builtin(
            "",
            "v1",
            "pods",
            "Pod",
            true,
            &["po"],
            &["all"],
            true,
            Printer::Pod,
            true,
        ),
        builtin(
            "",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            &[],
            false,
            Printer::Event,
            false,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            &[],
            false,
            Printer::Event,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            true,
            Printer::Default,
            true,
        ),
    ];
    all.extend(stored);
    all
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

/// Fills what the server defaults in a CRD (`singular`, `listKind`, the Age column, the
/// conversion strategy) and refuses one that cannot be served, naming the fields.
pub fn default_and_validate_crd(crd: &mut Value) -> Result<(), ApiError> {
    let name = str_at(crd, &["metadata", "name"])
        .unwrap_or_default()
        .to_string();
    let mut errors = Vec::new();
    let group = str_at(crd, &["spec", "group"])
        .unwrap_or_default()
        .to_string();
    let plural = str_at(crd, &["spec", "names", "plural"])
        .unwrap_or_default()
        .to_string();
    let kind = str_at(crd, &["spec", "names", "kind"])
        .unwrap_or_default()
        .to_string();
    if group.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            "spec.group",
            None,
            "",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            "spec.names.plural",
            None,
            "",
        ));
    }
    if kind.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Required,
            "spec.names.kind",
            None,
            "",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "metadata.name",
            Some(json!(name)),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match str_at(crd, &["spec", "scope"]) {
        Some("Cluster") | Some("Namespaced") => {}
        other => errors.push(FieldError::new(
            FieldErrorKind::NotSupported,
            "spec.scope",
            Some(json!(other.unwrap_or_default())),
            "supported values: \"Cluster\", \"Namespaced\"",
        )),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.versions",
            Some(json!("null")),
            "must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| v.get("storage") == Some(&json!(true)))
        .count()
        != 1
    {
        errors.push(FieldError::new(
            FieldErrorKind::Invalid,
            "spec.versions",
            Some(Value::Array(versions.clone())),
            "must have exactly one version marked as storage version",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &name,
            &errors,
        ));
    }
    if let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        names
            .entry("singular")
            .or_insert_with(|| json!(kind.to_lowercase()));
        names
            .entry("listKind")
            .or_insert_with(|| json!(format!("{kind}List")));
    }
    if let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("conversion")
            .or_insert_with(|| json!({"strategy": "None"}));
    }
    if let Some(vs) = crd
        .pointer_mut("/spec/versions")
        .and_then(Value::as_array_mut)
    {
        for v in vs {
            let has_columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if !has_columns {
                if let Some(map) = v.as_object_mut() {
                    map.insert(
                        "additionalPrinterColumns".into(),
                        json!([{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]),
                    );
                }
            }
        }
    }
    Ok(())
}

/// What a CRD's status says once it is served: names accepted, established.
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage") == Some(&json!(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    })
}

/// The resources a (defaulted) CRD serves: one per served version.
pub fn crd_resources(crd: &Value) -> Vec<Arc<ResourceDef>> {
    let crd_name = str_at(crd, &["metadata", "name"]).unwrap_or_default();
    let group = str_at(crd, &["spec", "group"]).unwrap_or_default();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let plural = str_at(&names, &["plural"]).unwrap_or_default();
    let kind = str_at(&names, &["kind"]).unwrap_or_default();
    let singular = str_at(&names, &["singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |key: &str| -> Vec<String> {
        names
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = str_at(crd, &["spec", "scope"]) == Some("Namespaced");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    versions
        .iter()
        .filter(|v| v.get("served") != Some(&json!(false)))
        .map(|v| {
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: str_at(c, &["name"]).unwrap_or_default().into(),
                            type_: str_at(c, &["type"]).unwrap_or("string").into(),
                            format: str_at(c, &["format"]).unwrap_or_default().into(),
                            description: str_at(c, &["description"]).unwrap_or_default().into(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            json_path: str_at(c, &["jsonPath"]).unwrap_or_default().into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Arc::new(ResourceDef {
                group: group.into(),
                version: str_at(v, &["name"]).unwrap_or_default().into(),
                plural: plural.into(),
                singular: singular.clone(),
                kind: kind.into(),
                namespaced,
                short_names: strings("shortNames"),
                categories: strings("categories"),
                status_subresource: v.pointer("/subresources/status").is_some(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                printer: Printer::Columns(columns),
                crd: Some(crd_name.into()),
                returns_deleted_object: true,
            })
        })
        .collect()
}
