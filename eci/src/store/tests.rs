use super::*;
use crate::model::{CreateContainerGroupRequest, Quota};

fn spec(name: &str, tags: &[(&str, &str)]) -> ContainerGroupSpec {
    let req: CreateContainerGroupRequest = serde_json::from_value(serde_json::json!({
        "name": name,
        "cpu": 1, "memory": 2,
        "containers": [{"name": "app", "image": "busybox"}, {"name": "side", "image": "nginx"}],
        "initContainers": [{"name": "setup", "image": "alpine"}],
        "imageRegistryCredentials": [{"server": "r:5000", "userName": "u", "password": "secret"}],
        "tags": tags.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
    }))
    .unwrap();
    crate::validate::validate_create(
        &req,
        &Quota {
            vcpu_quota: 1000.0,
            vcpu_used: 0.0,
            gpu_quota: 0,
            gpu_used: 0,
        },
    )
    .unwrap()
}

#[test]
fn state_survives_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (group_id, cache_id) = {
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .insert_group(&spec("web", &[]), GroupStatus::Pending)
            .unwrap();
        store
            .set_group_sandbox(&id, Some("sandbox-1"), Some("10.88.0.5"))
            .unwrap();
        store.set_group_status(&id, GroupStatus::Running).unwrap();
        store
            .update_container(&id, "app", |record| {
                record.cri_container_id = Some("cri-app".into());
                record.status.state = ContainerState::Running;
                record.status.restart_count = 2;
            })
            .unwrap();
        store
            .add_event(&id, EventType::Normal, "Started", "started app")
            .unwrap();
        let cache = store
            .insert_image_cache(&ImageCacheSpec {
                name: "c".into(),
                images: vec!["busybox".into()],
                image_registry_credentials: vec![],
                retention_days: 3,
            })
            .unwrap();
        (id, cache)
    };
    let store = Store::open(dir.path()).unwrap();
    let record = store.group(&group_id).unwrap().unwrap();
    assert_eq!(record.status, GroupStatus::Running);
    assert_eq!(record.sandbox_id.as_deref(), Some("sandbox-1"));
    assert_eq!(record.ip.as_deref(), Some("10.88.0.5"));
    assert_eq!(record.spec, spec("web", &[]));
    let app = store
        .containers(&group_id)
        .unwrap()
        .into_iter()
        .find(|c| c.name == "app")
        .unwrap();
    assert_eq!(app.cri_container_id.as_deref(), Some("cri-app"));
    assert_eq!(app.status.restart_count, 2);
    assert_eq!(store.events(&group_id).unwrap()[0].reason, "Started");
    let cache = store.get_image_cache(&cache_id).unwrap().unwrap();
    assert_eq!(cache.status, ImageCacheStatus::Creating);
    assert_eq!(cache.retention_days, 3);
}

#[test]
fn dns_config_is_stored_and_groups_stored_without_it_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut with_dns = spec("dns", &[]);
    with_dns.dns_config = Some(crate::model::DnsConfig {
        name_servers: vec!["10.88.0.53".into(), "2001:db8::53".into()],
        search_domains: vec!["example.internal".into()],
        options: vec!["ndots:2".into()],
    });
    let (dns_id, old_id) = {
        let store = Store::open(dir.path()).unwrap();
        let dns_id = store.insert_group(&with_dns, GroupStatus::Running).unwrap();
        let old_id = store
            .insert_group(&spec("old", &[]), GroupStatus::Running)
            .unwrap();
        (dns_id, old_id)
    };
    // The spec column as an eci before dnsConfig wrote it.
    let old_spec = serde_json::json!({
        "name": "old", "cpu": 1.0, "memory": 2.0, "restartPolicy": "Always",
        "containers": [{"name": "app", "image": "busybox"}, {"name": "side", "image": "nginx"}],
        "initContainers": [{"name": "setup", "image": "alpine"}],
        "imageRegistryCredentials": [{"server": "r:5000", "userName": "u", "password": "secret"}],
        "tags": [],
        "terminationGracePeriodSeconds": 30,
    });
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE groups SET spec = ?1 WHERE id = ?2",
        params![old_spec.to_string(), old_id],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.group(&dns_id).unwrap().unwrap().spec, with_dns);
    let old = store.group(&old_id).unwrap().unwrap().spec;
    assert_eq!(old, spec("old", &[]));
    assert_eq!(old.dns_config, None);
    let listed = store.get_group(&dns_id).unwrap().unwrap();
    assert_eq!(listed.spec.dns_config, with_dns.dns_config);
}

