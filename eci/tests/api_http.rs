//! The HTTP layer of `eci serve` over a recording backend: status codes, error bodies with
//! field paths, nothing stored on failure, filters, quota, and what reaches the runtime.

mod common;

use axum::http::{Method, StatusCode};
use common::{group, Call, Harness};
use eci::backend::BackendError;
use serde_json::{json, Value};

/// A 400 whose error names `field`.
fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
}

/// A 400 whose error names `field` and whose message gives `reason`.
fn assert_invalid_because(status: StatusCode, body: &Value, field: &str, reason: &str) {
    assert_invalid(status, body, field);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(reason), "{body}");
}

#[tokio::test]
async fn create_stores_a_normalised_group_and_hands_it_to_the_runtime() {
    let h = Harness::new(64.0);
    let id = h
        .create(json!({
            "name": "web", "cpu": 7, "memory": 13,
            "containers": [{"name": "app", "image": "busybox"}],
            "imageRegistryCredentials": [{"server": "r:5000", "userName": "u", "password": "pw"}]
        }))
        .await;
    let (status, got) = h.get(&format!("/v1/containerGroups/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], id);
    assert_eq!(got["status"], "Pending");
    assert_eq!(
        (got["cpu"].as_f64(), got["memory"].as_f64()),
        (Some(8.0), Some(16.0))
    );
    assert_eq!(got["containers"][0]["state"], "Waiting");
    // The password reaches the runtime but never an API answer.
    assert_eq!(got["spec"]["imageRegistryCredentials"][0]["password"], "");
    match &h.calls()[..] {
        [Call::Create(spec)] => {
            assert_eq!((spec.cpu, spec.memory), (8.0, 16.0));
            assert_eq!(spec.image_registry_credentials[0].password, "pw");
        }
        calls => panic!("unexpected calls {calls:?}"),
    }
}

#[tokio::test]
async fn every_violation_is_a_400_with_its_field_and_nothing_is_created() {
    let h = Harness::new(64.0);
    let (status, body) = h
        .post(
            "/v1/containerGroups",
            json!({
                "name": "web",
                "containers": [{"name": "app", "image": "busybox", "cpu": 1},
                               {"name": "app", "image": "", "cpu": 1}],
                "cpu": 1,
                "tags": [{"key": "k", "value": "v"}, {"key": "k", "value": "w"}],
                "securityContext": {"sysctls": [{"name": "net.core.rmem_max", "value": "1"}]}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "InvalidParameter");
    assert_eq!(error["field"], "containers[1].image");
    let fields: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "containers[1].image",
            "containers[1].name",
            "containers[1].cpu",
            "tags[1].key",
            "securityContext.sysctls[0].name"
        ]
    );
    assert!(h.calls().is_empty());
    let (_, list) = h.get("/v1/containerGroups").await;
    assert_eq!(list["totalCount"], 0);
}

#[tokio::test]
async fn undecodable_bodies_name_the_field() {
    let h = Harness::new(64.0);
    let (status, body) = h
        .post(
            "/v1/containerGroups",
            json!({"name": "w", "containers": [{"name": "a", "image": "b", "cpus": 1}]}),
        )
        .await;
    assert_invalid_because(status, &body, "containers[0].cpus", "cpus");
    let (status, body) = h
        .post(
            "/v1/containerGroups",
            json!({"name": "w", "containers": [], "restartPolicy": "Sometimes"}),
        )
        .await;
    assert_invalid(status, &body, "restartPolicy");
    let (status, body) = h
        .request(Method::POST, "/v1/containerGroups", Some("{not json"))
        .await;
    assert_invalid(status, &body, "body");
    assert!(h.calls().is_empty());
}

#[tokio::test]
async fn unknown_ids_and_containers_are_404() {
    let h = Harness::new(64.0);
    let id = h.create(group("web")).await;
    for (method, uri, body) in [
        (
            Method::GET,
            "/v1/containerGroups/eci-nope".to_string(),
            None,
        ),
        (Method::DELETE, "/v1/containerGroups/eci-nope".into(), None),
        (
            Method::POST,
            "/v1/containerGroups/eci-nope/restart".into(),
            None,
        ),
        (
            Method::PATCH,
            "/v1/containerGroups/eci-nope".into(),
            Some("{}"),
        ),
        (
            Method::GET,
            "/v1/containerGroups/eci-nope/events".into(),
            None,
        ),
        (
            Method::GET,
            "/v1/containerGroups/eci-nope/metrics".into(),
            None,
        ),
        (
            Method::GET,
            "/v1/containerGroups/eci-nope/containers/app/logs".into(),
            None,
        ),
        (
            Method::GET,
            format!("/v1/containerGroups/{id}/containers/nope/logs"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/containerGroups/{id}/containers/nope/exec"),
            Some(r#"{"command": ["ls"]}"#),
        ),
        (Method::GET, "/v1/imageCaches/imc-nope".into(), None),
        (Method::PATCH, "/v1/imageCaches/imc-nope".into(), Some("{}")),
        (Method::DELETE, "/v1/imageCaches/imc-nope".into(), None),
    ] {
        let (status, body) = h.request(method.clone(), &uri, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "NotFound", "{method} {uri}");
    }
    // Only the create reached the runtime.
    assert_eq!(h.calls().len(), 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let h = Harness::new(64.0);
    let (status, body) = h.get("/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "NoSuchRoute");
    let (status, body) = h.request(Method::PUT, "/v1/containerGroups", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "MethodNotAllowed");
}

#[tokio::test]
async fn list_filters_by_name_status_and_tag() {
    let h = Harness::new(64.0);
    let mut a = group("a");
    a["tags"] = json!([{"key": "env", "value": "prod"}]);
    let a = h.create(a).await;
    let mut b = group("b");
    b["tags"] = json!([{"key": "env", "value": "dev"}]);
    let b = h.create(b).await;
    h.store
        .set_group_status(&a, eci::model::GroupStatus::Running)
        .unwrap();
    let ids = |body: serde_json::Value| -> Vec<String> {
        body["containerGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(h.get("/v1/containerGroups").await.1),
        [a.clone(), b.clone()]
    );
    assert_eq!(
        ids(h.get("/v1/containerGroups?name=b").await.1),
        vec![b.clone()]
    );
    assert_eq!(
        ids(h.get("/v1/containerGroups?status=Running").await.1),
        vec![a.clone()]
    );
    assert_eq!(
        ids(h.get("/v1/containerGroups?tag=env%3Ddev").await.1),
        vec![b.clone()]
    );
    assert_eq!(ids(h.get("/v1/containerGroups?tag=env").await.1), [a, b]);
    let (status, body) = h.get("/v1/containerGroups?status=Sleeping").await;
    assert_invalid(status, &body, "status");
    let (status, body) = h.get("/v1/containerGroups?colour=red").await;
    assert_invalid(status, &body, "query");
}

#[tokio::test]
async fn the_vcpu_quota_is_enforced_and_reported() {
    let h = Harness::new(3.0);
    h.create(group("a")).await;
    h.create(group("b")).await;
    let (status, quota) = h.get("/v1/quota").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        quota,
        json!({"vcpuQuota": 3.0, "vcpuUsed": 2.0, "gpuQuota": 0, "gpuUsed": 0})
    );
    let mut big = group("c");
    big["cpu"] = json!(2);
    let (status, body) = h.post("/v1/containerGroups", big).await;
    assert_invalid(status, &body, "cpu");
    assert_eq!(h.calls().len(), 2);
    h.create(group("d")).await;
}

#[tokio::test]
async fn update_validates_and_hands_over_what_changed() {
    let h = Harness::new(64.0);
    let id = h.create(group("web")).await;
    let uri = format!("/v1/containerGroups/{id}");
    let (status, body) = h
        .patch(&uri, json!({"containers": [{"name": "app", "cpu": 9}]}))
        .await;
    assert_invalid(status, &body, "containers[0].cpu");
    let (status, body) = h
        .patch(
            &uri,
            json!({"containers": [{"name": "app", "image": "nginx"}], "memory": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "Updating");
    assert_eq!(body["containers"][0]["image"], "nginx");
    match h.calls().last() {
        Some(Call::Update(got, update)) => {
            assert_eq!(got, &id);
            assert_eq!(update.changed_containers, ["app"]);
            assert!(update.resized);
            assert_eq!(update.spec.memory, 4.0);
        }
        other => panic!("unexpected call {other:?}"),
    }
}

#[tokio::test]
async fn dns_config_reaches_the_runtime_and_only_at_creation() {
    let h = Harness::new(64.0);
    let mut bad = group("bad");
    bad["dnsConfig"] = json!({"nameServers": ["10.88.0.53", "ns.example.com"]});
    let (status, body) = h.post("/v1/containerGroups", bad).await;
    assert_invalid_because(
        status,
        &body,
        "dnsConfig.nameServers[1]",
        "is not an IPv4 or IPv6 address",
    );
    assert!(h.calls().is_empty());

    let mut web = group("web");
    let dns = json!({
        "nameServers": ["10.88.0.53", "192.0.2.53"],
        "searchDomains": ["example.internal"],
        "options": ["ndots:2"]
    });
    web["dnsConfig"] = dns.clone();
    let id = h.create(web).await;
    match &h.calls()[..] {
        [Call::Create(spec)] => {
            let got = spec.dns_config.as_ref().expect("dnsConfig in the spec");
            assert_eq!(got.name_servers, ["10.88.0.53", "192.0.2.53"]);
            assert_eq!(got.search_domains, ["example.internal"]);
            assert_eq!(got.options, ["ndots:2"]);
        }
        calls => panic!("unexpected calls {calls:?}"),
    }
    let uri = format!("/v1/containerGroups/{id}");
    let (_, got) = h.get(&uri).await;
    assert_eq!(got["spec"]["dnsConfig"], dns);
    // Pod-level, like volumes and sysctls: an update keeps the sandbox, so a patch cannot name it.
    let (status, body) = h
        .patch(&uri, json!({"dnsConfig": {"nameServers": ["10.0.0.1"]}}))
        .await;
    assert_invalid(status, &body, "dnsConfig");
    // An update of something else keeps it.
    let (status, body) = h
        .patch(
            &uri,
            json!({"containers": [{"name": "app", "image": "nginx"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["spec"]["dnsConfig"], dns);
}

#[tokio::test]
async fn restart_delete_events_and_metrics_reach_the_runtime() {
    let h = Harness::new(64.0);
    let id = h.create(group("web")).await;
    h.store
        .add_event(&id, eci::model::EventType::Normal, "Pulled", "busybox")
        .unwrap();
    let (status, body) = h
        .request(
            Method::POST,
            &format!("/v1/containerGroups/{id}/restart"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "Restarting");
    let (status, body) = h.get(&format!("/v1/containerGroups/{id}/events")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"][0]["reason"], "Pulled");
    assert_eq!(body["events"][0]["type"], "Normal");
    let (status, body) = h.get(&format!("/v1/containerGroups/{id}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["network"]["interfaces"].is_array(), "{body}");
    let (status, _) = h
        .request(Method::DELETE, &format!("/v1/containerGroups/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        h.calls()[1..],
        [
            Call::Restart(id.clone()),
            Call::Metrics(id.clone()),
            Call::Delete(id.clone())
        ]
    );
}

#[tokio::test]
async fn exec_and_logs() {
    let h = Harness::new(64.0);
    let id = h.create(group("web")).await;
    let exec = format!("/v1/containerGroups/{id}/containers/app/exec");
    let (status, body) = h.post(&exec, json!({"command": ["echo", "hi"]})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"stdout": "ran echo hi\n", "stderr": "", "exitCode": 3})
    );
    let (status, body) = h
        .post(
            &exec,
            json!({"command": ["sh"], "stdin": true, "tty": true, "sync": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["webSocketUri"], "http://127.0.0.1:1/exec/abc");
    let (status, body) = h.post(&exec, json!({"command": ["sh"], "tty": true})).await;
    assert_invalid(status, &body, "tty");
    let (status, body) = h
        .post(&exec, json!({"command": ["cat"], "stdin": true}))
        .await;
    assert_invalid(status, &body, "stdin");
    let (status, body) = h.post(&exec, json!({"command": []})).await;
    assert_invalid(status, &body, "command");

    let logs = format!("/v1/containerGroups/{id}/containers/app/logs?tail=5&follow=true");
    let (status, body) = h.get(&logs).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "line 1\nline 2\n");
    match h.calls().last() {
        Some(Call::Logs(_, container, options)) => {
            assert_eq!(container, "app");
            assert_eq!((options.tail, options.follow), (Some(5), true));
        }
        other => panic!("unexpected call {other:?}"),
    }
    let (status, body) = h
        .get(&format!(
            "/v1/containerGroups/{id}/containers/app/logs?tail=-1"
        ))
        .await;
    assert_invalid(status, &body, "query");
}

#[tokio::test]
async fn runtime_errors_map_to_status_codes() {
    let h = Harness::new(64.0);
    let id = h.create(group("web")).await;
    let metrics = format!("/v1/containerGroups/{id}/metrics");
    for (err, status, code) in [
        (
            BackendError::Conflict("not running".into()),
            StatusCode::CONFLICT,
            "Conflict",
        ),
        (
            BackendError::Unavailable("containerd".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
        ),
        (
            BackendError::Internal("bug".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
        ),
        (
            BackendError::NotFound("sandbox".into()),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            BackendError::Invalid {
                field: "imageCacheId".into(),
                reason: "not Ready".into(),
            },
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
        ),
    ] {
        h.fail_next(err);
        let (got, body) = h.get(&metrics).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code);
    }
}

#[tokio::test]
async fn image_cache_routes() {
    let h = Harness::new(64.0);
    let (status, body) = h
        .post(
            "/v1/imageCaches",
            json!({"name": "c", "images": ["busybox", "busybox"]}),
        )
        .await;
    assert_invalid(status, &body, "images[1]");
    let (status, body) = h
        .post(
            "/v1/imageCaches",
            json!({"name": "c", "images": ["busybox"], "retentionDays": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (_, list) = h.get("/v1/imageCaches").await;
    assert_eq!(list["totalCount"], 1);
    assert_eq!(list["imageCaches"][0]["status"], "Creating");
    let uri = format!("/v1/imageCaches/{id}");
    let (status, body) = h.patch(&uri, json!({"retentionDays": 9})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["retentionDays"], 9);
    let (status, _) = h.patch(&uri, json!({"retentionDays": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.request(Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.get(&uri).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn gpu_groups_take_devices_from_the_pool_within_the_quota_and_release_them_on_delete() {
    let h = Harness::with_gpus(256.0, &["0000:3b:00.0", "0000:86:00.0"]);
    let (_, quota) = h.get("/v1/quota").await;
    assert_eq!(
        (quota["gpuQuota"].as_u64(), quota["gpuUsed"].as_u64()),
        (Some(2), Some(0))
    );
    // A GPU instance type sets cpu, memory and gpu.
    let a = h
        .create(json!({
            "name": "infer", "instanceType": "ecs.gn6i-c4g1.xlarge",
            "containers": [{"name": "app", "image": "busybox"}]
        }))
        .await;
    let (_, got) = h.get(&format!("/v1/containerGroups/{a}")).await;
    assert_eq!(
        (got["cpu"].as_f64(), got["memory"].as_f64()),
        (Some(4.0), Some(15.0))
    );
    assert_eq!(got["spec"]["gpu"], 1);
    assert_eq!(got["spec"]["gpuDevices"], json!(["0000:3b:00.0"]));
    // Two more GPUs do not fit: 400 naming `gpu`, nothing created.
    let (status, body) = h
        .post(
            "/v1/containerGroups",
            json!({"name": "train", "gpu": 2, "containers": [{"name": "app", "image": "busybox"}]}),
        )
        .await;
    assert_invalid_because(status, &body, "gpu", "remaining GPU quota");
    // Errors name their field.
    let (status, body) = h
        .post(
            "/v1/containerGroups",
            json!({"name": "x", "instanceType": "ecs.gn9-nope", "containers": [{"name": "app", "image": "busybox"}]}),
        )
        .await;
    assert_invalid(status, &body, "instanceType");
    let b = h
        .create(
            json!({"name": "train", "gpu": 1, "containers": [{"name": "app", "image": "busybox"}]}),
        )
        .await;
    let (_, got) = h.get(&format!("/v1/containerGroups/{b}")).await;
    assert_eq!(got["spec"]["gpuDevices"], json!(["0000:86:00.0"]));
    let (_, quota) = h.get("/v1/quota").await;
    assert_eq!(quota["gpuUsed"].as_u64(), Some(2));
    // Delete releases the device: a new group gets it.
    let (status, _) = h
        .request(Method::DELETE, &format!("/v1/containerGroups/{a}"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let c = h
        .create(
            json!({"name": "again", "gpu": 1, "containers": [{"name": "app", "image": "busybox"}]}),
        )
        .await;
    let (_, got) = h.get(&format!("/v1/containerGroups/{c}")).await;
    assert_eq!(got["spec"]["gpuDevices"], json!(["0000:3b:00.0"]));
}
