//! The OpenAPI document lists exactly the served routes (issue 7's), and a schema checker from
//! PyPI (openapi-spec-validator, installed by scripts/install-deps.sh) accepts it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use axum::http::{Method, StatusCode};
use common::{group, Harness};

/// Issue 7's routes.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/containerGroups"),
    ("GET", "/v1/containerGroups"),
    ("GET", "/v1/containerGroups/{id}"),
    ("DELETE", "/v1/containerGroups/{id}"),
    ("PATCH", "/v1/containerGroups/{id}"),
    ("POST", "/v1/containerGroups/{id}/restart"),
    ("GET", "/v1/containerGroups/{id}/events"),
    ("GET", "/v1/containerGroups/{id}/containers/{name}/logs"),
    ("GET", "/v1/containerGroups/{id}/metrics"),
    ("POST", "/v1/containerGroups/{id}/containers/{name}/exec"),
    ("POST", "/v1/imageCaches"),
    ("GET", "/v1/imageCaches"),
    ("GET", "/v1/imageCaches/{id}"),
    ("PATCH", "/v1/imageCaches/{id}"),
    ("DELETE", "/v1/imageCaches/{id}"),
    ("GET", "/v1/quota"),
    ("GET", "/openapi.json"),
];

fn documented() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(eci::openapi::document()).unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_document_lists_exactly_the_issues_routes() {
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented(), expected);
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_served_route_documented() {
    let h = Harness::new(64.0);
    let group_id = h.create(group("web")).await;
    let (_, cache) = h
        .post(
            "/v1/imageCaches",
            serde_json::json!({"name": "c", "images": ["busybox"]}),
        )
        .await;
    let cache_id = cache["id"].as_str().unwrap().to_string();
    // Every documented route answers from a handler, not from the router's fallbacks.
    // Deletions last, so that the other routes still find the group and the cache.
    let mut routes: Vec<_> = documented().into_iter().collect();
    routes.sort_by_key(|(method, _)| method == "DELETE");
    for (method, path) in routes {
        let id = if path.starts_with("/v1/imageCaches") {
            &cache_id
        } else {
            &group_id
        };
        let uri = path.replace("{id}", id).replace("{name}", "app");
        let body = match (method.as_str(), path.as_str()) {
            ("POST", "/v1/containerGroups") => Some(group("other").to_string()),
            ("POST", "/v1/imageCaches") => Some(r#"{"name": "d", "images": ["x"]}"#.into()),
            ("POST", p) if p.ends_with("/exec") => Some(r#"{"command": ["true"]}"#.into()),
            ("PATCH", _) => Some("{}".into()),
            _ => None,
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, answer) = h.request(method.clone(), &uri, body.as_deref()).await;
        assert!(
            answer["error"]["code"] != "NoSuchRoute" && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri} is documented but not served: {status} {answer}"
        );
        assert!(status.is_success(), "{method} {uri}: {status} {answer}");
    }
    // The other way round: the router is built only from documented handlers (utoipa-axum's
    // routes!), so a path or method outside the document reaches the fallbacks.
    for (method, uri) in [
        (Method::PUT, format!("/v1/containerGroups/{group_id}")),
        (
            Method::GET,
            format!("/v1/containerGroups/{group_id}/restart"),
        ),
        (Method::GET, "/v1/containerGroups/x/containers".to_string()),
        (Method::POST, "/v1/quota".to_string()),
    ] {
        let (status, answer) = h.request(method.clone(), &uri, None).await;
        assert!(
            status == StatusCode::METHOD_NOT_ALLOWED || answer["error"]["code"] == "NoSuchRoute",
            "{method} {uri} is served but not documented: {status} {answer}"
        );
    }
}

#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let h = Harness::new(64.0);
    let (status, served) = h.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        served,
        serde_json::to_value(eci::openapi::document()).unwrap()
    );
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    // The manual's metric names are part of the schema.
    let cpu = &served["components"]["schemas"]["CpuMetrics"]["properties"];
    for name in ["UsageNanoCores", "UsageCoreNanoSeconds", "Load", "Limit"] {
        assert!(cpu.get(name).is_some(), "CpuMetrics lacks {name}: {cpu}");
    }
    // The group's DNS config, with its limits.
    let schemas = &served["components"]["schemas"];
    let create = &schemas["CreateContainerGroupRequest"]["properties"];
    assert!(create.get("dnsConfig").is_some(), "{create}");
    let dns = &schemas["DnsConfig"];
    assert_eq!(dns["required"], serde_json::json!(["nameServers"]), "{dns}");
    assert_eq!(dns["properties"]["nameServers"]["minItems"], 1, "{dns}");
    assert_eq!(dns["properties"]["nameServers"]["maxItems"], 3, "{dns}");
    assert_eq!(dns["properties"]["searchDomains"]["maxItems"], 32, "{dns}");
    assert_eq!(dns["properties"]["options"]["maxItems"], 16, "{dns}");
}

fn validator() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("ECI_OPENAPI_VALIDATOR").map(PathBuf::from),
        Some(PathBuf::from(
            "/var/cache/eci/openapi-venv/bin/openapi-spec-validator",
        )),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            Command::new("openapi-spec-validator")
                .arg("--help")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|_| PathBuf::from("openapi-spec-validator"))
        })
}

fn check(validator: &PathBuf, document: &serde_json::Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    let out = Command::new(validator).arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_pypi_schema_checker_accepts_the_document() {
    let Some(validator) = validator() else {
        eci_test_support::missing_prerequisite(
            "openapi-spec-validator (scripts/install-deps.sh installs it in \
             /var/cache/eci/openapi-venv; or set ECI_OPENAPI_VALIDATOR)",
        );
        return;
    };
    let document = serde_json::to_value(eci::openapi::document()).unwrap();
    let (ok, text) = check(&validator, &document);
    assert!(ok, "openapi-spec-validator refused the document:\n{text}");
    // Control: the checker does refuse a broken document (a reference to a missing schema).
    let mut broken = document.clone();
    broken["paths"]["/v1/quota"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"] = serde_json::json!({"$ref": "#/components/schemas/NoSuchSchema"});
    let (ok, text) = check(&validator, &broken);
    assert!(!ok, "the checker accepted a dangling $ref:\n{text}");
}