#[test]
fn a_database_from_a_newer_eci_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

#[test]
fn new_groups_have_waiting_containers_init_first() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_group(&spec("web", &[]), GroupStatus::Scheduling)
        .unwrap();
    assert!(id.starts_with("eci-"), "{id}");
    let containers = store.containers(&id).unwrap();
    let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["setup", "app", "side"]);
    assert!(containers[0].init && !containers[1].init);
    assert!(containers
        .iter()
        .all(|c| c.status.state == ContainerState::Waiting && c.cri_container_id.is_none()));
    let group = store.get_group(&id).unwrap().unwrap();
    assert_eq!(group.status, GroupStatus::Scheduling);
    assert_eq!(group.init_containers.len(), 1);
    assert_eq!(group.containers[1].image, "nginx");
}

#[test]
fn api_views_blank_registry_passwords_but_records_keep_them() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_group(&spec("web", &[]), GroupStatus::Pending)
        .unwrap();
    let group = store.get_group(&id).unwrap().unwrap();
    assert_eq!(group.spec.image_registry_credentials[0].password, "");
    let record = store.group(&id).unwrap().unwrap();
    assert_eq!(record.spec.image_registry_credentials[0].password, "secret");
}

#[test]
fn list_filters_by_name_status_and_tag() {
    let store = Store::open_in_memory().unwrap();
    let a = store
        .insert_group(&spec("a", &[("env", "prod")]), GroupStatus::Running)
        .unwrap();
    let b = store
        .insert_group(&spec("b", &[("env", "dev")]), GroupStatus::Pending)
        .unwrap();
    let ids = |filter: GroupFilter| -> Vec<String> {
        store
            .list_groups(&filter)
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect()
    };
    assert_eq!(ids(GroupFilter::default()), [a.clone(), b.clone()]);
    let by_name = GroupFilter {
        name: Some("b".into()),
        ..GroupFilter::default()
    };
    assert_eq!(ids(by_name), vec![b.clone()]);
    let by_status = GroupFilter {
        status: Some(GroupStatus::Running),
        ..GroupFilter::default()
    };
    assert_eq!(ids(by_status), vec![a.clone()]);
    let by_tag = GroupFilter {
        tag: Some(("env".into(), Some("dev".into()))),
        ..GroupFilter::default()
    };
    assert_eq!(ids(by_tag), vec![b.clone()]);
    let by_key = GroupFilter {
        tag: Some(("env".into(), None)),
        ..GroupFilter::default()
    };
    assert_eq!(ids(by_key), [a, b]);
    let none = GroupFilter {
        tag: Some(("team".into(), None)),
        ..GroupFilter::default()
    };
    assert!(ids(none).is_empty());
}

#[test]
fn quota_counts_only_groups_holding_resources() {
    let store = Store::open_in_memory().unwrap();
    let mut big = spec("big", &[]);
    big.cpu = 4.0;
    let a = store.insert_group(&big, GroupStatus::Running).unwrap();
    store
        .insert_group(&spec("small", &[]), GroupStatus::Pending)
        .unwrap();
    assert_eq!(store.vcpu_used().unwrap(), 5.0);
    store.set_group_status(&a, GroupStatus::Failed).unwrap();
    assert_eq!(store.vcpu_used().unwrap(), 1.0);
}

#[test]
fn delete_removes_containers_and_events() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_group(&spec("web", &[]), GroupStatus::Pending)
        .unwrap();
    store
        .add_event(&id, EventType::Warning, "Failed", "x")
        .unwrap();
    assert!(store.delete_group(&id).unwrap());
    assert!(!store.delete_group(&id).unwrap());
    assert!(store.get_group(&id).unwrap().is_none());
    assert!(store.containers(&id).unwrap().is_empty());
    assert!(store.events(&id).unwrap().is_empty());
    assert!(!store.set_group_status(&id, GroupStatus::Running).unwrap());
    assert!(!store.update_container(&id, "app", |_| {}).unwrap());
}

#[test]
fn repeated_events_are_counted() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_group(&spec("web", &[]), GroupStatus::Pending)
        .unwrap();
    store
        .add_event(&id, EventType::Warning, "BackOff", "restarting app")
        .unwrap();
    store
        .add_event(&id, EventType::Warning, "BackOff", "restarting app")
        .unwrap();
    store
        .add_event(&id, EventType::Normal, "Started", "app")
        .unwrap();
    let events = store.events(&id).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!((events[0].reason.as_str(), events[0].count), ("BackOff", 2));
    assert_eq!(events[1].count, 1);
}

#[test]
fn image_cache_events_are_capped_at_fifty() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .insert_image_cache(&ImageCacheSpec {
            name: "c".into(),
            images: vec!["busybox".into()],
            image_registry_credentials: vec![],
            retention_days: 1,
        })
        .unwrap();
    for i in 0..60 {
        store
            .add_event(&id, EventType::Normal, "Pulling", &format!("layer {i}"))
            .unwrap();
    }
    let events = store.events(&id).unwrap();
    assert_eq!(events.len(), MAX_IMAGE_CACHE_EVENTS);
    assert_eq!(events[0].message, "layer 10");
    assert_eq!(events[49].message, "layer 59");
}

#[test]
fn update_spec_syncs_container_rows() {
    let store = Store::open_in_memory().unwrap();
    let mut spec = spec("web", &[]);
    let id = store.insert_group(&spec, GroupStatus::Running).unwrap();
    store
        .update_container(&id, "app", |r| r.status.restart_count = 3)
        .unwrap();
    spec.containers[0].image = "busybox:2".into();
    spec.containers.remove(1);
    assert!(store.set_group_spec(&id, &spec).unwrap());
    let containers = store.containers(&id).unwrap();
    let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["setup", "app"]);
    assert_eq!(containers[1].status.image, "busybox:2");
    assert_eq!(containers[1].status.restart_count, 3);
}

#[test]
fn image_cache_lookup_update_and_expiry() {
    let store = Store::open_in_memory().unwrap();
    let cache = |images: &[&str]| ImageCacheSpec {
        name: "c".into(),
        images: images.iter().map(|s| s.to_string()).collect(),
        image_registry_credentials: vec![],
        retention_days: 7,
    };
    let old = store
        .insert_image_cache(&cache(&["busybox", "nginx"]))
        .unwrap();
    let new = store.insert_image_cache(&cache(&["busybox"])).unwrap();
    let creating = store.insert_image_cache(&cache(&["busybox"])).unwrap();
    store
        .set_image_cache_status(&old, ImageCacheStatus::Ready)
        .unwrap();
    store
        .set_image_cache_status(&new, ImageCacheStatus::Ready)
        .unwrap();
    let same = |s: &str| s.to_string();
    let found = |images: &[&str]| {
        let images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
        store
            .find_image_cache(&images, same)
            .unwrap()
            .map(|record| record.id)
    };
    // Newest Ready cache holding all images; the Creating one never matches.
    assert_eq!(found(&["busybox"]), Some(new.clone()));
    assert_eq!(found(&["busybox", "nginx"]), Some(old.clone()));
    assert_eq!(found(&["redis"]), None);
    assert_ne!(found(&["busybox"]), Some(creating));

    assert!(store
        .update_image_cache(&new, Some("renamed"), Some(0))
        .unwrap());
    let updated = store.get_image_cache(&new).unwrap().unwrap();
    assert_eq!(updated.name, "renamed");
    // Zero retention days: expired at once, and no longer matched.
    assert_eq!(updated.status, ImageCacheStatus::Expired);
    assert_eq!(found(&["busybox"]), Some(old.clone()));

    assert!(store.delete_image_cache(&old).unwrap());
    assert!(store.get_image_cache(&old).unwrap().is_none());
    assert_eq!(store.list_image_caches().unwrap().len(), 2);
}

#[test]
fn gpus_are_taken_in_pool_order_all_or_nothing_and_released_with_the_group() {
    let store = Store::open_in_memory().unwrap();
    let pool: Vec<String> = ["0000:3b:00.0", "0000:86:00.0", "0000:af:00.0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let a = store
        .insert_group(&spec("a", &[]), GroupStatus::Pending)
        .unwrap();
    assert_eq!(store.allocate_gpus(&a, &pool, 2).unwrap(), pool[..2]);
    assert_eq!(
        store.group(&a).unwrap().unwrap().spec.gpu_devices,
        pool[..2]
    );
    let b = store
        .insert_group(&spec("b", &[]), GroupStatus::Pending)
        .unwrap();
    let err = store.allocate_gpus(&b, &pool, 2).unwrap_err();
    assert!(matches!(err, StoreError::Exhausted(_)), "{err}");
    assert_eq!(
        store.gpus_of(&b).unwrap(),
        Vec::<String>::new(),
        "nothing taken on failure"
    );
    assert_eq!(store.gpus_used().unwrap(), 2);
    store.delete_group(&a).unwrap();
    assert_eq!(store.gpus_used().unwrap(), 0);
    assert_eq!(store.allocate_gpus(&b, &pool, 3).unwrap(), pool);
}
